"""Learning-rate time (``clock="lr"``, ``recorder.warp``) and the cheap screen with its
confirmation (``step(closure, screen=...)``): what they predict, what they cost in closure
calls, and the contracts (bit-identical rejections and resume, constant lr = step time)."""

import math

import pytest
import torch
from torch import nn

from kooptrain import KoopmanAccelerator, SnapshotRecorder
from kooptrain.recorder import warp


def flat(model):
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


# ----------------------------------------------------------------- warp
def test_warp_turns_a_constant_velocity_path_with_uneven_intervals_into_an_even_line():
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    spacing = (0.1, 0.3, 0.2, 0.5)  # summed lr per interval
    times = torch.tensor([0.0, *spacing], dtype=torch.float64).cumsum(0)
    X = (3.0 + times[None, None, :] * g[None, :, None])  # (1, 3, 5): x(tau) = x0 + tau g
    Y = warp(X, spacing)
    steps = Y[..., 1:] - Y[..., :-1]
    assert torch.allclose(steps, (0.5 * g)[None, :, None].expand_as(steps), atol=1e-12)
    assert torch.equal(Y[..., -1], X[..., -1])  # the last snapshot stays where it is


def test_warp_of_an_evenly_spaced_window_is_the_window_itself():
    X = torch.randn(2, 4, 5)
    assert warp(X, (0.25,) * 4) is X


@pytest.mark.parametrize("bad", [(1.0, 2.0), (1.0, 0.0, 1.0, 1.0), (1.0, math.nan, 1, 1)])
def test_warp_refuses_spacings_that_do_not_describe_the_window(bad):
    with pytest.raises(ValueError, match="spacing must hold 4 positive"):
        warp(torch.randn(1, 2, 5), bad)


def test_a_fit_in_lr_time_forecasts_gradient_flow_under_warm_up_exactly():
    """SGD on a linear loss moves by lr * g per step: in step time the increments grow
    with the warm-up; in lr time the window is a straight line, and the forecast of ``n``
    intervals is ``n`` times the last interval's lr-time along it."""
    model = nn.Linear(3, 1, bias=False)
    g = torch.tensor([[1.0, -2.0, 0.5]])
    rec = SnapshotRecorder(model, granularity="network", window=5, storage="window")
    lrs, spacing = [0.1, 0.2, 0.3, 0.4], []
    rec.record()
    for lr in lrs:
        with torch.no_grad():
            model.weight -= lr * g
        rec.record()
        spacing.append(lr)
    last = model.weight.detach().clone()
    pred = rec.fit(spacing=spacing, observables="affine", stabilize=None).predict(3)
    assert torch.allclose(pred["weight"].double(), (last - 3 * 0.4 * g).double(), atol=1e-5)
    steps_pred = rec.fit(observables="affine", stabilize=None).predict(3)["weight"]
    assert not torch.allclose(steps_pred, last - 3 * 0.4 * g, atol=1e-3)  # step time misses


def test_streaming_sums_cannot_be_fitted_in_another_clock():
    model = nn.Linear(3, 1)
    rec = SnapshotRecorder(model, granularity="network", window=4, storage="streaming")
    for _ in range(4):
        with torch.no_grad():
            model.weight += 0.1
        rec.record()
    with pytest.raises(ValueError, match="^spacing needs window storage: streaming sums "
                       "cannot be resampled.$"):
        rec.fit(spacing=(1.0, 2.0, 3.0))


# ------------------------------------------------------------- lr time
def linear_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    return model, x, y


def train(model, opt, acc, x, y, steps, sched=None, closure=None, screen=None):
    closure = closure or (lambda: float(nn.functional.mse_loss(model(x), y)))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()
        with torch.no_grad():
            acc.step(closure, screen=screen)


def test_lr_time_under_a_constant_lr_gives_the_jumps_of_step_time_bit_for_bit():
    runs = []
    for time in ("steps", "lr"):
        model, x, y = linear_problem()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        acc = KoopmanAccelerator(model, opt, every=2, window=5, clock=time)
        train(model, opt, acc, x, y, 120)
        runs.append((flat(model), [(e["step"], e["horizon"], e["loss_after"])
                                   for e in acc.history]))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert any(h is not None for _, h, _ in runs[0][1])  # jumps were taken


