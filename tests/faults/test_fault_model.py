"""Fault matrix, rows 4-5: model surgery mid-training raises ``ModelChangedError`` (the
documented choice: snapshots of two layouts cannot form one window; build a new
accelerator), and mixed dtypes, frozen, tied and off-default-device parameters are
handled correctly."""

import pytest
import torch
from faultkit import identical, loss_fn, problem, sgd_step, snapshot
from torch import nn

from kooptrain import KoopmanAccelerator, ModelChangedError, Partition, SnapshotRecorder


def started(window=6):
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, window=window, every=1)
    for _ in range(3):
        sgd_step(model, opt, x, y)
        acc.step(lambda: loss_fn(model, x, y).detach())
    return model, opt, acc, x, y


def add_layer(model, opt):
    model.append(nn.Linear(1, 1))


def add_trained_layer(model, opt):
    model.append(nn.Linear(1, 1))
    opt.add_param_group({"params": model[3].parameters()})


def remove_layer(model, opt):
    del model[2]
    model.append(nn.Identity())


def replace_layer(model, opt):
    model[2] = nn.Linear(8, 1)


def reshape_weight(model, opt):
    model[0].weight.data = torch.zeros(4, 3)


def cast_model(model, opt):
    model.double()


def freeze_layer(model, opt):
    model[2].weight.requires_grad_(False)


CAST = r"'0.weight' changed from \(8, 3\) torch.float32 on cpu to \(8, 3\) torch.float64"
RESHAPE = r"'0.weight' changed from \(8, 3\) torch.float32 on cpu to \(4, 3\)"
GONE = r"new: none; gone or frozen: \['2.weight', '2.bias'\]"


@pytest.mark.parametrize("surgery,match", [
    (add_trained_layer, r"the optimizer now updates 6 parameters, not 4 \(add_param_group"),
    (remove_layer, GONE),
    (replace_layer, GONE),  # the new layer is not the optimizer's
    (reshape_weight, RESHAPE),
    (cast_model, CAST),
    (freeze_layer, r"gone or frozen: \['2.weight'\]"),
])
def test_model_surgery_raises_a_clear_error_and_changes_nothing(surgery, match):
    model, opt, acc, x, y = started()
    surgery(model, opt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = acc.step_count
    with pytest.raises(ModelChangedError, match=match) as e:
        acc.step(lambda: 1.0)
    assert "KoopmanAccelerator" in str(e.value) and "build a new" in str(e.value)
    assert isinstance(e.value, RuntimeError)
    assert identical(model.state_dict(), before) and acc.step_count == steps


@pytest.mark.parametrize("surgery,match", [
    (add_layer, r"new: \['3.weight', '3.bias'\]; gone or frozen: none"),
    (remove_layer, GONE),
    (replace_layer, r"new: \['2.weight', '2.bias'\]; gone or frozen: \['2.weight', "
                    r"'2.bias'\]"),
    (reshape_weight, RESHAPE),
    (cast_model, CAST),
    (freeze_layer, r"gone or frozen: \['2.weight'\]"),
])
def test_model_surgery_stops_the_recorder(surgery, match):
    model, x, y = problem()
    rec = SnapshotRecorder(model, granularity="node", window=5)
    rec.record()
    surgery(model, None)
    with pytest.raises(ModelChangedError, match=match):
        rec.record()
    assert rec.n_snapshots == 1


def test_a_layer_the_optimizer_does_not_train_may_be_added():
    model, opt, acc, x, y = started()
    add_layer(model, opt)  # the optimizer does not see it either: nothing to record
    assert acc.step(lambda: 1.0) is None


def test_after_surgery_a_new_accelerator_works():
    model, opt, acc, x, y = started()
    add_layer(model, opt)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, window=4, horizons=(2, 4), margin=0.0, every=1)
    for _ in range(12):
        sgd_step(model, opt, x, y)
        acc.step(lambda: loss_fn(model, x, y).detach())
    assert acc.jumps_tried >= 1


