"""When the accelerator attempts a jump: a base interval that doubles after each rejection
(up to ``max_backoff`` times the base) and resets after an acceptance (``RetrySchedule``);
or one that doubles after each attempt that does not pay for itself, up to a bounded
overhead (``PayoffSchedule``). Both speak one protocol: ``due(step)`` before an attempt,
``settle(step, attempt)`` after it (``attempt``: an ``Attempt``)."""

from __future__ import annotations

import math

from ._attempt import Attempt

__all__ = ["PayoffSchedule", "RetrySchedule"]


class RetrySchedule:
    """``due(step)`` says whether an attempt is allowed at optimizer step ``step``.

    >>> s = RetrySchedule(base=10, max_backoff=4)
    >>> s.settle(10, Attempt(step=10)); s.next_attempt, s.interval
    (30, 20)
    >>> s.settle(30, Attempt(step=30)); s.settle(70, Attempt(step=70)); s.interval  # 4 x 10
    40
    >>> s.settle(110, Attempt(step=110, accepted=True)); s.next_attempt, s.interval
    (120, 10)
    """

    def __init__(self, base: int, max_backoff: int):
        self.base, self.max_backoff = base, max_backoff
        self.interval, self.next_attempt = base, 0

    def due(self, step: int) -> bool:
        return step >= self.next_attempt

    def settle(self, step: int, attempt: Attempt) -> None:
        """Schedule the next attempt after ``attempt``, made at optimizer step ``step``."""
        self.interval = self.base if attempt.accepted else \
            min(self.interval * 2, self.base * self.max_backoff)
        self.next_attempt = step + self.interval

    def state_dict(self) -> dict:
        return {"interval": self.interval, "next_attempt": self.next_attempt}

    def load_state_dict(self, state: dict) -> None:
        self.interval, self.next_attempt = int(state["interval"]), int(state["next_attempt"])


class PayoffSchedule(RetrySchedule):
    """Attempt at the base interval while jumps pay for themselves; back off towards a
    bounded overhead while they do not. Every quantity is a count or a judged loss, which
    all ranks agree on, so the ranks stay in step and a resumed run decides as before.

    After each attempt (``settle``):

    * its **cost** is ``evaluations * eval_cost`` optimizer steps (``eval_cost``: one
      closure call, or one BatchNorm refresh batch, in optimizer steps; ``None`` until the
      owner sets it, e.g. from the first attempt's FLOPs, before settling an attempt with
      closure calls);
    * its **gain** is how many steps of plain training would have lowered the judged loss as
      much as the kept jump did: the jump's drop over the judged loss's fall per step since
      the previous attempt ended, both in ``log`` of the loss when all three losses are
      positive (a loss that falls geometrically is then measured exactly), else in the
      loss itself; never more than the jump's horizon. A rejected attempt gains nothing.
      Without a measured fall (the first attempt, or a loss that did not fall) a kept jump
      gains its horizon;
    * an attempt **pays** when its gain exceeds its cost. Then the interval returns to the
      base; otherwise it doubles, up to the interval at which attempts cost at most
      ``max_overhead`` of the training steps (``cost / max_overhead``), so that a run in
      which jumps never pay is at most that much slower, yet still tries now and then; and
      at least up to ``max_backoff`` times the base, as ``RetrySchedule`` backs off.

    >>> s = PayoffSchedule(base=10, eval_cost=2.0, max_overhead=0.05, max_backoff=8)
    >>> a = Attempt(step=10, loss_before=1.0, loss_after=1.2, evaluations=3)
    >>> s.settle(10, a)                                      # cost 6, no gain
    >>> s.interval, s.next_attempt, a.gain_steps, a.cost_steps
    (20, 30, 0.0, 6.0)
    >>> a = Attempt(step=30, accepted=True, loss_before=0.8, loss_after=0.79, horizon=64,
    ...             evaluations=3)                           # log(1/0.8)/20 a step
    >>> s.settle(30, a); s.interval, round(a.gain_steps, 2)  # log(0.8/0.79) / that
    (40, 1.13)
    >>> for step in (70, 150, 310):                          # never pays: 6 / 0.05 = 120
    ...     s.settle(step, Attempt(step=step, loss_before=0.7, evaluations=3))
    >>> s.interval
    120
    >>> a = Attempt(step=430, accepted=True, loss_before=0.6, loss_after=0.5, horizon=64,
    ...             evaluations=3)                           # worth 142 > 64 steps
    >>> s.settle(430, a); s.interval, a.gain_steps
    (10, 64.0)
    """

    def __init__(self, base: int, eval_cost: float | None, max_overhead: float,
                 max_backoff: int = 8):
        super().__init__(base, max_backoff)
        self.eval_cost, self.max_overhead = eval_cost, max_overhead
        self._end: tuple[int, float] | None = None  # (step, judged loss) after the last

    def settle(self, step: int, attempt: Attempt) -> None:
        """Account for ``attempt``, made at optimizer step ``step`` (its ``gain_steps`` and
        ``cost_steps`` are set), and schedule the next one."""
        before, after = attempt.loss_before, attempt.loss_after
        cost = attempt.evaluations * self.eval_cost if attempt.evaluations else 0.0
        gain = 0.0
        if attempt.accepted:
            h = attempt.horizon
            cap = float(h) if isinstance(h, int) else math.inf
            gain = cap
            if self._end is not None and step > self._end[0]:
                prev, now, jumped = _scale(self._end[1], before, after)
                rate = (prev - now) / (step - self._end[0])
                if rate > 0:
                    gain = min(cap, (now - jumped) / rate)
        if before is not None and math.isfinite(before):
            self._end = (step, after if attempt.accepted else before)
        attempt.gain_steps, attempt.cost_steps = gain, cost
        # never busier than RetrySchedule: a cheap judge must not make attempts frequent
        longest = max(self.base * self.max_backoff, math.ceil(cost / self.max_overhead))
        self.interval = self.base if gain > cost else min(self.interval * 2, longest)
        self.next_attempt = step + self.interval

    def state_dict(self) -> dict:
        return {**super().state_dict(), "eval_cost": self.eval_cost,
                "end": None if self._end is None else list(self._end)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("eval_cost") is not None:  # a measured cost (states before 0.3: none)
            self.eval_cost = float(state["eval_cost"])
        end = state["end"]
        self._end = None if end is None else (int(end[0]), float(end[1]))


def _scale(*losses: float) -> tuple[float, ...]:
    """The losses in the scale the gain is measured in: ``log`` when all are positive."""
    if all(v > 0 for v in losses):
        return tuple(math.log(v) for v in losses)
    return losses
