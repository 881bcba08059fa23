"""What a judged candidate costs, in optimizer steps, counted in FLOPs and never timed: the
payoff controller's ``eval_cost="flops"``. ``StepFlops`` counts one training step of the
model (``torch.utils.flop_counter``), from its first forward pass with gradients to the
next ``optimizer.step()`` (so micro-batches of gradient accumulation and the inner
evaluations of L-BFGS are all in it); ``count()`` counts anything else, e.g. an attempt.
Counts depend on shapes only, so every rank and a resumed run get the same numbers."""

from __future__ import annotations

import contextlib

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["StepFlops", "count"]


def _counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` that counts the total only. Its per-module tracker hooks every
    module's backward, which breaks ``torch.autograd.grad`` on a leaf input (a PINN's
    derivatives, an HNN's: "A leaf node was passed to _will_engine_execute_node"); the
    total needs no tracker, so it gets one that puts every count under "Global"."""
    mode = FlopCounterMode(display=False)
    if hasattr(mode, "mod_tracker"):
        mode.mod_tracker = _GlobalOnly()
    return mode


class _GlobalOnly:
    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


@contextlib.contextmanager
def count():
    """``with count() as c: ...``, then ``c.flops``: the FLOPs of the matrix products,
    convolutions and attention run inside (``FlopCounterMode``'s; factorisations such as an
    SVD have no formula there and count 0)."""
    mode = _counter()
    result = _Count()
    with mode:
        yield result
    result.flops = int(mode.get_total_flops())


class _Count:
    flops = 0


class StepFlops:
    """Counts the FLOPs of one training iteration, through optimizer hooks that remove
    themselves when done (or at ``close()``).

    An iteration runs from the end of one ``optimizer.step()`` to the end of the next: the
    forward and backward passes (all micro-batches of gradient accumulation), the step
    itself (L-BFGS's inner evaluations) and whatever else the loop runs in between. The
    count is the smallest of the first ``iterations`` iterations, so an evaluation that
    runs now and then, or before training, is not in it; what runs inside ``exclude()``
    (the accelerator's own attempts) never is.

    >>> from torch import nn
    >>> model = nn.Linear(8, 4)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> meter = StepFlops(opt, iterations=2)
    >>> for _ in range(3):
    ...     model(torch.randn(16, 8)).sum().backward(); opt.step()
    >>> meter.flops        # forward 2*16*8*4, backward (weights only: x needs no grad) same
    2048
    """

    def __init__(self, optimizer: torch.optim.Optimizer, iterations: int = 3):
        self.flops: int | None = None
        self._left, self._seen = iterations, []
        self._mode: FlopCounterMode | None = None
        self._excluded = 0
        self._hooks = []
        if hasattr(optimizer, "register_step_post_hook"):
            self._hooks.append(optimizer.register_step_post_hook(self._tick))

    @property
    def so_far(self) -> int | None:
        """``flops`` once done, before that the smallest iteration counted yet (or None)."""
        return self.flops if self.flops is not None else min(self._seen, default=None)

    def _tick(self, *_) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
            self._seen.append(int(mode.get_total_flops()) - self._excluded)
            self._left -= 1
        if self._left > 0:
            self._excluded = 0
            self._mode = _counter()
            self._mode.__enter__()
        else:
            self.flops = min(self._seen)
            self.close()

    @contextlib.contextmanager
    def exclude(self):
        """What runs inside is not counted as training."""
        if self._mode is None:
            yield
            return
        start = self._mode.get_total_flops()
        try:
            yield
        finally:
            if self._mode is not None:
                self._excluded += self._mode.get_total_flops() - start

    def close(self) -> None:
        """Remove the hooks (a count under way is dropped)."""
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        for h in self._hooks:
            h.remove()
        self._hooks = []
