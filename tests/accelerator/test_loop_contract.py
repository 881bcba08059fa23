"""One contract for the classes that ride a training loop (the accelerator, the recorder,
the monitor): settings as frozen data from which the checkpoint check and ``repr`` come,
versioned states that also read kooptrain 0.1's, one cadence and one lr clock, public
counters, horizons in optimizer steps, and deprecations instead of breakage."""

import dataclasses
import math
import platform
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from kooptrain import Forecast, KoopmanAccelerator, KoopmanMonitor, SnapshotRecorder
from kooptrain.accelerator import AcceleratorSettings

V1 = Path(__file__).parents[1] / "data" / "v1_states.pt"


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g)
    return model, x, torch.sin(x[:, :1]) * x[:, 1:2]


def trained(steps=12, **options):
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = KoopmanAccelerator(model, opt, **{"every": 1, "window": 5, **options})
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        acc.step(lambda: float(nn.functional.mse_loss(model(x), y).detach()))
    return model, opt, acc


# -------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("field, value", [("margin", 0.2), ("interval", 7),
                                          ("max_backoff", 2)])
def test_a_checkpoint_under_another_margin_interval_or_backoff_is_refused(field, value):
    """At 0.1 these three were accepted without a word."""
    model, opt, acc = trained()
    state = acc.state_dict()
    other = KoopmanAccelerator(model, opt, every=1, window=5, **{field: value})
    with pytest.raises(ValueError, match=rf"differing: {field} \(saved .*, here {value}\)"):
        other.load_state_dict(state)
    # nothing was loaded
    assert (other.step_count, other.jumps_tried, other.recorder.n_snapshots) == (0, 0, 0)


OTHER_VALUES = {"window": 6, "every": 2, "granularity": "layer", "observables": "identity",
                "stabilize": None, "rank": 2, "predictor": "linear", "horizons": (2, 4),
                "fixed_point": True, "max_residual": 0.5, "interval": 9, "max_backoff": 3,
                "max_overhead": 0.1, "eval_cost": 1.0, "optimizer_state": "momentum",
                "margin": 0.05, "clock": "lr", "snapshot": "last",
                "bn_refresh": "kept", "window_dtype": torch.bfloat16}


def test_every_setting_that_differs_is_refused_by_name_and_max_history_is_warned():
    fields = [f.name for f in dataclasses.fields(AcceleratorSettings)]
    # none forgotten (chunk needs granularity="quasi-node": its own test, below)
    assert sorted(OTHER_VALUES) == sorted(set(fields) - {"max_history", "chunk"})
    model, opt, acc = trained()
    state = acc.state_dict()
    for name, value in OTHER_VALUES.items():
        other = KoopmanAccelerator(model, opt, **{"every": 1, "window": 5, name: value})
        with pytest.raises(ValueError, match=rf"differing: {name} \("):
            other.load_state_dict(state)
    longer = KoopmanAccelerator(model, opt, every=1, window=5, max_history=3)
    with pytest.warns(UserWarning, match="max_history was 10000 .* resuming with 3"):
        longer.load_state_dict(state)
    assert longer.jumps_tried == acc.jumps_tried and len(longer.history) <= 3


def test_quasi_node_blocks_take_a_chunk_that_a_checkpoint_keeps():
    """granularity="quasi-node" splits each node into chunks of ``chunk`` weights, in the
    accelerator and the monitor as in the recorder; a checkpoint under another chunk is
    refused by name, and a state saved before ``chunk`` existed loads as ``None``."""
    import numpy as np

    model, opt, acc = trained(granularity="quasi-node", chunk=np.int64(3))
    assert type(acc.settings.chunk) is int  # kept as a Python int, as every setting
    # Linear(3, 6): nodes of 4 -> one chunk of 3 and one of 1; Linear(6, 1): 7 -> 3, 3, 1
    assert [(g.size, g.n_blocks) for g in acc.recorder.partition.groups] == [(1, 7), (3, 8)]
    assert acc.jumps_tried >= 1 and acc.chunk == 3
    other = KoopmanAccelerator(model, opt, every=1, window=5, granularity="quasi-node",
                               chunk=2)
    with pytest.raises(ValueError, match=r"differing: chunk \(saved 3, here 2\)"):
        other.load_state_dict(acc.state_dict())
    with pytest.raises(ValueError, match=r"needs chunk=q, a positive int \(got None\)"):
        KoopmanAccelerator(model, opt, granularity="quasi-node")
    with pytest.raises(ValueError, match="chunk is only used with granularity='quasi-node'"):
        KoopmanAccelerator(model, opt, chunk=2)
    _, _, plain_acc = trained()
    state = plain_acc.state_dict()
    del state["settings"]["chunk"]  # as 0.2.0 saved it
    KoopmanAccelerator(model, opt, every=1, window=5).load_state_dict(state)
    monitor = KoopmanMonitor(model, granularity="quasi-node", chunk=3, every=1, window=4)
    assert [(g.size, g.n_blocks) for g in monitor.recorder.partition.groups] == [(1, 7),
                                                                                (3, 8)]
    state = KoopmanMonitor(model).state_dict()
    del state["settings"]["chunk"]
    KoopmanMonitor(model).load_state_dict(state)


