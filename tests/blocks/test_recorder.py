"""Recorder tests: ring buffer, streaming equivalence, the predict -> load_state_dict path."""

import copy
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from kooptrain import Forecast, KoopmanOperator, Partition, SnapshotRecorder


def train(model, rec, steps, lr=0.05, seed=0, opt_cls=torch.optim.SGD):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, model[0].in_features, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    opt = opt_cls(model.parameters(), lr=lr)
    flats = []
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if rec is not None:
            rec.record()
        flats.append(Partition(model).flatten().clone())
    return torch.stack(flats)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


def test_predict_equals_engine_on_recorded_window_and_loads_into_model():
    model = make_model()
    rec = SnapshotRecorder(model, granularity="node", window=30)
    flats = train(model, rec, 30)
    pred = rec.fit().predict(10)
    assert set(pred) == {n for n, _ in model.named_parameters()}
    for n, prm in model.named_parameters():
        assert pred[n].shape == prm.shape and pred[n].dtype == prm.dtype
    # independent path: gather blocks from the recorded flats and fit the engine directly
    part = Partition(model, granularity="node")
    for g, blocks in zip(part.groups, part.gather(flats), strict=True):  # (m, B, d)
        ref = KoopmanOperator().fit(blocks.permute(1, 2, 0)).predict(10)
        got = part.gather(Partition(model).flatten(pred))[part.groups.index(g)]
        torch.testing.assert_close(got, ref.to(got.dtype))
    # the jump is a real move away from the last snapshot, and it lands in the model
    last = Partition(model).unflatten(flats[-1])
    assert max(float((pred[n] - last[n]).abs().max()) for n in pred) > 1e-4
    model.load_state_dict(pred, strict=False)
    for n, prm in model.named_parameters():
        assert torch.equal(prm.detach(), pred[n])


def test_ring_buffer_keeps_the_last_window_snapshots_in_order():
    model = make_model()
    rec = SnapshotRecorder(model, granularity="layer", window=5)
    flats = train(model, rec, 12)
    (X,) = [rec.snapshots()[0]]
    part = rec.partition
    expect = part.gather(flats[-5:])[0].permute(1, 2, 0)  # (B, d, 5)
    torch.testing.assert_close(X, expect)


def test_every_subsamples():
    model = make_model()
    rec = SnapshotRecorder(model, granularity="network", window=50, every=3)
    flats = train(model, rec, 12)
    assert rec.n_snapshots == 4
    torch.testing.assert_close(rec.snapshots()[0][0].T, flats[0::3])


def test_streaming_and_window_give_same_prediction():
    model = make_model()
    win = SnapshotRecorder(model, granularity="node", window=40, storage="window")
    stream = SnapshotRecorder(model, granularity="node", window=40, storage="streaming")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g)
    y = x[:, :1] ** 2
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        win.record()
        stream.record()
    for obs in ("identity", "affine"):
        a, b = win.fit(observables=obs).predict(20), stream.fit(observables=obs).predict(20)
        for n in a:
            torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-6)
    # exact byte counts: window = m * B * d * 4 (float32); sums = float64
    # xx, yx (B d d each) and x_sum, y_sum, last, origin (B d each); plus the flat scratch
    p = sum(prm.numel() for prm in model.parameters())
    groups = [(g.n_blocks, g.size) for g in win.partition.groups]
    assert win.memory_bytes == sum(40 * B * d * 4 for B, d in groups) + 4 * p
    assert stream.memory_bytes == sum(8 * (2 * B * d * d + 4 * B * d) for B, d in groups) \
        + 4 * p
    with pytest.raises(RuntimeError, match="reset"):
        stream.record()  # the 41st snapshot: streaming cannot slide


def test_auto_storage_streams_narrow_groups_only():
    model = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 200))
    rec = SnapshotRecorder(model, granularity="node", window=32, storage="auto")
    sizes = [g.size for g in rec.partition.groups]
    assert dict(zip(sizes, rec.storage_, strict=True)) == {3: "streaming", 5: "streaming"}
    wide = SnapshotRecorder(nn.Linear(40, 2), granularity="node", window=32, storage="auto")
    assert wide.storage_ == ["window"]
    # per-group override by block size; the rest stays automatic
    mixed = SnapshotRecorder(model, granularity="node", window=32, storage={5: "window"})
    assert mixed.storage_ == ["streaming", "window"]
    assert mixed.memory_bytes < SnapshotRecorder(model, granularity="node", window=32).memory_bytes


