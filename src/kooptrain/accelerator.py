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
from collections import deque
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .koopman import KoopmanOperator
from .partition import GRANULARITIES, ModelChangedError
from .recorder import SnapshotRecorder, check_signature

__all__ = ["KoopmanAccelerator", "PREDICTORS", "STATE_POLICIES"]

PREDICTORS = ("koopman", "linear", "average")
STATE_POLICIES = ("keep", "momentum", "reset")
# optimizer state entries that are a first moment / momentum: extrapolating the
# weights leaves them pointing along the old path (Leap+Verify: they explode the loss)
_MOMENTUM_KEYS = ("exp_avg", "momentum_buffer")


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
        Snapshots per fit (``m``). Default 10: in the design sweep
        (``benchmarks/accelerator_design.py``) it won for Adadelta on HNN (2.8x
        against 1.7x for 20 and 1.2x for 40) and tied for Adam.
    every : int >= 1
        Optimizer steps between snapshots.
    granularity : one of ``GRANULARITIES``
        Which weights share an operator. Default ``"network"``: one whole-network
        operator in the exact low-rank form (memory ``O(p m)``), one fit per
        attempt. In the sweep it beat layer and node operators for Adam on HNN;
        node operators were a little better for Adadelta (1.9x against 1.7x).
    observables, stabilize, rank : engine options (see ``KoopmanOperator``).
    predictor : {"koopman", "linear", "average"}
        ``"koopman"``: the fitted operator. ``"linear"``: the ablation
        ``x_t + (h / every) (x_t - x_{t-every})``. ``"average"``: the mean of the
        window (LAWA), one candidate. All go through the same verification.
    horizons : sequence of int
        Candidate horizons in optimizer steps, multiples of ``every``.
    fixed_point : bool
        Also try the lambda ~ 1 fixed point (blocks without one stay put).
    max_residual : float, optional
        Score every block by its held-out forecast error (``holdout =
        max(1, window // 4)`` snapshots, ``KoopmanOperator.residual_``); blocks
        above this relative error do not jump (they keep their current weights).
        Meant for layer or node granularity; off by default (it lost in the sweep).
    interval : int, optional
        Optimizer steps between attempts; default ``window * every``. After a
        rejection the interval doubles (up to ``max_backoff`` times the base);
        an acceptance resets it.
    optimizer_state : {"keep", "momentum", "reset"}
        After an accepted jump: keep the state, zero first moments / momentum
        buffers (``exp_avg``, ``momentum_buffer``), or clear it entirely.
        Default ``"momentum"``: a first moment points along the old path
        (Leap+Verify); ``"reset"`` was best for Adadelta on HNN (3.3x vs 3.0x with
        window 10) but not for Adam (1.2x vs 1.7x).
    margin : float in [0, 1)
        Relative improvement a candidate must show to be accepted. Default 0.01:
        it rejects jumps that barely help, which won for Adam on HNN and mnist1d.
    bn_loader : iterable, optional
        If given, ``torch.optim.swa_utils.update_bn(bn_loader, model)`` runs
        after each accepted jump, so BatchNorm statistics match the new weights.
    max_history : int
        Attempts kept in ``history`` (oldest dropped first).
    writer : optional ``torch.utils.tensorboard.SummaryWriter`` for scalars.

    Attributes
    ----------
    history : deque of dict, one per attempt: ``step``, ``horizon`` (chosen, or
        ``None``), ``accepted``, ``loss_before``, ``loss_after`` (best
        candidate), ``evaluations`` (closure calls), ``seconds``, ``reason``
        (``None`` if accepted).
    jumps_tried, jumps_accepted, steps_saved : counters.

    Faults: an attempt whose window holds a NaN/Inf weight, or whose loss before
    the jump is not finite, is skipped (``reason`` says so) and the window starts
    afresh; the model is not touched. An exception or Ctrl-C inside an attempt
    restores the weights, the optimizer state and the buffers, then propagates.
    ``step`` raises ``ModelChangedError`` once the model's parameters (or the
    optimizer's) changed since construction: build a new accelerator then.

    The closure evaluates the loss without calling ``backward`` and should not
    draw from the training RNG (use a fixed evaluation batch); wrap it in
    ``torch.no_grad()`` when the loss needs no autograd.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.05)
    >>> x, y = torch.randn(64, 4), torch.randn(64, 1)
    >>> loss = lambda: nn.functional.mse_loss(model(x), y)
    >>> acc = KoopmanAccelerator(model, opt, window=10, horizons=(10, 100))
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
        window: int = 10,
        every: int = 1,
        granularity: str = "network",
        observables: str = "affine",
        stabilize: str | None = "clip",
        rank: int | None = None,
        predictor: str = "koopman",
        horizons: Sequence[int] = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        fixed_point: bool = False,
        max_residual: float | None = None,
        interval: int | None = None,
        max_backoff: int = 8,
        optimizer_state: str = "momentum",
        margin: float = 0.01,
        bn_loader=None,
        max_history: int = 10_000,
        writer=None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if not isinstance(optimizer, torch.optim.Optimizer) and not hasattr(optimizer, "state"):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}.")
        for name, v, lo in (("window", window, 2), ("every", every, 1),
                            ("max_backoff", max_backoff, 1), ("max_history", max_history, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}={v!r} must be an int >= {lo}.")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity={granularity!r}; use one of {GRANULARITIES}.")
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor={predictor!r}; use one of {PREDICTORS}.")
        if optimizer_state not in STATE_POLICIES:
            raise ValueError(f"optimizer_state={optimizer_state!r}; use one of "
                             f"{STATE_POLICIES}.")
        hs = list(horizons) if isinstance(horizons, Sequence) else None
        if not hs or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 or h % every
                         for h in hs):
            raise ValueError(f"horizons={horizons!r} must be a non-empty sequence of "
                             f"positive ints, multiples of every={every}.")
        if interval is not None and (not isinstance(interval, int) or interval < 1):
            raise ValueError(f"interval={interval!r} must be a positive int or None.")
        if max_residual is not None and not (isinstance(max_residual, (int, float))
                                             and max_residual > 0):
            raise ValueError(f"max_residual={max_residual!r} must be a positive number or None.")
        if max_residual is not None and window < 3:
            raise ValueError("max_residual needs window >= 3 (a held-out snapshot and a fit).")
        if not (isinstance(margin, (int, float)) and 0 <= margin < 1):
            raise ValueError(f"margin={margin!r} must lie in [0, 1).")
        # the engine validates its own options now, not at the first jump
        KoopmanOperator(observables, rank=rank, stabilize=stabilize)._validate_params()
        self.model, self.optimizer = model, optimizer
        self.window, self.every, self.predictor = window, every, predictor
        self.horizons = sorted(set(hs))
        self.fixed_point, self.margin = bool(fixed_point), float(margin)
        self.max_residual = max_residual
        self.optimizer_state, self.bn_loader, self.writer = optimizer_state, bn_loader, writer
        self.engine_options = {"observables": observables, "stabilize": stabilize,
                               "rank": rank, "no_fixed_point": "stay"}
        self.base_interval = interval or window * every
        self.max_backoff = max_backoff
        params = _optimized_parameters(model, optimizer)
        self._n_owned = _n_owned(optimizer)
        self.recorder = SnapshotRecorder(model, granularity, capacity=window, every=every,
                                         storage="window", dtype=_buffer_dtype(params),
                                         params=params)
        self.history: deque[dict] = deque(maxlen=max_history)
        self._step = 0
        self._interval = self.base_interval
        self._next_attempt = 0
        self.jumps_tried = self.jumps_accepted = self.steps_saved = 0

    # ----------------------------------------------------------------- loop
    def step(self, closure: Callable[[], object] | None = None) -> dict | None:
        """Record after an optimizer step; attempt a jump when one is due.

        Returns the attempt's ``history`` entry, or ``None`` if none was made.
        """
        if _n_owned(self.optimizer) != self._n_owned:
            raise ModelChangedError(
                f"the optimizer now updates {_n_owned(self.optimizer)} parameters, not "
                f"{self._n_owned} (add_param_group?): build a new KoopmanAccelerator after "
                "changing what the optimizer trains.")
        self.recorder.record()  # raises ModelChangedError after model surgery
        self._step += 1
        if closure is None or self.recorder.n_snapshots < self.window \
                or self._step < self._next_attempt:
            return None
        return self._attempt(closure)

    def _params(self):
        return self.recorder.partition._params

    def _candidates(self):
        """``[(horizon, {name: tensor})]`` in the order they are evaluated."""
        rec = self.recorder
        if self.predictor == "average":
            blocks = [X.mean(-1) for X in rec.snapshots()]  # per group (B, d)
            return [(None, rec.partition.unflatten(rec.partition.scatter(blocks)))]
        steps = [h // self.every for h in self.horizons]
        if self.predictor == "linear":
            blocks = [(X[..., -1], X[..., -1] - X[..., -2]) for X in rec.snapshots()]
            out = []
            for h, s in zip(self.horizons, steps, strict=True):
                cand = [x + s * v for x, v in blocks]
                out.append((h, rec.partition.unflatten(rec.partition.scatter(cand))))
            return out
        if self.max_residual is None:
            ops = rec.fit(**self.engine_options)
            many = rec.predict_from(ops, steps)  # {name: (k, *shape)}
        else:  # blocks that forecast their own held-out snapshots badly stay put
            ops = rec.fit(**self.engine_options, holdout=max(1, self.window // 4))
            preds = []
            for op, X in zip(ops, rec.snapshots(), strict=True):
                p = op.predict(steps)  # (B, d, k)
                bad = (op.residual_ > self.max_residual).reshape(-1, 1, 1)
                preds.append(torch.where(bad, X[..., -1:].to(p.dtype), p))
            flat = rec.partition.scatter([p.permute(2, 0, 1) for p in preds])
            many = rec.partition.unflatten(flat)
        out = [(h, {n: v[i] for n, v in many.items()}) for i, h in enumerate(self.horizons)]
        if self.fixed_point:
            out.append((math.inf, rec.predict_from(ops, math.inf)))
        return out

    def _load(self, values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in zip(self.recorder.partition.names, self._params(), strict=True):
                p.copy_(values[name])

    def _attempt(self, closure) -> dict:
        t0 = time.perf_counter()
        self.jumps_tried += 1
        saved = [p.detach().clone() for p in self._params()]
        entry = {"step": self._step, "horizon": None, "accepted": False, "loss_before": None,
                 "loss_after": None, "evaluations": 0, "seconds": 0.0, "reason": None}
        if not all(bool(torch.isfinite(X).all()) for X in self.recorder.snapshots()):
            # NaN/Inf weights in the window (a diverged step): nothing to fit, nothing to
            # evaluate; the model is not touched and the window starts afresh
            entry["reason"] = "non-finite weights in the window: window skipped"
            self.recorder.reset()
            return self._log(entry, t0)
        try:
            loss_before = _as_float(closure(), "closure()")
            entry["evaluations"] = 1
            entry["loss_before"] = loss_before
            best_h, best_loss, best_vals = None, math.inf, None
            if not math.isfinite(loss_before):
                entry["reason"] = "non-finite loss before the jump: window skipped"
                self.recorder.reset()
            else:
                try:
                    cands = self._candidates()
                except (FloatingPointError, ValueError) as e:
                    cands, entry["reason"] = [], f"fit or prediction failed: {e}"[:200]
                for h, vals in cands:
                    if not all(bool(torch.isfinite(v).all()) for v in vals.values()):
                        entry["reason"] = entry["reason"] or "non-finite prediction"
                        break
                    self._load(vals)
                    loss = _as_float(closure(), "closure()")
                    entry["evaluations"] += 1
                    if not math.isfinite(loss):
                        break
                    if loss < best_loss:
                        best_h, best_loss, best_vals = h, loss, vals
                    elif loss > best_loss:  # the path turned up again: stop (QuACK)
                        break
            entry["loss_after"] = best_loss if best_vals is not None else None
            if best_vals is not None and best_loss < (1 - self.margin) * loss_before:
                self._load(best_vals)
                self._accept(best_h)
                entry["accepted"], entry["horizon"] = True, best_h
                entry["reason"] = None
            else:
                self._restore(saved)
                entry["reason"] = entry["reason"] or "no candidate improved the loss"
                self._interval = min(self._interval * 2, self.base_interval * self.max_backoff)
                self._next_attempt = self._step + self._interval
        except BaseException:
            self._restore(saved)  # an exception (or Ctrl-C) in the closure undoes the jump
            raise
        return self._log(entry, t0)

    def _log(self, entry: dict, t0: float) -> dict:
        entry["seconds"] = time.perf_counter() - t0
        self.history.append(entry)
        if self.writer is not None:
            for k in ("loss_before", "loss_after", "horizon"):
                if isinstance(entry[k], (int, float)) and math.isfinite(entry[k]):
                    self.writer.add_scalar(f"koopman/{k}", entry[k], self._step)
            self.writer.add_scalar("koopman/accepted", float(entry["accepted"]), self._step)
        return entry

    def _restore(self, saved) -> None:
        with torch.no_grad():
            for p, s in zip(self._params(), saved, strict=True):
                p.copy_(s)

    def _accept(self, horizon) -> None:
        """Apply the policies of an accepted jump, all or nothing: an exception (or
        Ctrl-C) part-way restores the optimizer state and the buffers, and the caller
        restores the weights."""
        buffers = [b.detach().clone() for b in self.model.buffers()] \
            if self.bn_loader is not None else None
        bn_momenta = [(m, m.momentum) for m in self.model.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        state = {k: dict(v) for k, v in self.optimizer.state.items()}
        momenta = {(k, key): v[key].clone() for k, v in state.items() for key in
                   _MOMENTUM_KEYS if isinstance(v.get(key), torch.Tensor)}
        try:
            if self.bn_loader is not None:
                from torch.optim.swa_utils import update_bn

                update_bn(self.bn_loader, self.model)
            if self.optimizer_state == "reset":
                self.optimizer.state.clear()
            elif self.optimizer_state == "momentum":
                for (k, key), _ in momenta.items():
                    self.optimizer.state[k][key].zero_()
        except BaseException:
            with torch.no_grad():
                for (k, key), v in momenta.items():
                    state[k][key].copy_(v)
                if buffers is not None:
                    for b, v in zip(self.model.buffers(), buffers, strict=True):
                        b.copy_(v)
                    for m, momentum in bn_momenta:  # update_bn sets them to None meanwhile
                        m.momentum = momentum
            self.optimizer.state.clear()
            self.optimizer.state.update(state)
            raise
        self.jumps_accepted += 1
        if isinstance(horizon, int):
            self.steps_saved += horizon
        self.recorder.reset()  # the dynamics after a jump start a new window
        self._interval = self.base_interval
        self._next_attempt = self._step + self.base_interval

    # --------------------------------------------------------------- resume
    def _signature(self) -> dict:
        return {"window": self.window, "every": self.every, "predictor": self.predictor,
                "horizons": list(self.horizons), "engine": dict(self.engine_options),
                "fixed_point": self.fixed_point, "optimizer_state": self.optimizer_state,
                "max_residual": self.max_residual}

    def state_dict(self) -> dict:
        """The accelerator's own state (recorder buffers, counters, schedule, history);
        save it next to the model's and the optimizer's."""
        return {"signature": self._signature(), "recorder": self.recorder.state_dict(),
                "step": self._step, "interval": self._interval,
                "next_attempt": self._next_attempt, "history": list(self.history),
                "counters": [self.jumps_tried, self.jumps_accepted, self.steps_saved]}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; raises ``ValueError`` for a state saved with other
        settings or another model (nothing is changed then)."""
        check_signature("KoopmanAccelerator", self._signature(), state)
        self.recorder.load_state_dict(state["recorder"])
        self._step, self._interval = int(state["step"]), int(state["interval"])
        self._next_attempt = int(state["next_attempt"])
        self.history.clear()
        self.history.extend(state["history"])
        self.jumps_tried, self.jumps_accepted, self.steps_saved = map(int, state["counters"])


def _optimized_parameters(model: nn.Module, optimizer) -> list[torch.Tensor]:
    """The model's trainable parameters that ``optimizer`` updates: a jump moves only
    those (frozen ones and ones the optimizer does not own stay put)."""
    owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
    params = [p for p in model.parameters() if p.requires_grad and id(p) in owned]
    if not params:
        raise ValueError("the optimizer updates none of the model's trainable parameters; "
                         "pass the optimizer that trains this model.")
    return params


def _n_owned(optimizer) -> int:
    return sum(len(g["params"]) for g in optimizer.param_groups)


def _buffer_dtype(params) -> torch.dtype:
    """Snapshots keep at least float32 (half-precision weights are recorded in float32;
    fits run in float64 anyway) and never less than the widest parameter dtype."""
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype
