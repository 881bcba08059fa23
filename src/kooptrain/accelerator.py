"""Verified Koopman jumps inside an ordinary PyTorch training loop.

``KoopmanAccelerator`` records the weights while the user's optimizer trains,
fits Koopman operators to the recorded window, and tries a jump: it predicts the
weights at several horizons, lets the user's ``closure`` (a loss evaluation)
judge each candidate, and keeps the best one only if it beats the current loss.
A rejected jump restores the weights bit for bit and leaves the optimizer alone.

Design in the spirit of timm's ``Lookahead`` and ``torch.optim.swa_utils``: it
wraps nothing, holds only its own state, and is one line in the loop. Knows
modules and optimizers; no data, no problems.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from ._consensus import Consensus
from ._predictors import PREDICTORS, PredictorSpec, custom, shared_koopman, split_koopman
from ._schedule import PayoffSchedule, RetrySchedule
from ._transaction import MOMENTUM_KEYS, Transaction
from ._validation import (
    check_bool,
    check_choice,
    check_fraction,
    check_horizon_list,
    check_int,
    check_optional_int,
    check_positive,
    check_signature,
)
from .errors import ModelChangedError
from .koopman import FitSettings
from .partition import GRANULARITIES
from .recorder import SnapshotRecorder

__all__ = ["KoopmanAccelerator", "PREDICTORS", "STATE_POLICIES"]

STATE_POLICIES = ("keep", "momentum", "reset")
CLOCKS = ("steps", "lr")
BN_REFRESH = ("each", "kept")


def _as_float(value, what: str) -> float:
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


class KoopmanAccelerator:
    """Koopman jumps for any torch optimizer, verified by the loss and undone when bad.

    Call ``step(closure)`` right after each ``optimizer.step()``. Every ``every``
    optimizer steps it records the parameters the optimizer trains (frozen ones and
    ones outside the optimizer are never recorded or moved); once ``window``
    snapshots are held it attempts a jump (then again every ``interval`` steps,
    backing off after rejections):

    1. fit one operator per block (``granularity``, ``observables``, ``stabilize``);
    2. predict the weights ``h`` optimizer steps ahead for every ``h`` in
       ``horizons`` (one fit, all horizons by repeated squaring);
    3. evaluate ``closure()`` at the current weights and at each candidate, in
       order of ``h``, stopping once the loss turns up again;
    4. accept the best candidate if its loss is below
       ``(1 - margin) * loss_before`` and finite; otherwise restore the weights
       exactly. After an accepted jump the optimizer state follows
       ``optimizer_state`` and the window starts afresh.

    Parameters
    ----------
    model : nn.Module
    optimizer : torch.optim.Optimizer
        Any optimizer over (some of) the model's parameters. Only its ``state``
        is touched, and only after an accepted jump.
    window : int >= 2
        Snapshots per fit (``m``). Default 6.
    every : int >= 1
        Optimizer steps between snapshots. Default 25: the coarse cadence that was never
        more than 5% slower than plain training on the race's five workloads, and that
        paid on the deep ones (``docs/accelerator.md``, "Designs on the race's
        workloads"). For short full-batch problems (a few hundred steps), ``every=1,
        window=10`` jumps sooner and more often.
    granularity : one of ``GRANULARITIES``
        Which weights share an operator. Default ``"network"``: one whole-network
        operator in the exact low-rank form (memory ``O(p m)``), one fit per
        attempt.
    observables, stabilize, rank : engine options (see ``KoopmanOperator``).
    predictor : {"koopman", "linear", "average"} or callable
        ``"koopman"``: the fitted operator. ``"linear"``: the ablation
        ``x_t + (h / every) (x_t - x_{t-every})``. ``"average"``: the mean of the
        window (LAWA), one candidate. A callable ``f(X) -> Y`` maps each block group's
        window ``X`` ``(B, d, m)`` (time last) to the weights to try, ``Y`` ``(B, d)``:
        one candidate without a horizon (e.g. RNA or Anderson extrapolation). All go
        through the same verification.
    horizons : sequence of int, optional
        Candidate horizons in optimizer steps, multiples of ``every``. Default
        ``every * (2, 4, ..., 64)``: 50..1600 steps at the default cadence.
    fixed_point : bool
        Also try the lambda ~ 1 fixed point (blocks without one stay put).
    time : {"steps", "lr"}
        The clock the window is fitted in. ``"steps"`` (default): snapshots are ``every``
        optimizer steps apart. ``"lr"``: learning-rate time, for schedules (warm-up,
        cosine decay): each interval between snapshots lasts the sum of the first
        parameter group's ``lr`` read at every ``step()`` call in it, and the window is
        resampled to even intervals of the last one's length before the fit
        (``recorder.warp``), so a horizon ``h`` means ``h`` steps at the current
        learning rate. Under a constant lr both clocks give the same jumps, bit for bit.
    max_residual : float, optional
        Score every block by its held-out forecast error (``holdout =
        max(1, window // 4)`` snapshots, ``KoopmanOperator.residual_``); blocks
        above this relative error do not jump (they keep their current weights).
        Meant for layer or node granularity; off by default.
    interval : int, optional
        Optimizer steps between attempts; default ``window * every``. After a
        rejection the interval doubles (up to ``max_backoff`` times the base);
        an acceptance resets it.
    max_overhead : float in (0, 1), optional
        Turn on the payoff controller instead: an attempt *pays* when the optimizer steps
        its kept jump saved (the judged loss's drop over its recent fall per step, at most
        the horizon) exceed its cost (``evaluations * eval_cost``). A paying attempt resets
        the interval; any other doubles it, up to the interval at which attempts cost
        ``max_overhead`` of the training steps (and at least to ``max_backoff`` times the
        base). So where jumps never pay the run is at most
        about that much slower, and still probes now and then. ``history`` entries then
        carry ``gain_steps`` and ``cost_steps``. Counts and judged losses only: the same
        on every rank and on resume.
    eval_cost : float > 0
        One closure call's cost in optimizer steps, the controller's currency. Default
        1/3: a forward pass on a batch like the training batch (a step is forward and
        backward). Judging on a larger batch, or refreshing BatchNorm, costs more.
    optimizer_state : {"keep", "momentum", "reset"}
        After an accepted jump: keep the state, zero first moments / momentum
        buffers (``exp_avg``, ``momentum_buffer``), or clear it entirely.
        Default ``"momentum"``: a first moment points along the old path
        (Leap+Verify).
    margin : float in [0, 1)
        Relative improvement a candidate must show to be accepted; the default 0.01
        rejects jumps that barely help.
    bn_loader : iterable, optional
        A few batches for ``torch.optim.swa_utils.update_bn(bn_loader, model)``, which
        recomputes BatchNorm's running statistics; the kept jump's weights always get
        statistics of their own. Without it, every point of an attempt is judged with the
        running statistics training left, and they stay as they were (a train-mode
        closure's forward passes do not leak into them).
    bn_refresh : {"each", "kept"}
        With ``bn_loader``, which points are judged with refreshed statistics. ``"each"``
        (default): every judged point, the current weights included, so both sides of a
        comparison are judged on equal terms and a refresh alone never wins a jump.
        ``"kept"``: every point is judged with the running statistics training left (a
        candidate's are then those of the weights before it); only the kept jump's are
        refreshed. A rejection restores the statistics of before either way.
    max_history : int
        Attempts kept in ``history`` (oldest dropped first).
    process_group : optional ``torch.distributed`` group
        Under ``torch.distributed`` (the default group once it is initialised, or this
        one), every decision is taken once for all ranks: the closure's loss is the mean
        over ranks, a skip on one rank is a skip on all, and an exception or Ctrl-C in one
        rank's closure rolls back every rank and raises on every rank (the others raise
        ``RemoteRankError``). So DDP replicas accept the same jumps and stay bit-identical.
        Construction checks that every rank has the same settings. Communication happens
        only in attempts: one all-reduce of two numbers per closure call and per check.
    writer : optional ``torch.utils.tensorboard.SummaryWriter`` for scalars.

    Attributes
    ----------
    history : deque of dict, one per attempt: ``step``, ``horizon`` (chosen, or
        ``None``), ``accepted``, ``loss_before``, ``loss_after`` (best
        candidate), ``evaluations`` (closure calls), ``seconds``, ``reason``
        (``None`` if accepted).
    jumps_tried, jumps_accepted : counters.
    steps_jumped : the sum of the accepted horizons: how many optimizer steps the
        kept jumps extrapolated over. It is not the number of steps saved to reach a
        loss (a jump of ``h`` steps is rarely worth ``h`` optimizer steps); the race
        (``kooptrain race``) measures that.

    Faults: an attempt whose window holds a NaN/Inf weight, or whose loss before
    the jump is not finite, is skipped (``reason`` says so) and the window starts
    afresh; the model is not touched. So is a window in which the weights did not
    move between two snapshots (``step()`` called twice per optimizer step, or
    without one): that also warns, once. An exception or Ctrl-C inside an attempt
    restores the weights, the optimizer state and the buffers, then propagates.
    ``step`` raises ``ModelChangedError`` once the model's parameters (or the
    optimizer's) changed since construction: build a new accelerator then.

    The closure evaluates the loss without calling ``backward`` and should not
    draw from the training RNG (use a fixed evaluation batch); wrap it in
    ``torch.no_grad()`` when the loss needs no autograd. Whatever it measures is what
    jumps optimise: judged on training data, they can fit that data sooner and overfit
    sooner (see "Using it in your loop" in ``docs/accelerator.md``).

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.05)
    >>> x, y = torch.randn(64, 4), torch.randn(64, 1)
    >>> loss = lambda: nn.functional.mse_loss(model(x), y)
    >>> acc = KoopmanAccelerator(model, opt, every=1, window=10, horizons=(10, 100))
    >>> for _ in range(40):
    ...     opt.zero_grad(); loss().backward(); opt.step()
    ...     _ = acc.step(lambda: loss().detach())
    >>> acc.jumps_accepted >= 1
    True
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        window: int = 6,
        every: int = 25,
        granularity: str = "network",
        observables: str = "affine",
        stabilize: str | None = "clip",
        rank: int | None = None,
        predictor: str = "koopman",
        horizons: Sequence[int] | None = None,
        fixed_point: bool = False,
        max_residual: float | None = None,
        interval: int | None = None,
        max_backoff: int = 8,
        max_overhead: float | None = None,
        eval_cost: float = 1 / 3,
        optimizer_state: str = "momentum",
        margin: float = 0.01,
        time: str = "steps",
        bn_loader=None,
        bn_refresh: str = "each",
        max_history: int = 10_000,
        writer=None,
        process_group=None,
    ):
        # one rank failing here must not leave the others waiting in a collective below
        self._consensus = agree = Consensus(process_group)
        with agree.together("building KoopmanAccelerator"):
            if not isinstance(model, nn.Module):
                raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
            if not isinstance(optimizer, torch.optim.Optimizer) and not hasattr(optimizer, "state"):
                raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                                f"{type(optimizer).__name__}.")
            window = check_int(window, "window", 2)
            every = check_int(every, "every", 1)
            max_backoff = check_int(max_backoff, "max_backoff", 1)
            max_history = check_int(max_history, "max_history", 1)
            check_choice(granularity, "granularity", GRANULARITIES)
            if not callable(predictor):
                check_choice(predictor, "predictor", tuple(PREDICTORS))
            check_choice(optimizer_state, "optimizer_state", STATE_POLICIES)
            check_choice(time, "time", CLOCKS)
            check_choice(bn_refresh, "bn_refresh", BN_REFRESH)
            if horizons is None:
                horizons = tuple(every * 2**k for k in range(1, 7))
            hs = check_horizon_list(horizons, "horizons", every)
            interval = check_optional_int(interval, "interval")
            max_residual = check_positive(max_residual, "max_residual", optional=True)
            if max_residual is not None and window < 3:
                raise ValueError("max_residual needs window >= 3 (a held-out snapshot and a fit).")
            margin = check_fraction(margin, "margin")
            # the engine validates its own options now, not at the first jump
            FitSettings(observables=observables, rank=rank, stabilize=stabilize)
            self.model, self.optimizer = model, optimizer
            self.window, self.every, self.predictor = window, every, predictor
            self._predict = custom(predictor) if callable(predictor) else PREDICTORS[predictor]
            self.horizons = hs
            self.fixed_point, self.margin = check_bool(fixed_point, "fixed_point"), margin
            self.max_residual = max_residual
            self.time = time
            # lr time: the summed lr of each interval between the window's snapshots, and
            # of the interval under way
            self._spacing: deque[float] = deque(maxlen=window - 1)
            self._lr_sum = 0.0
            self.optimizer_state, self.bn_loader, self.writer = optimizer_state, bn_loader, writer
            self.bn_refresh = bn_refresh
            self.engine_options = {"observables": observables, "stabilize": stabilize,
                                   "rank": rank, "no_fixed_point": "stay"}
            self._spec = PredictorSpec(tuple(hs), every, self.engine_options, max_residual,
                                       max(1, window // 4), self.fixed_point)
            self.base_interval = interval or window * every
            self.max_backoff = max_backoff
            self.max_overhead = check_positive(max_overhead, "max_overhead", optional=True)
            if self.max_overhead is not None and self.max_overhead >= 1:
                raise ValueError(f"max_overhead={max_overhead!r} must lie in (0, 1): the share "
                                 "of the training steps that attempts may cost while jumps "
                                 "do not pay (e.g. 0.05), or None.")
            self.eval_cost = check_positive(eval_cost, "eval_cost")
            self._schedule = RetrySchedule(self.base_interval, max_backoff) \
                if self.max_overhead is None else \
                PayoffSchedule(self.base_interval, self.eval_cost, self.max_overhead,
                               max_backoff)
            params = _optimized_parameters(model, optimizer)
            _refuse_flat_sharding(model)
            self._n_owned = _n_owned(optimizer)
            self.recorder = SnapshotRecorder(model, granularity=granularity, window=window,
                                             every=every, storage="window",
                                             dtype=_buffer_dtype(params), params=params)
            self.history: deque[dict] = deque(maxlen=max_history)
            part = self.recorder.partition
            if part.sharded:
                _check_shards(params, part, agree, granularity, predictor)
            if agree.active and predictor == "koopman":
                # no rank repeats another's work (docs/distributed.md): wide blocks share one
                # fit from every rank's rows; small ones are split among DDP's ranks (under
                # FSDP each rank's are its own already)
                if granularity in ("layer", "network"):
                    self._predict = shared_koopman(agree, replicated=not part.sharded)
                elif not part.sharded:
                    self._predict = split_koopman(agree)
        agree.check_same("KoopmanAccelerator", {
            **self._signature(), "parameters": [list(map(str, part.names)),
                                                [list(s) for s in part.global_shapes]],
            "margin": margin, "interval": self.base_interval, "max_backoff": max_backoff,
            "granularity": granularity, "bn_loader": bn_loader is not None,
            "bn_refresh": bn_refresh})
        self._step = 0
        self.jumps_tried = self.jumps_accepted = self.steps_jumped = 0
        self._warned_still = False

    # ----------------------------------------------------------------- loop
    def step(self, closure: Callable[[], object] | None = None, *,
             screen: Callable[[], object] | None = None) -> dict | None:
        """Record after an optimizer step; attempt a jump when one is due.

        screen : optional cheap closure (the loss on a small fixed batch) that walks the
            horizon ladder instead of ``closure``. Its best candidate, if it beats the
            screened loss at the current weights by ``margin``, is then *confirmed*:
            ``closure`` judges the current weights and that candidate, and the jump is
            kept only if ``closure`` agrees. A screened-out attempt costs no ``closure``
            call. The screen judges the current weights and every candidate with the
            BatchNorm statistics of before (no refresh); the confirmation judges its two
            points as ``bn_refresh`` says. ``history`` entries then also carry
            ``screen_before``, ``screen_after`` and ``screen_evaluations``. The payoff
            controller (``max_overhead``) counts ``closure`` calls only.

        Returns the attempt's ``history`` entry, or ``None`` if none was made.
        """
        if _n_owned(self.optimizer) != self._n_owned:
            raise ModelChangedError(
                f"the optimizer now updates {_n_owned(self.optimizer)} parameters, not "
                f"{self._n_owned} (add_param_group?): build a new KoopmanAccelerator after "
                "changing what the optimizer trains.")
        recorded = self.recorder.record()  # raises ModelChangedError after model surgery
        if self.time == "lr":
            if recorded and self.recorder.n_snapshots > 1:
                self._spacing.append(self._lr_sum)
            if recorded:
                self._lr_sum = 0.0
            self._lr_sum += float(self.optimizer.param_groups[0]["lr"])
        self._step += 1
        if closure is None or self.recorder.n_snapshots < self.window \
                or not self._schedule.due(self._step):
            return None
        if screen is not None and not callable(screen):
            raise TypeError(f"screen must be a callable returning the loss (or None), got "
                            f"{type(screen).__name__}.")
        return self._attempt(closure, screen)

    def _reset_window(self) -> None:
        self.recorder.reset()
        self._spacing.clear()
        self._lr_sum = 0.0

    def _attempt(self, closure, screen=None) -> dict:
        """One verified jump: judge the current weights, then the candidates in order;
        keep the best if it beats ``(1 - margin)`` times the current loss, else undo."""
        t0 = time.perf_counter()
        self.jumps_tried += 1
        entry = {"step": self._step, "horizon": None, "accepted": False, "loss_before": None,
                 "loss_after": None, "evaluations": 0, "seconds": 0.0, "reason": None}
        windows = self.recorder.snapshots()
        agree = self._consensus
        if agree.any(not all(bool(torch.isfinite(X).all()) for X in windows)):
            # NaN/Inf weights in the window (a diverged step): nothing to fit, nothing to
            # evaluate; the model is not touched and the window starts afresh
            entry["reason"] = "non-finite weights in the window: window skipped"
            self._reset_window()
            return self._log(entry, t0)
        if agree.any(_stood_still(windows)):
            entry["reason"] = "the weights did not move between two snapshots: window skipped"
            self._warn_still()
            self._reset_window()
            return self._log(entry, t0)
        with Transaction(self.recorder.partition, self.model, self.optimizer) as tx:
            if screen is None:
                self._prepare(tx)  # the current weights: judged as the candidates are
                loss_before = entry["loss_before"] = self._judge(closure, entry)
                if math.isfinite(loss_before):
                    best, reason = self._search(closure, tx, entry)
                else:
                    self._reset_window()
                    best, reason = None, "non-finite loss before the jump: window skipped"
            else:
                best, reason = self._screen_and_confirm(closure, screen, tx, entry)
                loss_before = entry["loss_before"]
            entry["loss_after"] = None if best is None else best[1]
            if best is None or loss_before is None \
                    or not best[1] < (1 - self.margin) * loss_before:
                entry["reason"] = reason or "no candidate improved the loss"
                self._settle(entry)
                return self._log(entry, t0)  # leaving uncommitted rolls everything back
            tx.assign(best[2])
            if self.bn_loader is None:
                tx.restore_buffers()  # the closure's forward passes leave no trace
            self._apply_state_policies(tx)
            tx.commit()
        self._accepted(best[0])
        entry["accepted"], entry["horizon"] = True, best[0]
        self._settle(entry)
        return self._log(entry, t0)

    def _settle(self, entry: dict) -> None:
        """Schedule the next attempt from this one's outcome (and, with ``max_overhead``, its
        gain and cost in optimizer steps, which the entry then records)."""
        if isinstance(self._schedule, PayoffSchedule):
            self._schedule.settle(self._step, entry)
            entry["gain_steps"] = self._schedule.last_gain
            entry["cost_steps"] = self._schedule.last_cost
        elif entry["accepted"]:
            self._schedule.accepted(self._step)
        else:
            self._schedule.rejected(self._step)

    def _judge(self, closure, entry: dict, what: str = "closure") -> float:
        loss = self._consensus.mean(lambda: _as_float(closure(), f"{what}()"))
        entry["evaluations" if what == "closure" else "screen_evaluations"] += 1
        return loss

    def _screen_and_confirm(self, closure, screen, tx: Transaction, entry: dict):
        """Walk the ladder with the cheap ``screen``; confirm its best candidate with
        ``closure`` at the current weights and at the candidate. Returns what ``_search``
        does, the loss being ``closure``'s (``entry["loss_before"]`` is set when
        confirmed)."""
        entry |= {"screen_before": None, "screen_after": None, "screen_evaluations": 0}
        before = entry["screen_before"] = self._judge(screen, entry, "screen")
        if not math.isfinite(before):
            self._reset_window()
            return None, "non-finite screened loss before the jump: window skipped"
        best, reason = self._search(screen, tx, entry, "screen")
        entry["screen_after"] = None if best is None else best[1]
        if best is None or not best[1] < (1 - self.margin) * before:
            return None, reason or "no candidate improved the screened loss"
        tx.restore_parameters()  # the current weights and statistics, bit for bit
        self._prepare(tx)
        loss_before = entry["loss_before"] = self._judge(closure, entry)
        if not math.isfinite(loss_before):
            self._reset_window()
            return None, "non-finite loss before the jump: window skipped"
        tx.assign(best[2])
        self._prepare(tx)
        loss = self._judge(closure, entry)
        if not math.isfinite(loss):
            return None, "the screened candidate's loss is not finite"
        return (best[0], loss, best[2]), None if loss < (1 - self.margin) * loss_before \
            else "the closure did not confirm the screened candidate"

    def _search(self, closure, tx: Transaction, entry: dict, what: str = "closure"):
        """``((horizon, loss, values) of the best candidate or None, failure reason)``;
        stops once the loss turns up again along the path (QuACK)."""
        failure = None
        spec = self._spec
        if self.time == "lr":
            spec = replace(spec, spacing=tuple(self._spacing))
        try:
            candidates = self._predict(self.recorder, spec)
        except (FloatingPointError, ValueError) as e:
            candidates, failure = [], f"fit or prediction failed: {e}"[:200]
        if self._consensus.any(failure is not None):
            return None, failure or "fit or prediction failed on another rank"
        best = None
        for h, vals in candidates:
            vals = vals() if callable(vals) else vals  # shared fits gather when judged
            if self._consensus.any(not all(bool(torch.isfinite(v).all())
                                           for v in vals.values())):
                return best, "non-finite prediction"
            tx.assign(vals)
            if what == "closure":
                self._prepare(tx)
            else:
                tx.restore_buffers()  # screened on the statistics of before, as its baseline
            loss = self._judge(closure, entry, what)
            if not math.isfinite(loss):
                break
            if best is None or loss < best[1]:
                best = (h, loss, vals)
            elif loss > best[1]:
                break
        return best, None

    def _apply_state_policies(self, tx: Transaction) -> None:
        """BatchNorm statistics for the new weights, then ``optimizer_state``; both saved
        in ``tx`` first, so an exception part-way undoes them too."""
        tx.protect_optimizer()
        self._refresh_batchnorm()
        if self.optimizer_state == "reset":
            self.optimizer.state.clear()
        elif self.optimizer_state == "momentum":
            for v in self.optimizer.state.values():
                for key in MOMENTUM_KEYS:
                    if isinstance(v.get(key), torch.Tensor):
                        v[key].zero_()

    def _prepare(self, tx: Transaction) -> None:
        """Give the weights about to be judged their BatchNorm statistics: recomputed from
        ``bn_loader`` (``bn_refresh="each"``), else those of before the attempt. The same
        for the current weights and every candidate, so no side wins on statistics."""
        if self.bn_loader is not None and self.bn_refresh == "each":
            self._refresh_batchnorm()
        else:
            tx.restore_buffers()

    def _refresh_batchnorm(self) -> None:
        if self.bn_loader is not None:
            from torch.optim.swa_utils import update_bn

            update_bn(self.bn_loader, self.model)

    def _warn_still(self) -> None:
        if not self._warned_still:
            self._warned_still = True
            warnings.warn(
                "KoopmanAccelerator: the weights did not change between two recorded steps, "
                "so the window was skipped. Call acc.step() exactly once after each "
                "optimizer.step() (with gradient accumulation: only after the steps that "
                "update the weights).", RuntimeWarning, stacklevel=4)

    def _accepted(self, horizon) -> None:
        self.jumps_accepted += 1
        if isinstance(horizon, int):
            self.steps_jumped += horizon
        self._reset_window()  # the dynamics after a jump start a new window

    def _log(self, entry: dict, t0: float) -> dict:
        entry["seconds"] = time.perf_counter() - t0
        self.history.append(entry)
        if self.writer is not None:
            for k in ("loss_before", "loss_after", "horizon"):
                if isinstance(entry[k], (int, float)) and math.isfinite(entry[k]):
                    self.writer.add_scalar(f"koopman/{k}", entry[k], self._step)
            self.writer.add_scalar("koopman/accepted", float(entry["accepted"]), self._step)
        return entry

    # --------------------------------------------------------------- resume
    def _signature(self) -> dict:
        predictor = self.predictor if isinstance(self.predictor, str) else \
            f"callable {getattr(self.predictor, '__qualname__', type(self.predictor).__name__)}"
        return {"window": self.window, "every": self.every, "predictor": predictor,
                "horizons": list(self.horizons), "engine": dict(self.engine_options),
                "fixed_point": self.fixed_point, "optimizer_state": self.optimizer_state,
                "max_residual": self.max_residual,
                **({} if self.time == "steps" else {"time": self.time}),
                **({} if self.max_overhead is None else {"max_overhead": self.max_overhead,
                                                        "eval_cost": self.eval_cost})}

    def state_dict(self) -> dict:
        """The accelerator's own state (recorder buffers, counters, schedule, history);
        save it next to the model's and the optimizer's."""
        sched = self._schedule.state_dict()
        return {"signature": self._signature(), "recorder": self.recorder.state_dict(),
                "step": self._step, "interval": sched["interval"],
                "next_attempt": sched["next_attempt"], "schedule": sched,
                "history": list(self.history),
                "counters": [self.jumps_tried, self.jumps_accepted, self.steps_jumped],
                **({} if self.time == "steps" else
                   {"lr_time": {"spacing": list(self._spacing), "running": self._lr_sum}})}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; raises ``ValueError`` for a state saved with other
        settings or another model (nothing is changed then)."""
        check_signature("KoopmanAccelerator", self._signature(), state)
        self.recorder.load_state_dict(state["recorder"])
        self._step = int(state["step"])
        self._schedule.load_state_dict(state.get("schedule", state))
        self.history.clear()
        self.history.extend(state["history"])
        self.jumps_tried, self.jumps_accepted, self.steps_jumped = map(int, state["counters"])
        self._spacing.clear()
        self._lr_sum = 0.0
        if self.time == "lr":
            self._spacing.extend(map(float, state["lr_time"]["spacing"]))
            self._lr_sum = float(state["lr_time"]["running"])


def _optimized_parameters(model: nn.Module, optimizer) -> list[torch.Tensor]:
    """The model's trainable parameters that ``optimizer`` updates: a jump moves only
    those (frozen ones and ones the optimizer does not own stay put)."""
    owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
    params = [p for p in model.parameters() if p.requires_grad and id(p) in owned]
    if not params:
        raise ValueError("the optimizer updates none of the model's trainable parameters; "
                         "pass the optimizer that trains this model.")
    return params


def _stood_still(windows) -> bool:
    """Whether some two consecutive snapshots are identical in every block of every group
    (``windows``: ``(B, d, m)`` per group)."""
    still = None
    for X in windows:
        if X.shape[1] == 0:  # an empty shard (FSDP: fewer rows than ranks) says nothing
            continue
        same = (X[..., 1:] == X[..., :-1]).flatten(0, 1).all(0)  # (m - 1,)
        still = same if still is None else still & same
    return still is not None and bool(still.any())


def _refuse_flat_sharding(model: nn.Module) -> None:
    """The FSDP1 wrapper flattens and shards the parameters into one buffer per unit, whose
    local part has no node or layer structure; FSDP2 (``fully_shard``) is supported."""
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        raise NotImplementedError(
            "KoopmanAccelerator supports FSDP2 (torch.distributed.fsdp.fully_shard), not the "
            "FullyShardedDataParallel wrapper, whose flat shards hide the parameters' "
            "structure. Shard with fully_shard(model) instead; see docs/distributed.md.")


def _check_shards(params, part, agree: Consensus, granularity: str, predictor) -> None:
    """FSDP2: every sharded parameter is split along dim 0 over the accelerator's ranks, so
    each rank's window is its rows of the model's trajectory. Refuses what would make a
    rank's window something else, on every rank."""
    for name, p in zip(part.names, params, strict=True):
        placements = getattr(p, "placements", None)
        if placements is None:
            continue
        mesh = p.device_mesh
        if mesh.ndim != 1 or mesh.size() != agree.world or len(placements) != 1 \
                or not placements[0].is_shard(0):
            raise NotImplementedError(
                f"parameter {name!r} is sharded as {placements} over a mesh of shape "
                f"{tuple(mesh.shape)}; KoopmanAccelerator supports dim-0 sharding over its "
                f"{agree.world} rank(s) (fully_shard on a 1-D mesh, no HSDP).")
    if callable(predictor):
        raise NotImplementedError(
            "a custom predictor sees only this rank's shard of the window under FSDP, not "
            "the model's trajectory; use it under DDP or in one process.")
    if granularity in ("node", "quasi-node") and part.unsplit:
        raise NotImplementedError(
            f"at granularity={granularity!r} the parameters {part.unsplit[:3]} form one block "
            "each, which FSDP splits across ranks; use granularity='layer' or 'network'.")


def _n_owned(optimizer) -> int:
    return sum(len(g["params"]) for g in optimizer.param_groups)


def _buffer_dtype(params) -> torch.dtype:
    """Snapshots keep at least float32 (half-precision weights are recorded in float32;
    fits run in float64 anyway) and never less than the widest parameter dtype."""
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype
