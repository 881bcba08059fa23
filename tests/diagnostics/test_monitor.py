"""KoopmanMonitor: it reads training and never changes it; its warning and convergence flag
on problems whose fate is known; its record, state, writer and figure."""

import copy
import json
import math

import pytest
import torch
from _systems import Trajectory, linear_system, monitored, run, unstable_plus_noise
from torch import nn

from kooptrain import KoopmanMonitor
from kooptrain.diagnostics import plot_spectra
from kooptrain.diagnostics.record import load_record


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 6, generator=g)
    return x, torch.sin(x[:, :1]) * x[:, 1:2]


def train(model, steps, monitor=None, lr=0.05, batch=32):
    x, y = data()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        i = torch.randint(0, len(x), (batch,), generator=g)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x[i]), y[i])
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step(loss=loss.detach())
    return model


def test_the_monitor_never_changes_training():
    plain = train(mlp(), 120)
    torch.manual_seed(5)
    watched_model = mlp()
    rng = torch.get_rng_state()
    mon = KoopmanMonitor(watched_model, every=2, window=6)
    torch.set_rng_state(rng)
    watched = train(watched_model, 120, mon)
    for p, q in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(p, q)
    assert len(mon.record["entries"]) == 10  # one fit per 12 steps
    e = mon.record["entries"][-1]
    assert e["step"] == 120 and e["loss"] is not None
    assert set(e["layers"]) == {"0", "2"} == set(mon.record["layers"])
    for lay in e["layers"].values():
        assert 1 <= len(lay["eigenvalues"]) <= 4 and len(lay["shares"]) == len(lay["eigenvalues"])
        assert lay["spectral_radius"] == pytest.approx(max(math.hypot(*z)
                                                           for z in lay["eigenvalues"]))


def gd_past_the_limit(*monitors):
    """GD on a quadratic with curvatures (0.01, 4): lr 0.55 makes the stiff direction grow
    by 1.2 per step from a tiny start, so the loss exceeds 10x its minimum only late.
    Returns the step at which it does."""
    h = torch.tensor([0.01, 4.0], dtype=torch.float64)
    model = Trajectory(2)
    mons = [make(model) for make in monitors]
    x = torch.tensor([1.0, 1e-6], dtype=torch.float64)
    loss_min, blew_up = math.inf, None
    for t in range(1, 301):
        x = x - 0.55 * h * x
        model.set(x)
        for mon in mons:
            mon.step()
        loss = float(0.5 * (h * x * x).sum())
        loss_min = min(loss_min, loss)
        if blew_up is None and loss > 10 * loss_min:
            blew_up = t
    return blew_up, mons


def test_gradient_descent_past_the_stability_limit_is_warned_before_the_loss_blows_up():
    """The null's rule: the leading direction's growth beyond every time order of its
    increments, in two consecutive fits. The leading direction is the stiff one from step
    ~43 on (1e-6 * 1.2^t overtakes the slow direction's 0.0055 a step); with every mode
    (null_rank=None) the growth shows once it carries a share of the motion. A window of 6
    has 5! = 120 orders: p-values come in steps of about 1/120."""
    blew_up, (lead, every_mode, once) = gd_past_the_limit(
        lambda m: KoopmanMonitor(m, every=1, window=6),
        lambda m: KoopmanMonitor(m, every=1, window=6, null_rank=None),
        lambda m: KoopmanMonitor(m, every=1, window=6, persist=1))
    assert blew_up == 65
    assert 43 <= lead.warning["step"] < blew_up and lead.warning["layer"] == ""
    assert lead.warning["p_value"] <= 0.01 and "2 consecutive" in lead.warning["reason"]
    assert every_mode.warning["step"] < lead.warning["step"]  # the stiff mode's share
    assert once.warning["step"] == lead.warning["step"] - 6  # one fit sooner
    assert lead.converged_at is None


def test_the_deprecated_threshold_still_warns_as_0_2_did():
    """The instability score over ``threshold``: once the growing mode carries 1% of the
    motion (min_share); the mean of 3 fits (smooth) later than one fit."""
    with pytest.warns(DeprecationWarning, match=r"threshold=\.\.\.\) is deprecated"):
        blew_up, (mon, smoothed) = gd_past_the_limit(
            lambda m: KoopmanMonitor(m, every=1, window=6, horizon=50, smooth=1,
                                     threshold=1.0),
            lambda m: KoopmanMonitor(m, every=1, window=6, horizon=50, threshold=1.0))
    assert mon.settings.alarm_rate is None and mon.warning is not None
    assert mon.warning["step"] <= blew_up - 20
    assert mon.warning["step"] < smoothed.warning["step"] < blew_up


def test_in_learning_rate_time_a_warm_up_is_not_read_as_instability():
    """Gradient descent on a shallow quadratic while the lr ramps up tenfold: the steps grow
    only because the lr does. Counted in steps that looks like growth (here with no margin
    and no burn-in: it grows by under 1% a step); in lr time (the increments divided by the
    lr summed over each interval) it is the slow decay it is."""
    def watched(lr_time):
        model = Trajectory(1)  # one direction: the spectrum is the decay ratio itself
        with torch.no_grad():
            model.weight.fill_(1.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 + 9 * min(t, 300) / 300)
        mon = KoopmanMonitor(model, every=5, window=8, horizon=200, min_growth=0.0,
                             burn_in=0, optimizer=opt if lr_time else None)
        h = torch.tensor([0.05], dtype=torch.float64)
        for _ in range(300):
            opt.zero_grad()
            (0.5 * h * model.weight**2).sum().backward()
            opt.step()
            sched.step()
            mon.step()
        return mon
    steps, lr_time = watched(False), watched(True)
    assert steps.warning is not None
    assert lr_time.warning is None and lr_time.record["settings"]["lr_time"] is True
    assert max(e["instability"] for e in lr_time.record["entries"]) < 0


def test_a_stable_linear_system_converges_and_is_never_warned():
    A, c = linear_system([0.9, 0.7, 0.5, -0.3])
    X = run(A, c, torch.ones(4, dtype=torch.float64), 400)
    mon = monitored(X, every=1, window=8, settle_tol=1e-4)
    assert mon.warning is None
    xstar = torch.linalg.solve(torch.eye(4, dtype=torch.float64) - A, c)
    rest = (xstar[:, None] - X).norm(dim=0) / X.norm(dim=0)
    # steps count from 1: the weights after step t are X[:, t - 1]
    settled = int(torch.nonzero(rest < 1e-4)[0]) + 1
    assert settled <= mon.converged_at <= settled + 8  # within one interval of the truth
    early = [e for e in mon.record["entries"] if e["step"] < settled - 8]
    assert early and not any(e["converged"] for e in early)


def test_non_finite_weights_are_reported_and_warned_not_raised():
    model = Trajectory(3)
    with pytest.warns(UserWarning, match="window=4 has only 6 orders"):
        mon = KoopmanMonitor(model, every=1, window=4)
    for t in range(8):
        model.set(torch.full((3,), math.nan if t == 6 else float(t) ** 0.5,
                             dtype=torch.float64))
        mon.step()
    last = mon.record["entries"][-1]
    assert last["non_finite"] == [""] and last["instability"] is None  # "": the root module
    assert mon.warning == {"step": 8, "instability": None, "reason": "non-finite weights"}
    json.dumps(mon.record, allow_nan=False)  # strict JSON even then


def test_the_record_is_strict_json_and_loads_back(tmp_path):
    mon = KoopmanMonitor(train_model := mlp(), every=1, window=6)
    train(train_model, 60, mon)
    path = mon.save(tmp_path / "run" / "record.json")
    back = load_record(path)
    assert back == json.loads(json.dumps(mon.record))
    assert back["settings"]["interval"] == 6 and back["kind"] == "kooptrain.monitor"


