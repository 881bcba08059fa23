"""The race's methods: one ``Run`` per (method, optimizer, seed), advanced one step at a time
so that the experiment can interleave every method of a seed in lockstep.

Methods (``method`` in the JSON rows):

* ``plain``: a plain optimizer; ``plain-copy``: the reference optimizer again, identically
  (the two copies make the same steps, so their time difference is the clock's noise band);
* ``koopman``: ``KoopmanAccelerator`` at its defaults; ``linear-extrapolation``: the same
  with ``predictor="linear"`` (ablation); ``lawa``: ``predictor="average"``;
* ``rna``, ``anderson``: the same verified accelerator whose one candidate is the RNA or
  Anderson extrapolation of its window (``k = window - 1`` differences, ``lam`` tuned);
  ``rna-offline``: plain training, scored at an RNA-extrapolated copy of the last ``k + 1``
  snapshots (training never sees it);
* ``ema``, ``swa`` (``torch.optim.swa_utils``), ``lookahead``, ``schedulefree``;
* ``koopman-average``, ``koopman-average-weights``: plain training scored at a
  ``KoopmanAverage`` copy (the regularised fixed point of the EMA of the trajectory, or of
  the trajectory itself);
* ``adam-koopman-lbfgs`` (the PINN): Adam, one verified Koopman jump at the switch, then
  L-BFGS, against ``plain`` ``adam-lbfgs`` at the same switch step;
* ``bn-refresh`` (BatchNorm tasks): plain training whose running statistics are recomputed
  by ``update_bn`` on the accelerator's ``bn_loader`` every ``eval_every`` steps, so every
  score sees refreshed statistics: what a refresh is worth on its own, counted like any
  other work.

Each run's ``Meter`` counts only its own work: the step (zero_grad, loss, backward, clipping,
optimizer and scheduler step) and whatever the method adds (recording, fits, the closure's
evaluations, BatchNorm refreshes, averaging, extrapolation). Drawing the batch and scoring
are outside it. Compute is counted, not timed: every call a run makes is tallied and
multiplied by its FLOPs (``Costs``), so it is the same on every machine.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from dataclasses import dataclass

import torch

from ...accelerator import KoopmanAccelerator
from ...partition import Partition
from ..harness.meter import Meter, count_flops
from .baselines import Lookahead
from .extrapolation import anderson, koopman_fixed_point, rna
from .workloads import Workload

__all__ = ["ACCELERATOR", "AVERAGE", "Costs", "EXTRAPOLATION", "HANDOFF", "METHODS", "Run",
           "extrapolator", "make_run", "methods_for"]

# The accelerator as it is today: KoopmanAccelerator's own defaults (docs/accelerator.md).
ACCELERATOR: dict = {}
# RNA / Anderson settings: the accelerator's window (k = window - 1) and the regulariser
# lam, chosen on the tuning seed (`kooptrain race TASK --tune`).
EXTRAPOLATION = {"window": 10, "lam": 1e-5}
# the PINN hand-off: Adam's window at the switch and its candidates
HANDOFF = {"every": 25, "window": 6, "horizons": (50, 100, 200, 400, 800, 1600),
           "lam": 1e-5}
# KoopmanAverage's settings in the race (its own defaults unless a design says otherwise)
AVERAGE: dict = {}
ACCELERATED = ("koopman", "linear-extrapolation", "lawa", "rna", "anderson")


def methods_for(w: Workload) -> list[tuple[str, str]]:
    """Every (method, optimizer) of the race on ``w``, plain ones first."""
    steppable = [o for o in w.plain if w.sequence(o) is None]  # L-BFGS too: its iterates
    return ([("plain", o) for o in w.plain] + [("plain-copy", w.best)]
            + [("koopman", o) for o in steppable]
            + [(m, w.best) for m in ("linear-extrapolation", "lawa", "rna", "anderson",
                                     "rna-offline", "ema", "swa", "lookahead",
                                     "koopman-average", "koopman-average-weights")]
            + [("schedulefree", "schedulefree"),
               ("schedulefree-koopman-average", "schedulefree")]
            + [("adam-koopman-lbfgs", o) for o in w.plain if w.sequence(o) is not None]
            + ([("bn-refresh", w.best)] if w.bn_batches else []))


@dataclass
class Costs:
    """FLOPs of one call of each kind, counted once per workload with
    ``torch.utils.flop_counter`` on a fresh model: a training step's forward and backward
    (``step``), one closure evaluation (``closure``), one BatchNorm refresh batch
    (``bn_batch``); ``p`` the trained parameters; ``screen`` one evaluation of the
    accelerator's screen (``Workload.screen_size``; 0 without one). Fits and
    extrapolations are not seen by the counter (factorisations): they come from the
    complexity model (``fit_flops``)."""

    step: int
    closure: int
    bn_batch: int
    p: int
    screen: int = 0

    @classmethod
    def measure(cls, w: Workload) -> Costs:
        model = w.make_model(0)
        batch = next(w.sampler(0))
        _, step = count_flops(lambda: w.loss(model, batch).backward())
        _, closure = count_flops(w.judge(model))
        bn = 0
        loader = w.bn_loader()
        if loader:
            with torch.no_grad():
                _, bn = count_flops(lambda: model(loader[0]))
        screen = count_flops(w.judge(model, w.screen_size))[1] if w.screen_size else 0
        return cls(step, closure, bn, sum(q.numel() for q in model.parameters()), screen)

    def fit_flops(self, method: str, m: int, horizons: int) -> float:
        """One attempt's prediction work on a window of ``m`` snapshots of ``p`` weights
        (network granularity): the Koopman fit in its low-rank form (thin SVD of the
        ``(p + 1) x (m - 1)`` data, ``4 d n^2 + 8 n^3 + 2 d n^2``) and ``2 d n`` per horizon;
        RNA/Anderson: the Gram matrix ``2 p k^2`` and the combination ``2 p k``; the linear
        and average predictors ``O(p m)``."""
        d, n = self.p + 1, m - 1
        if method == "koopman":
            return 4 * d * n * n + 8 * n**3 + 2 * d * n * n + horizons * 2 * d * n
        if method in ("rna", "anderson", "rna-offline"):
            return 2 * self.p * n * n + 2 * self.p * n
        return 2 * self.p * m


class _Counting:
    """A ``bn_loader`` that counts the batches ``update_bn`` draws from it."""

    def __init__(self, batches):
        self.batches, self.drawn = batches, 0

    def __iter__(self):
        for b in self.batches:
            self.drawn += 1
            yield b


def extrapolator(kind: str, lam: float):
    """``kind`` (``"rna"``, ``"anderson"`` or ``"koopman-fixed-point"``) as the accelerator's
    custom predictor, one candidate per block group."""
    base = {"rna": rna, "anderson": functools.partial(anderson, beta=1.0),
            "koopman-fixed-point": koopman_fixed_point}[kind]

    def extrapolate(X: torch.Tensor) -> torch.Tensor:  # (B, d, m) -> (B, d)
        return torch.stack([base(x, lam=lam) for x in X]).to(X.dtype)

    extrapolate.__qualname__ = f"{kind}(lam={lam:g})"
    return extrapolate


class Run:
    """One training run of a method with the plain optimizer ``optimizer`` on ``w``: the
    common loop of every method. A method is a subclass (``METHODS`` maps each name to
    its class; ``make_run`` builds one) that overrides only what it changes:
    ``make_optimizer``, ``after_step`` (its work after the optimizer's step, counted),
    ``scored_model`` (the weights it hands over), ``scoring`` (a context for scoring) and
    ``history``.

    ``step()`` makes one optimizer step (timed, counted); ``score()`` returns the held-out
    and training scores (untimed) at ``scored_model()``; ``totals()`` the run's counts.
    """

    names: tuple[str, ...] = ()

    def __init__(self, w: Workload, method: str, optimizer: str, seed: int, costs: Costs,
                 accelerator: dict | None = None, extrapolation: dict | None = None,
                 average: dict | None = None):
        self.w, self.method, self.optimizer, self.seed, self.costs = w, method, optimizer, \
            seed, costs
        self.model = w.make_model(seed)
        self.batches = w.sampler(seed)
        self.meter = Meter.for_device(w.device)
        # grad_evals: forward + backward passes (one per step; L-BFGS: one per function
        # evaluation of its line search); closure_calls: the accelerator's judge
        self.steps = self.grad_evals = self.closure_calls = self.fits = self.screen_calls = 0
        self.fit_flops = 0.0
        self._bn = None  # a _Counting bn_loader where the method refreshes statistics
        self._switched = False  # a sequence optimizer (Adam, then L-BFGS) has switched
        self.average = dict(AVERAGE if average is None else average)
        self.opt, self.sched = self.make_optimizer()
        self.setup(dict(ACCELERATOR if accelerator is None else accelerator),
                   dict(EXTRAPOLATION if extrapolation is None else extrapolation))

    # ------------------------------------------------------------ the hooks
    def make_optimizer(self):
        """``(optimizer, scheduler or None)`` of this run."""
        sequence = self.w.sequence(self.optimizer)
        return self.w.make_optimizer(sequence[0] if sequence else self.optimizer, self.model)

    def setup(self, accelerator: dict, extrapolation: dict) -> None:
        """What the method builds beside the model and optimizer."""

    def after_step(self) -> None:
        """The method's own work after each optimizer step (inside the meter)."""

    def scored_model(self) -> torch.nn.Module:
        """The weights the method hands over now (the average, the extrapolation, ...)."""
        return self.model

    @contextlib.contextmanager
    def scoring(self):
        """A context around scoring (Schedule-Free swaps in its evaluation weights)."""
        yield

    def history(self) -> list | None:
        """The accelerator's attempts, for methods that have one."""
        return None

    def jumps(self) -> dict:
        return {"jumps_tried": 0, "jumps_accepted": 0}

    # ---------------------------------------------------------------- steps
    def switching_now(self) -> bool:
        """Whether a sequence optimizer hands over to its second before this step (at
        half the budget)."""
        return (not self._switched and self.w.sequence(self.optimizer) is not None
                and self.steps >= self.w.budget // 2)

    def current(self) -> str:
        """The name of the optimizer that makes this step."""
        sequence = self.w.sequence(self.optimizer)
        if sequence is None:
            return self.optimizer
        return sequence[1] if self._switched else sequence[0]

    def on_switch(self) -> None:
        """The method's own work at a sequence optimizer's hand-off (counted)."""

    def step(self) -> None:
        batch = next(self.batches)  # drawn outside the clock
        with self.meter.timing():
            if self.switching_now():
                self.on_switch()
                self._switched = True
                self.opt, self.sched = self.w.make_optimizer(self.current(), self.model)
            if self.w.closure_optimizer(self.current()):
                self._closure_step()
            else:
                self.opt.zero_grad(set_to_none=True)
                self.w.loss(self.model, batch).backward()
                self.grad_evals += 1
                if self.w.clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.w.clip)
                self.opt.step()
                if self.sched is not None:
                    self.sched.step()
            self.after_step()  # also along L-BFGS's own iterates (Koopman on lbfgs)
        self.steps += 1

    def _closure_step(self) -> None:
        """One step of a closure optimizer (L-BFGS) on the task's fixed batch; every
        function evaluation of its line search is a gradient evaluation."""
        def closure():
            self.grad_evals += 1
            self.opt.zero_grad(set_to_none=True)
            loss = self.w.loss(self.model, self.w.fixed_batch)
            loss.backward()
            return loss

        self.opt.step(closure)
        if self.sched is not None:
            self.sched.step()

    # -------------------------------------------------------------- scoring
    def score(self) -> dict:
        """``{"heldout", "train", ["accuracy"]}`` at ``scored_model()``; not timed."""
        with self.scoring():
            model = self.scored_model()
            out = self.w.heldout(model)
            out["train"] = self.w.train_score(model)
        return {k: (v if math.isfinite(v) else None) for k, v in out.items()}

    def totals(self) -> dict:
        """Wall and thread-CPU seconds, FLOPs (steps + closure + BatchNorm refreshes +
        fits), steps and closure calls so far."""
        bn = self._bn.drawn if self._bn is not None else 0
        flops = self.grad_evals * self.costs.step + self.closure_calls * self.costs.closure \
            + bn * self.costs.bn_batch + self.fit_flops + self.screen_calls * self.costs.screen
        return {"wall": self.meter.wall, "cpu": self.meter.cpu, "flops": float(flops),
                "steps": self.steps, "grad_evals": self.grad_evals,
                "closure_calls": self.closure_calls, "bn_batches": bn, "fits": self.fits,
                "screen_calls": self.screen_calls}


class Plain(Run):
    """The plain optimizer; ``plain-copy`` is the reference again (the noise band)."""

    names = ("plain", "plain-copy")


class Accelerated(Run):
    """``KoopmanAccelerator`` on the plain optimizer, judged by the workload's closure:
    at its defaults (``koopman``), or with the linear, average (LAWA), RNA or Anderson
    candidate."""

    names = ACCELERATED

    def setup(self, accelerator: dict, extrapolation: dict) -> None:
        kw = accelerator
        if self.method == "linear-extrapolation":
            kw["predictor"] = "linear"
        elif self.method == "lawa":
            kw["predictor"] = "average"
        elif self.method in ("rna", "anderson"):
            kw["predictor"] = extrapolator(self.method, extrapolation["lam"])
            kw["window"] = extrapolation["window"]
        self._bn = _Counting(self.w.bn_loader()) if self.w.bn_batches else None
        self.acc = KoopmanAccelerator(self.model, self.opt, bn_loader=self._bn, **kw)
        self._judge = self._counted(self.w.judge(self.model))
        self._screen = self._counted(self.w.judge(self.model, self.w.screen_size),
                                     "screen_calls") if self.w.screen_size else None

    def _counted(self, closure, counter: str = "closure_calls"):
        def judge():
            setattr(self, counter, getattr(self, counter) + 1)
            return closure()
        return judge

    def after_step(self) -> None:
        entry = self.acc.step(self._judge, screen=self._screen)
        if entry is not None and entry["fitted"]:
            self.fits += 1
            horizons = len(self.acc.horizons) if self.method == "koopman" else 1
            self.fit_flops += self.costs.fit_flops(self.method, self.acc.window, horizons)

    def history(self) -> list:
        return list(self.acc.history)

    def jumps(self) -> dict:
        return {"jumps_tried": self.acc.jumps_tried, "jumps_accepted": self.acc.jumps_accepted}


class OfflineRNA(Run):
    """Plain training, scored at an RNA-extrapolated copy of the last ``k + 1`` snapshots
    (training never sees it)."""

    names = ("rna-offline",)

    def setup(self, accelerator: dict, extrapolation: dict) -> None:
        from ...recorder import SnapshotRecorder

        self.offline = SnapshotRecorder(self.model, granularity="network",
                                        window=extrapolation["window"], storage="window")
        self._lam, self._scratch = extrapolation["lam"], copy.deepcopy(self.model)

    def after_step(self) -> None:
        self.offline.record()

    def scored_model(self) -> torch.nn.Module:
        if self.offline.n_snapshots < self.offline.window:
            return self.model
        with self.meter.timing():  # the extrapolation is this method's own work
            X = self.offline.snapshots()[0]
            vec = torch.stack([rna(x, lam=self._lam) for x in X]).to(X.dtype)
            part: Partition = self.offline.partition
            self._scratch.load_state_dict(self.model.state_dict())
            self._scratch.load_state_dict(part.unflatten(part.scatter([vec])), strict=False)
        self.fits += 1
        self.fit_flops += self.costs.fit_flops("rna-offline", self.offline.window, 1)
        return self._scratch


class Averaged(Run):
    """``torch.optim.swa_utils.AveragedModel`` of the training weights: EMA (decay 0.99)
    from the start, SWA from a quarter of the budget on; BatchNorm statistics averaged
    too."""

    names = ("ema", "swa")

    def setup(self, accelerator: dict, extrapolation: dict) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        buffers = bool(self.w.bn_batches)
        self.avg = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(0.99),
                                 use_buffers=buffers) if self.method == "ema" else \
            AveragedModel(self.model, use_buffers=buffers)

    def _averaging(self) -> bool:
        return self.method == "ema" or self.steps >= self.w.budget // 4

    def after_step(self) -> None:
        if self._averaging():
            self.avg.update_parameters(self.model)

    def scored_model(self) -> torch.nn.Module:
        return self.avg.module if self._averaging() else self.model