class Mixed(nn.Module):
    """float16, bfloat16, float32 and float64 layers, a frozen one and a tied pair."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 6).to(torch.float64)
        self.b = nn.Linear(6, 6).to(torch.bfloat16)
        self.c = nn.Linear(6, 6).to(torch.float16)
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)
        self.d = nn.Linear(6, 6, bias=False)
        self.e = nn.Linear(6, 6, bias=False)
        self.e.weight = self.d.weight  # tied
        self.out = nn.Linear(6, 1)

    def forward(self, x):
        h = torch.tanh(self.a(x.double())).float()
        h = torch.tanh(self.b(h.bfloat16())).float()
        h = torch.tanh(self.c(h.half())).float()
        h = torch.tanh(self.frozen(h))
        h = torch.tanh(self.e(torch.tanh(self.d(h))))
        return self.out(h)


def test_mixed_dtypes_frozen_and_tied_parameters():
    torch.manual_seed(0)
    model = Mixed()
    _, x, y = problem()
    # (Adam's eps=1e-8 underflows in float16 by itself: SGD keeps the test about kooptrain)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                          momentum=0.5)
    acc = KoopmanAccelerator(model, opt, window=5, horizons=(2, 4, 8), margin=0.05,
                             max_backoff=1, every=1)
    # buffers keep the widest dtype: float64 weights are not rounded through float32
    assert acc.recorder.dtype == torch.float64
    names = acc.recorder.partition.names
    assert "d.weight" in names and "e.weight" not in names  # tied: recorded once
    assert not any(n.startswith("frozen.") for n in names)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    frozen = {k: v.clone() for k, v in model.frozen.state_dict().items()}
    accepted = rejected = 0
    for _ in range(60):
        sgd_step(model, opt, x, y)
        before = snapshot(model, opt)
        entry = acc.step(lambda: loss_fn(model, x, y).detach())
        if entry is not None and not entry["accepted"]:
            rejected += 1
            assert identical(snapshot(model, opt), before)
        accepted += bool(entry and entry["accepted"])
        assert {n: p.dtype for n, p in model.named_parameters()} == dtypes
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
        assert model.e.weight is model.d.weight
    assert accepted >= 1 and rejected >= 1
    assert identical(model.frozen.state_dict(), frozen)


def test_a_model_off_the_default_device():
    """Default device 'meta', model on the CPU: every buffer follows the model."""
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.device("meta"):
        acc = KoopmanAccelerator(model, opt, window=4, horizons=(2, 4, 8), margin=0.0, every=1)
        for _ in range(20):
            sgd_step(model, opt, x, y)
            acc.step(lambda: loss_fn(model, x, y).detach())
        part = Partition(model, granularity="node")
        assert all(g.index.device.type == "cpu" for g in part.groups)
        rec = SnapshotRecorder(model, granularity="layer", window=3)
        for _ in range(3):
            rec.record()
        pred = rec.fit().predict(5)
    assert acc.jumps_accepted >= 1
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(t.device.type == "cpu" for t in pred.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_cuda():
    model, x, y = problem()
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = KoopmanAccelerator(model, opt, window=4, horizons=(2, 4, 8), margin=0.0, every=1)
    for _ in range(20):
        sgd_step(model, opt, x, y)
        acc.step(lambda: loss_fn(model, x, y).detach())
    assert acc.jumps_accepted >= 1
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_the_fsdp1_wrapper_is_refused_with_the_supported_way():
    """FSDP1 flattens the parameters into shards without node structure: refused by the
    wrapper's class name (checked without torch.distributed), naming fully_shard."""
    class FullyShardedDataParallel(nn.Module):  # stands in for torch's FSDP1 wrapper
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    model, x, y = problem()
    wrapped = nn.Sequential(FullyShardedDataParallel(model))
    with pytest.raises(NotImplementedError, match=r"supports FSDP2 \(torch.distributed.fsdp."
                       r"fully_shard\), not the FullyShardedDataParallel wrapper.*"
                       r"fully_shard\(model\)"):
        KoopmanAccelerator(wrapped, torch.optim.SGD(wrapped.parameters(), lr=0.1))