def test_resume_continues_the_record_bit_identically():
    full_model = mlp()
    full = KoopmanMonitor(full_model, every=2, window=5)
    train(full_model, 80, full)
    first_model = mlp()
    first = KoopmanMonitor(first_model, every=2, window=5)
    x, y = data()
    opt = torch.optim.Adam(first_model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(2)

    def steps(model, opt, mon, n):
        for _ in range(n):
            i = torch.randint(0, len(x), (32,), generator=g)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x[i]), y[i])
            loss.backward()
            opt.step()
            mon.step(loss=loss.detach())

    steps(first_model, opt, first, 33)
    state = copy.deepcopy(first.state_dict())
    model2 = copy.deepcopy(first_model)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.05)
    opt2.load_state_dict(opt.state_dict())
    second = KoopmanMonitor(model2, every=2, window=5)
    second.load_state_dict(state)
    steps(model2, opt2, second, 47)
    assert second.record == full.record
    with pytest.raises(ValueError, match="settings"):
        KoopmanMonitor(model2, every=3, window=5).load_state_dict(state)


def test_the_writer_gets_scalars_and_histograms_per_layer():
    class Writer:
        def __init__(self):
            self.scalars, self.histograms = [], []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def add_histogram(self, tag, values, step):
            self.histograms.append((tag, step))

    w = Writer()
    model = mlp()
    mon = KoopmanMonitor(model, every=1, window=5, writer=w)
    train(model, 10, mon)
    tags = {t for t, _, _ in w.scalars}
    assert {"koopman/instability", "koopman/converged", "koopman/0/spectral_radius",
            "koopman/2/unit_share"} <= tags
    assert {t for t, _ in w.histograms} == {"koopman/0/eigenvalue_modulus",
                                           "koopman/2/eigenvalue_modulus"}
    assert {s for _, _, s in w.scalars} == {5, 10}


def test_the_figure_has_one_panel_per_layer(tmp_path):
    pytest.importorskip("matplotlib")
    model = mlp()
    mon = KoopmanMonitor(model, every=1, window=6)
    train(model, 36, mon)
    fig = mon.plot(tmp_path / "spectra.png")
    assert (tmp_path / "spectra.png").stat().st_size > 10_000
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["0 (Linear)", "2 (Linear)",
                                                 "the warning's readings"]
    assert all(1 <= len(ax.collections) <= 2 for ax in panels[:2])  # inside, on the border
    with pytest.raises(ValueError, match="unknown layer"):
        mon.plot(layers=["nope"])


def test_one_outlier_eigenvalue_does_not_squash_the_panel(tmp_path):
    """A record with one eigenvalue at |lambda| = 645 among many inside the circle."""
    pytest.importorskip("matplotlib")
    model = mlp()
    mon = KoopmanMonitor(model, every=1, window=6)
    train(model, 36, mon)
    record = copy.deepcopy(mon.record)
    record["entries"][0]["layers"]["0"]["eigenvalues"].append([645.0, 0.0])
    ax = plot_spectra(record).axes[0]
    assert ax.get_xlim()[1] < 10  # the circle's scale, not the outlier's
    assert any("1 beyond" in t.get_text() for t in ax.texts)


@pytest.mark.parametrize("kw, match", [
    ({"window": 3}, "window"), ({"every": 0}, "every"), ({"granularity": "row"}, "granularity"),
    ({"interval": 0}, "interval"), ({"alarm_rate": 0}, "alarm_rate"),
    ({"alarm_rate": 1.5}, "alarm_rate"), ({"alarm_rate": None}, "needs a threshold"),
    ({"surrogates": 50}, "cannot resolve alarm_rate=0.01"), ({"persist": 0}, "persist"),
    ({"forecast": 0}, "forecast"), ({"forecast": True}, "forecast"),
    ({"forecast": 1.5}, "forecast"),
])
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        KoopmanMonitor(mlp(), **kw)
    with pytest.raises(TypeError, match="nn.Module"):
        KoopmanMonitor("model")