class LookaheadRun(Run):
    """Lookahead (k = 5, alpha = 0.5) around the plain optimizer."""

    names = ("lookahead",)

    def make_optimizer(self):
        opt, sched = super().make_optimizer()
        return Lookahead(opt, k=5, alpha=0.5), sched


class ScheduleFree(Run):
    """Schedule-Free AdamW (the ``schedulefree`` package), scored at its ``x`` sequence."""

    names = ("schedulefree",)

    def make_optimizer(self):
        return self.w.make_schedulefree(self.model), None

    @contextlib.contextmanager
    def scoring(self):
        self.opt.eval()
        try:
            yield
        finally:
            self.opt.train()


class BNRefresh(Run):
    """Plain training whose BatchNorm statistics ``update_bn`` recomputes on the
    accelerator's ``bn_loader`` before every score (every ``eval_every`` steps)."""

    names = ("bn-refresh",)

    def setup(self, accelerator: dict, extrapolation: dict) -> None:
        self._bn = _Counting(self.w.bn_loader())

    def after_step(self) -> None:
        if (self.steps + 1) % self.w.eval_every == 0:
            from torch.optim.swa_utils import update_bn

            update_bn(self._bn, self.model)  # at every scoring point


class KoopmanAveraged(Run):
    """Plain training, scored at a ``KoopmanAverage`` copy at ``AVERAGE``'s settings
    (default: its own): the regularised fixed point of the window fitted to the EMA of the
    training weights (``koopman-average``; decay 0.99 as ``ema``) or to the weights
    themselves (``koopman-average-weights``). On BatchNorm
    tasks the copy's statistics are refreshed (``update_bn`` on the accelerator's
    ``bn_loader``, counted) before each score: the extrapolated weights need their own."""

    names = ("koopman-average", "koopman-average-weights")

    def setup(self, accelerator: dict, extrapolation: dict) -> None:
        from ...average import KoopmanAverage

        source = {"source": "weights"} if self.method.endswith("-weights") else {}
        self.avg = KoopmanAverage(self.model, **{**source, **self.average})
        self._bn = _Counting(self.w.bn_loader()) if self.w.bn_batches else None
        self._fitted_at = 0

    def after_step(self) -> None:
        self.avg.update_parameters(self.model)
        if self.avg.estimating and self.avg.n_snapshots > self._fitted_at:
            self._fitted_at = self.avg.n_snapshots
            self.fits += 1
            self.fit_flops += self.costs.fit_flops("koopman", self.avg.window, 0)

    def scored_model(self) -> torch.nn.Module:
        if self._bn is not None:
            from torch.optim.swa_utils import update_bn

            with self.meter.timing():
                update_bn(self._bn, self.avg)
        return self.avg.module


