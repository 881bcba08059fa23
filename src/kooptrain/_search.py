"""Where a jump may land, judged: the candidates of a predictor walked in order of horizon
and judged by the closure (or first by a cheap screen, whose winner the closure confirms),
every point given its BatchNorm statistics alike, every decision agreed by all ranks."""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from ._attempt import Attempt, Candidate
from ._consensus import Consensus
from ._predictors import PredictorSpec
from ._state_policy import StatePolicy
from ._transaction import Transaction

__all__ = ["CandidateSearch", "as_float"]


def as_float(value, what: str) -> float:
    """A closure's loss as a float: a number or a one-element tensor."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{what} must return a scalar loss; got a tensor of shape "
                             f"{tuple(value.shape)}. Reduce it (e.g. .mean()) first.")
        return float(value.detach())
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must return a number or a one-element tensor, got "
                        f"{type(value).__name__}.") from e


class CandidateSearch:
    """``run(...)`` finds the best candidate of one attempt.

    predict : ``f(recorder, spec) -> [(horizon, values or a callable giving them)]``.
    spec : the ``PredictorSpec``; with an ``LRClock``, its ``spacing`` is filled in per run.
    """

    def __init__(self, predict, spec: PredictorSpec, consensus: Consensus,
                 policy: StatePolicy, margin: float, lr_clock=None):
        self.predict, self.spec, self.agree = predict, spec, consensus
        self.policy, self.margin, self.lr_clock = policy, margin, lr_clock

    def beats(self, loss: float, before: float | None) -> bool:
        """Whether ``loss`` is an improvement by ``margin`` on ``before``."""
        return before is not None and loss < (1 - self.margin) * before

    def run(self, recorder, closure, screen, tx: Transaction, attempt: Attempt
            ) -> tuple[Candidate | None, str | None, bool]:
        """``(best candidate or None, why not, whether the window must start afresh)``;
        ``attempt`` gets the judged losses and the counts. With ``screen``, the ladder is
        walked on it and its best candidate confirmed by ``closure``."""
        if screen is not None:
            return self._screen_and_confirm(recorder, closure, screen, tx, attempt)
        self.policy.prepare(tx)  # the current weights: judged as the candidates are
        before = attempt.loss_before = self.judge(closure, attempt)
        if not math.isfinite(before):
            return None, "non-finite loss before the jump: window skipped", True
        best, reason = self._ladder(recorder, closure, tx, attempt)
        return best, reason, False

    def judge(self, fn, attempt: Attempt, what: str = "closure") -> float:
        loss = self.agree.mean(lambda: as_float(fn(), f"{what}()"))
        if what == "closure":
            attempt.evaluations += 1
        else:
            attempt.screen_evaluations += 1
        return loss

    def _screen_and_confirm(self, recorder, closure, screen, tx, attempt):
        before = attempt.screen_before = self.judge(screen, attempt, "screen")
        if not math.isfinite(before):
            return None, "non-finite screened loss before the jump: window skipped", True
        best, reason = self._ladder(recorder, screen, tx, attempt, "screen")
        attempt.screen_after = None if best is None else best.loss
        if best is None or not self.beats(best.loss, before):
            return None, reason or "no candidate improved the screened loss", False
        tx.restore_parameters()  # the current weights and statistics, bit for bit
        self.policy.prepare(tx)
        before = attempt.loss_before = self.judge(closure, attempt)
        if not math.isfinite(before):
            return None, "non-finite loss before the jump: window skipped", True
        tx.assign(best.values)
        self.policy.prepare(tx)
        loss = self.judge(closure, attempt)
        if not math.isfinite(loss):
            return None, "the screened candidate's loss is not finite", False
        confirmed = best._replace(loss=loss)
        return confirmed, (None if self.beats(loss, before)
                           else "the closure did not confirm the screened candidate"), False

    def _ladder(self, recorder, judge, tx, attempt, what: str = "closure"):
        """``(best candidate or None, failure reason)`` along the predictor's candidates;
        stops once the loss turns up again along the path (QuACK)."""
        spec = self.spec if self.lr_clock is None else \
            dataclasses.replace(self.spec, spacing=self.lr_clock.spacing)
        failure, t0 = None, time.perf_counter()
        attempt.fitted = True
        try:
            candidates = self.predict(recorder, spec)
        except (FloatingPointError, ValueError) as e:
            candidates, failure = [], f"fit or prediction failed: {e}"[:200]
        attempt.fit_seconds += time.perf_counter() - t0
        if self.agree.any(failure is not None):
            return None, failure or "fit or prediction failed on another rank"
        best = None
        for h, vals in candidates:
            vals = vals() if callable(vals) else vals  # shared fits gather when judged
            if self.agree.any(not all(bool(torch.isfinite(v).all()) for v in vals.values())):
                return best, "non-finite prediction"
            tx.assign(vals)
            if what == "closure":
                self.policy.prepare(tx)
            else:
                tx.restore_buffers()  # screened on the statistics of before, as its baseline
            loss = self.judge(judge, attempt, what)
            if not math.isfinite(loss):
                break
            if best is None or loss < best.loss:
                best = Candidate(h, loss, vals)
            elif loss > best.loss:
                break
        return best, None
