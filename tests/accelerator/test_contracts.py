"""The accelerator's contracts in real training loops: BatchNorm buffers, gradient
accumulation, cadence, loop order, devices, compiled models."""

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from kooptrain import KoopmanAccelerator, Partition, SnapshotRecorder


def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g)
    return x, x[:, :1].sin()


def rising():
    """A closure whose every candidate is worse than the weights before: all rejected."""
    calls = []

    def closure():
        calls.append(1)
        return float(len(calls))
    return closure


def test_rejected_attempts_leave_batchnorm_buffers_as_they_were():
    model, (x, y) = bn_model(), data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    acc = KoopmanAccelerator(model, opt, window=5, horizons=(2, 4, 8), interval=5,
                             max_backoff=1, every=1)
    judge = rising()

    def closure():  # a train-mode forward pass updates the running statistics
        model(x)
        return judge()

    for _ in range(30):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        acc.step(closure)
    assert acc.jumps_tried >= 4 and acc.jumps_accepted == 0
    assert int(model[1].num_batches_tracked) == 30  # only the 30 training forward passes
    reference = bn_model()  # the same training without the accelerator
    ropt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    for _ in range(30):
        ropt.zero_grad()
        nn.functional.mse_loss(reference(x), y).backward()
        ropt.step()
    for a, b in zip(model.buffers(), reference.buffers(), strict=True):
        assert torch.equal(a, b)


def test_without_bn_loader_an_accepted_jump_keeps_the_statistics_of_before():
    model, (x, y) = bn_model(), data()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    acc = KoopmanAccelerator(model, opt, window=3, horizons=(2, 4), every=1)
    calls = []

    def closure():
        model(x)  # train mode: would move the running statistics
        calls.append(1)
        return 1.0 / len(calls)  # every candidate better: accepted

    for _ in range(2):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        acc.step(closure)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    before = [b.clone() for b in model.buffers()]
    entry = acc.step(closure)
    assert entry["accepted"]
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), before, strict=True))


def test_with_bn_loader_every_judged_point_has_its_own_statistics():
    model, (x, y) = bn_model(), data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    acc = KoopmanAccelerator(model, opt, window=4, horizons=(2, 4, 8), bn_loader=[(x,)], every=1)
    seen = []

    def closure():
        with torch.no_grad():
            seen.append(torch.allclose(model[1].running_mean, model[0](x).mean(0),
                                       atol=1e-6))
        return float(len(seen)) if len(seen) > 1 else 10.0  # first candidate best
    for _ in range(4):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        entry = acc.step(closure)
    assert entry is not None and entry["evaluations"] >= 3
    assert all(seen)  # the current weights and every candidate: statistics of their own
    # the accepted weights keep statistics of their own, too
    assert entry["accepted"]
    torch.testing.assert_close(model[1].running_mean, model[0](x).mean(0).detach(),
                               atol=1e-6, rtol=0)


def train_twice_per_step(acc, model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        acc.step(closure=lambda: nn.functional.mse_loss(model(x), y).detach())
        acc.step(closure=lambda: nn.functional.mse_loss(model(x), y).detach())


def test_calling_step_twice_per_optimizer_step_warns_once_and_wastes_no_evaluation():
    torch.manual_seed(0)
    model, (x, y) = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)), data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    acc = KoopmanAccelerator(model, opt, window=6, horizons=(2, 4), every=1)
    with pytest.warns(RuntimeWarning, match="exactly once after each") as caught:
        train_twice_per_step(acc, model, opt, x, y, 30)
    mine = [w for w in caught if "exactly once" in str(w.message)]
    assert len(mine) == 1
    where = Path(mine[0].filename).parts
    if "mutants" not in where and "mutmut" not in where:  # mutation runs add their frames
        assert mine[0].filename == __file__  # the warning points at the user's loop
    assert acc.jumps_tried >= 2 and acc.jumps_accepted == 0
    assert all(h["evaluations"] == 0 and "did not move" in h["reason"] for h in acc.history)


