"""Fault matrix, rows 1-2: NaN/Inf in the weights or the loss mid-window skips that
window (said in ``history``), and a divergent prediction is rejected with the model
restored bit for bit. kooptrain never writes a non-finite value into the model."""

import math

import pytest
import torch
from faultkit import identical, loss_fn, problem, sgd_step, snapshot
from torch import nn

from kooptrain import KoopmanAccelerator, SnapshotRecorder


def test_nan_weights_mid_window_skip_the_window_without_touching_the_model():
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, window=4, horizons=(2, 4), every=1)
    calls = []

    def closure():
        calls.append(1)
        return loss_fn(model, x, y).detach()

    for step in range(4):
        sgd_step(model, opt, x, y)
        if step == 1:  # a diverged step: one weight becomes NaN, another +inf
            with torch.no_grad():
                model[0].weight[0, 0] = math.nan
                model[2].bias[0] = math.inf
        if step == 3:
            before = snapshot(model, opt)
        entry = acc.step(closure)
    assert entry is not None and entry["reason"] == \
        "non-finite weights in the window: window skipped"
    assert not entry["accepted"] and entry["evaluations"] == 0 and not calls
    assert identical(snapshot(model, opt), before)  # NaN where it was, nothing else moved
    assert acc.recorder.n_snapshots == 0  # the window starts afresh
    assert acc.history[-1] is entry


def test_after_a_skipped_window_training_recovers_and_jumps_again():
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    acc = KoopmanAccelerator(model, opt, window=5, horizons=(4, 8, 16), margin=0.0, every=1)
    closure = lambda: loss_fn(model, x, y).detach()  # noqa: E731
    for step in range(60):
        sgd_step(model, opt, x, y)
        if step == 2:
            with torch.no_grad():
                model[0].bias.fill_(math.nan)
        if step == 3:  # the user reloads the last good weights
            model.load_state_dict(good)
        acc.step(closure)
        for p in model.parameters():
            assert step in (2, 3) or bool(torch.isfinite(p).all())
    reasons = [h["reason"] for h in acc.history]
    assert reasons[0] == "non-finite weights in the window: window skipped"
    assert acc.jumps_accepted >= 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_before_the_jump_skips_the_window(bad):
    model, x, y = problem()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    acc = KoopmanAccelerator(model, opt, window=3, horizons=(2,), every=1)
    for _ in range(2):
        sgd_step(model, opt, x, y)
        acc.step(lambda: bad)
    sgd_step(model, opt, x, y)
    before = snapshot(model, opt)
    entry = acc.step(lambda: torch.tensor(bad))
    assert entry["reason"] == "non-finite loss before the jump: window skipped"
    assert entry["evaluations"] == 1 and acc.recorder.n_snapshots == 0
    assert identical(snapshot(model, opt), before)


def test_non_finite_candidate_losses_never_reach_the_model():
    """NaN or inf at some candidates: the best finite one may win, the rest never stay."""
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, window=4, horizons=(2, 4, 8), margin=0.0,
                             max_backoff=1, every=1)
    seq = iter([1.0, math.nan] * 3 + [1.0, 0.5, math.inf] * 20)
    for _ in range(40):
        sgd_step(model, opt, x, y)
        acc.step(lambda: next(seq))
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert any(h["accepted"] for h in acc.history)
    assert all(h["loss_after"] is None or math.isfinite(h["loss_after"])
               for h in acc.history if h["accepted"])


def growing_model(dtype=torch.float32):
    """One weight multiplied by 1.5 per step: a Koopman eigenvalue of 1.5."""
    grow = nn.Linear(1, 1, bias=False).to(dtype)
    with torch.no_grad():
        grow.weight.fill_(1.0)
    return grow


@pytest.mark.parametrize("dtype,horizon", [(torch.float32, 2**40), (torch.float16, 64),
                                           (torch.bfloat16, 2**20)])
def test_divergent_prediction_is_rejected_and_restored_bit_for_bit(dtype, horizon):
    grow = growing_model(dtype)
    opt = torch.optim.SGD(grow.parameters(), lr=0.0)
    acc = KoopmanAccelerator(grow, opt, window=4, observables="identity", stabilize=None,
                             horizons=(horizon,), margin=0.0, every=1)
    for _ in range(4):
        with torch.no_grad():
            grow.weight.mul_(1.5)
        before = snapshot(grow, opt)
        entry = acc.step(lambda: 1.0)
    assert entry is not None and not entry["accepted"]
    assert "overflow" in entry["reason"]
    assert entry["evaluations"] == 1  # the candidate never reached the closure
    assert identical(snapshot(grow, opt), before)


def test_recorder_predict_raises_on_overflow_in_the_parameter_dtype():
    """float16 weights growing 5% per step: finite in float64, inf in float16."""
    model = nn.Linear(3, 2).half()
    rec = SnapshotRecorder(model, granularity="node", window=10)
    with torch.no_grad():
        for _ in range(10):
            for p in model.parameters():
                p.mul_(1.05)
            rec.record()
    assert bool(torch.isfinite(rec.fit().predict(20)["weight"]).all())
    with pytest.raises(FloatingPointError, match=r"'weight' overflows its dtype torch.float16"):
        rec.fit().predict(400)  # 1.05**400 ~ 3e8 times the weights: past 65504
    with pytest.raises(ValueError, match=r"2\*\*62"):
        rec.fit().predict(10**30)
