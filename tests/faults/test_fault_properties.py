"""Property-based fault tests (hypothesis, derandomized): 560 generated inputs over the
engine, the partition, the recorder and the accelerator, with random shapes, dtypes,
rank deficiencies, magnitudes from 1e-30 to 1e30 and NaNs injected at random places.

Asserted for every input: no exception but the documented ones (ValueError, TypeError,
FloatingPointError for a true overflow without stabilisation); no non-finite output from
finite input with stabilisation on; exact Partition round trips; rejected jumps leave
the model bit-identical."""

import math

import numpy as np
import torch
from faultkit import identical, snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from kooptrain import KoopmanAccelerator, KoopmanOperator, Partition, SnapshotRecorder


def props(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}


@st.composite
def snapshots(draw, allow_nan=True):
    """(B, d, m) snapshots: a stable linear system or noise, with a random scale in
    1e-30..1e30, optional rank deficiency (repeated / constant rows) and NaNs."""
    B, d, m = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** draw(st.integers(-30, 30))
    kind = draw(st.sampled_from(["linear", "noise", "growing"]))
    X = np.empty((B, d, m))
    for b in range(B):
        A = rng.standard_normal((d, d))
        rho = {"linear": 0.95, "noise": 1.0, "growing": 1.3}[kind]
        A *= rho / max(np.abs(np.linalg.eigvals(A)).max(), 1e-12)
        x = rng.standard_normal(d)
        for t in range(m):
            X[b, :, t] = x if kind != "noise" else rng.standard_normal(d)
            x = A @ x
    deficiency = draw(st.sampled_from(["none", "repeat-row", "constant-row", "zero-block"]))
    if deficiency == "repeat-row" and d > 1:
        X[:, -1] = X[:, 0]
    elif deficiency == "constant-row":
        X[:, 0] = X[:, 0, :1]
    elif deficiency == "zero-block":
        X[0] = 0.0
    X *= scale
    if allow_nan and draw(st.integers(0, 3)) == 0:  # a quarter of the inputs
        for _ in range(draw(st.integers(1, 3))):
            X[rng.integers(B), rng.integers(d), rng.integers(m)] = \
                draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    if dtype == "float32" and scale > 1e30 / 10:  # float32 overflows past 3.4e38 anyway
        dtype = "float64"
    return torch.as_tensor(X).to(DTYPES[dtype])


@props(200)
@given(snapshots(), st.sampled_from(["identity", "affine"]),
       st.sampled_from([None, "clip", "drop"]), st.integers(0, 3000))
def test_engine_never_fails_silently(X, observables, stabilize, T):
    finite = bool(torch.isfinite(X).all())
    op = KoopmanOperator(observables=observables, stabilize=stabilize, no_fixed_point="stay")
    try:
        op.fit(X)
    except ValueError as e:
        assert not finite and "NaN/Inf" in str(e)  # the only reason to refuse
        event("refused: NaN/Inf")
        return
    assert finite
    try:
        out = op.predict([0, 1, T])
        fixed = op.predict(math.inf)
    except FloatingPointError:
        assert stabilize is None  # a true overflow, only without stabilisation
        event("overflow without stabilisation")
        return
    event(f"finite prediction, stabilize={stabilize}")
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(fixed).all())
    torch.testing.assert_close(out[..., 0], X[..., -1].to(torch.float64), rtol=1e-9,
                               atol=0.0)  # T = 0 is the last snapshot
    if stabilize is not None:
        assert bool((op.eigenvalues.abs() <= 1 + 1e-9).all())


@st.composite
def models(draw):
    """A random MLP or conv net in one dtype (or mixed), some parameters frozen or tied."""
    dtype = draw(st.sampled_from(list(DTYPES)))
    torch.manual_seed(draw(st.integers(0, 1000)))
    kind = draw(st.sampled_from(["mlp", "conv", "mixed", "tied"]))
    w = draw(st.integers(1, 5))
    if kind == "conv":
        model = nn.Sequential(nn.Conv1d(2, w, 3), nn.Conv1d(w, 1, 1, bias=False))
    elif kind == "mixed":
        model = nn.Sequential(nn.Linear(3, w).double(), nn.Linear(w, 2).half(),
                              nn.LayerNorm(2).bfloat16())
    else:
        model = nn.Sequential(nn.Linear(3, w), nn.Linear(w, w), nn.Linear(w, 1))
        if kind == "tied":
            model[1].weight = model[0].weight if w == 3 else model[1].weight
    if kind != "mixed":
        model = model.to(DTYPES[dtype])
    if draw(st.booleans()):
        first = next(model.parameters())
        if sum(p.numel() for p in model.parameters()) > first.numel():
            first.requires_grad_(False)
    scale = 10.0 ** draw(st.integers(-30, 30))
    with torch.no_grad():
        for p in model.parameters():
            finfo = torch.finfo(p.dtype)
            p.mul_(min(scale, finfo.max / 10)).clamp_(-finfo.max, finfo.max)
    return model


@props(150)
@given(models(), st.sampled_from(["weight", "quasi-node", "node", "layer", "network"]),
       st.integers(1, 4), st.sampled_from([None, math.nan, math.inf, -0.0]))
def test_partition_round_trips_are_exact(model, granularity, q, special):
    if special is not None:  # NaN, inf and -0.0 survive the round trip bit for bit
        with torch.no_grad():
            p = [p for p in model.parameters() if p.requires_grad][-1]
            p.view(-1)[-1] = special
    part = Partition(model, granularity=granularity,
                     chunk=q if granularity == "quasi-node" else None)
    vec = part.flatten()
    assert vec.numel() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    idx = torch.cat([g.index.reshape(-1) for g in part.groups]).sort().values
    assert torch.equal(idx, torch.arange(part.n_params))
    assert identical(part.scatter(part.gather(vec)), vec)
    back = part.unflatten(vec)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert back[n].dtype == p.dtype and identical(back[n], p.detach()), n


@props(110)
@given(models(), st.sampled_from(["weight", "node", "layer", "network"]),
       st.integers(2, 6), st.integers(0, 2**31 - 1), st.integers(0, 3).map(lambda k: k == 0))
def test_recorder_predicts_finite_weights_or_says_why(model, granularity, m, seed, nan):
    rng = np.random.default_rng(seed)
    rec = SnapshotRecorder(model, granularity=granularity, window=m)
    params = [p for p in model.parameters() if p.requires_grad]
    for t in range(m):
        with torch.no_grad():
            for p in params:
                p.mul_(1 + 0.01 * float(rng.standard_normal()))
            if nan and t == m // 2:
                params[0].view(-1)[0] = math.nan
        rec.record()
    try:
        pred = rec.fit(stabilize="clip", observables="affine").predict([1, 50])
    except ValueError as e:
        assert nan and "NaN/Inf" in str(e)
        event("refused: NaN/Inf")
        return
    except FloatingPointError as e:  # finite in float64, too large for the parameter dtype
        assert "overflows its dtype" in str(e)
        event("overflows the parameter dtype")
        return
    event("finite prediction")
    assert not nan
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert pred[n].dtype == p.dtype and pred[n].shape == (*p.shape, 2)
            assert bool(torch.isfinite(pred[n]).all())


@props(100)
@given(st.integers(0, 2**31 - 1), st.sampled_from(list(DTYPES)),
       st.sampled_from(["koopman", "linear", "average"]),
       st.lists(st.sampled_from([1.0, 0.5, 2.0, math.nan, math.inf]), min_size=2,
                max_size=8), st.integers(-30, 30))
def test_rejected_jumps_leave_the_model_bit_identical(seed, dtype, predictor, losses,
                                                      exponent):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).to(DTYPES[dtype])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(min(10.0 ** exponent, torch.finfo(p.dtype).max / 100))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    acc = KoopmanAccelerator(model, opt, window=3, horizons=(2, 8, 64), predictor=predictor,
                             margin=0.0, max_backoff=1, every=1)
    x = torch.randn(8, 2).to(DTYPES[dtype])
    seq = iter(losses * 50)
    for _ in range(12):
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()
        before = snapshot(model, opt)
        finite_before = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        entry = acc.step(lambda: next(seq))
        if entry is not None and not entry["accepted"]:
            assert identical(snapshot(model, opt), before)
            event("rejected jump: bit-identical")
        if entry is not None and entry["accepted"] and finite_before:
            assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
            event("accepted jump: finite")
