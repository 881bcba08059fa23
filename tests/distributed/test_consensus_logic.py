"""``Consensus``'s decisions, in one process: ``torch.distributed`` is replaced by a fake
world of two ranks in which this process is rank 0 and rank 1's contributions are scripted,
so every rule (the mean, the flag, the failure on another rank, the gather, the settings
check) is checked against known answers without spawning ranks. The real thing, with gloo
ranks in fresh processes, is in test_ddp.py and test_fsdp.py."""

import pytest
import torch
import torch.distributed as dist

from kooptrain import RemoteRankError
from kooptrain._consensus import Consensus

GROUP = object()  # the process group the consensus was given: every collective must use it


class OtherRank:
    """What rank 1 sends: the values it adds to a SUM or offers to a MAX, its gathered
    tensor and its settings."""

    def __init__(self, values=(0.0, 0.0), tensor=None, signature=None, mirror=False):
        self.values, self.tensor, self.signature = list(values), tensor, signature
        self.mirror = mirror  # rank 1 sends whatever rank 0 sends
        self.ops, self.gathered = [], []  # the ops reduced, the dtypes gathered

    def all_reduce(self, t, op=None, group=None):
        assert group is GROUP and op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX), op
        self.ops.append(op)
        other = t.clone() if self.mirror else torch.tensor(self.values, dtype=t.dtype)
        if op == dist.ReduceOp.MAX:
            t.copy_(torch.maximum(t, other))
        else:
            t.add_(other)

    def all_gather_into_tensor(self, out, t, group=None):
        assert group is GROUP
        self.gathered.append((t.dtype, tuple(t.shape)))
        out.copy_(torch.cat([t, t if self.mirror else self.tensor.reshape(t.shape)]))

    def all_gather_object(self, out, obj, group=None):
        assert group is GROUP
        out[0], out[1] = obj, obj if self.mirror else self.signature


@pytest.fixture
def world(monkeypatch):
    """A function that makes rank 0 of a world of 2 whose rank 1 is ``OtherRank(...)``;
    ``rank`` and ``backend``: what the given group says (the default group says otherwise)."""
    def make(rank=0, backend="gloo", **other):
        peer = OtherRank(**other)
        for name, value in {"is_available": lambda: True, "is_initialized": lambda: True,
                            "get_world_size": lambda group: 2 if group is GROUP else 0,
                            "get_rank": lambda group: rank if group is GROUP else 5,
                            "get_backend": lambda group: backend if group is GROUP
                            else "gloo",
                            "all_reduce": peer.all_reduce,
                            "all_gather_into_tensor": peer.all_gather_into_tensor,
                            "all_gather_object": peer.all_gather_object}.items():
            monkeypatch.setattr(dist, name, value)
        monkeypatch.delattr(dist, "all_gather_single", raising=False)
        return Consensus(GROUP), peer
    return make


def test_the_loss_is_the_mean_over_ranks_and_each_call_sends_two_numbers(world):
    agree, peer = world(values=(3.0, 0.0))
    assert (agree.world, agree.rank, agree.active) == (2, 0, True)
    assert agree.device == torch.device("cpu")
    assert agree.mean(lambda: 1.0) == 2.0  # (1 + 3) / 2
    assert agree.bytes_sent == 16 and peer.ops == [dist.ReduceOp.SUM]
    assert agree.mean(lambda: 5.0) == 4.0 and agree.bytes_sent == 32  # it adds up


def test_rank_and_device_come_from_the_group_it_was_given(world, monkeypatch):
    agree, _ = world(rank=1)
    assert (agree.world, agree.rank) == (2, 1)
    # NCCL reduces only CUDA tensors: the consensus sends its numbers from this rank's GPU
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    agree, _ = world(backend="nccl")
    assert agree.device == torch.device("cuda", 3)
    agree, _ = world(backend="gloo")
    assert agree.device == torch.device("cpu")


def test_a_group_without_torch_distributed_is_a_clear_error():
    with pytest.raises(ValueError, match="process_group was given but torch.distributed is "
                       "not initialised: call torch.distributed.init_process_group first"):
        Consensus(GROUP)


def test_a_failure_on_another_rank_raises_here_after_the_reduce(world):
    agree, _ = world(values=(0.0, 1.0))  # rank 1 failed in its closure
    with pytest.raises(RemoteRankError, match="1 other rank\\(s\\) failed while evaluating"):
        agree.mean(lambda: 1.0)
    assert agree.bytes_sent == 16  # it took part in the reduce first, so nobody waits


def test_a_failure_here_raises_the_error_itself(world):
    agree, _ = world()

    def boom():
        raise KeyError("here")

    with pytest.raises(KeyError, match="here"):
        agree.mean(boom)
    assert agree.bytes_sent == 16