def test_horizon_sequence_returns_stacked_parameters():
    model = make_model()
    rec = SnapshotRecorder(model, granularity="node", window=20)
    train(model, rec, 20)
    many = rec.fit().predict([1, 5])
    one = rec.fit().predict(5)
    for n, prm in model.named_parameters():
        assert many[n].shape == (*prm.shape, 2)  # horizons last, as in the engine
        torch.testing.assert_close(many[n][..., 1], one[n])


@pytest.mark.slow
def test_network_granularity_two_million_params_bounded_memory():
    """p = 2e6, m = 32 in the exact low-rank form: the fit's peak RSS growth is a few
    p*m*8-byte arrays (O(p m)), never p x p."""
    code = textwrap.dedent(
        """
        import resource, sys, torch
        from kooptrain import KoopmanOperator
        # ru_maxrss is in kilobytes on Linux and in bytes on macOS
        unit = 1 if sys.platform == "darwin" else 1024
        p, m = 2_000_000, 32
        torch.manual_seed(0)
        base = torch.randn(p, 1)
        X = base + 1e-3 * torch.randn(p, m).cumsum(1)          # float32 snapshots, 256 MB
        del base
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
        op = KoopmanOperator().fit(X)
        y = op.predict(100)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
        assert y.shape == (p,) and torch.isfinite(y).all()
        print(before, peak)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    before, peak = map(int, out.stdout.split())
    p, m = 2_000_000, 32
    # float64 copy of X, X0/X1 views, SVD factors W and B: a handful of p*m*8-byte arrays
    # (3.5 measured on Linux); a p x p operator would be 2e6 times more
    assert peak - before < 6 * p * m * 8, (peak - before) / 2**20
    assert peak < 6 * 2**30  # a p x p float64 operator would need 32 TB


def test_dtype_sets_the_window_buffer():
    model = make_model()
    rec64 = SnapshotRecorder(model, granularity="node", window=10, dtype=torch.float64)
    rec32 = SnapshotRecorder(model, granularity="node", window=10)
    train(model, rec64, 3)
    for X in rec64.snapshots():
        assert X.dtype == torch.float64
    assert rec64.memory_bytes == 2 * rec32.memory_bytes
    with pytest.raises(ValueError, match="dtype"):
        SnapshotRecorder(model, dtype=torch.int64)


def test_reset_forgets_everything_and_starts_like_new():
    model = make_model()
    rec = SnapshotRecorder(model, granularity="node", window=8, every=2, storage="auto")
    train(model, rec, 9)
    rec.reset()
    assert rec.n_snapshots == 0
    with pytest.raises(RuntimeError, match="snapshot"):
        rec.fit().predict(3)
    fresh = SnapshotRecorder(model, granularity="node", window=8, every=2, storage="auto")
    g = torch.Generator().manual_seed(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(10):
        opt.zero_grad()
        model(torch.randn(4, 3, generator=g)).sum().backward()
        opt.step()
        assert rec.record() == fresh.record()  # the cadence restarts too
    a, b = rec.fit().predict(snapshots=5), fresh.fit().predict(snapshots=5)
    for n in a:
        assert torch.equal(a[n], b[n])


def test_streaming_fallback_blocks_match_the_window():
    """A frozen unit (its weights never move) makes its Gram matrix singular: the
    streaming path refits it by eigh and still agrees with the window."""
    model = make_model()
    win = SnapshotRecorder(model, granularity="node", window=30, storage="window")
    stream = SnapshotRecorder(model, granularity="node", window=30, storage="streaming")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 3, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), x[:, :1].sin()).backward()
        model[0].weight.grad[2] = 0  # unit 2 of layer 0 never moves
        model[0].bias.grad[2] = 0
        opt.step()
        win.record()
        stream.record()
    ops = stream.fit(observables="affine")
    assert sum(op.fallback_blocks_ for op in ops.operators) >= 1
    a, b = win.fit(observables="affine").predict(10), ops.predict(10)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-6)
    # the frozen unit stays exactly where it was
    torch.testing.assert_close(b["0.weight"][2], model[0].weight[2].detach())


def test_one_forecast_predicts_many_horizons_without_refitting(monkeypatch):
    model = make_model()
    rec = SnapshotRecorder(model, granularity="layer", window=20)
    train(model, rec, 20)
    forecast = rec.fit(observables="affine", stabilize="clip")
    fits = []
    monkeypatch.setattr(KoopmanOperator, "fit", lambda *a, **k: fits.append(1))
    many = forecast.predict([2, 7])
    singles = {h: forecast.predict(h) for h in (2, 7)}
    assert not fits  # predict never refits
    monkeypatch.undo()
    for i, h in enumerate([2, 7]):
        one = rec.fit(observables="affine", stabilize="clip").predict(h)
        for n in one:
            torch.testing.assert_close(many[n][..., i], one[n])
            assert torch.equal(singles[h][n], one[n])
    with pytest.raises(ValueError, match="operators"):
        Forecast(rec.partition, forecast.operators[:0])


def test_network_fixed_point_of_a_trained_mlp_is_not_zeros():
    """The reviewed failure: network granularity, affine, predict(inf) returned all zeros."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=g)
    y = (x[:, 0] > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rec = SnapshotRecorder(model, granularity="network", window=20)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        rec.record()
    with torch.no_grad():
        loss_now = float(nn.functional.cross_entropy(model(x), y))
    fp = rec.fit(observables="affine", no_fixed_point="stay").predict(math.inf)
    assert all(float(v.abs().max()) > 1e-3 for v in fp.values())
    model.load_state_dict(fp, strict=False)
    with torch.no_grad():
        loss_fp = float(nn.functional.cross_entropy(model(x), y))
    assert loss_fp < 2 * loss_now < math.log(2)  # nowhere near the all-zero 0.693


def test_state_dict_round_trip_and_mismatch():
    """Saved mid-window and restored into a fresh recorder, recording goes on identically
    (window and streaming groups alike)."""
    model = make_model()
    storage = {4: "streaming", 9: "window"}
    rec = SnapshotRecorder(model, granularity="node", window=12, every=2, storage=storage)
    train(model, rec, 5)
    state = copy.deepcopy(rec.state_dict())
    other = SnapshotRecorder(model, granularity="node", window=12, every=2, storage=storage)
    other.load_state_dict(state)
    assert other.storage_ == ["streaming", "window"]
    g = torch.Generator().manual_seed(9)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(6):
        opt.zero_grad()
        model(torch.randn(4, 3, generator=g)).pow(2).sum().backward()
        opt.step()
        assert rec.record() == other.record()
    assert rec.n_snapshots == other.n_snapshots == 6
    a, b = (r.fit(observables="affine").predict(snapshots=4) for r in (rec, other))
    for n in a:
        assert torch.equal(a[n], b[n])
    with pytest.raises(ValueError, match="window"):
        SnapshotRecorder(model, granularity="node", window=7, every=2, storage=storage) \
            .load_state_dict(state)
    with pytest.raises(ValueError, match="granularity"):
        SnapshotRecorder(model, granularity="layer", window=12, every=2).load_state_dict(state)
    with pytest.raises(ValueError, match="shapes"):
        SnapshotRecorder(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)),
                         granularity="node",
                         window=12, every=2, storage=storage).load_state_dict(state)
    with pytest.raises(ValueError, match="signature"):
        other.load_state_dict({"model": 1})


def test_storage_choice_boundaries_and_defaults():
    model = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 2))   # node sizes 3 and 5
    assert SnapshotRecorder(model).window == 64
    # auto streams a group when 2 d < m: d = 5 streams at m = 11, not at m = 10
    assert SnapshotRecorder(model, window=11, storage="auto").storage_ == ["streaming"] * 2
    assert SnapshotRecorder(model, window=10, storage="auto").storage_ == \
        ["streaming", "window"]
    # a dict overrides only the sizes it names; unnamed sizes stay automatic
    assert SnapshotRecorder(model, window=8, storage={3: "window"}).storage_ == \
        ["window", "window"]
    assert SnapshotRecorder(model, window=2).storage_ == ["window", "window"]
    with pytest.raises(ValueError, match="every=0"):
        SnapshotRecorder(model, every=0)


def test_record_reports_whether_it_stored():
    model = make_model()
    rec = SnapshotRecorder(model, granularity="node", window=10, every=3)
    assert [rec.record() for _ in range(7)] == [True, False, False, True, False, False, True]


def test_quasi_node_recorder_passes_the_chunk():
    model = make_model()
    rec = SnapshotRecorder(model, granularity="quasi-node", chunk=2, window=10)
    assert rec.partition.chunk == 2 and {g.size for g in rec.partition.groups} <= {1, 2}
    train(model, rec, 10)
    pred = rec.fit().predict(3)
    assert set(pred) == {n for n, _ in model.named_parameters()}