# ------------------------------------------------------------------ the null
def walk(d, steps, seed, noise=1.0):
    """``(d, steps)`` random walk: exchangeable increments, no dynamics."""
    g = torch.Generator().manual_seed(seed)
    return (noise * torch.randn(d, steps, generator=g, dtype=torch.float64)).cumsum(-1)


def test_noise_alone_is_flagged_at_the_stated_rate_per_fit():
    """Random walks (the increments exchangeable): over 400 non-overlapping fits in 20
    runs, the share of flagged fits is the alarm rate, within binomial noise."""
    flagged = fits = 0
    for seed in range(20):
        mon = monitored(walk(20, 201, seed), every=1, window=10, alarm_rate=0.05,
                        surrogates=199)
        flagged += sum(e["null"]["p_value"] <= 0.05 for e in mon.record["entries"])
        fits += len(mon.record["entries"])
    assert fits == 400
    rate, sd = flagged / fits, math.sqrt(0.05 * 0.95 / fits)
    assert 0.05 - 3 * sd <= rate <= 0.05 + 3 * sd, rate


def test_noise_alone_is_not_warned_of_at_the_defaults():
    """The defaults: 1% per fit, two consecutive flagged fits (and growth) to warn."""
    warned = sum(monitored(walk(30, 501, seed), every=1, window=10).warning is not None
                 for seed in range(20))
    assert warned <= 1


def test_a_linear_system_with_one_unstable_mode_plus_noise_is_flagged():
    """Its leading direction's growth lies beyond all but 1% of 199 time orders of the
    increments in most fits, and each run is warned."""
    p_values, warned = [], 0
    for seed in range(10):
        mon = monitored(unstable_plus_noise(seed), every=1, window=10)
        p_values += [e["null"]["p_value"] for e in mon.record["entries"]]
        warned += mon.warning is not None and mon.warning["layer"] == ""
    assert sum(p <= 0.01 for p in p_values) >= 0.8 * len(p_values)
    assert warned == 10


def test_the_forecast_condition_keeps_real_growth_and_removes_flags_of_noise():
    """With ``forecast=0.5`` a flag also needs the flagged layer to forecast its held-out
    increment better than half of its surrogates: the unstable system is still warned in
    every run, and on random walks the share of flagged fits falls to about half the
    alarm rate (the two tests are independent under the null), recorded per fit."""
    warned = 0
    for seed in range(10):
        mon = monitored(unstable_plus_noise(seed), every=1, window=10, forecast=0.5)
        warned += mon.warning is not None
        qs = [e["null"]["forecast"] for e in mon.record["entries"]]
        assert all(q is not None and 0 < q <= 1 for q in qs)
    assert warned == 10
    plain = with_forecast = fits = 0
    for seed in range(20):
        walks = walk(20, 201, seed)
        a = monitored(walks, every=1, window=10, alarm_rate=0.05)
        b = monitored(walks, every=1, window=10, alarm_rate=0.05, forecast=0.5)
        for x, y in zip(a.record["entries"], b.record["entries"], strict=True):
            assert x["null"]["p_value"] == y["null"]["p_value"]  # the same growth test
            assert x["null"]["forecast"] is None
            assert y["null"]["flagged"] == (x["null"]["flagged"]
                                            and y["null"]["forecast"] <= 0.5)
        plain += sum(e["null"]["flagged"] for e in a.record["entries"])
        with_forecast += sum(e["null"]["flagged"] for e in b.record["entries"])
        fits += len(b.record["entries"])
    assert with_forecast <= plain and with_forecast / fits <= 0.05 / 2 + 3 * math.sqrt(
        0.025 * 0.975 / fits)


