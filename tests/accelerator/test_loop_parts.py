"""The accelerator's parts at their edges: the lr clock, the search with and without a
screen, the payoff schedule's accounting, the settings' state check. Each test holds one
rule to a known answer."""

import math

import pytest
import torch
from torch import nn

from kooptrain import KoopmanAccelerator
from kooptrain._attempt import Attempt
from kooptrain._clock import LRClock
from kooptrain._schedule import PayoffSchedule
from kooptrain._settings import check_state, plain
from kooptrain.accelerator import AcceleratorSettings
from kooptrain.recorder import warp


def problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g)
    return model, x, torch.sin(x[:, :1]) * x[:, 1:2]


def sgd_step(model, opt, x, y):
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


# ------------------------------------------------------------------ lr clock
def test_the_lr_clock_refuses_what_has_no_learning_rate():
    with pytest.raises(TypeError, match="learning-rate time needs a torch.optim.Optimizer "
                                        r"\(it reads param_groups\[0\]\['lr'\]\), got object"):
        LRClock(object(), window=4)


def test_the_lr_clock_starts_and_resets_empty_and_counts_nothing_before_a_snapshot():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    clock = LRClock(opt, window=4)
    assert clock.state_dict() == {"spacing": [], "running": 0.0, "started": False}
    for recorded in (False, False, True, False, True):  # two steps before the first snapshot
        clock.tick(recorded)
    assert clock.spacing == (1.0,)  # only the interval between the two snapshots
    clock.reset()
    assert clock.state_dict() == {"spacing": [], "running": 0.0, "started": False}
    clock.tick(True)
    assert clock.spacing == ()


# -------------------------------------------------------------------- search
def ready(**options):
    """An accelerator whose next step attempts a jump."""
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = KoopmanAccelerator(model, opt, **{"every": 1, "window": 4, "horizons": (2, 4),
                                            **options})
    for _ in range(3):
        sgd_step(model, opt, x, y)
        acc.step()
    sgd_step(model, opt, x, y)
    return model, opt, acc, x, y


def scripted(values):
    it = iter(values)
    return lambda: next(it)


@pytest.mark.parametrize("where", [0, 1], ids=["current weights", "a candidate"])
def test_a_screen_that_returns_a_vector_is_named_in_the_error(where):
    _, _, acc, _, _ = ready()
    calls = []

    def screen():
        calls.append(1)
        return torch.ones(3) if len(calls) == where + 1 else 1.0 / len(calls)

    with pytest.raises(ValueError, match=r"^screen\(\) must return a scalar loss; got a "
                                         r"tensor of shape \(3,\)"):
        acc.step(lambda: 1.0, screen=screen)


@pytest.mark.parametrize("screen, closure, afresh, after, reason", [
    ([math.nan], [], True, None, "non-finite screened loss before the jump: window skipped"),
    ([1.0, 2.0, 3.0], [], False, 2.0, "no candidate improved the screened loss"),
    ([1.0, math.nan], [], False, None, "no candidate improved the screened loss"),
    ([1.0, 0.5, 0.7], [math.nan], True, 0.5, "non-finite loss before the jump: window skipped"),
    ([1.0, 0.5, 0.7], [1.0, math.nan], False, 0.5,
     "the screened candidate's loss is not finite"),
    ([1.0, 0.5, 0.7], [1.0, 1.0], False, 0.5,
     "the closure did not confirm the screened candidate"),
])
def test_the_screen_path_says_why_and_starts_afresh_only_after_a_non_finite_baseline(
        screen, closure, afresh, after, reason):
    model, _, acc, _, _ = ready()
    before = [p.detach().clone() for p in model.parameters()]
    entry = acc.step(scripted(closure), screen=scripted(screen))
    assert entry["reason"] == reason and not entry["accepted"]
    assert acc.recorder.n_snapshots == (0 if afresh else 4)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert entry["screen_after"] == after


def test_a_non_finite_prediction_is_never_judged():
    _, _, acc, _, _ = ready(predictor=lambda W: torch.full_like(W[..., -1], math.inf))
    calls = []
    entry = acc.step(lambda: calls.append(1) or 1.0)
    assert entry["reason"] == "non-finite prediction" and calls == [1]  # the current only


def warmed_up(**options):
    """Four steps of a linear warm-up, the accelerator in lr time: the intervals differ."""
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (t + 1) / 10)
    acc = KoopmanAccelerator(model, opt, every=1, window=4, clock="lr", **options)
    return model, opt, sched, acc, x, y