def test_the_state_is_versioned_and_holds_each_value_once():
    _, _, acc = trained()
    state = acc.state_dict()
    assert (state["kind"], state["version"]) == ("kooptrain.KoopmanAccelerator", 2)
    assert state["settings"] == acc.settings.signature()
    assert "interval" not in state and "next_attempt" not in state  # only in "schedule"
    assert set(state["schedule"]) == {"interval", "next_attempt"}
    rec = acc.recorder.state_dict()
    assert (rec["kind"], rec["version"]) == ("kooptrain.SnapshotRecorder", 2)


def test_repr_comes_from_the_settings():
    _, _, acc = trained(steps=0, margin=0.05, predictor=lambda W: W[..., -1])
    assert repr(acc) == "KoopmanAccelerator(window=5, every=1, predictor=" \
        "test_repr_comes_from_the_settings.<locals>.<lambda>, margin=0.05)"
    model, _, _ = problem()
    assert repr(SnapshotRecorder(model, window=8)) == "SnapshotRecorder(window=8)"
    assert repr(KoopmanMonitor(model, every=5)) == "KoopmanMonitor(every=5)"
    assert repr(KoopmanMonitor(model)) == "KoopmanMonitor()"


def test_settings_are_read_only_attributes():
    _, _, acc = trained(steps=0)
    assert (acc.margin, acc.window, acc.horizons) == (0.01, 5, [2, 4, 8, 16, 32, 64])
    with pytest.raises(AttributeError):
        acc.margin = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        acc.settings.margin = 0.5
    with pytest.raises(TypeError, match="unknown option.*'margn'"):
        KoopmanAccelerator(*problem()[:1], torch.optim.SGD(problem()[0].parameters()),
                           margn=0.1)


# ------------------------------------------------------------- 0.1 states
@pytest.fixture(scope="module")
def v1():
    return torch.load(V1, weights_only=False)


def cpu() -> tuple[str, str]:
    """The CPU's vendor and torch's kernel level, e.g. ``("AuthenticAMD", "AVX512")``."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    vendor = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("vendor_id")),
                  platform.processor())
    return vendor, torch.backends.cpu.get_cpu_capability()


# The CPU that ran make_v1_states.py. There 0.1's runs go on bit for bit. On another one
# float32 kernels round differently (Intel and AMD run different MKL code paths), and 60
# steps of training with jumps of up to 64 steps carry that to ~1e-4 of a weight (measured
# on an Intel Xeon: 4.5e-4 relative at most, losses 2e-5, instabilities 4e-4); the
# decisions, which are discrete, must still be 0.1's exactly.
FIXTURE_CPU = ("AuthenticAMD", "AVX512")
BIT_FOR_BIT = cpu() == FIXTURE_CPU


def same_numbers(a, b, rtol: float, atol: float = 0.0) -> None:
    """``a`` is ``b`` bit for bit on the fixture's CPU, and within rounding elsewhere."""
    if BIT_FOR_BIT:
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    else:
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=rtol,
                                   atol=atol)


OPTIONS = {"steps": {}, "lr": {"clock": "lr"}, "controller": {"max_overhead": 0.5}}
# what 0.1 (and 0.2.0) did without being asked: the weights at the recorded step, first
# moments zeroed after a kept jump (the defaults since are snapshot="mean", state "keep")
V01 = {"snapshot": "last", "optimizer_state": "momentum"}


def go_on(saved, name, steps, save_at):
    """Load 0.1's states into this version at ``save_at`` and train to ``steps``."""
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 20))
    acc = KoopmanAccelerator(model, opt, every=2, window=5, horizons=(2, 4, 8),
                             **OPTIONS[name], **V01)
    rec = SnapshotRecorder(model, granularity="node", window=7, every=3)
    mon = KoopmanMonitor(model, every=2, window=5, optimizer=opt if name == "lr" else None)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    with pytest.warns(UserWarning, match="saved by kooptrain 0.1.*margin, interval"):
        acc.load_state_dict(saved["acc"])
    rec.load_state_dict(saved["rec"])
    mon.load_state_dict(saved["mon"])

    def closure():
        with torch.no_grad():
            return float(nn.functional.mse_loss(model(x), y))

    for _ in range(save_at, steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
        acc.step(closure)
        rec.record()
        mon.step(loss=closure())
    return model, acc, rec, mon


@pytest.mark.parametrize("save_at", [0, 1, 2, 9, 27])
@pytest.mark.parametrize("name", ["steps", "lr", "controller"])
def test_a_kooptrain_0_1_state_goes_on_as_0_1_did(v1, name, save_at):
    """Saved before the first step, early in the first window, just after a jump (no
    snapshot held), inside the warm-up and after it; in step time, in lr time and with the
    payoff controller."""
    old = v1["runs"][name]
    model, acc, rec, mon = go_on(old["saved"][save_at], name, v1["steps"], save_at)
    assert v1["version"] == "0.1.0" and sum(h["accepted"] for h in old["history"]) >= 1
    for p, q in zip(model.parameters(), old["weights"], strict=True):
        same_numbers(p.detach(), q, rtol=2e-3, atol=2e-4)  # the same jumps
    keys = ("step", "horizon", "accepted", "evaluations", "reason")  # the decisions
    assert [{k: h[k] for k in keys} for h in acc.history] == \
        [{k: h[k] for k in keys} for h in old["history"]]
    for k in ("loss_before", "loss_after"):
        same_numbers([h[k] for h in acc.history], [h[k] for h in old["history"]], rtol=2e-4)
    if name == "controller":
        same_numbers([h["gain_steps"] for h in acc.history],
                     [h["gain_steps"] for h in old["history"]], rtol=2e-3)
    for a, b in zip(rec.snapshots(), old["snapshots"], strict=True):
        same_numbers(a, b, rtol=2e-3, atol=2e-4)
    new, was = mon.record["entries"], old["record"]["entries"]
    assert [e["step"] for e in new] == [e["step"] for e in was]
    # lr time sums each interval afresh where 0.1 took differences of a running sum
    rel = 1e-6 if BIT_FOR_BIT else 4e-3
    for e, f in zip(new, was, strict=True):
        if f["instability_raw"] is None:  # unbounded
            assert e["instability_raw"] is None
        else:
            assert e["instability_raw"] == pytest.approx(f["instability_raw"], rel=rel)


def test_a_0_1_schedule_saved_flat_by_the_first_0_1_states_loads(v1):
    saved = v1["runs"]["steps"]["saved"][27]
    state = {k: v for k, v in saved["acc"].items() if k != "schedule"}  # interval, next_attempt
    model, acc, _, _ = go_on({**saved, "acc": state}, "steps", v1["steps"], 27)
    for p, q in zip(model.parameters(), v1["runs"]["steps"]["weights"], strict=True):
        same_numbers(p.detach(), q, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("name, other, differ", [
    ("lr", "steps", "['time']: saved ['lr'], here not set"),
    ("steps", "lr", "['time']: saved [None], here ['lr']"),
    ("controller", "steps", "['eval_cost', 'max_overhead']: saved [0.333"),
    ("steps", "controller", "['eval_cost', 'max_overhead']: saved [None, None]")])
def test_a_0_1_state_of_another_clock_or_controller_is_refused(v1, name, other, differ):
    """Only the clock or the controller differs (0.1's other settings are given): the
    setting 0.1 recorded only when it was on is named either way round."""
    saved = v1["runs"][name]["saved"][27]["acc"]
    model, _, _ = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = KoopmanAccelerator(model, opt, every=2, window=5, horizons=(2, 4, 8),
                             **OPTIONS[other], **V01)
    with pytest.raises(ValueError, match="KoopmanAccelerator state was saved with different "
                       + re.escape(differ)):
        acc.load_state_dict(saved)
    assert acc.recorder.n_snapshots == 0


def test_a_0_1_state_saved_under_other_settings_is_still_refused(v1):
    saved = v1["runs"]["steps"]["saved"][27]
    model, _, _ = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="window"):
        KoopmanAccelerator(model, opt, every=2, window=6,
                           horizons=(2, 4, 8)).load_state_dict(saved["acc"])
    with pytest.raises(ValueError, match="every"):
        KoopmanMonitor(model, every=3, window=5).load_state_dict(saved["mon"])


# ---------------------------------------------------------- one loop contract
def test_every_class_counts_optimizer_steps_in_public_and_shares_the_cadence():
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = KoopmanAccelerator(model, opt, every=3, window=4, snapshot="last")
    rec = SnapshotRecorder(model, every=3, window=4)
    mon = KoopmanMonitor(model, every=3, window=4)
    stored = {"acc": [], "rec": [], "mon": []}
    for step in range(1, 11):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        acc.step()
        stored["rec"].append(rec.record())
        mon.step()
        stored["acc"].append(acc.recorder.n_snapshots)
        stored["mon"].append(mon.recorder.n_snapshots)
        assert acc.step_count == rec.step_count == mon.step_count == step
    # snapshots at steps 1, 4, 7, 10 in all three
    assert [i + 1 for i, r in enumerate(stored["rec"]) if r] == [1, 4, 7, 10]
    assert stored["acc"] == stored["mon"] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]


