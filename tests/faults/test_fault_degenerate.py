"""Fault matrix, row 3: rank-deficient and constant snapshots (a frozen or converged layer,
weights that never move, all-zero biases) give no NaN and no warning, and a jump leaves
such blocks where they are."""

import math
import warnings

import pytest
import torch
from faultkit import loss_fn, problem, sgd_step
from torch import nn

from kooptrain import Forecast, KoopmanAccelerator, KoopmanOperator, SnapshotRecorder


def degenerate_snapshots(dtype=torch.float64):
    """Blocks (4, 5, 12): moving, constant, all-zero, and rank one (a fixed direction)."""
    g = torch.Generator().manual_seed(1)
    X = torch.empty(4, 5, 12, dtype=dtype)
    A = 0.9 * torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))[0]
    x = torch.randn(5, generator=g, dtype=torch.float64)
    for t in range(12):
        X[0, :, t] = x.to(dtype)
        x = A @ x
    X[1] = torch.randn(5, 1, generator=g, dtype=torch.float64).to(dtype)  # constant
    X[2] = 0.0  # all zero (e.g. biases initialised at 0 that never train)
    X[3] = torch.randn(5, 1, generator=g, dtype=torch.float64).to(dtype) * \
        torch.linspace(1, 2, 12, dtype=torch.float64).to(dtype)  # one direction, moving
    return X


@pytest.mark.parametrize("observables", ["identity", "affine"])
@pytest.mark.parametrize("stabilize", [None, "clip", "drop"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_and_zero_blocks_stay_put_without_warnings(observables, stabilize, dtype):
    X = degenerate_snapshots(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        op = KoopmanOperator(observables=observables, stabilize=stabilize,
                             no_fixed_point="stay").fit(X)
        out = op.predict([1, 10, 1000])  # (4, 5, 3)
        fixed = op.predict(math.inf)
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(fixed).all())
    last = X[..., -1].to(torch.float64)
    for b in (1, 2):  # constant and zero blocks: where they are, at every horizon
        torch.testing.assert_close(out[b], last[b, :, None].expand(5, 3), rtol=1e-12,
                                   atol=0.0)
        torch.testing.assert_close(fixed[b], last[b], rtol=1e-12, atol=0.0)
        assert bool(op.fixed_point_found_[b])
    assert bool((out[2] == 0).all())  # zero stays exactly zero


def test_a_layer_that_never_moves_is_left_exactly_where_it_is():
    """A layer outside the optimizer, a layer with lr 0 and zero biases: an accepted
    jump moves the trained layer and leaves the others bit for bit."""
    model, x, y = problem()
    extra = nn.Linear(3, 3)
    with torch.no_grad():
        model[2].bias.zero_()
    model = nn.Sequential(extra, *model)  # extra: requires_grad, but not optimized
    opt = torch.optim.SGD([{"params": model[1].parameters(), "lr": 0.1},
                           {"params": model[3].parameters(), "lr": 0.0}])
    still = {n: p.detach().clone() for n, p in model.named_parameters()
             if not n.startswith("1.")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for granularity in ("node", "layer", "network"):
            acc = KoopmanAccelerator(model, opt, window=5, granularity=granularity,
                                     horizons=(4, 16), margin=0.0, every=1)
            for _ in range(30):
                opt.zero_grad()
                loss_fn(model, x, y).backward()
                opt.step()
                acc.step(lambda: loss_fn(model, x, y).detach())
            assert acc.jumps_accepted >= 1, granularity
            for n, p in model.named_parameters():
                if n in still:
                    assert torch.equal(p.detach(), still[n]), (granularity, n)
            # extra is not the optimizer's: it is not even recorded
            assert not any(n.startswith("0.") for n in acc.recorder.partition.names)


def test_recorder_on_a_converged_model_predicts_the_same_weights():
    model, x, y = problem()
    rec = SnapshotRecorder(model, granularity="node", window=6)
    for _ in range(6):
        rec.record()  # nothing moves: rank-0 motion
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for obs in ("identity", "affine"):
            pred = rec.fit(observables=obs).predict(100)
            for n, p in model.named_parameters():
                torch.testing.assert_close(pred[n], p.detach(), rtol=1e-6, atol=0.0)


def test_training_with_a_frozen_layer_keeps_it_frozen():
    model, x, y = problem()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    acc = KoopmanAccelerator(model, opt, window=5, horizons=(4, 16), margin=0.0, every=1)
    for _ in range(40):
        sgd_step(model, opt, x, y)
        acc.step(lambda: loss_fn(model, x, y).detach())
    assert acc.jumps_accepted >= 1
    assert torch.equal(model[0].weight, frozen)


def test_batchnorm_statistics_are_not_predicted_and_the_docs_say_so():
    """Buffers are not parameters: a prediction leaves BatchNorm's running statistics to
    load_state_dict's missing_keys (documented in Forecast.predict)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    rec = SnapshotRecorder(model, granularity="node", window=3)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.01)
        rec.record()
    running = model[1].running_mean.clone()
    missing = model.load_state_dict(rec.fit().predict(5), strict=False).missing_keys
    assert {"1.running_mean", "1.running_var"} <= set(missing)
    assert torch.equal(model[1].running_mean, running)
    doc = " ".join(Forecast.predict.__doc__.split())
    for words in ("BatchNorm", "running_mean", "missing_keys", "update_bn", "bn_loader"):
        assert words in doc


def test_an_empty_parameter_does_not_hide_weights_that_stood_still():
    """A trainable parameter with no entries (a pruned layer, a rank-0 adapter) forms an
    empty block at layer granularity; it says nothing about movement, so weights that did
    not move are still found out (and warned about) with it in the model."""
    class WithEmpty(nn.Module):
        def __init__(self):
            super().__init__()
            self.empty = nn.Parameter(torch.zeros(0))  # listed first: its group comes first
            self.lin = nn.Linear(3, 2)

    model = WithEmpty()
    acc = KoopmanAccelerator(model, torch.optim.SGD(model.parameters(), lr=0.0),
                             granularity="layer", window=3, every=1, horizons=(2,))
    assert [tuple(X.shape[:2]) for X in acc.recorder.snapshots()] == [(1, 0), (1, 8)]
    entries = []
    with pytest.warns(RuntimeWarning, match="did not change between two recorded steps"):
        for _ in range(3):
            entries.append(acc.step(lambda: 1.0))
    assert entries[:2] == [None, None]
    assert entries[2]["reason"] == "the weights did not move between two snapshots: " \
        "window skipped"