def test_a_flag_on_any_rank_is_a_flag_on_all(world):
    agree, peer = world(values=(1.0, 0.0))
    assert agree.any(False) is True and agree.any(True) is True
    agree, peer = world(values=(0.0, 0.0))
    assert agree.any(False) is False and agree.any(True) is True
    assert peer.ops == [dist.ReduceOp.MAX, dist.ReduceOp.MAX]


def test_construction_fails_on_every_rank_if_it_fails_on_one(world):
    agree, _ = world(values=(1.0, 0.0))  # rank 1 raised while building
    with pytest.raises(RemoteRankError, match="failed while building it"):
        with agree.together("building it"):
            pass
    agree, _ = world(values=(0.0, 0.0))
    with pytest.raises(ValueError, match="mine"):
        with agree.together("building it"):
            raise ValueError("mine")
    with agree.together("building it"):  # nobody failed: nothing raised
        pass
    agree, peer = world(values=(0.0, 0.0))
    agree.settle(None, "x")
    assert peer.ops == [dist.ReduceOp.SUM] and agree.bytes_sent == 16  # failures add up


def test_the_gather_stacks_every_ranks_tensor(world):
    mine = torch.arange(6.0).reshape(2, 3)
    agree, _ = world(tensor=-mine)
    out = agree.all_gather(mine)
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[0], mine) and torch.equal(out[1], -mine)
    assert agree.bytes_sent == 6 * 4
    agree.all_gather(mine)
    assert agree.bytes_sent == 2 * 6 * 4


def test_other_settings_on_another_rank_are_named(world):
    agree, _ = world(signature={"window": 6, "every": 25, "margin": 0.05})
    with pytest.raises(ValueError, match="differing: margin, window"):
        agree.check_same("KoopmanAccelerator", {"window": 5, "every": 25, "margin": 0.01})
    agree, _ = world(signature={"window": 5, "every": 25})
    agree.check_same("KoopmanAccelerator", {"window": 5, "every": 25})  # the same: silent
    agree, _ = world(signature={"window": 5, "every": 25, "extra": 1})
    with pytest.raises(ValueError, match="differing: extra"):
        agree.check_same("KoopmanAccelerator", {"window": 5, "every": 25})


def test_one_process_is_a_pass_through_that_sends_nothing():
    agree = Consensus()
    assert (agree.world, agree.rank, agree.active) == (1, 0, False)
    assert agree.mean(lambda: 2.5) == 2.5 and agree.any(True) and not agree.any(False)
    t = torch.ones(3)
    assert torch.equal(agree.all_gather(t), t.unsqueeze(0))
    agree.check_same("x", {"a": 1})
    with pytest.raises(KeyError):
        with agree.together("x"):
            raise KeyError("alone")
    assert agree.bytes_sent == 0


def test_the_accelerator_decides_over_the_group_it_is_given(world):
    """``process_group=``: the settings check runs over that group (not the default one,
    which here has no ranks), so a rank built otherwise is named."""
    from torch import nn

    from kooptrain import KoopmanAccelerator

    net = nn.Linear(3, 2)
    agree, peer = world(signature={"window": 99})
    with pytest.raises(ValueError, match="^KoopmanAccelerator was built with other settings "
                       "on another rank \\(differing: "):
        KoopmanAccelerator(net, torch.optim.SGD(net.parameters(), lr=0.1), window=5, every=1,
                           process_group=GROUP)
    assert peer.ops == [dist.ReduceOp.SUM]  # construction settled over the group first


@pytest.mark.parametrize("granularity", ["network", "node"])
def test_a_float32_model_sends_its_candidates_in_float32(world, granularity):
    """The fits run in float64 (the shared fit gathers its (m, m) factors so), but what the
    ranks gather of a judged candidate is in the model's dtype: half the bytes of float64
    (rank 1 mirrors rank 0 here)."""
    from torch import nn

    from kooptrain import KoopmanAccelerator

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    x = torch.randn(32, 3)
    y = x[:, :1].sin()
    agree, peer = world(mirror=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    acc = KoopmanAccelerator(net, opt, window=5, every=1, horizons=(2, 4),
                             granularity=granularity, process_group=GROUP)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
        acc.step(lambda: float(nn.functional.mse_loss(net(x), y).detach()))
    assert acc.jumps_tried >= 2
    factors = [g for g in peer.gathered if g[1][-2:] == (5, 5)]  # window 5
    candidates = [dtype for dtype, shape in peer.gathered if shape[-2:] != (5, 5)]
    assert len(candidates) >= acc.jumps_tried and set(candidates) == {torch.float32}
    assert all(dtype == torch.float64 for dtype, _ in factors)
    assert len(factors) == (acc.jumps_tried if granularity == "network" else 0)
