"""Three measures of one run's own work, for a clock that can be trusted on a shared machine:
wall seconds, the thread's CPU seconds, and a deterministic compute count in FLOPs.

Wall time moves by tens of percent between invocations on a busy box; thread CPU time moves
less (it does not count waiting for the other core), and the FLOP count does not move at
all. ``torch.utils.flop_counter`` counts the matrix products and convolutions of a forward
and backward pass; linear algebra it does not see (a fit's factorisations) is added from the
complexity model by the caller, and said so.
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from dataclasses import dataclass


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker, whose hooks break
    ``torch.autograd.grad`` (the derivatives of a physics-informed loss); only the total
    is needed here."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def count_flops(fn) -> tuple[object, int]:
    """``(fn(), FLOPs)``: run ``fn`` once under ``torch.utils.flop_counter.FlopCounterMode``
    and return its result with the FLOPs of the operators it dispatched (totals only, so
    ``fn`` may call ``torch.autograd.grad``)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()
    with counter:
        out = fn()
    return out, int(counter.get_total_flops())


@dataclass
class Meter:
    """Accumulates ``wall`` and ``cpu`` seconds of the code run under ``timing()``, and
    ``flops`` added with ``add_flops``. ``sync``: a function that waits for the device
    (``torch.cuda.synchronize``), called before and after each timed block, since a GPU
    runs its kernels after the call returns. ``cpu`` is the calling thread's CPU time
    (``time.thread_time``): torch's own worker threads are not in it, so compare it only
    across runs with the same thread count."""

    wall: float = 0.0
    cpu: float = 0.0
    flops: int = 0
    sync: object = None  # e.g. torch.cuda.synchronize: queued device work ends inside

    @contextmanager
    def timing(self):
        if self.sync is not None:  # the work queued before is not this block's
            self.sync()
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield self
        finally:
            if self.sync is not None:  # nor is this block's done before it has run
                self.sync()
            self.wall += time.perf_counter() - w0
            self.cpu += time.thread_time() - c0

    def add_flops(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"a FLOP count cannot be negative, got {n}.")
        self.flops += int(n)

    @classmethod
    def for_device(cls, device) -> Meter:
        """A meter that waits for ``device`` (a ``torch.device``) around each timed block."""
        import torch

        if device.type == "cuda":
            return cls(sync=functools.partial(torch.cuda.synchronize, device))
        if device.type == "mps":
            return cls(sync=torch.mps.synchronize)
        return cls()

    def as_dict(self) -> dict:
        return {"wall_seconds": self.wall, "cpu_seconds": self.cpu, "flops": self.flops}