def test_the_default_mean_snapshots_keep_the_cadence_and_end_each_block():
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = KoopmanAccelerator(model, opt, every=3, window=4)  # snapshot="mean"
    counts = []
    for step in range(1, 11):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        acc.step()
        counts.append(acc.recorder.n_snapshots)
        assert acc.step_count == step
    # the same every: one snapshot per 3 steps, each stored at its block's last step
    assert counts == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3]


def test_the_accelerator_and_the_monitor_read_one_lr_clock():
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (t + 1) / 10)
    acc = KoopmanAccelerator(model, opt, every=2, window=4, clock="lr", snapshot="last")
    mon = KoopmanMonitor(model, every=2, window=4, optimizer=opt)
    for _ in range(9):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
        acc.step()
        mon.step()
    # intervals of two steps each; the steps 4..9 ran at lr 0.1 * (4..9) / 10
    assert acc.spacing == mon.spacing == pytest.approx((0.09, 0.13, 0.17))


def test_history_entries_have_the_same_fields_in_every_mode():
    runs = [trained(steps=30), trained(steps=30, max_overhead=0.1),
            trained(steps=30, predictor="average")]
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    screened = KoopmanAccelerator(model, opt, every=1, window=5)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        screened.step(lambda: 1.0, screen=lambda: float(
            nn.functional.mse_loss(model(x[:8]), y[:8]).detach()))
    keys = {tuple(h) for _, _, acc in runs for h in acc.history} | \
        {tuple(h) for h in screened.history}
    assert len(keys) == 1 and "fitted" in next(iter(keys))
    assert all(h["fitted"] for _, _, acc in runs for h in acc.history)


def test_forecast_horizons_are_optimizer_steps_and_snapshots_say_so():
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = SnapshotRecorder(model, every=3, window=6)
    for _ in range(16):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        rec.record()
    f = rec.fit(observables="affine")
    a, b = f.predict(steps=[30, 60]), f.predict(snapshots=[10, 20])
    assert all(torch.equal(a[n], b[n]) for n in a)
    inf = f.predict(steps=math.inf)
    assert all(torch.equal(inf[n], f.predict(snapshots=math.inf)[n]) for n in inf)
    with pytest.raises(ValueError, match="multiples of every=3"):
        f.predict(steps=10)
    with pytest.raises(TypeError, match="exactly one horizon"):
        f.predict(steps=30, snapshots=10)
    with pytest.raises(TypeError, match="exactly one horizon"):
        f.predict()
    with warnings.catch_warnings():  # every=1: positional T is steps, no ambiguity
        warnings.simplefilter("error")
        Forecast(f.partition, f.operators).predict(5)


