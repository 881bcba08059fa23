"""Where and how the window is stored: a narrow dtype (increments, and the newest snapshot
exactly) and a host-memory window for a model on a GPU (``device="cpu"``)."""

import pytest
import torch
from torch import nn

from kooptrain import KoopmanAccelerator, KoopmanOperator, SnapshotRecorder

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def drifting(model: nn.Module, steps: int, size: float = 1e-4, seed: int = 0):
    """Move every weight by ``size`` times a fixed random direction per step (an exactly
    linear path); record after each step and return the float64 truth ``(steps, p)``."""
    g = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    direction = [torch.randn(p.shape, generator=g) for p in params]
    truth = []
    for _ in range(steps):
        with torch.no_grad():
            for p, v in zip(params, direction, strict=True):
                p.add_(v, alpha=size)
        truth.append(torch.cat([p.detach().reshape(-1).double() for p in params]))
        yield torch.stack(truth)


def model_at_one():
    """Weights near 1, where bfloat16's spacing (2^-7) dwarfs a step of 1e-4."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model


def test_bfloat16_window_rounds_each_increment_relative_to_itself():
    model = model_at_one()
    rec = SnapshotRecorder(model, granularity="network", window=8, dtype=torch.bfloat16)
    gen = drifting(model, 11)
    for _ in range(11):  # the ring wraps: 11 steps into 8 slots
        path = next(gen)
        rec.record()
    truth = path[-8:]
    X = rec.snapshots()[0][0].T  # (m, p), float64
    assert X.dtype == torch.float64
    assert torch.equal(X[-1], truth[-1])  # the newest snapshot, where jumps start: exact
    steps, true_steps = X[1:] - X[:-1], truth[1:] - truth[:-1]
    # each increment is off by at most half a bfloat16 spacing of itself
    assert bool(((steps - true_steps).abs() <= 2.0 ** -8 * true_steps.abs()).all())
    assert (steps - true_steps).abs().max() > 0  # and it was rounded
    # storing the weights themselves in bfloat16 would lose the steps: rounding them (up
    # to 2^-8 near 1) costs ten times a step
    absolute = truth.to(torch.bfloat16).double()
    assert (absolute - truth).abs().mean() > 10 * true_steps.abs().mean()


def test_bfloat16_fit_predicts_an_exactly_linear_path_as_float32_does():
    model32, model16 = model_at_one(), model_at_one()
    rec32 = SnapshotRecorder(model32, granularity="network", window=6)
    rec16 = SnapshotRecorder(model16, granularity="network", window=6, dtype=torch.bfloat16)
    for _ in zip(drifting(model32, 6), drifting(model16, 6), strict=True):
        rec32.record()
        rec16.record()
    now = torch.cat([p.detach().reshape(-1).double() for p in model32.parameters()])
    jumps = []
    for rec in (rec32, rec16):
        pred = rec.fit(observables="affine").predict(steps=100)
        jumps.append(torch.cat([pred[n].reshape(-1).double() for n, _ in
                                model32.named_parameters()]) - now)
    # a drift of 1e-4 per step, 100 steps on: float32 gets it, bfloat16 increments too
    assert torch.allclose(jumps[0], jumps[1], rtol=0, atol=0.01 * jumps[0].abs().max())
    assert jumps[0].abs().max() > 50 * 1e-4


def test_narrow_window_memory_state_and_reset():
    model = model_at_one()
    rec32 = SnapshotRecorder(model, granularity="node", window=5)
    rec16 = SnapshotRecorder(model, granularity="node", window=5, dtype=torch.bfloat16)
    p = sum(q.numel() for q in model.parameters())
    # half the window, plus the newest snapshot in float32; both hold the flat working copy
    assert rec32.memory_bytes == 5 * 4 * p + 4 * p
    assert rec16.memory_bytes == 5 * 2 * p + 4 * p + 4 * p
    gen = drifting(model, 8)
    for _ in range(4):
        next(gen)
        rec16.record()
    state = rec16.state_dict()
    other = SnapshotRecorder(model, granularity="node", window=5, dtype=torch.bfloat16)
    other.load_state_dict(state)
    for a, b in zip(other.snapshots(), rec16.snapshots(), strict=True):
        assert torch.equal(a, b)
    for _ in range(3):  # the ring wraps
        next(gen)
        rec16.record()
        other.record()
    for a, b in zip(other.snapshots(), rec16.snapshots(), strict=True):
        assert torch.equal(a, b)
    # a state saved before increments held the snapshots themselves, in bfloat16: they
    # load as they were (increments of nearby bfloat16 numbers are exact)
    old = rec16.state_dict()
    absolute = []
    for st, X in zip(old["stores"], rec16.snapshots(), strict=True):
        del st["last"]
        ring = torch.roll(X.permute(2, 0, 1), st["ptr"], dims=0)  # chronological -> ring
        st["buf"] = ring.to(torch.bfloat16)
        absolute.append(X.to(torch.bfloat16).double())
    other.load_state_dict(old)
    for a, b in zip(other.snapshots(), absolute, strict=True):
        assert torch.equal(a, b)
    rec16.reset()  # a new window starts from the current weights, exactly
    next(gen)
    rec16.record()
    now = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
    assert rec16.snapshots()[0].shape[-1] == 1 and torch.equal(
        rec16.partition.scatter([x[..., 0] for x in rec16.snapshots()]).float(), now)


def test_device_argument_on_the_cpu():
    model = model_at_one()
    plain = SnapshotRecorder(model, granularity="layer", window=4)
    here = SnapshotRecorder(model, granularity="layer", window=4, device="cpu")
    for _ in drifting(model, 4):
        plain.record()
        here.record()
    for a, b in zip(plain.snapshots(), here.snapshots(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not a torch device"):
        SnapshotRecorder(model, device="gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            SnapshotRecorder(model, device="cuda")
    with pytest.raises(ValueError, match="window_dtype"):
        KoopmanAccelerator(model, torch.optim.SGD(model.parameters(), lr=0.1),
                           window_dtype=torch.int8)


@cuda
@pytest.mark.parametrize("granularity", ["network", "node"])
def test_host_window_for_a_gpu_model_matches_the_device_window(granularity):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).cuda()
    on_gpu = SnapshotRecorder(model, granularity=granularity, window=6)
    on_host = SnapshotRecorder(model, granularity=granularity, window=6, device="cpu")
    host16 = SnapshotRecorder(model, granularity=granularity, window=6, device="cpu",
                              dtype=torch.bfloat16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(64, 6, device="cuda")
    for t in range(6):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        for rec in (on_gpu, on_host, host16):
            rec.record()
        if t == 0:  # a window not yet full is a view of the buffer: pinned host memory
            assert all(X.is_pinned() for X in on_host.snapshots())
    for a, b in zip(on_gpu.snapshots(), on_host.snapshots(), strict=True):
        assert b.device.type == "cpu" and torch.equal(a.cpu(), b)
    pa = on_gpu.fit().predict(steps=20)
    pb = on_host.fit().predict(steps=20)
    for n in pa:
        assert pb[n].device == pa[n].device
        torch.testing.assert_close(pa[n], pb[n], rtol=1e-4, atol=1e-5)
    assert host16.snapshots()[0].dtype == torch.float64


@cuda
def test_accelerator_with_a_host_window_takes_the_same_decisions_on_a_gpu():
    def run(**kw):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)).cuda()
        opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
        acc = KoopmanAccelerator(model, opt, **kw)
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(256, 8, device="cuda", generator=g)
        y = torch.sin(x[:, :1]) * x[:, 1:2]
        loss = lambda: nn.functional.mse_loss(model(x), y)  # noqa: E731
        for _ in range(300):
            opt.zero_grad()
            loss().backward()
            opt.step()
            acc.step(lambda: loss().detach())
        return [(h["step"], h["accepted"]) for h in acc.history]

    assert run() == run(window_device="cpu")


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("steps", [5, 11])  # the ring partly filled; wrapped
@pytest.mark.parametrize("wide", [False, True])  # node blocks; one tall network block
def test_fit_builds_the_float64_window_that_snapshots_returns(dtype, steps, wide):
    """``fit`` builds its float64 window straight from the ring, with no copy of the ring
    beside it, and (a tall one) factors it in place: the same numbers as fitting what
    ``snapshots()`` returns, bit for bit, and the ring itself is untouched (a second fit
    agrees too)."""
    model = model_at_one()
    if wide:  # 75250 weights: a window fitted in a basis of itself
        torch.manual_seed(0)
        model = nn.Linear(300, 250)
    kw = {} if dtype is None else {"dtype": dtype}
    rec = SnapshotRecorder(model, granularity="network" if wide else "node", window=8, **kw)
    gen = drifting(model, steps, size=1e-3)
    for _ in range(steps):
        next(gen)
        rec.record()
    windows = [X.clone() for X in rec.snapshots()]
    ref = [KoopmanOperator(observables="affine").fit(X).predict([1, 50]) for X in windows]
    for _ in range(2):
        got = rec.fit(observables="affine").operators
        assert ("basis of the window" in got[0].representation_.describe()) == wide
        for op, r in zip(got, ref, strict=True):
            assert torch.equal(op.predict([1, 50]), r)
    for X, Y in zip(windows, rec.snapshots(), strict=True):
        assert torch.equal(X, Y)