class ScheduleFreeKoopmanAveraged(ScheduleFree):
    """Schedule-Free AdamW, scored at a ``KoopmanAverage`` of its ``x`` sequence (issue #26:
    Koopman on top of the best optimizer). ``x`` is already Schedule-Free's average of its
    ``z`` iterates, so the copy fits ``x`` itself (``source="weights"`` unless ``AVERAGE``
    says otherwise) and extrapolates it to its fixed point. At each snapshot step ``x`` is
    computed from ``y`` and ``z`` into a shadow copy of the model (as
    ``optimizer.eval()`` computes it, without moving the training weights: a swap there and
    back would round them), counted in the step's time."""

    names = ("schedulefree-koopman-average",)

    def setup(self, accelerator: dict, extrapolation: dict) -> None:
        from ...average import KoopmanAverage

        self.avg = KoopmanAverage(self.model, **{"source": "weights", **self.average})
        self._bn = _Counting(self.w.bn_loader()) if self.w.bn_batches else None
        self._fitted_at = 0
        self._x = copy.deepcopy(self.model)  # x at the last snapshot step
        shadow = dict(zip(self.model.parameters(), self._x.parameters(), strict=True))
        self._pairs = [(p, shadow[p], g["betas"][0]) for g in self.opt.param_groups
                       for p in g["params"]]

    def after_step(self) -> None:
        if self.avg.step_count % self.avg.every == 0:  # this update takes a snapshot
            with torch.no_grad():
                for y, x, beta1 in self._pairs:
                    x.copy_(y).lerp_(self.opt.state[y]["z"], 1 - 1 / beta1)
        self.avg.update_parameters(self._x)
        if self.avg.estimating and self.avg.n_snapshots > self._fitted_at:
            self._fitted_at = self.avg.n_snapshots
            self.fits += 1
            self.fit_flops += self.costs.fit_flops("koopman", self.avg.window, 0)

    scored_model = KoopmanAveraged.scored_model

    @contextlib.contextmanager
    def scoring(self):  # the copy is scored, not the training model
        yield


