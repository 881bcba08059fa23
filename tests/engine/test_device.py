"""Device placement: results live where the inputs live.

The ``meta`` tests run everywhere; the CUDA tests run only where a GPU is present (CI has
none, and no GPU was lent to the session that wrote them).
"""

import math

import pytest
import torch
from torch import nn

from kooptrain import KoopmanOperator, Partition, SnapshotRecorder, SnapshotStatistics

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_partition_round_trip_keeps_the_device_of_each_parameter():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).to("meta")
    part = Partition(model, granularity="node")
    vec = part.flatten()
    assert vec.device.type == "meta" and vec.shape == (26,)
    blocks = part.gather(vec)
    assert all(b.device.type == "meta" for b in blocks)
    out = part.unflatten(part.scatter(blocks))
    assert all(v.device.type == "meta" and v.shape == p.shape
               for v, p in zip(out.values(), model.parameters(), strict=True))


def test_partition_refuses_parameters_on_several_devices():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2).to("meta"))
    with pytest.raises(ValueError, match="several devices"):
        Partition(model)


def test_mps_snapshots_get_a_clear_error(monkeypatch):
    class FakeMPS(torch.Tensor):
        @property
        def device(self):
            return torch.device("mps")

    X = torch.randn(2, 5).as_subclass(FakeMPS)
    with pytest.raises(TypeError, match="MPS"):
        KoopmanOperator().fit(X)


@cuda
@pytest.mark.parametrize("obs", ["identity", "affine"])
@pytest.mark.parametrize("d,m", [(6, 40), (50, 12)])
def test_cuda_engine_matches_cpu(obs, d, m):
    X = torch.randn(8, d, m, dtype=torch.float64).cumsum(-1) * 0.1
    cpu = KoopmanOperator(observables=obs, stabilize="clip", no_fixed_point="stay").fit(X)
    gpu = KoopmanOperator(observables=obs, stabilize="clip", no_fixed_point="stay").fit(X.cuda())
    h = torch.tensor([1, 7, 100], device="cuda")  # horizons on the GPU too
    got = gpu.predict(h)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), cpu.predict([1, 7, 100]), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gpu.predict(math.inf).cpu(), cpu.predict(math.inf),
                               rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gpu.trajectory(5).cpu(), cpu.trajectory(5), rtol=1e-6,
                               atol=1e-8)
    s = SnapshotStatistics.from_snapshots(X.cuda())
    torch.testing.assert_close(KoopmanOperator(observables=obs).fit_statistics(s).predict(9).cpu(),
                               KoopmanOperator(observables=obs).fit(X).predict(9),
                               rtol=1e-6, atol=1e-8)


@cuda
def test_cuda_recorder_returns_parameters_on_the_model_device():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).cuda()
    rec = SnapshotRecorder(model, granularity="node", window=20, storage="auto")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(64, 3, device="cuda")
    for _ in range(20):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), x[:, :1]).backward()
        opt.step()
        rec.record()
    pred = rec.fit(observables="affine").predict(10)
    for n, p in model.named_parameters():
        assert pred[n].device == p.device and pred[n].dtype == p.dtype
    model.load_state_dict(pred, strict=False)