# ------------------------------------------------------------ deprecations
def test_the_old_names_warn_and_still_work():
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(DeprecationWarning, match=r"time=\.\.\.\) .* use clock="):
        acc = KoopmanAccelerator(model, opt, every=1, window=4, time="lr")
    assert acc.clock == "lr"
    with pytest.warns(DeprecationWarning, match="steps_saved .* use steps_jumped"):
        assert acc.steps_saved == acc.steps_jumped
    with pytest.warns(DeprecationWarning, match=r"\.time .* use clock"):
        assert acc.time == "lr"
    with pytest.warns(DeprecationWarning, match="base_interval .* use interval"):
        assert acc.base_interval == acc.interval == 4
    with pytest.warns(DeprecationWarning, match="engine_options"):
        assert acc.engine_options["observables"] == "affine"
    with pytest.warns(DeprecationWarning, match=r"capacity=\.\.\.\) .* use window="):
        rec = SnapshotRecorder(model, capacity=6, every=2)
    with pytest.warns(DeprecationWarning, match="capacity .* use SnapshotRecorder.window"):
        assert rec.capacity == rec.window == 6
    for _ in range(12):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        rec.record()
    want = rec.fit().predict(snapshots=4)
    with pytest.warns(DeprecationWarning, match=r"SnapshotRecorder.predict\(T, \*\*options\) .* "
                      r"use rec.fit\(\*\*options\).predict\(steps=\.\.\.\) \(one fit"):
        old = rec.predict(4)
    with pytest.warns(DeprecationWarning, match=r"operators_ .* rec\.forecast_\.operators"):
        ops = rec.operators_
    with pytest.warns(DeprecationWarning, match=r"predict_from\(operators, T\) .* "
                      r"use rec.fit\(\*\*options\).predict\(steps=\.\.\.\)\.$"):
        old_from = rec.predict_from(ops, 4)
    with pytest.warns(DeprecationWarning,
                      match=r"predict\(T\) with every=2 .*predict\(snapshots=T\)"):
        positional = rec.forecast_.predict(4)  # still counts recorded steps, as in 0.1
    for n in want:
        assert torch.equal(old[n], want[n]) and torch.equal(old_from[n], want[n])
        assert torch.equal(positional[n], want[n])


def test_a_state_missing_an_entry_is_refused_by_name_not_filled_with_a_default():
    model, _, acc = trained()
    mon = KoopmanMonitor(model, every=1, window=4)
    for obj in (acc, mon):
        state = obj.state_dict()
        del state["recorder"]
        with pytest.raises(ValueError, match=r"lacks \['recorder'\]; nothing was loaded"):
            obj.load_state_dict(state)


def test_help_shows_every_setting_by_name_with_its_default():
    import inspect

    params = list(inspect.signature(KoopmanAccelerator).parameters.values())
    names = [p.name for p in params]
    fields = dataclasses.fields(AcceleratorSettings)
    assert names == ["model", "optimizer", *[f.name for f in fields], "bn_loader", "writer",
                     "process_group"]
    assert [p.kind for p in params[:2]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2
    assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in params[2:])
    assert [p.default for p in params[2:-3]] == [f.default for f in fields]
    assert [p.default for p in params[-3:]] == [None] * 3


@pytest.mark.parametrize("save_at", [0, 1, 2, 9, 27])
def test_a_0_1_lr_clock_is_read_as_this_version_would_have_kept_it(v1, save_at):
    """The migrated clocks of the accelerator and the monitor equal those of this version
    run from the start to the same step (the accelerator's bit for bit; the monitor's to
    rounding, as 0.1 kept running sums)."""
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 20))
    fresh = KoopmanAccelerator(model, opt, every=2, window=5, horizons=(2, 4, 8), clock="lr",
                               **V01)
    mon = KoopmanMonitor(model, every=2, window=5, optimizer=opt)

    def closure():
        with torch.no_grad():
            return float(nn.functional.mse_loss(model(x), y))

    for _ in range(save_at):
        sgd_step_and_schedule(model, opt, sched, x, y)
        fresh.step(closure)
        mon.step(loss=closure())
    saved = v1["runs"]["lr"]["saved"][save_at]
    model2, _, _ = problem()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    acc2 = KoopmanAccelerator(model2, opt2, every=2, window=5, horizons=(2, 4, 8), clock="lr",
                              **V01)
    mon2 = KoopmanMonitor(model2, every=2, window=5, optimizer=opt2)
    with pytest.warns(UserWarning, match="saved by kooptrain 0.1"):
        acc2.load_state_dict(saved["acc"])
    mon2.load_state_dict(saved["mon"])
    assert acc2.state_dict()["lr_clock"] == fresh.state_dict()["lr_clock"]
    a, b = mon2.state_dict()["lr_clock"], mon.state_dict()["lr_clock"]
    assert a["started"] == b["started"]
    assert a["spacing"] == pytest.approx(b["spacing"], rel=1e-12)
    assert a["running"] == pytest.approx(b["running"], rel=1e-12)


