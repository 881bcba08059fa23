"""When the accelerator attempts a jump: a base interval that doubles after each rejection
(up to ``max_backoff`` times the base) and resets after an acceptance."""

from __future__ import annotations


class RetrySchedule:
    """``due(step)`` says whether an attempt is allowed at optimizer step ``step``.

    >>> s = RetrySchedule(base=10, max_backoff=4)
    >>> s.rejected(step=10); s.next_attempt, s.interval
    (30, 20)
    >>> s.rejected(step=30); s.rejected(step=70); s.interval   # capped at 4 x 10
    40
    >>> s.accepted(step=110); s.next_attempt, s.interval
    (120, 10)
    """

    def __init__(self, base: int, max_backoff: int):
        self.base, self.max_backoff = base, max_backoff
        self.interval, self.next_attempt = base, 0

    def due(self, step: int) -> bool:
        return step >= self.next_attempt

    def rejected(self, step: int) -> None:
        self.interval = min(self.interval * 2, self.base * self.max_backoff)
        self.next_attempt = step + self.interval

    def accepted(self, step: int) -> None:
        self.interval = self.base
        self.next_attempt = step + self.base

    def state_dict(self) -> dict:
        return {"interval": self.interval, "next_attempt": self.next_attempt}

    def load_state_dict(self, state: dict) -> None:
        self.interval, self.next_attempt = int(state["interval"]), int(state["next_attempt"])
