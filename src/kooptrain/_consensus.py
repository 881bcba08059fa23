"""One decision for every rank: what the accelerator's choices are computed from when it
runs under ``torch.distributed``.

Replicas under DDP hold the same weights, so they record the same windows and fit the same
operators; only their closures differ (each rank judges on its own data). ``Consensus``
turns every value a decision depends on into the same value on every rank: a closure's loss
is the mean over ranks, a flag is true if it is true on any rank, and a failure on one rank
(an exception, Ctrl-C) is a failure on all of them. Single-process, it is a pass-through
that costs nothing.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from .errors import RemoteRankError

__all__ = ["Consensus"]


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


class Consensus:
    """``process_group``: ``None`` for the default group when ``torch.distributed`` is
    initialised (else one process), or a group. ``active`` is true with more than one rank.
    Communication: one all-reduce of two float64 numbers per call."""

    def __init__(self, process_group=None):
        dist = _dist()
        if process_group is not None and dist is None:
            raise ValueError("process_group was given but torch.distributed is not "
                             "initialised: call torch.distributed.init_process_group first.")
        self.group = process_group
        self.world = dist.get_world_size(process_group) if dist is not None else 1
        self.rank = dist.get_rank(process_group) if dist is not None else 0
        self.active = self.world > 1
        # NCCL reduces only CUDA tensors; gloo (and "cpu:gloo,cuda:nccl") takes host ones
        self.device = torch.device("cpu")
        if dist is not None and dist.get_backend(process_group) == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.bytes_sent = 0  # by this rank, in all-reduces

    def _reduce(self, values: list[float], op) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op, group=self.group)
        self.bytes_sent += t.numel() * t.element_size()
        return t.tolist()

    def mean(self, fn) -> float:
        """``fn()`` (a float) on every rank, averaged. If ``fn`` raises on any rank, it raises
        there and ``RemoteRankError`` is raised on the others, after the all-reduce, so no
        rank is left waiting."""
        if not self.active:
            return fn()
        error, value = None, math.nan
        try:
            value = float(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
        total, failed = self._reduce([value if error is None else 0.0,
                                      float(error is not None)], _op("SUM"))
        _raise_if(failed, error, "while evaluating the closure; every rank rolled the "
                  "attempt back.")
        return total / self.world

    @contextmanager
    def together(self, what: str):
        """A block every rank runs (e.g. construction) that fails on all ranks if it fails
        on one: ``settle`` on leaving it."""
        try:
            yield
        except BaseException as e:  # noqa: BLE001 - raised again by settle, on every rank
            self.settle(e, what)
        else:
            self.settle(None, what)

    def settle(self, error: BaseException | None, what: str) -> None:
        """After a step every rank takes (e.g. construction): if it raised on any rank,
        raise there (``error``) and ``RemoteRankError`` on the others, so that no rank goes
        on to a collective the failed one never reaches."""
        if not self.active:
            if error is not None:
                raise error
            return
        failed = self._reduce([float(error is not None), 0.0], _op("SUM"))[0]
        _raise_if(failed, error, f"while {what}.")

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` (the same shape on each), stacked: ``(world, *t.shape)``."""
        if not self.active:
            return t.unsqueeze(0)
        import torch.distributed as dist

        t = t.contiguous().reshape((1,) + tuple(t.shape))
        out = t.new_empty((self.world,) + tuple(t.shape[1:]))
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, t, group=self.group)  # the concatenation form: gloo has no other
        self.bytes_sent += t.numel() * t.element_size()
        return out

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some rank."""
        if not self.active:
            return bool(flag)
        return bool(self._reduce([float(bool(flag)), 0.0], _op("MAX"))[0])

    def check_same(self, what: str, signature: dict) -> None:
        """Raise ``ValueError`` on every rank if ``signature`` differs between ranks, naming
        the differing keys."""
        if not self.active:
            return
        import torch.distributed as dist

        sigs: list = [None] * self.world
        dist.all_gather_object(sigs, signature, group=self.group)
        differ = sorted({k for s in sigs for k in set(s) | set(signature)
                         if s.get(k) != signature.get(k)})
        if differ:
            raise ValueError(f"{what} was built with other settings on another rank "
                             f"(differing: {', '.join(differ)}); every rank must use the "
                             "same settings.")


def _raise_if(failed: float, error: BaseException | None, where: str) -> None:
    if not failed:
        return
    if error is not None:
        raise error
    raise RemoteRankError(f"{int(failed)} other rank(s) failed {where}")


def _op(name: str):
    import torch.distributed as dist

    return getattr(dist.ReduceOp, name)