def test_the_null_decides_the_same_after_a_resume_and_for_any_rank():
    """The time orders are drawn from the fit's step: a monitor fed the same trajectory
    gives the same p-values, whatever ran before it in the process."""
    X = unstable_plus_noise(3)
    a = monitored(X, every=1, window=10)
    torch.manual_seed(123)  # the global RNG plays no part
    b = monitored(X, every=1, window=10)
    assert [e["null"] for e in a.record["entries"]] == [e["null"] for e in b.record["entries"]]


def test_a_loss_that_is_not_a_scalar_is_refused_at_once():
    mon = KoopmanMonitor(mlp(), every=1, window=10)
    with pytest.raises(ValueError, match=r"loss must be a scalar .* shape \(32,\): pass "
                                         r"loss.mean\(\)"):
        mon.step(loss=torch.ones(32))
    assert mon.step_count == 0  # nothing was counted


def test_the_record_names_each_layer_s_module_class():
    mon = KoopmanMonitor(mlp(), every=1, window=10)
    assert mon.record["layers"] == ["0", "2"]
    assert mon.record["layer_types"] == ["Linear", "Linear"]


def test_the_start_of_training_and_slow_growth_are_not_warned_of():
    """Heavy ball on full-batch regression: its momentum builds up over the first window
    (real growth, flagged) and the run then accelerates by under 1% a step (flagged without
    the margin): the defaults' burn-in and min_growth keep both quiet."""
    def run(**kw):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        mon = KoopmanMonitor(model, every=2, window=16, optimizer=opt, **kw)
        x = torch.randn(256, 8, generator=torch.Generator().manual_seed(1))
        y = torch.sin(x[:, :1]) * x[:, 1:2]
        for _ in range(300):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            mon.step()
        return mon
    bare = run(min_growth=0.0, burn_in=0)
    assert bare.warning is not None and bare.warning["step"] == 64  # momentum builds up
    assert run().warning is None
    assert run().settings.burn_in == 2 * 16 * 2


def test_the_loss_spike_is_the_recent_mean_over_its_running_minimum():
    """The second signal: losses 10, 9, ..., 1 then back up to 5 a step at a time."""
    model = Trajectory(3)
    mon = KoopmanMonitor(model, every=1, window=10, interval=1)
    losses = [10.0 - t for t in range(10)] + [2.0, 3.0, 4.0, 5.0]
    for t, v in enumerate(losses):
        model.set(torch.full((3,), float(t) ** 1.5, dtype=torch.float64))
        e = mon.step(loss=v)
    window = losses[-10:]
    best = min(sum(losses[i - 9:i + 1]) / 10 for i in range(9, len(losses)))
    assert e["loss_spike"] == pytest.approx(sum(window) / 10 / best)
    assert KoopmanMonitor(model, every=1, window=10, interval=1).step() is None


def test_tensorboard_has_an_extra_and_the_writer_says_so():
    """``writer=`` needs tensorboard, which the ``tensorboard`` extra installs."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    extras = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^tensorboard = \["tensorboard>=[\d.]+"\]$', extras, re.M)
    assert "kooptrain[tensorboard]" in KoopmanMonitor.__doc__


def test_mean_snapshots_fit_the_increments_of_block_means():
    """``snapshot="mean"``: an affine iteration's block means follow the same dynamics,
    ``every`` steps at a time, so the fitted eigenvalues are the step's to the ``every``."""
    A, c = linear_system([0.9, 0.7, 0.5, -0.3])
    X = run(A, c, torch.ones(4, dtype=torch.float64), 200)
    mon = monitored(X, every=3, window=8, snapshot="mean")
    lam = sorted(math.hypot(*z) for z in mon.record["entries"][0]["layers"][""]["eigenvalues"])
    assert lam == pytest.approx(sorted(abs(v) ** 3 for v in (0.9, 0.7, 0.5, -0.3)), rel=1e-4)
    assert mon.record["settings"]["snapshot"] == "mean"