class HandOff(Run):
    """Adam, then one verified Koopman jump at the switch, then L-BFGS (``adam-lbfgs``'s
    schedule): over Adam's last ``HANDOFF["window"]`` snapshots (every ``HANDOFF["every"]``
    steps, the last at the switch) the candidates are the regularised fixed point and the
    Koopman predictions at ``HANDOFF["horizons"]``; the one with the lowest judged loss is
    kept if it beats the weights Adam left, and L-BFGS starts from there. Every candidate's
    judge call is counted, and so is the fit."""

    names = ("adam-koopman-lbfgs",)

    def setup(self, accelerator: dict, extrapolation: dict) -> None:
        from ...recorder import SnapshotRecorder

        # one snapshot per record() call, taken every HANDOFF["every"] steps counted back
        # from the switch, so the window ends at the weights Adam hands over
        self.rec = SnapshotRecorder(self.model, granularity="network",
                                    window=HANDOFF["window"], every=1)
        self._judge = self.w.judge(self.model)
        self.handoff: dict | None = None

    def after_step(self) -> None:
        if not self._switched and \
                (self.w.budget // 2 - (self.steps + 1)) % HANDOFF["every"] == 0:
            self.rec.record()

    def on_switch(self) -> None:
        from ..._fixed_point import regularised_fixed_point

        part = self.rec.partition
        now = part.flatten()
        horizons = list(HANDOFF["horizons"])
        forecast = self.rec.fit(observables="affine", stabilize="clip")
        preds = forecast.predict(snapshots=[h // HANDOFF["every"] for h in horizons])
        X = self.rec.snapshots()[0]  # (1, p, m)
        candidates = {f"h={h}": part.flatten({n: v[..., i] for n, v in preds.items()})
                      for i, h in enumerate(horizons)}
        candidates["fixed point"] = regularised_fixed_point(X, lam=HANDOFF["lam"])[0]
        self.fits += 1
        self.fit_flops += self.costs.fit_flops("koopman", self.rec.window, len(horizons) + 1)
        scores = {"now": self._judge()}
        for name, vec in candidates.items():
            if not bool(torch.isfinite(vec).all()):
                continue
            part.assign(part.unflatten(vec))
            scores[name] = self._judge()
        self.closure_calls += len(scores)
        best = min(scores, key=lambda k: (not math.isfinite(scores[k]), scores[k]))
        part.assign(part.unflatten(candidates[best] if best != "now" else now))
        self.handoff = {"step": self.steps, "kept": best, "scores": scores}

    def history(self) -> list | None:
        return [self.handoff] if self.handoff else []


METHODS: dict[str, type[Run]] = {name: cls for cls in (
    Plain, Accelerated, OfflineRNA, Averaged, LookaheadRun, ScheduleFree, BNRefresh,
    KoopmanAveraged, ScheduleFreeKoopmanAveraged, HandOff) for name in cls.names}


def make_run(w: Workload, method: str, optimizer: str, seed: int, costs: Costs,
             accelerator: dict | None = None, extrapolation: dict | None = None,
             average: dict | None = None) -> Run:
    """The ``Run`` of ``method`` (a key of ``METHODS``) with ``optimizer`` on ``w``.
    ``accelerator``: ``KoopmanAccelerator`` keywords of the accelerated methods (default
    ``ACCELERATOR``); ``extrapolation``: RNA's ``window`` and ``lam``; ``average``:
    ``KoopmanAverage`` keywords of the ``koopman-average`` methods (default ``AVERAGE``)."""
    if method not in METHODS:
        raise ValueError(f"unknown race method {method!r}; choose from {sorted(METHODS)}.")
    return METHODS[method](w, method, optimizer, seed, costs, accelerator, extrapolation,
                           average)
