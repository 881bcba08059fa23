"""The records of one jump attempt: ``Attempt`` (what ``KoopmanAccelerator.history`` holds,
with the same fields whatever the mode) and ``Candidate`` (weights to try, by name)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

__all__ = ["ATTEMPT_FIELDS", "Attempt", "Candidate"]


@dataclasses.dataclass
class Attempt:
    """One attempt at optimizer step ``step``; ``as_dict()`` is its ``history`` entry.

    horizon : the kept candidate's horizon in optimizer steps (``math.inf``: the fixed point;
        ``None``: nothing kept, or a candidate without a horizon).
    accepted : whether the jump was kept.
    loss_before, loss_after : the closure's loss at the current weights and at the best
        candidate (``None`` when not judged).
    evaluations : closure calls; ``screen_evaluations``: screen calls.
    seconds : the attempt's wall time; ``fit_seconds``: of it, fitting and predicting.
    reason : why nothing was kept (``None`` if accepted).
    fitted : whether the predictor ran (a fit was made), successfully or not.
    screen_before, screen_after : the screen's losses (``step(screen=...)`` only).
    gain_steps, cost_steps : the payoff controller's accounting (``max_overhead`` only).
    """

    step: int
    horizon: int | float | None = None
    accepted: bool = False
    loss_before: float | None = None
    loss_after: float | None = None
    evaluations: int = 0
    seconds: float = 0.0
    reason: str | None = None
    fitted: bool = False
    fit_seconds: float = 0.0
    screen_before: float | None = None
    screen_after: float | None = None
    screen_evaluations: int = 0
    gain_steps: float | None = None
    cost_steps: float | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


ATTEMPT_FIELDS = tuple(f.name for f in dataclasses.fields(Attempt))


class Candidate(NamedTuple):
    """Weights to try: ``values`` ``{name: tensor}``, predicted ``horizon`` optimizer steps
    ahead, and the ``loss`` they were judged at."""

    horizon: int | float | None
    loss: float
    values: dict[str, torch.Tensor]
