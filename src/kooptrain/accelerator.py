"""Verified Koopman jumps inside an ordinary PyTorch training loop.

``KoopmanAccelerator`` records the weights while the user's optimizer trains,
fits Koopman operators to the recorded window, and tries a jump: it predicts the
weights at several horizons, lets the user's ``closure`` (a loss evaluation)
judge each candidate, and keeps the best one only if it beats the current loss.
A rejected jump restores the weights bit for bit and leaves the optimizer alone.

Design in the spirit of timm's ``Lookahead`` and ``torch.optim.swa_utils``: it
wraps nothing, holds only its own state, and is one line in the loop. The parts, one job
each: ``AcceleratorSettings`` (what it was built with), ``SnapshotRecorder`` (the window),
``LRClock`` (learning-rate time), ``CandidateSearch`` (predict and judge), ``StatePolicy``
(BatchNorm statistics and the optimizer state), a schedule (when to attempt) and a
``Transaction`` (all or nothing). Knows modules and optimizers; no data, no problems.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import time
import warnings
from collections import deque
from collections.abc import Callable

import torch
from torch import nn

from ._attempt import ATTEMPT_FIELDS, Attempt
from ._clock import LRClock
from ._consensus import Consensus
from ._cost import StepFlops, count
from ._migrate import accelerator_state_from_v1
from ._predictors import PREDICTORS, PredictorSpec, select
from ._schedule import PayoffSchedule, RetrySchedule
from ._search import CandidateSearch
from ._settings import (
    Settings,
    check_state,
    deprecated,
    deprecated_aliases,
    settings_properties,
)
from ._state_policy import BN_REFRESH, STATE_POLICIES, StatePolicy
from ._transaction import Transaction
from ._validation import (
    check_bool,
    check_choice,
    check_floating_dtype,
    check_fraction,
    check_horizon_list,
    check_int,
    check_optional_int,
    check_positive,
)
from .errors import ModelChangedError
from .koopman import FitSettings
from .partition import GRANULARITIES
from .recorder import SNAPSHOTS, SnapshotRecorder

__all__ = ["ATTEMPT_FIELDS", "AcceleratorSettings", "CLOCKS", "KoopmanAccelerator",
           "PREDICTORS", "STATE_POLICIES"]

CLOCKS = ("steps", "lr")
STATE_KIND, STATE_VERSION = "kooptrain.KoopmanAccelerator", 2


def default_horizons(every: int) -> tuple[int, ...]:
    """``every * (2, 4, ..., 64)``."""
    return tuple(every * 2**k for k in range(1, 7))


@dataclasses.dataclass(frozen=True)
class AcceleratorSettings(Settings):
    """The validated, frozen settings of a ``KoopmanAccelerator``, passed to it by name.
    ``horizons`` and ``interval`` are stored resolved (``None`` gives their defaults).
    ``max_history`` may differ on resume (warned); any other difference is refused.

    Parameters
    ----------
    window : int >= 2
        Snapshots per fit (``m``). Default 6: short windows, refitted often, on a coarse
        cadence (the recorder's 64 suits one long offline fit).
    every : int >= 1
        Optimizer steps between snapshots (the first at the first step, as in the
        recorder and the monitor). Default 25, for long minibatch training (the recorder's
        1 is the paper's); the measurements behind it are in ``docs/accelerator.md``. For
        short full-batch problems (a few hundred steps), ``every=1, window=10`` jumps
        sooner and more often.
    granularity : one of ``GRANULARITIES``
        Which weights share an operator. Default ``"network"``: one whole-network
        operator in the exact low-rank form (memory ``O(p m)``), one fit per
        attempt (the recorder's ``"node"`` is the paper's).
    chunk : int, optional
        The block size ``q`` at ``granularity="quasi-node"`` (see ``Partition``); required
        there, and only there.
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
    clock : {"steps", "lr"}
        The clock the window is fitted in. ``"steps"`` (default): snapshots are ``every``
        optimizer steps apart. ``"lr"``: learning-rate time (``LRClock``, shared with
        ``KoopmanMonitor``), for schedules (warm-up, cosine decay): each interval between
        snapshots lasts the sum of the first parameter group's ``lr`` over its steps, and
        the window is resampled to even intervals of the last one's length before the fit
        (``recorder.warp``), so a horizon ``h`` means ``h`` steps at the current learning
        rate. Under a constant lr both clocks give the same jumps, bit for bit.
    snapshot : {"mean", "last"}
        What a snapshot holds (``SnapshotRecorder``). ``"mean"`` (default): the mean of the
        weights over the ``every`` steps it stands for, a denoised window whose affine
        dynamics are those of the weights, ``every`` steps at a time; candidates are
        predicted from the window's means. ``"last"``: the weights at the recorded step
        (kooptrain 0.2.0's only choice). The measurements behind the default are in
        ``docs/accelerator.md`` ("Fits on denoised iterates").
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
        base). So where jumps never pay the run is at most about that much slower, and
        still probes now and then. Counts and judged losses only: the same on every rank
        and on resume.
    eval_cost : float > 0 or "flops"
        One closure call's cost in optimizer steps, the controller's currency. Default
        1/3: a forward pass on a batch like the training batch (a step is forward and
        backward). Judging on a larger batch, or refreshing BatchNorm, costs more.
        ``"flops"``: counted, never timed (``torch.utils.flop_counter``): the FLOPs of the
        first attempt (its closure calls, BatchNorm refreshes and the fit's matrix
        products) per closure call, over those of one training iteration (the loop's
        work from the end of one ``optimizer.step()`` to the end of the next: the smallest
        of the first three, the accelerator's own work left out). Counts depend on shapes
        only: the same on every rank (averaged if they differ) and on resume.
    optimizer_state : {"keep", "momentum", "reset"}
        After an accepted jump: keep the state, zero first moments / momentum
        buffers (``exp_avg``, ``momentum_buffer``), or clear it entirely.
        Default ``"keep"``, as PDT does: a jump from a window of means lands on the
        smoothed path, along which the first moment still points. ``"momentum"`` was the
        default before ``snapshot="mean"``; ``docs/accelerator.md`` compares the two.
    margin : float in [0, 1)
        Relative improvement a candidate must show to be accepted; the default 0.01
        rejects jumps that barely help.
    bn_refresh : {"each", "kept"}
        With ``bn_loader``, which points are judged with refreshed statistics. ``"each"``
        (default): every judged point, the current weights included, so both sides of a
        comparison are judged on equal terms and a refresh alone never wins a jump.
        ``"kept"``: every point is judged with the running statistics training left (a
        candidate's are then those of the weights before it); only the kept jump's are
        refreshed. A rejection restores the statistics of before either way.
    window_dtype : torch.dtype, optional
        The window buffer's dtype (``SnapshotRecorder(dtype=...)``). Default float32, or
        the widest parameter dtype. ``torch.bfloat16`` halves the window's memory; it then
        holds offsets from the window's first snapshot, and fits still run in float64.
    max_history : int
        Attempts kept in ``history`` (oldest dropped first). The one setting that may
        differ when a checkpoint is loaded (it is warned about).
    """

    RESUMABLE = frozenset({"max_history"})
    # fields added within state version 2 (0.2.0), with the value a state saved before had
    ADDED = {"snapshot": "last", "chunk": None, "window_dtype": None}
    DERIVED = {"horizons": lambda s: default_horizons(s.every),
               "interval": lambda s: s.window * s.every}

    window: int = 6
    every: int = 25
    granularity: str = "network"
    chunk: int | None = None
    observables: str = "affine"
    stabilize: str | None = "clip"
    rank: int | None = None
    predictor: str | Callable = "koopman"
    horizons: tuple[int, ...] | None = None
    fixed_point: bool = False
    max_residual: float | None = None
    interval: int | None = None
    max_backoff: int = 8
    max_overhead: float | None = None
    eval_cost: float | str = 1 / 3
    optimizer_state: str = "keep"
    margin: float = 0.01
    clock: str = "steps"
    snapshot: str = "mean"
    bn_refresh: str = "each"
    window_dtype: torch.dtype | None = None
    max_history: int = 10_000

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen
        put("window", check_int(self.window, "window", 2))
        put("every", check_int(self.every, "every", 1))
        put("max_backoff", check_int(self.max_backoff, "max_backoff", 1))
        put("max_history", check_int(self.max_history, "max_history", 1))
        check_choice(self.granularity, "granularity", GRANULARITIES)
        put("chunk", check_optional_int(self.chunk, "chunk"))
        if not callable(self.predictor):
            check_choice(self.predictor, "predictor", tuple(PREDICTORS))
        check_choice(self.optimizer_state, "optimizer_state", STATE_POLICIES)
        check_choice(self.clock, "clock", CLOCKS)
        check_choice(self.snapshot, "snapshot", SNAPSHOTS)
        check_choice(self.bn_refresh, "bn_refresh", BN_REFRESH)
        check_floating_dtype(self.window_dtype, "window_dtype")
        hs = default_horizons(self.every) if self.horizons is None else self.horizons
        put("horizons", tuple(check_horizon_list(hs, "horizons", self.every)))
        interval = check_optional_int(self.interval, "interval")
        put("interval", interval or self.window * self.every)
        put("max_residual", check_positive(self.max_residual, "max_residual", optional=True))
        if self.max_residual is not None and self.window < 3:
            raise ValueError("max_residual needs window >= 3 (a held-out snapshot and a fit).")
        put("margin", check_fraction(self.margin, "margin"))
        put("fixed_point", check_bool(self.fixed_point, "fixed_point"))
        put("max_overhead", check_positive(self.max_overhead, "max_overhead", optional=True))
        if self.max_overhead is not None and self.max_overhead >= 1:
            raise ValueError(f"max_overhead={self.max_overhead!r} must lie in (0, 1): the "
                             "share of the training steps that attempts may cost while "
                             "jumps do not pay (e.g. 0.05), or None.")
        if self.eval_cost == "flops":
            if self.max_overhead is None:
                raise ValueError("eval_cost='flops' is the payoff controller's currency; give "
                                 "max_overhead too (e.g. max_overhead=0.05).")
        else:
            put("eval_cost", check_positive(self.eval_cost, "eval_cost"))
        # the engine validates its own options now, not at the first jump
        FitSettings(observables=self.observables, rank=self.rank, stabilize=self.stabilize)

    def engine_options(self) -> dict:
        return {"observables": self.observables, "stabilize": self.stabilize,
                "rank": self.rank, "no_fixed_point": "stay"}

    def predictor_spec(self) -> PredictorSpec:
        return PredictorSpec(self.horizons, self.every, self.engine_options(),
                             self.max_residual, max(1, self.window // 4), self.fixed_point)

    def schedule(self):
        if self.max_overhead is None:
            return RetrySchedule(self.interval, self.max_backoff)
        return PayoffSchedule(self.interval, None if self.eval_cost == "flops" else
                              self.eval_cost, self.max_overhead, self.max_backoff)


class KoopmanAccelerator:
    """Koopman jumps for any torch optimizer, verified by the loss and undone when bad.

    Call ``step(closure)`` right after each ``optimizer.step()``. Every ``every``
    optimizer steps it records a snapshot of the parameters the optimizer trains (by
    default their mean over those steps; frozen ones and ones outside the optimizer are
    never recorded or moved); once ``window``
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
    bn_loader : iterable, optional
        A few batches for ``torch.optim.swa_utils.update_bn``: BatchNorm statistics for the
        judged points (``bn_refresh``) and the kept weights. Without it, every point is
        judged on the running statistics training left, and they stay as they were.
    process_group : optional ``torch.distributed`` group
        Under ``torch.distributed`` (this group, or the default one once initialised) every
        decision is taken once for all ranks: the judged loss is the mean over ranks, and a
        skip, an exception or Ctrl-C on one rank is one on all (the others raise
        ``RemoteRankError``), so DDP replicas stay bit-identical (docs/distributed.md).
    writer : optional ``torch.utils.tensorboard.SummaryWriter`` for scalars.
    window_device : torch.device or str, optional
        Where the window lives (``SnapshotRecorder(device=...)``); default the parameters'
        device. ``"cpu"`` for a model on a GPU: pinned host memory, asynchronous copies,
        the fit on the CPU.
    time : deprecated alias of ``clock``.
    **settings : the fields of ``AcceleratorSettings``, each documented there; by name, in
        short: ``window=6`` snapshots per fit; ``every=25`` optimizer steps between them;
        ``granularity="network"`` (``chunk=q`` at ``"quasi-node"``);
        ``observables="affine"``, ``stabilize="clip"``,
        ``rank=None`` (the engine's); ``predictor="koopman"`` (or ``"linear"``,
        ``"average"``, a callable); ``horizons`` (``every * (2, ..., 64)``);
        ``fixed_point=False``; ``max_residual=None``; ``interval`` (``window * every``),
        ``max_backoff=8``; ``max_overhead=None``, ``eval_cost=1/3`` (the payoff
        controller); ``optimizer_state="keep"``; ``margin=0.01``; ``clock="steps"``
        (or ``"lr"``); ``snapshot="mean"`` (or ``"last"``); ``bn_refresh="each"`` (or
        ``"kept"``); ``max_history=10000``.

    Attributes
    ----------
    settings : the ``AcceleratorSettings``; each of its fields is also a read-only
        attribute (``acc.window``, ``acc.margin``, ...).
    history : deque of dict, one per attempt, always with the fields ``ATTEMPT_FIELDS``
        (``step``, ``horizon``, ``accepted``, ``loss_before``, ``loss_after``, ...: see
        ``kooptrain._attempt.Attempt``).
    step_count : ``step()`` calls (optimizer steps) so far.
    jumps_tried, jumps_accepted : counters.
    steps_jumped : the sum of the accepted horizons: how many optimizer steps the
        kept jumps extrapolated over. It is not the number of steps saved to reach a
        loss (a jump of ``h`` steps is rarely worth ``h`` optimizer steps); the race
        (``kooptrain race``) measures that.
    spacing : with ``clock="lr"``, the window's intervals in learning-rate time (else
        ``None``).
    bytes_sent : bytes this rank sent in all-reduces (0 in one process).

    Faults: a window holding a NaN/Inf weight, a non-finite loss before the jump, or a
    window whose weights did not move between two snapshots (``step()`` twice per
    optimizer step: that warns, once) is skipped, ``reason`` says so, and the window starts
    afresh. An exception or Ctrl-C inside an attempt restores the weights, the optimizer
    state and the buffers, then propagates. After model surgery (or a change of what the
    optimizer trains) ``step`` raises ``ModelChangedError``, changing nothing.

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
    >>> acc
    KoopmanAccelerator(window=10, every=1, horizons=(10, 100))
    >>> for _ in range(40):
    ...     opt.zero_grad(); loss().backward(); opt.step()
    ...     _ = acc.step(lambda: loss().detach())
    >>> acc.jumps_accepted >= 1
    True
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 bn_loader=None, writer=None, process_group=None, time: str | None = None,
                 window_device=None, **settings):
        if time is not None:
            deprecated("KoopmanAccelerator(time=...)", "clock=...")
            settings.setdefault("clock", time)
        # one rank failing here must not leave the others waiting in a collective below
        self._consensus = agree = Consensus(process_group)
        with agree.together("building KoopmanAccelerator"):
            s = self.settings = _build_settings(settings)
            self.model, self.optimizer, self.writer = model, optimizer, writer
            self.recorder = _recorder(model, optimizer, s, agree, window_device)
            self._n_owned, part = _n_owned(optimizer), self.recorder.partition
            self._lr = LRClock(optimizer, s.window) if s.clock == "lr" else None
            self._policy = StatePolicy(model, optimizer, s.optimizer_state, bn_loader,
                                       s.bn_refresh)
            self._search = CandidateSearch(select(s.predictor, s.granularity, agree,
                                                  part.sharded),
                                           s.predictor_spec(), agree, self._policy,
                                           s.margin, self._lr)
            self._schedule = s.schedule()
            self._step_flops = StepFlops(optimizer) if s.eval_cost == "flops" else None
            self.history: deque[dict] = deque(maxlen=s.max_history)
        agree.check_same("KoopmanAccelerator", {
            **s.signature(), "parameters": [list(map(str, part.names)),
                                            [list(v) for v in part.global_shapes]],
            "bn_loader": bn_loader is not None})
        self.step_count = 0
        self.jumps_tried = self.jumps_accepted = self.steps_jumped = 0
        self._warned_still = self._warned_flops = False

    def __repr__(self) -> str:
        return f"KoopmanAccelerator({self.settings.describe()})"

    # ----------------------------------------------------------------- loop
    def step(self, closure: Callable[[], object] | None = None, *,
             screen: Callable[[], object] | None = None) -> dict | None:
        """Record after an optimizer step; attempt a jump when one is due.

        screen : optional cheap closure (the loss on a small fixed batch) that walks the
            horizon ladder instead of ``closure``, with the BatchNorm statistics of before.
            If its best candidate beats the screened loss by ``margin``, ``closure`` judges
            the current weights and that candidate (as ``bn_refresh`` says) and the jump is
            kept only if it agrees; a screened-out attempt costs no ``closure`` call (the
            payoff controller counts ``closure`` calls only).

        Returns the attempt's ``history`` entry, or ``None`` if none was made.
        """
        if _n_owned(self.optimizer) != self._n_owned:
            raise ModelChangedError(
                f"the optimizer now updates {_n_owned(self.optimizer)} parameters, not "
                f"{self._n_owned} (add_param_group?): build a new KoopmanAccelerator after "
                "changing what the optimizer trains.")
        if closure is not None and self._schedule.due(self.step_count + 1):
            self.recorder.partition.verify()  # no attempt after model surgery
        recorded = self.recorder.record()  # raises ModelChangedError after model surgery
        if self._lr is not None:
            self._lr.tick(recorded)
        self.step_count += 1
        if closure is None or self.recorder.n_snapshots < self.settings.window \
                or not self._schedule.due(self.step_count):
            return None
        if screen is not None and not callable(screen):
            raise TypeError(f"screen must be a callable returning the loss (or None), got "
                            f"{type(screen).__name__}.")
        return self._attempt(closure, screen)

    def _attempt(self, closure, screen) -> dict:
        """One verified jump, as a transaction: kept if the best candidate beats the current
        loss by ``margin``, else everything is restored."""
        t0 = time.perf_counter()
        self.jumps_tried += 1
        attempt = Attempt(step=self.step_count)
        windows = self.recorder.snapshots()
        agree = self._consensus
        if agree.any(not all(bool(torch.isfinite(X).all()) for X in windows)):
            # a diverged step: nothing to fit or judge, the window starts afresh
            return self._skip(attempt, "non-finite weights in the window: window skipped", t0)
        if agree.any(_stood_still(windows)):
            self._warn_still()
            return self._skip(attempt, "the weights did not move between two snapshots: "
                                       "window skipped", t0)
        with Transaction(self.recorder.partition, self.model, self.optimizer) as tx:
            measure = self._step_flops is not None and self._schedule.eval_cost is None
            with self._step_flops.exclude() if measure else contextlib.nullcontext(), \
                    count() if measure else contextlib.nullcontext() as counted:
                best, reason, afresh = self._search.run(self.recorder, closure, screen, tx,
                                                        attempt)
            if measure and attempt.evaluations:
                self._schedule.eval_cost = self._eval_cost(counted.flops, attempt.evaluations)
            if afresh:
                self._reset_window()
            attempt.loss_after = None if best is None else best.loss
            if best is None or not self._search.beats(best.loss, attempt.loss_before):
                attempt.reason = reason or "no candidate improved the loss"
                self._schedule.settle(self.step_count, attempt)
                return self._log(attempt, t0)  # leaving uncommitted rolls everything back
            tx.assign(best.values)
            self._policy.apply(tx)
            tx.commit()
        self.jumps_accepted += 1
        if isinstance(best.horizon, int):
            self.steps_jumped += best.horizon
        self._reset_window()  # the dynamics after a jump start a new window
        attempt.accepted, attempt.horizon = True, best.horizon
        self._schedule.settle(self.step_count, attempt)
        return self._log(attempt, t0)

    def _eval_cost(self, flops: int, evaluations: int) -> float:
        """``eval_cost="flops"``: the attempt's FLOPs per closure call over a training
        iteration's (the smallest counted yet), averaged over ranks; the default 1/3
        (warned about) if either counted nothing."""
        step = self._step_flops.so_far
        if self._consensus.any(not step or not flops):
            if not self._warned_flops:
                self._warned_flops = True
                warnings.warn(
                    "KoopmanAccelerator(eval_cost='flops'): no training iteration or no "
                    "attempt was counted (the optimizer has no step hooks, or no matrix "
                    "product or convolution ran in them); using eval_cost=1/3. Pass "
                    "eval_cost= a number to set it yourself.", RuntimeWarning, stacklevel=4)
            return 1 / 3
        self._step_flops.close()
        return self._consensus.mean(lambda: flops / evaluations / step)

    def _skip(self, attempt: Attempt, reason: str, t0: float) -> dict:
        attempt.reason = reason
        self._reset_window()
        return self._log(attempt, t0)

    def _reset_window(self) -> None:
        self.recorder.reset()
        if self._lr is not None:
            self._lr.reset()

    def _warn_still(self) -> None:
        if not self._warned_still:
            self._warned_still = True
            warnings.warn(
                "KoopmanAccelerator: the weights did not change between two recorded steps, "
                "so the window was skipped. Call acc.step() exactly once after each "
                "optimizer.step() (with gradient accumulation: only after the steps that "
                "update the weights).", RuntimeWarning, stacklevel=4)

    def _log(self, attempt: Attempt, t0: float) -> dict:
        attempt.seconds = time.perf_counter() - t0
        self.history.append(entry := attempt.as_dict())
        if self.writer is not None:
            _to_writer(self.writer, entry, self.step_count)
        return entry

    # ------------------------------------------------------------ counters
    spacing = property(lambda self: None if self._lr is None else self._lr.spacing)
    bytes_sent = property(lambda self: self._consensus.bytes_sent)
    bn_loader = property(lambda self: self._policy.bn_loader,  # a loader may be swapped
                         lambda self, loader: setattr(self._policy, "bn_loader", loader))

    # --------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        """The accelerator's own state (settings, recorder buffers, counters, schedule,
        history), versioned; save it next to the model's and the optimizer's."""
        return {"kind": STATE_KIND, "version": STATE_VERSION,
                "settings": self.settings.signature(), "recorder": self.recorder.state_dict(),
                "step_count": self.step_count, "schedule": self._schedule.state_dict(),
                "history": list(self.history),
                "counters": {"jumps_tried": self.jumps_tried,
                             "jumps_accepted": self.jumps_accepted,
                             "steps_jumped": self.steps_jumped},
                "lr_clock": None if self._lr is None else self._lr.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` (also a kooptrain 0.1 state); raises ``ValueError`` for
        a state saved with other settings or another model, naming what differs (nothing
        is changed then)."""
        if isinstance(state, dict) and "signature" in state and "version" not in state:
            state = accelerator_state_from_v1(self.settings, state)
        else:
            check_state(STATE_KIND, STATE_VERSION, self.settings, state,
                        required=("recorder", "step_count", "schedule", "history", "counters",
                                  "lr_clock"))
        self.recorder.load_state_dict(state["recorder"])  # checks the model's layout
        self.step_count = int(state["step_count"])
        self._schedule.load_state_dict(state["schedule"])
        if self._step_flops is not None and self._schedule.eval_cost is not None:
            self._step_flops.close()  # measured before the checkpoint
        self.history.clear()
        self.history.extend(state["history"])
        c = state["counters"]
        self.jumps_tried, self.jumps_accepted, self.steps_jumped = \
            int(c["jumps_tried"]), int(c["jumps_accepted"]), int(c["steps_jumped"])
        if self._lr is not None:
            self._lr.load_state_dict(state["lr_clock"])


deprecated_aliases(KoopmanAccelerator, {
    "steps_saved": ("steps_jumped", lambda self: self.steps_jumped),
    "time": ("clock", lambda self: self.settings.clock),
    "base_interval": ("interval", lambda self: self.settings.interval),
    "engine_options": ("settings.engine_options()", lambda self: self.settings.engine_options()),
})
settings_properties(KoopmanAccelerator, AcceleratorSettings, lists=("horizons",))


def _signature() -> inspect.Signature:
    """``__init__``'s signature as ``help()`` shows it: every setting by name, with its
    default, derived from ``AcceleratorSettings`` (the one list of them)."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("optimizer", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(f.name, kw, default=f.default)
               for f in dataclasses.fields(AcceleratorSettings)]
    params += [inspect.Parameter(n, kw, default=None)
               for n in ("bn_loader", "writer", "process_group")]
    return inspect.Signature(params)


KoopmanAccelerator.__init__.__signature__ = _signature()


def _build_settings(options: dict) -> AcceleratorSettings:
    """``AcceleratorSettings(**options)``, with a clear error for an unknown option."""
    known = {f.name for f in dataclasses.fields(AcceleratorSettings)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"KoopmanAccelerator got unknown option(s) {unknown}; its options "
                        f"are {sorted(known | {'bn_loader', 'writer', 'process_group'})}.")
    return AcceleratorSettings(**options)


def _recorder(model, optimizer, s: AcceleratorSettings, agree: Consensus,
              device=None) -> SnapshotRecorder:
    """The window of the parameters ``optimizer`` trains, after the checks that refuse what
    cannot work (another object than a model or an optimizer, FSDP1, unsplittable shards)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(optimizer, torch.optim.Optimizer) and not hasattr(optimizer, "state"):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}.")
    params = _optimized_parameters(model, optimizer)
    _refuse_flat_sharding(model)
    rec = SnapshotRecorder(model, granularity=s.granularity, chunk=s.chunk, window=s.window,
                           every=s.every, storage="window",
                           dtype=s.window_dtype or _buffer_dtype(params), params=params,
                           snapshot=s.snapshot, device=device)
    if rec.partition.sharded:
        _check_shards(params, rec.partition, agree, s.granularity, s.predictor)
    return rec


def _to_writer(writer, entry: dict, step: int) -> None:
    """An attempt's scalars for TensorBoard."""
    for k in ("loss_before", "loss_after", "horizon"):
        if isinstance(entry[k], (int, float)) and math.isfinite(entry[k]):
            writer.add_scalar(f"koopman/{k}", entry[k], step)
    writer.add_scalar("koopman/accepted", float(entry["accepted"]), step)


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
