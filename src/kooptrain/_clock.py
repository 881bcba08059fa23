"""Learning-rate time: how long each interval between a window's snapshots lasted, measured
as the learning rate summed over its optimizer steps. The accelerator (``clock="lr"``) and
the monitor (``optimizer=``) both read their windows on this clock, so a warm-up or a decay
of the schedule is not read as growth or decay of the dynamics."""

from __future__ import annotations

from collections import deque

__all__ = ["LRClock"]


class LRClock:
    """The summed learning rate (of ``optimizer.param_groups[0]``) of each of the last
    ``window - 1`` intervals between snapshots.

    Call ``tick(recorded)`` once per optimizer step, after ``optimizer.step()`` and
    ``scheduler.step()``, with whether that step took a snapshot: the lr read then is the
    one the *next* optimizer step uses, so an interval sums the lrs of the steps between
    its two snapshots.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> clock = LRClock(opt, window=3)
    >>> for step in range(1, 6):                 # snapshots at steps 1, 3 and 5
    ...     if step == 2:
    ...         opt.param_groups[0]["lr"] = 0.5  # the schedule halves the lr from step 3 on
    ...     clock.tick(recorded=step % 2 == 1)
    >>> clock.spacing                            # steps 2-3: 1.0 + 0.5; steps 4-5: 0.5 + 0.5
    (1.5, 1.0)
    """

    def __init__(self, optimizer, window: int):
        if not getattr(optimizer, "param_groups", None):
            raise TypeError(f"learning-rate time needs a torch.optim.Optimizer (it reads "
                            f"param_groups[0]['lr']), got {type(optimizer).__name__}.")
        self.optimizer = optimizer
        self._spacing: deque[float] = deque(maxlen=window - 1)
        self._running = 0.0
        self._started = False

    @property
    def spacing(self) -> tuple[float, ...]:
        """The intervals' lengths, oldest first (``window - 1`` once the window is full)."""
        return tuple(self._spacing)

    def tick(self, recorded: bool) -> None:
        if recorded:
            if self._started:
                self._spacing.append(self._running)
            self._started, self._running = True, 0.0
        self._running += float(self.optimizer.param_groups[0]["lr"])

    def reset(self) -> None:
        """Forget the window (with the recorder's ``reset()``)."""
        self._spacing.clear()
        self._running, self._started = 0.0, False

    def state_dict(self) -> dict:
        return {"spacing": list(self._spacing), "running": self._running,
                "started": self._started}

    def load_state_dict(self, state: dict) -> None:
        self._spacing.clear()
        self._spacing.extend(float(v) for v in state["spacing"])
        self._running, self._started = float(state["running"]), bool(state["started"])