def test_streaming_overflow_message_says_how_to_go_on():
    model = make_model()
    rec = SnapshotRecorder(model, granularity="node", window=3, storage="streaming")
    train(model, rec, 3)
    with pytest.raises(RuntimeError, match="window=3.*reset\\(\\)"):
        rec.record()


def test_recorder_state_edge_cases():
    model = make_model()
    fresh = SnapshotRecorder(model, granularity="node", window=8, storage="streaming")
    other = SnapshotRecorder(model, granularity="node", window=8, storage="streaming")
    other.load_state_dict(fresh.state_dict())  # nothing recorded yet: still loads
    assert other.n_snapshots == 0 and other.snapshots() == [None, None]
    rec64 = SnapshotRecorder(model, granularity="node", window=8, dtype=torch.float64)
    with pytest.raises(ValueError, match="dtype \\(saved 'torch.float32', here "
                       "'torch.float64'\\)"):
        rec64.load_state_dict(SnapshotRecorder(model, granularity="node", window=8).state_dict())


def test_fit_needs_two_snapshots_and_keeps_its_operators():
    model = make_model()
    rec = SnapshotRecorder(model, granularity="node", window=8)
    train(model, rec, 2)
    ops = rec.fit()
    assert rec.forecast_ is ops and len(ops.operators) == len(rec.partition.groups)
    assert all(op.n_snapshots_ == 2 for op in ops.operators)


def test_network_snapshots_skip_the_gather_and_layer_snapshots_keep_node_order():
    """Network granularity copies parameters straight into the ring buffer (no scratch
    vector); a single-layer 'layer' block is in node order, so it must not take that path."""
    model = make_model()
    net = SnapshotRecorder(model, granularity="network", window=5)
    p = sum(q.numel() for q in model.parameters())
    assert net.memory_bytes == 5 * p * 4  # the window only: no flat scratch
    flats = train(model, net, 7)
    torch.testing.assert_close(net.snapshots()[0][0], flats[-5:].T)
    lin = nn.Linear(3, 2)
    layer = SnapshotRecorder(lin, granularity="layer", window=4)
    assert layer.memory_bytes == 4 * 8 * 4 + 8 * 4  # window plus the flat scratch
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    seen = []
    for _ in range(4):
        opt.zero_grad()
        lin(torch.ones(1, 3)).sum().backward()
        opt.step()
        layer.record()
        seen.append(Partition(lin).flatten())
    expect = layer.partition.gather(torch.stack(seen))[0].permute(1, 2, 0)  # node order
    torch.testing.assert_close(layer.snapshots()[0], expect)
    with pytest.raises(ValueError, match="not a SnapshotRecorder state_dict"):
        layer.load_state_dict({})


def test_max_residual_keeps_badly_forecast_blocks_at_their_last_state():
    model = make_model()
    rec = SnapshotRecorder(model, granularity="node", window=12)
    train(model, rec, 12)
    with pytest.raises(ValueError, match="holdout > 0"):
        rec.fit().predict(5, max_residual=0.5)
    forecast = rec.fit(holdout=3)
    free = forecast.predict([5, 9])
    none_trusted = forecast.predict([5, 9], max_residual=1e-300)  # every block stays
    all_trusted = forecast.predict([5, 9], max_residual=1e300)
    for name, p in model.named_parameters():
        assert torch.equal(all_trusted[name], free[name])
        for i in range(2):
            torch.testing.assert_close(none_trusted[name][..., i], p.detach())
    # a mix: exactly the blocks above the threshold stay
    op = forecast.operators[0]
    cut = float(op.residual_.median())
    mixed = forecast.predict(5, max_residual=cut)
    part = rec.partition
    got = part.gather(part.flatten(mixed))[0]
    last, moved = op.predict(0), op.predict(5)
    stay = op.residual_ > cut
    assert bool(stay.any()) and bool((~stay).any())
    torch.testing.assert_close(got[stay], last[stay].float())
    torch.testing.assert_close(got[~stay], moved[~stay].float())


@pytest.mark.parametrize("stores", [None, "x", [1, 2], [[1], [2]]])
def test_a_state_with_corrupt_stores_is_refused(stores):
    model = make_model()
    rec = SnapshotRecorder(model, granularity="node", window=4)
    state = rec.state_dict()
    state["stores"] = stores if stores is not None else None
    if isinstance(stores, list) and len(stores) != len(rec.storage_):
        state["stores"] = stores[:1] * len(rec.storage_)  # right count, wrong entries
    with pytest.raises(ValueError, match="corrupt buffers"):
        rec.load_state_dict(state)