def sgd_step_and_schedule(model, opt, sched, x, y):
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    sched.step()


def test_numpy_settings_are_kept_as_python_numbers_so_a_checkpoint_loads_safely():
    """Settings given as NumPy scalars (read from a config array, say) are stored as the
    Python numbers they equal: the state loads with ``torch.load(weights_only=True)``."""
    import io

    import numpy as np

    options = {"window": np.int64(5), "every": np.int64(2), "max_backoff": np.int64(3),
               "max_history": np.int64(40), "margin": np.float32(0.25),
               "eval_cost": np.float64(0.5), "max_overhead": 0.1, "horizons": (2, 4)}
    model, _, acc = trained(steps=12, **options)
    for name, kind in (("window", int), ("every", int), ("max_backoff", int),
                       ("max_history", int), ("margin", float), ("eval_cost", float)):
        assert type(getattr(acc.settings, name)) is kind, name
        assert getattr(acc.settings, name) == options[name]
    rec = SnapshotRecorder(model, window=np.int64(4), every=np.int64(3), chunk=2,
                           granularity="quasi-node")
    assert (type(rec.settings.window), type(rec.settings.every)) == (int, int)
    assert (rec.settings.window, rec.settings.every, rec.settings.chunk) == (4, 3, 2)
    for obj in (acc, rec):
        buf = io.BytesIO()
        torch.save(obj.state_dict(), buf)
        buf.seek(0)
        obj.load_state_dict(torch.load(buf, weights_only=True))


def test_a_forecast_counts_positional_horizons_as_its_cadence_says():
    model, x, y = problem()
    rec = SnapshotRecorder(model, every=2, window=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(8):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        rec.record()
    f = rec.fit()
    with pytest.warns(DeprecationWarning, match=re.escape(
            "Forecast.predict(T) with every=2 (T counts recorded steps) is deprecated")):
        old = f.predict(3)
    new = f.predict(snapshots=3)
    assert all(torch.equal(old[n], new[n]) for n in old)
    by_steps = f.predict(steps=[2, 6])
    assert all(torch.equal(by_steps[n], f.predict(snapshots=[1, 3])[n]) for n in by_steps)
    with warnings.catch_warnings():  # every=2 written explicitly, in steps: no warning
        warnings.simplefilter("error")
        Forecast(f.partition, f.operators, every=2).predict(steps=6)


def test_model_surgery_between_snapshots_is_caught_before_the_jump_writes():
    """``snapshot="last"``, every=3: snapshots at steps 1, 4, 7, 10, 13, 16; the first
    attempt (step 7) is rejected, which doubles the interval (4 -> 8), so the second falls
    due at step 15, a step that reads no snapshot. The accelerator checks the model itself
    before it fits there."""
    from kooptrain import ModelChangedError

    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = KoopmanAccelerator(model, opt, every=3, window=3, horizons=(3,), interval=4,
                             snapshot="last")
    calls = []

    def closure():  # every evaluation worse than the one before: every jump rejected
        calls.append(1)
        return float(len(calls))

    tried = []
    while acc.step_count < 14:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        entry = acc.step(closure)
        tried += [acc.step_count] if entry is not None else []
    assert tried == [7] and acc.jumps_accepted == 0
    model[0].weight.data = torch.zeros(2, 3)  # after the last snapshot (step 13)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelChangedError, match="'0.weight' changed from"):
        acc.step(closure)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert acc.jumps_tried == 1
