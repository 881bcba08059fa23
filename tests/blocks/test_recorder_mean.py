"""``snapshot="mean"``: each snapshot is the mean of the weights over the ``every`` steps it
stands for. Checked against the recorded weights themselves, against an affine iteration
whose block means follow ``A^every`` exactly, and through the accelerator's contracts."""

import copy

import pytest
import torch
from torch import nn

from kooptrain import KoopmanAccelerator, Partition, SnapshotRecorder
from kooptrain.errors import ModelChangedError


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))


def sgd_steps(model, rec, steps, seed=0):
    """Noisy minibatch SGD; returns the flat weights after each step ``(steps, p)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 3, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    flats = []
    for _ in range(steps):
        i = torch.randint(0, 256, (16,), generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[i]), y[i]).backward()
        opt.step()
        rec.record()
        flats.append(Partition(model).flatten().clone())
    return torch.stack(flats) if flats else None


@pytest.mark.parametrize("granularity", ["network", "node"])  # the flat copy and the gather
def test_each_snapshot_is_the_mean_of_its_block_stored_at_the_block_end(granularity):
    model = mlp()
    rec = SnapshotRecorder(model, granularity=granularity, every=4, window=5, snapshot="mean")
    stored = []
    for _ in range(6):  # 24 steps: 6 blocks of 4, the window keeps the last 5
        flats_block = sgd_steps(model, rec, 4, seed=len(stored))
        stored.append(flats_block.mean(0))
    assert rec.n_snapshots == 6 and rec.step_count == 24
    part = rec.partition
    for g, X in zip(part.groups, rec.snapshots(), strict=True):
        want = torch.stack(stored[-5:], -1)[g.index]  # (B, d, 5)
        torch.testing.assert_close(X, want, rtol=0, atol=1e-6)


def test_the_block_end_is_when_record_says_it_stored_one():
    model = mlp()
    rec = SnapshotRecorder(model, every=3, window=4, snapshot="mean")
    flags = []
    for _ in range(7):
        flags.append(rec.record())
    assert flags == [False, False, True, False, False, True, False]


def test_every_1_mean_is_last_bit_for_bit():
    a, b = mlp(), mlp()
    ra = SnapshotRecorder(a, granularity="node", every=1, window=6)
    rb = SnapshotRecorder(b, granularity="node", every=1, window=6, snapshot="mean")
    sgd_steps(a, ra, 9)
    sgd_steps(b, rb, 9)
    for xa, xb in zip(ra.snapshots(), rb.snapshots(), strict=True):
        assert torch.equal(xa, xb)


class Vector(nn.Module):
    def __init__(self, x0):
        super().__init__()
        self.x = nn.Parameter(x0.clone())


def test_block_means_of_an_affine_iteration_follow_A_to_the_every_and_forecast_exactly():
    # x_{t+1} = A x_t + b. Averaging is linear and commutes with the shift, so the block
    # means obey mean_{j+1} = A^e mean_j + c: an affine fit to them forecasts the true means.
    torch.manual_seed(1)
    d, e = 3, 5
    A = torch.tensor([[0.95, 0.10, 0.0], [-0.10, 0.95, 0.0], [0.0, 0.0, 0.90]],
                     dtype=torch.float64)
    b = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    xs = [torch.randn(d, dtype=torch.float64)]
    for _ in range(200):
        xs.append(A @ xs[-1] + b)
    xs = torch.stack(xs[1:])  # the weights after steps 1..200
    model = Vector(xs[0])
    rec = SnapshotRecorder(model, granularity="network", every=e, window=8, snapshot="mean")
    for t in range(8 * e):  # 8 blocks: steps 1..40
        with torch.no_grad():
            model.x.copy_(xs[t])
        rec.record()
    forecast = rec.fit(observables="affine", stabilize=None)
    for h in (e, 4 * e, 20 * e):  # the block ending h steps after step 40
        want = xs[40 + h - e: 40 + h].mean(0)
        torch.testing.assert_close(forecast.predict(steps=h)["x"], want, rtol=1e-7, atol=1e-9)
    # the raw weights' operator is A; the means' is A^e: the same dynamics, e steps at a time
    fixed = torch.linalg.solve(torch.eye(d, dtype=torch.float64) - A, b)
    torch.testing.assert_close(forecast.predict(steps=4000 * e)["x"], fixed, atol=1e-6,
                               rtol=0)


def test_means_are_less_noisy_than_last_snapshots_on_a_noisy_random_walk():
    # a drift plus noise: the increments of block means carry about 1/sqrt(e) the noise
    torch.manual_seed(2)
    p, e, steps = 50, 16, 16 * 40
    noise = torch.randn(steps, p, dtype=torch.float64)
    drift = torch.linspace(0, 1, steps, dtype=torch.float64)[:, None] * torch.ones(p)
    xs = drift + 0.05 * noise.cumsum(0) / 4 + 0.05 * noise
    spreads = {}
    for snapshot in ("last", "mean"):
        model = Vector(xs[0])
        rec = SnapshotRecorder(model, granularity="network", every=e, window=40,
                               snapshot=snapshot)
        for t in range(steps):
            with torch.no_grad():
                model.x.copy_(xs[t])
            rec.record()
        X = rec.snapshots()[0][0]  # (p, 40)
        inc = X.diff(dim=-1)
        spreads[snapshot] = float((inc - inc.mean(0)).std())
    assert spreads["mean"] < 0.75 * spreads["last"]


def test_a_state_saved_mid_block_resumes_bit_for_bit_and_reset_clears_the_block():
    model = mlp()
    rec = SnapshotRecorder(model, granularity="node", every=4, window=5, snapshot="mean")
    sgd_steps(model, rec, 10)  # two blocks and half of the third
    state = copy.deepcopy(rec.state_dict())
    twin_model = copy.deepcopy(model)
    twin = SnapshotRecorder(twin_model, granularity="node", every=4, window=5,
                            snapshot="mean")
    twin.load_state_dict(state)
    sgd_steps(model, rec, 10, seed=5)
    sgd_steps(twin_model, twin, 10, seed=5)
    for xa, xb in zip(rec.snapshots(), twin.snapshots(), strict=True):
        assert torch.equal(xa, xb)
    # a state without the unfinished block's sum is refused, and nothing is loaded
    broken = {k: v for k, v in state.items() if k != "block_sum"}
    fresh = SnapshotRecorder(mlp(), granularity="node", every=4, window=5, snapshot="mean")
    with pytest.raises(ValueError, match="lacks the sum of its unfinished block, or it has "
                       "the wrong shape; nothing was loaded.$"):
        fresh.load_state_dict(broken)
    assert fresh.n_snapshots == 0 and fresh.step_count == 0
    # after reset, the next snapshot is the mean of the next block only
    rec.reset()
    flats = sgd_steps(model, rec, 4, seed=9)
    torch.testing.assert_close(rec.snapshots()[0][..., 0],
                               flats.mean(0)[rec.partition.groups[0].index], rtol=0,
                               atol=1e-6)


def test_a_last_state_is_refused_by_a_mean_recorder_by_name():
    model = mlp()
    last = SnapshotRecorder(model, every=2, window=4)
    sgd_steps(model, last, 3)
    assert "block_sum" not in last.state_dict()  # no running sum: 0.2.0's layout, unchanged
    mean = SnapshotRecorder(model, every=2, window=4, snapshot="mean")
    with pytest.raises(ValueError, match=r"differing: snapshot \(saved 'last', here 'mean'\)"):
        mean.load_state_dict(last.state_dict())


def test_a_state_saved_before_snapshot_existed_loads_as_last():
    model = mlp()
    rec = SnapshotRecorder(model, every=2, window=4)
    sgd_steps(model, rec, 5)
    state = rec.state_dict()
    state["settings"] = {k: v for k, v in state["settings"].items() if k != "snapshot"}
    twin = SnapshotRecorder(model, every=2, window=4)
    twin.load_state_dict(state)
    assert twin.n_snapshots == rec.n_snapshots
    acc = KoopmanAccelerator(model, torch.optim.SGD(model.parameters(), lr=0.1), every=1,
                             window=5, snapshot="last")
    s = acc.state_dict()
    s["settings"] = {k: v for k, v in s["settings"].items() if k != "snapshot"}
    s["recorder"]["settings"] = {k: v for k, v in s["recorder"]["settings"].items()
                                 if k != "snapshot"}
    acc.load_state_dict(s)  # an accelerator state of 0.2.0 (no "snapshot"): "last"
    with pytest.raises(ValueError, match=r"differing: snapshot \(saved 'nothing'"):
        KoopmanAccelerator(model, torch.optim.SGD(model.parameters(), lr=0.1), every=1,
                           window=5, snapshot="mean").load_state_dict(s)


def test_every_call_reads_the_model_so_surgery_is_refused_at_once():
    model = mlp()
    rec = SnapshotRecorder(model, every=5, window=4, snapshot="mean")
    rec.record()
    model[0].weight = nn.Parameter(torch.zeros(6, 3))
    with pytest.raises(ModelChangedError):
        rec.record()  # mid-block: a "last" recorder would only count this call


def test_a_bad_snapshot_value_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"snapshot='median' is not one of \('last', 'mean'\)"):
        SnapshotRecorder(mlp(), snapshot="median")
    with pytest.raises(ValueError, match="snapshot"):
        KoopmanAccelerator(mlp(), torch.optim.SGD(mlp().parameters(), lr=0.1),
                           snapshot="median")


def decisions(acc):
    return [{k: v for k, v in e.items() if k not in ("seconds", "fit_seconds")}
            for e in acc.history]


def loop(acc, model, opt, x, y, steps):
    loss = lambda: nn.functional.mse_loss(model(x), y)  # noqa: E731
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
        acc.step(lambda: loss().detach())


def test_the_accelerator_at_every_1_takes_the_same_decisions_with_mean_snapshots():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    runs = []
    for snapshot in ("last", "mean"):
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        acc = KoopmanAccelerator(model, opt, every=1, window=10, horizons=(10, 100),
                                 snapshot=snapshot)
        loop(acc, model, opt, x, y, 60)
        runs.append((decisions(acc), Partition(model).flatten()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert any(h["accepted"] for h in runs[0][0])


def test_the_accelerator_with_mean_snapshots_resumes_bit_for_bit_mid_block():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    settings = {"every": 3, "window": 5, "horizons": (6, 30, 90), "snapshot": "mean"}
    acc = KoopmanAccelerator(model, opt, **settings)
    loop(acc, model, opt, x, y, 31)  # mid-block
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), acc.state_dict()))
    loop(acc, model, opt, x, y, 60)
    model2 = nn.Linear(4, 1)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.02)
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    acc2 = KoopmanAccelerator(model2, opt2, **settings)
    acc2.load_state_dict(saved[2])
    loop(acc2, model2, opt2, x, y, 60)
    assert decisions(acc) == decisions(acc2)
    assert torch.equal(Partition(model).flatten(), Partition(model2).flatten())
    assert acc.jumps_tried > 0


def test_mean_snapshots_hold_two_more_flat_copies_and_no_more():
    model = mlp()
    p = Partition(model).n_params
    last = SnapshotRecorder(model, granularity="network", every=4, window=5)
    mean = SnapshotRecorder(model, granularity="network", every=4, window=5, snapshot="mean")
    assert last.memory_bytes == 5 * p * 4
    assert mean.memory_bytes == (5 + 2) * p * 4  # the block's sum and the read buffer