def test_a_state_of_a_model_with_other_parameter_names_is_refused():
    class Named(nn.Module):  # the same shapes as make_model(), other names
        def __init__(self):
            super().__init__()
            ref = make_model()
            self.first, self.act, self.second = ref[0], nn.Tanh(), ref[2]

        def forward(self, x):
            return self.second(self.act(self.first(x)))

    a = SnapshotRecorder(make_model(), granularity="node", window=4)
    b = SnapshotRecorder(Named(), granularity="node", window=4)
    assert [list(s) for s in a.partition.shapes] == [list(s) for s in b.partition.shapes]
    with pytest.raises(ValueError, match="names"):
        b.load_state_dict(a.state_dict())


def test_warp_refuses_an_unbounded_interval_and_works_in_float64():
    from kooptrain.recorder import warp

    X = torch.tensor([[[0.0, 1.0, 5.0, 6.0]]])
    with pytest.raises(ValueError, match="positive, finite interval lengths"):
        warp(X, (1.0, float("inf"), 1.0))
    out = warp(X, (3.0, 7.0, 1.0))  # ratios 1/3 and 1/7: float32 would round them
    assert out.dtype == torch.float64
    steps = torch.tensor([1.0, 4.0, 1.0], dtype=torch.float64) * \
        torch.tensor([1 / 3, 1 / 7, 1.0], dtype=torch.float64)
    want = 6.0 - torch.flip(torch.cumsum(torch.flip(steps, [0]), 0), [0])
    assert torch.equal(out[0, 0, :3], want) and out[0, 0, 3] == 6.0
    # the increments are taken in float64 too: in float32, 2**24 - 0.1 rounds to 2**24
    far = torch.tensor([[[0.1, 2.0**24, 2.0**24 + 4]]])
    assert torch.equal(warp(far, (1.0, 2.0)), warp(far.double(), (1.0, 2.0)))


def test_the_step_count_survives_a_reset_and_a_round_trip():
    model = make_model()
    rec = SnapshotRecorder(model, granularity="node", window=4, every=2)
    train(model, rec, 5)
    rec.reset()
    train(model, rec, 1)
    assert rec.step_count == 6 and rec.n_snapshots == 1
    other = SnapshotRecorder(model, granularity="node", window=4, every=2)
    other.load_state_dict(rec.state_dict())
    assert other.step_count == 6 and other.n_snapshots == 1


def test_a_state_of_no_known_format_is_named_as_such():
    rec = SnapshotRecorder(make_model(), window=4)
    for bad, got in ((rec.partition.model.state_dict(), "None"), ([1], "'list'")):
        with pytest.raises(ValueError, match=rf"^not a SnapshotRecorder state_dict: its 'kind' "
                                             rf"is {got}, and it has no version-1 'signature'"):
            rec.load_state_dict(bad)


def test_parameters_without_rows_are_named_as_their_own_blocks():
    model = nn.Sequential(nn.Linear(3, 4), nn.PReLU(4))  # a weight with no bias and no rows
    part = Partition(model, granularity="node")
    assert part.unsplit == ["1.weight"]
    assert Partition(nn.Linear(3, 4), granularity="node").unsplit == []


def test_a_0_1_state_of_another_chunk_is_refused():
    """0.1's recorder state (a signature beside the buffers), written by hand: loaded into a
    recorder with another quasi-node chunk, it is refused as 0.1 refused it."""
    model = make_model()
    rec = SnapshotRecorder(model, granularity="quasi-node", chunk=2, window=4)
    train(model, rec, 3)
    new = rec.state_dict()
    layout = new["layout"]
    old = {"signature": {"granularity": "quasi-node", "chunk": 2, "names": layout["names"],
                         "shapes": layout["shapes"], "window": 4, "every": 1,
                         "storage_": layout["storage_"], "dtype": layout["dtype"]},
           **{k: new[k] for k in ("calls", "n_snapshots", "stores")}}
    same = SnapshotRecorder(model, granularity="quasi-node", chunk=2, window=4)
    same.load_state_dict(old)
    assert same.n_snapshots == 3 and same.step_count == 3
    with pytest.raises(ValueError, match=r"this SnapshotRecorder state was saved with "
                                         r"different \['chunk'\]"):
        SnapshotRecorder(model, granularity="quasi-node", chunk=3, window=4).load_state_dict(old)