def test_lr_time_records_the_summed_lr_of_each_interval():
    model, x, y = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.01 * (s + 1))
    acc = KoopmanAccelerator(model, opt, every=3, window=4, clock="lr", snapshot="last")
    train(model, opt, acc, x, y, 10, sched, closure=lambda: 1.0)
    # snapshots after steps 1, 4, 7, 10; the lr read after step s is 0.01 (s + 1)
    expect = [sum(0.01 * (s + 1) for s in range(a, a + 3)) for a in (1, 4, 7)]
    assert list(acc.spacing) == pytest.approx(expect)


def test_lr_time_state_resumes_bit_identically_mid_window():
    def make():
        model, x, y = linear_problem()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
        return model, opt, sched, KoopmanAccelerator(model, opt, every=2, window=5,
                                                     clock="lr"), x, y

    model, opt, sched, acc, x, y = make()
    train(model, opt, acc, x, y, 37, sched)
    saved = ({k: v.clone() for k, v in model.state_dict().items()}, opt.state_dict(),
             sched.state_dict(), acc.state_dict())
    train(model, opt, acc, x, y, 60, sched)
    model2, opt2, sched2, acc2, _, _ = make()
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    acc2.load_state_dict(saved[3])
    train(model2, opt2, acc2, x, y, 60, sched2)
    assert torch.equal(flat(model), flat(model2))
    drop = lambda h: [{k: v for k, v in e.items()  # noqa: E731
                       if k not in ("seconds", "fit_seconds")} for e in h]
    assert drop(acc.history) == drop(acc2.history) and acc.jumps_accepted > 0


def test_a_state_saved_in_step_time_does_not_load_into_lr_time():
    model, x, y = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state = KoopmanAccelerator(model, opt).state_dict()
    with pytest.raises(ValueError):
        KoopmanAccelerator(model, opt, clock="lr").load_state_dict(state)
    with pytest.raises(ValueError, match="clock='wall'"):
        KoopmanAccelerator(model, opt, clock="wall")


# -------------------------------------------------------------- screen
def counting(fn):
    calls = []

    def closure():
        calls.append(1)
        return fn()
    return closure, calls


def ready(**kw):
    model, x, y = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, **({"every": 1, "window": 6, "horizons": (2, 4, 8)}
                                            | kw))
    train(model, opt, acc, x, y, 5, closure=lambda: 1.0)  # one short of the first attempt
    return model, opt, acc, x, y


def test_a_screened_out_attempt_costs_no_closure_call_and_changes_nothing():
    model, opt, acc, x, y = ready()
    before = flat(model)
    closure, calls = counting(lambda: 0.0)
    screen = iter([1.0, 1.5, 2.0]).__next__  # every candidate screens worse
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    after_step = flat(model)
    entry = acc.step(closure, screen=screen)
    assert not entry["accepted"] and calls == [] and entry["evaluations"] == 0
    assert entry["screen_evaluations"] == 3 and entry["loss_before"] is None
    assert entry["reason"] == "no candidate improved the screened loss"
    assert torch.equal(flat(model), after_step) and not torch.equal(before, after_step)


def test_the_closure_must_confirm_what_the_screen_found():
    model, opt, acc, x, y = ready()
    closure, calls = counting(iter([1.0, 1.2]).__next__)  # before, then the candidate: worse
    screen = iter([1.0, 0.5, 0.4, 0.3]).__next__  # the screen likes h=8 best
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    kept = flat(model)
    entry = acc.step(closure, screen=screen)
    assert len(calls) == 2 and entry["evaluations"] == 2 and entry["screen_evaluations"] == 4
    assert not entry["accepted"] and entry["screen_after"] == 0.3
    assert entry["reason"] == "the closure did not confirm the screened candidate"
    assert torch.equal(flat(model), kept)  # bit for bit


def test_a_confirmed_screen_keeps_the_screen_s_best_horizon_judged_at_the_right_weights():
    model, opt, acc, x, y = ready()
    seen = []

    def closure():
        seen.append(flat(model))
        return [1.0, 0.5][len(seen) - 1]
    screen = iter([1.0, 0.9, 0.4, 0.6]).__next__  # best at h=4, turns up at h=8
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    current = flat(model)
    entry = acc.step(closure, screen=screen)
    assert entry["accepted"] and entry["horizon"] == 4
    assert (entry["loss_before"], entry["loss_after"]) == (1.0, 0.5)
    assert torch.equal(seen[0], current)  # confirmed at the weights before the jump ...
    assert torch.equal(seen[1], flat(model))  # ... and at the kept candidate


def test_a_screen_that_is_not_callable_is_refused():
    model, opt, acc, x, y = ready()
    with pytest.raises(TypeError, match="screen must be a callable"):
        acc.step(lambda: 1.0, screen=0.5)