def test_calling_step_with_no_optimizer_step_in_between_is_skipped():
    model, _ = bn_model(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = KoopmanAccelerator(model, opt, window=3, horizons=(2,), every=1)
    calls = []
    with pytest.warns(RuntimeWarning):
        for _ in range(6):
            acc.step(lambda: calls.append(1) or 1.0)
    assert calls == [] and acc.jumps_tried >= 1


def test_default_horizons_follow_every():
    model = nn.Linear(2, 1)
    acc = KoopmanAccelerator(model, torch.optim.SGD(model.parameters(), lr=0.1), every=20)
    assert acc.horizons == [20 * 2**k for k in range(1, 7)]
    acc = KoopmanAccelerator(model, torch.optim.SGD(model.parameters(), lr=0.1), every=1, window=10)
    assert acc.horizons == [2**k for k in range(1, 7)]


@pytest.mark.parametrize("make", [
    lambda m: SnapshotRecorder(m),
    lambda m: KoopmanAccelerator(m, torch.optim.SGD(m.parameters(), lr=0.1), every=1, window=10),
])
def test_a_model_on_the_meta_device_is_refused_clearly(make):
    model = nn.Linear(3, 2, device="meta")
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        make(model)
    assert Partition(model).n_params == 8  # partitioning shapes alone is fine


def test_steps_jumped_is_the_sum_of_the_accepted_horizons():
    torch.manual_seed(0)
    model, (x, y) = nn.Linear(3, 1), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, window=3, horizons=(2, 4), margin=0.0, every=1)
    losses = iter([1.0, 0.5, 0.9] + [1.0, 0.8, 0.6] * 20)  # keeps h = 2, then h = 4, ...
    for _ in range(30):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        acc.step(lambda: next(losses))
    kept = [h["horizon"] for h in acc.history if h["accepted"]]
    assert len(kept) >= 3 and kept[:2] == [2, 4] and acc.steps_jumped == sum(kept)
    with pytest.warns(DeprecationWarning, match="steps_saved.*use steps_jumped"):
        assert acc.steps_saved == acc.steps_jumped  # the 0.1 name, for one minor version


def test_a_repeated_step_at_the_end_of_the_window_is_caught():
    """Consecutive snapshots equal anywhere in the window, not only at its start."""
    torch.manual_seed(0)
    model, (x, y) = nn.Linear(3, 1), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, window=4, horizons=(2,), every=1)
    calls = []
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        acc.step(lambda: calls.append(1) or 1.0)
    with pytest.warns(RuntimeWarning, match="exactly once"):
        entry = acc.step(lambda: calls.append(1) or 1.0)  # no optimizer step before it
    assert calls == [] and "did not move" in entry["reason"]


def test_a_checkpoint_of_a_compiled_model_loads_into_the_plain_one_and_back():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    compiled = torch.compile(plain)  # wraps: parameter names gain "_orig_mod."
    assert next(iter(dict(compiled.named_parameters()))).startswith("_orig_mod.")
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    a = KoopmanAccelerator(compiled, opt, window=4, every=1)
    for _ in range(3):
        with torch.no_grad():
            for p in plain.parameters():
                p.mul_(1.01)
        a.step()
    b = KoopmanAccelerator(plain, opt, window=4, every=1)
    b.load_state_dict(a.state_dict())
    assert b.recorder.n_snapshots == 3
    c = KoopmanAccelerator(compiled, opt, window=4, every=1)
    c.load_state_dict(b.state_dict())
    assert c.state_dict()["step_count"] == c.step_count == 3


def test_no_warning_in_an_ordinary_loop():
    torch.manual_seed(0)
    model, (x, y) = nn.Linear(3, 1), data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    acc = KoopmanAccelerator(model, opt, window=5, every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(30):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            acc.step(lambda: nn.functional.mse_loss(model(x), y).detach())


@pytest.mark.parametrize("granularity", ["network", "node", "layer"])
def test_a_layer_that_never_moves_does_not_make_the_window_stand_still(granularity):
    """Only a step in which *no* recorded weight moved is a misuse: a layer held still by
    zero gradients beside moving ones is ordinary training, and attempts go on."""
    torch.manual_seed(0)
    model, (x, y) = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, window=4, horizons=(2, 4), granularity=granularity,
            every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(12):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            model[0].weight.grad.zero_()  # layer 0 never moves: at node or layer
            model[0].bias.grad.zero_()    # granularity a whole block group stands still
            opt.step()
            acc.step(lambda: nn.functional.mse_loss(model(x), y).detach())
    assert acc.jumps_tried >= 1
    assert all(h["evaluations"] >= 1 for h in acc.history)


def test_a_window_that_stood_still_is_caught_at_weight_granularity_too():
    """One-weight blocks (d = 1) are checked like any other."""
    torch.manual_seed(0)
    model, (x, y) = nn.Linear(3, 1), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, window=4, horizons=(2,), every=1, granularity="weight")
    with pytest.warns(RuntimeWarning, match="exactly once"):
        train_twice_per_step(acc, model, opt, x, y, 6)
    assert acc.jumps_tried >= 1 and all("did not move" in h["reason"] for h in acc.history)