def test_in_lr_time_a_custom_predictor_gets_the_window_resampled_to_lr_time():
    seen = []

    def mine(W):
        seen.append((W.clone(), acc.recorder.snapshots()[0].clone(), acc.spacing))
        return W[..., -1]

    model, opt, sched, acc, x, y = warmed_up(predictor=mine)
    for _ in range(4):
        sgd_step(model, opt, x, y)
        sched.step()
        acc.step(lambda: 1.0)
    (W, raw, spacing), = seen
    assert len(set(spacing)) == 3  # uneven: the warm-up
    assert torch.equal(W, warp(raw, spacing).to(W.dtype)) and not torch.equal(W, raw)


def test_in_lr_time_the_operator_is_fitted_to_the_resampled_window():
    judged, want = [], []

    def closure():
        flat = torch.cat([p.detach().ravel() for p in model.parameters()])
        if not judged:  # the current weights: the window is still whole; fit it by hand
            engine = acc.settings.engine_options()
            for spacing in (acc.spacing, None):  # lr time, then step time
                pred = acc.recorder.fit(spacing=spacing, **engine).predict(snapshots=2)
                want.append(torch.cat([pred[n].ravel() for n, _ in model.named_parameters()]))
        judged.append(flat.clone())
        return 1.0 if len(judged) == 1 else 0.5

    model, opt, sched, acc, x, y = warmed_up(horizons=(2,))
    for _ in range(4):
        sgd_step(model, opt, x, y)
        sched.step()
        acc.step(closure)
    lr_time, step_time = want
    assert len(judged) == 2 and torch.equal(judged[1], lr_time.to(judged[1].dtype))
    assert not torch.allclose(lr_time, step_time)  # the warm-up makes the two clocks differ


# ------------------------------------------------------------- payoff schedule
def settle(s, step, **fields):
    a = Attempt(step=step, **fields)
    s.settle(step, a)
    return a


def test_the_payoff_schedule_accounts_for_every_kind_of_attempt():
    s = PayoffSchedule(base=10, eval_cost=1.0, max_overhead=0.5, max_backoff=4)
    # a kept jump without a horizon (a custom predictor) is worth an unbounded horizon
    a = settle(s, 10, accepted=True, loss_before=1.0, loss_after=0.5, evaluations=2)
    assert a.gain_steps == math.inf and s.interval == 10
    # the next rate is measured from the loss the kept jump reached (0.5), not from before
    a = settle(s, 20, accepted=True, loss_before=0.25, loss_after=0.125, horizon=64,
               evaluations=2)
    assert a.gain_steps == pytest.approx(10.0)  # log 2 per 10 steps, one log 2 gained
    # a screened-out attempt has no loss before: it costs, gains nothing, moves no baseline
    a = settle(s, 30, loss_before=None, evaluations=0)
    assert (a.gain_steps, a.cost_steps, s.interval) == (0.0, 0.0, 20)
    a = settle(s, 50, accepted=True, loss_before=0.0625, loss_after=0.03125, horizon=64,
               evaluations=2)
    assert a.gain_steps == pytest.approx(30.0)  # the fall since step 20, not since 30


def test_a_kept_jump_after_a_flat_loss_gains_its_horizon():
    s = PayoffSchedule(base=10, eval_cost=1.0, max_overhead=0.5)
    settle(s, 10, loss_before=2.0, evaluations=2)  # rejected: the baseline is 2.0
    a = settle(s, 20, accepted=True, loss_before=2.0, loss_after=1.0, horizon=64,
               evaluations=2)
    assert a.gain_steps == 64.0  # no measured fall: the horizon, not a division by zero


def test_large_and_zero_losses_are_measured_in_their_own_scale():
    s = PayoffSchedule(base=10, eval_cost=1.0, max_overhead=0.5)
    settle(s, 10, loss_before=4e6, evaluations=2)
    a = settle(s, 20, accepted=True, loss_before=2e6, loss_after=1e6, horizon=64,
               evaluations=2)
    assert a.gain_steps == pytest.approx(10.0)  # losses far above the step count
    s = PayoffSchedule(base=10, eval_cost=1.0, max_overhead=0.5)
    settle(s, 10, loss_before=2.0, evaluations=2)
    a = settle(s, 20, accepted=True, loss_before=1.0, loss_after=0.0, horizon=64,
               evaluations=2)
    assert a.gain_steps == pytest.approx(10.0)  # a zero loss: linear, no log(0)


def test_a_fresh_payoff_schedule_round_trips():
    s = PayoffSchedule(base=10, eval_cost=1.0, max_overhead=0.5)
    assert s.state_dict() == {"interval": 10, "next_attempt": 0, "eval_cost": 1.0,
                              "end": None}
    t = PayoffSchedule(base=10, eval_cost=1.0, max_overhead=0.5)
    t.load_state_dict(s.state_dict())
    a = settle(t, 10, accepted=True, loss_before=1.0, loss_after=0.5, horizon=8,
               evaluations=1)
    assert a.gain_steps == 8.0


def test_a_measured_eval_cost_is_saved_and_an_unmeasured_one_stays_unmeasured():
    measured = PayoffSchedule(base=10, eval_cost=None, max_overhead=0.5)
    measured.eval_cost = 0.75  # what eval_cost="flops" sets after the first attempt
    t = PayoffSchedule(base=10, eval_cost=None, max_overhead=0.5)
    t.load_state_dict(measured.state_dict())
    assert t.eval_cost == 0.75
    u = PayoffSchedule(base=10, eval_cost=None, max_overhead=0.5)
    u.load_state_dict(PayoffSchedule(base=10, eval_cost=None, max_overhead=0.5).state_dict())
    assert u.eval_cost is None
    old = {"interval": 10, "next_attempt": 0, "end": None}  # saved before 0.3: no cost
    v = PayoffSchedule(base=10, eval_cost=2.0, max_overhead=0.5)
    v.load_state_dict(old)
    assert v.eval_cost == 2.0


def test_a_payoff_schedule_saved_between_attempts_measures_the_next_gain_alike():
    """The loss the last attempt left (the baseline of the next gain) is saved and loaded:
    the loaded schedule prices the next kept jump as the one that went on."""
    s = PayoffSchedule(base=10, eval_cost=1.0, max_overhead=0.5)
    settle(s, 10, loss_before=2.0, evaluations=2)
    assert s.state_dict()["end"] == [10, 2.0]
    t = PayoffSchedule(base=10, eval_cost=1.0, max_overhead=0.5)
    t.load_state_dict(s.state_dict())
    a, b = (settle(x, 20, accepted=True, loss_before=1.0, loss_after=0.5, horizon=64,
                   evaluations=2) for x in (s, t))
    assert a.gain_steps == b.gain_steps == pytest.approx(10.0)  # log 2 per 10 steps
    assert t.state_dict() == s.state_dict()


# ---------------------------------------------------------------- state check
def test_the_state_check_names_what_it_got_and_what_differs():
    s = AcceleratorSettings(window=5)
    sig = s.signature()
    with pytest.raises(ValueError, match=r"^not a KoopmanAccelerator state_dict: its 'kind' "
                                         r"is 'list', and it has no version-1 'signature'"):
        check_state("kooptrain.KoopmanAccelerator", 2, s, [1, 2])
    with pytest.raises(ValueError, match=r"its 'kind' is 'kooptrain.KoopmanMonitor'"):
        check_state("kooptrain.KoopmanAccelerator", 2, s, {"kind": "kooptrain.KoopmanMonitor"})
    base = {"kind": "kooptrain.KoopmanAccelerator", "version": 2}
    with pytest.raises(ValueError, match=r"differing: window \(saved 'nothing', here 5\); "):
        check_state("kooptrain.KoopmanAccelerator", 2, s, base)  # no settings at all
    no_rank = {k: v for k, v in sig.items() if k != "rank"}  # rank is None here
    with pytest.raises(ValueError, match=r"differing: rank \(saved 'nothing', here None\)\. "
                                         r"Resume .* nothing was loaded\.$"):
        check_state("kooptrain.KoopmanAccelerator", 2, s, {**base, "settings": no_rank})
    check_state("kooptrain.KoopmanAccelerator", 2, s, {**base, "settings": sig})


def test_settings_become_plain_data_that_survive_a_safe_load():
    value = {"horizons": (2, 4), 3: {"dtype": torch.float32, "device": torch.device("cpu")},
             "predictor": test_settings_become_plain_data_that_survive_a_safe_load}
    assert plain(value) == {"horizons": [2, 4], "3": {"dtype": "torch.float32",
                                                       "device": "cpu"},
                            "predictor": "callable "
                            "test_settings_become_plain_data_that_survive_a_safe_load"}
