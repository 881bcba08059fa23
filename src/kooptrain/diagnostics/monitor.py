"""``KoopmanMonitor``: read a training run through the Koopman spectrum of its weights."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections import deque
from pathlib import Path

import torch
from torch import nn

from .._clock import LRClock
from .._migrate import monitor_state_from_v1
from .._settings import Settings, check_state, deprecated, settings_properties
from .._validation import (
    check_choice,
    check_floating_dtype,
    check_fraction,
    check_int,
    check_optional_int,
    check_positive,
)
from ..partition import GRANULARITIES
from ..recorder import SNAPSHOTS, SnapshotRecorder
from .plot import plot_spectra
from .record import layer_entry, new_record, number, save_record
from .spectrum import block_spectra, null_forecast, null_growth, reduce_window, time_orders

__all__ = ["KoopmanMonitor", "MonitorSettings"]
STATE_KIND, STATE_VERSION = "kooptrain.KoopmanMonitor", 2


@dataclasses.dataclass(frozen=True)
class MonitorSettings(Settings):
    """The validated, frozen settings of a ``KoopmanMonitor`` (see its parameters);
    ``interval`` is stored resolved, ``lr_time`` says whether an optimizer was given."""

    DERIVED = {"interval": lambda s: s.window * s.every,
               "surrogates": lambda s: default_surrogates(s.alarm_rate),
               "burn_in": lambda s: 2 * s.window * s.every}
    # since 0.2.0's state version 2, with the value a state saved before had
    ADDED = {"chunk": None, "alarm_rate": None, "persist": 1, "null_rank": None,
             "surrogates": None, "min_growth": 0.0, "burn_in": 0, "snapshot": "last",
             "forecast": None}
    # the warning's rule may change on resume (warned): 0.2's states resume under the null
    RESUMABLE = frozenset({"threshold", "alarm_rate", "persist", "null_rank", "surrogates",
                           "min_growth", "burn_in", "forecast"})

    every: int = 10
    window: int = 10
    interval: int | None = None
    granularity: str = "layer"
    chunk: int | None = None
    horizon: int = 1000
    threshold: float | None = None
    alarm_rate: float | None = 0.01
    persist: int = 2
    null_rank: int | None = 1
    surrogates: int | None = None
    min_growth: float = 0.01
    forecast: float | None = None
    burn_in: int | None = None
    snapshot: str = "last"
    settle_tol: float = 1e-3
    unit_tol: float = 0.05
    smooth: int = 3
    rank: int | None = None
    lr_time: bool = False
    dtype: torch.dtype | None = None

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen
        put("every", check_int(self.every, "every", 1))
        put("window", check_int(self.window, "window", 4))
        interval = check_optional_int(self.interval, "interval")
        put("interval", interval or self.window * self.every)
        check_choice(self.granularity, "granularity", GRANULARITIES)
        put("chunk", check_optional_int(self.chunk, "chunk"))
        put("horizon", check_int(self.horizon, "horizon", 1))
        put("threshold", check_positive(self.threshold, "threshold", optional=True))
        if self.threshold is not None:  # the deprecated rule: a bound on instability
            put("alarm_rate", None)
        elif self.alarm_rate is None:
            raise ValueError("alarm_rate=None needs a threshold (the deprecated rule); give "
                             "alarm_rate, the false-alarm rate per fit, e.g. 0.01.")
        else:
            put("alarm_rate", check_fraction(self.alarm_rate, "alarm_rate"))
            if not self.alarm_rate > 0:
                raise ValueError(f"alarm_rate={self.alarm_rate!r} must lie in (0, 1).")
        put("persist", check_int(self.persist, "persist", 1))
        if not isinstance(self.min_growth, (int, float)) or isinstance(self.min_growth, bool) \
                or not self.min_growth >= 0:
            raise ValueError(f"min_growth={self.min_growth!r} must be a number >= 0 (the "
                             "motion's growth per optimizer step a flag needs).")
        put("min_growth", float(self.min_growth))
        f = self.forecast
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float))
                              or not 0 < f <= 1):
            raise ValueError(f"forecast={f!r} must be a number in (0, 1] (the largest share "
                             "of surrogates that may forecast the held-out increment at "
                             "least as well) or None (no forecast test).")
        if f is not None and self.alarm_rate is None:
            raise ValueError("forecast is a condition of the null's flags; it needs "
                             "alarm_rate (not the deprecated threshold).")
        put("forecast", None if f is None else float(f))
        b = self.burn_in
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 0):
            raise ValueError(f"burn_in={b!r} must be an int >= 0 (optimizer steps) or None.")
        put("burn_in", 2 * self.window * self.every if b is None else b)
        check_choice(self.snapshot, "snapshot", SNAPSHOTS)
        put("null_rank", check_optional_int(self.null_rank, "null_rank"))
        k = check_optional_int(self.surrogates, "surrogates")
        put("surrogates", None if self.alarm_rate is None else
            k or default_surrogates(self.alarm_rate))
        if self.alarm_rate is not None and (self.surrogates + 1) * self.alarm_rate < 1:
            raise ValueError(f"surrogates={self.surrogates} cannot resolve "
                             f"alarm_rate={self.alarm_rate}: the smallest p-value is "
                             f"1/(surrogates + 1); use at least "
                             f"{math.ceil(1 / self.alarm_rate) - 1}.")
        if self.alarm_rate is not None and math.factorial(self.window - 1) * \
                self.alarm_rate < 1:
            warnings.warn(f"KoopmanMonitor: window={self.window} has only "
                          f"{math.factorial(self.window - 1)} orders of its increments, too "
                          f"few for a p-value of alarm_rate={self.alarm_rate}: growth "
                          "will never be warned of (non-finite weights still are). Use "
                          f"window >= {_shortest_window(self.alarm_rate)} or a larger "
                          "alarm_rate.", UserWarning, stacklevel=4)
        put("settle_tol", check_positive(self.settle_tol, "settle_tol"))
        put("unit_tol", check_fraction(self.unit_tol, "unit_tol"))
        put("smooth", check_int(self.smooth, "smooth", 1))
        put("rank", check_optional_int(self.rank, "rank"))
        check_floating_dtype(self.dtype, "dtype")


def _shortest_window(alarm_rate: float) -> int:
    n = 1
    while math.factorial(n) * alarm_rate < 1:
        n += 1
    return n + 1


def default_surrogates(alarm_rate: float | None) -> int | None:
    """Time orders per fit for the null at ``alarm_rate``: enough for a p-value of half of
    it (``2 / alarm_rate - 1``: 199 at 0.01)."""
    return None if alarm_rate is None else math.ceil(2 / alarm_rate) - 1


def _null_test(growth: dict, alarm_rate: float, margin: float, forecast: dict,
               level: float | None) -> dict:
    """One p-value for the model (a max statistic over layers, as in Westfall and Young):
    each layer's growth is standardised by its surrogates' mean and spread, the largest
    over the layers is ranked among the surrogates' largest (the same time order in every
    layer). ``growth``: ``{layer: (growth, (K,) surrogate growths)}``. Flagged when the
    p-value is at most ``alarm_rate`` and that layer grows by more than ``margin`` a
    snapshot interval, and, with a ``level``, when at most that share of the surrogates
    forecast the layer's held-out increment at least as well as its window does
    (``forecast``: ``{layer: (residual, (K,) surrogate residuals)}``)."""
    if not growth:
        return {"p_value": 1.0, "layer": None, "growth": None, "z": None, "forecast": None,
                "flagged": False}
    names = list(growth)
    g0 = torch.tensor([growth[n][0] for n in names], dtype=torch.float64)
    gk = torch.stack([growth[n][1] for n in names]).to(torch.float64)  # (L, K)
    mu, sd = gk.mean(-1), gk.std(-1).clamp_min(1e-12)
    z0, zk = (g0 - mu) / sd, (gk - mu[:, None]) / sd[:, None]
    top = int(z0.argmax())
    m0, mk = float(z0[top]), zk.amax(0)
    p = (1 + int((mk >= m0).sum())) / (1 + mk.numel())
    q = None
    if names[top] in forecast:  # the share of surrogates that forecast at least as well
        r0, rk = forecast[names[top]]
        q = (1 + int((rk <= r0).sum())) / (1 + rk.numel())
    flagged = p <= alarm_rate and float(g0[top]) > margin and (level is None or q <= level)
    return {"p_value": p, "layer": names[top], "growth": float(g0[top]), "z": m0,
            "forecast": q, "flagged": flagged}


class KoopmanMonitor:
    """Watch training through per-layer Koopman spectra; never changes the weights.

    Call ``step()`` right after each ``optimizer.step()``. Every ``every`` steps it records
    the trainable parameters; every ``interval`` steps, once ``window`` snapshots are held,
    it fits one operator per block (``granularity``, default one per layer) to the
    increments of the window (``kooptrain.diagnostics.spectrum``) and appends an entry to
    ``record``: no weights, only the spectra and what is read from them.

    Parameters
    ----------
    model : nn.Module
    every : int >= 1
        Optimizer steps between snapshots (the first at the first step, as in the recorder
        and the accelerator). Default 10: spectra of ~100-step windows, cheap enough to
        leave on (the accelerator's 25 serves long jumps, the recorder's 1 the paper).
    window : int >= 4
        Snapshots per fit (``window - 1`` increments, at most ``window - 2`` eigenvalues per
        block). Default 10: a spectrum needs more increments than a jump's short window of 6.
    interval : int, optional
        Optimizer steps between fits; default ``window * every`` (non-overlapping windows).
    granularity : one of ``GRANULARITIES``; default ``"layer"``: one spectrum per layer to
        read (the accelerator's ``"network"`` is one jump, the recorder's ``"node"`` the
        paper's).
    chunk : int, optional
        The block size ``q`` at ``granularity="quasi-node"`` (see ``Partition``).
    horizon : int
        Steps ahead over which the instability score projects the motion. Default 1000.
    alarm_rate : float in (0, 1)
        The warning's false-alarm rate per fit under the null. Default 0.01. At every fit
        the window is refitted in ``surrogates`` random time orders of its increments
        (each increment kept, their order destroyed: what noise without dynamics gives;
        ``spectrum.time_orders``). Each layer's ``growth`` (the log growth per snapshot
        interval of its leading ``null_rank`` mode(s)) is standardised by its surrogates',
        and the largest over the layers is ranked among the surrogates' largest: its
        ``p_value``. A fit is *flagged* when ``p_value <= alarm_rate`` and that layer's
        motion grows by more than ``min_growth`` per optimizer step. If the increments are
        exchangeable, a fit is flagged with probability at most ``alarm_rate``, whatever
        the model.
    persist : int >= 1
        Consecutive flagged fits before the warning. Default 2 (at most ``alarm_rate**2``
        per pair of non-overlapping fits under the null).
    null_rank : int, optional
        Modes in the null's fits. Default 1: the motion's leading direction (measured in
        ``benchmarks/monitor_calibration.py``); ``None``: every mode.
    min_growth : float >= 0
        The growth of the motion (``log`` per optimizer step) a flag needs beyond the
        null. Default 0.01, 1% a step (chosen in ``benchmarks/monitor_calibration.py``).
    forecast : float in (0, 1], optional
        A second condition for a flag: the flagged layer's operator, fitted to its window
        without the last increment, must forecast that held-out increment better than all
        but this share of the surrogates do (``spectrum.null_forecast``; recorded as the
        null's ``forecast``). Default ``None``: not tested. It can only remove flags, so
        the false-alarm rate stays at most ``alarm_rate``; in lr time at the other
        defaults it removed none in ``benchmarks/monitor_calibration.py``. Its use is a
        looser rule: one fit at a time (``persist=1``) in step time (no ``optimizer``) on
        ``snapshot="mean"``, whose false alarms it removes (docs/diagnostics.md).
    burn_in : int, optional
        Optimizer steps at the start whose fits may flag but never warn: an optimizer's
        state (momentum, Adam's moments) builds up there, and its real growth is not
        instability. Default two windows, ``2 * window * every``.
    snapshot : {"last", "mean"}
        What a snapshot holds (``SnapshotRecorder``): the weights at the recorded step
        (default), or their mean over the ``every`` steps it stands for, whose increments
        are the weights' increments averaged over ``every`` steps (less minibatch noise).
    surrogates : int, optional
        Time orders per fit; default ``2 / alarm_rate - 1`` (199 at 0.01). Each costs a few
        ``(window - 2)``-square products per layer (at ``null_rank=1``), whatever its width.
    threshold : float, optional
        Deprecated: the rule of kooptrain 0.2, a warning at the first fit whose
        ``instability`` exceeds ``threshold`` (``instability`` is recorded either way).
        Giving it turns the null off (``alarm_rate=None``).
    settle_tol : float
        A layer has settled when the operator projects it to move less than this fraction of
        its weights' norm from here on (and no mode that carries motion is persistent).
        Default 1e-3. The run has converged when every layer has.
    unit_tol : float
        Eigenvalues within this distance of 1 count as the lambda ~ 1 (drift) mode.
    smooth : int
        ``instability`` is the mean of the last ``smooth`` fits' projections (each fit's own
        is ``instability_raw``). Default 3.
    rank : int, optional
        Truncate each operator (see ``KoopmanOperator``).
    optimizer : optional ``torch.optim.Optimizer``. If given, the increments are divided by
        the learning rate (of its first param group) summed over each interval
        (``LRClock``, shared with the accelerator's ``clock="lr"``), so the spectra are in
        "learning-rate time": a warm-up or a decay of the schedule is not read as growth or
        decay of the dynamics. Recommended with any lr schedule; call ``step()`` after
        ``scheduler.step()`` (the lr seen then is the next step's).
    dtype : optional snapshot dtype (e.g. ``torch.bfloat16`` halves the memory).
    writer : optional ``torch.utils.tensorboard.SummaryWriter``: scalars per layer and
        histograms of the eigenvalues' moduli at every fit (``pip install
        'kooptrain[tensorboard]'``).

    Attributes
    ----------
    settings : the ``MonitorSettings``.
    step_count : ``step()`` calls (optimizer steps) so far.
    record : dict, JSON-serialisable (``kooptrain.diagnostics.record``): ``settings``,
        ``layers`` (block names), ``layer_types`` (their module classes), ``entries``
        (one per fit: ``step``, ``loss`` if given, ``loss_spike`` (the mean of the last 10
        losses given to ``step`` over the smallest such mean so far: a second signal,
        better than the null at lr-driven divergences in
        ``benchmarks/monitor_calibration.py``), ``instability``, ``instability_raw``,
        ``null`` (``p_value``, the ``layer`` it points at, its ``growth`` per snapshot
        interval, ``z``, ``forecast`` (with ``forecast``, the share of surrogates that
        forecast the held-out increment at least as well, else ``None``), ``flagged``;
        ``None`` under the deprecated rule), ``converged``
        and, per layer, ``eigenvalues`` as ``[re, im]`` pairs per snapshot interval,
        ``shares``, ``spectral_radius``, ``unstable`` (modes with ``|lambda| > 1``, their
        ``growth_rate`` per optimizer step and ``share``), ``gap_to_one``,
        ``unit_share``, ``amplification``, ``remaining`` (``None``: unbounded),
        ``motion``, ``growth`` (the null's)), ``warning`` (``None``, or ``{"step",
        "instability", "reason"}`` with the null's ``layer`` and ``p_value``) and
        ``converged_at`` (the first step at which the run had converged, or ``None``).
    warning, converged_at : shortcuts into ``record``.

    Memory: ``window`` snapshots of the trainable parameters (in ``dtype``). Cost: one
    batched fit per block group every ``interval`` steps, on ``window - 1`` increments.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> x, y = torch.randn(64, 4), torch.randn(64, 1)
    >>> monitor = KoopmanMonitor(model, every=1, window=8)
    >>> for _ in range(200):
    ...     opt.zero_grad(); nn.functional.mse_loss(model(x), y).backward(); opt.step()
    ...     _ = monitor.step()
    >>> len(monitor.record["entries"]), monitor.warning is None, monitor.converged_at
    (25, True, 48)
    """

    def __init__(self, model: nn.Module, *, every: int = 10, window: int = 10,
                 interval: int | None = None, granularity: str = "layer",
                 chunk: int | None = None, horizon: int = 1000,
                 alarm_rate: float | None = 0.01, persist: int = 2, null_rank: int | None = 1,
                 surrogates: int | None = None, min_growth: float = 0.01,
                 forecast: float | None = None, burn_in: int | None = None,
                 snapshot: str = "last",
                 threshold: float | None = None,
                 settle_tol: float = 1e-3, unit_tol: float = 0.05, smooth: int = 3,
                 rank: int | None = None,
                 optimizer=None, dtype=None, writer=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if threshold is not None:
            deprecated("KoopmanMonitor(threshold=...)", "alarm_rate=... (a false-alarm rate "
                       "per fit under the null), the default since kooptrain 0.3")
        s = self.settings = MonitorSettings(
            every=every, window=window, interval=interval, granularity=granularity,
            chunk=chunk, horizon=horizon, threshold=threshold, alarm_rate=alarm_rate,
            persist=persist, null_rank=null_rank, surrogates=surrogates, min_growth=min_growth,
            forecast=forecast, burn_in=burn_in, snapshot=snapshot,
            settle_tol=settle_tol, unit_tol=unit_tol, smooth=smooth, rank=rank,
            lr_time=optimizer is not None, dtype=dtype)
        self._flagged_run = 0  # consecutive flagged fits
        self._losses: deque[float] = deque(maxlen=10)  # the losses given to step()
        self._loss_min = math.inf  # the smallest 10-step mean of them
        self.optimizer, self.writer, self.model = optimizer, writer, model
        self._lr = None if optimizer is None else LRClock(optimizer, s.window)
        self._raw: list[float] = []
        self.recorder = SnapshotRecorder(model, granularity=s.granularity, chunk=s.chunk,
                                         window=s.window, every=s.every, storage="window",
                                         dtype=dtype, snapshot=s.snapshot)
        part = self.recorder.partition
        # the weights' resolution: the coarser of the parameters' and the snapshots' dtypes
        self._eps = max(torch.finfo(t).eps for t in
                        [p.dtype for p in part.params] + [self.recorder.dtype]
                        if t.is_floating_point)
        held = {n for g in part.groups for n in g.layers}
        self.names = [n for n, _ in model.named_modules() if n in held]  # the model's order
        kinds = dict(model.named_modules())
        self.record = new_record({k: v for k, v in s.signature().items() if k != "dtype"},
                                 self.names, [type(kinds[n]).__name__ for n in self.names])

    def __repr__(self) -> str:
        return f"KoopmanMonitor({self.settings.describe()})"

    @property
    def step_count(self) -> int:
        return self.recorder.step_count

    @property
    def spacing(self) -> tuple[float, ...] | None:
        """With ``optimizer``, the window's intervals in learning-rate time (else ``None``)."""
        return None if self._lr is None else self._lr.spacing

    @property
    def warning(self) -> dict | None:
        return self.record["warning"]

    @property
    def converged_at(self) -> int | None:
        return self.record["converged_at"]

    def step(self, loss=None) -> dict | None:
        """Count one optimizer step (and record a snapshot on the cadence). ``loss``
        (optional, a float or 0-d tensor) is stored with the entry when a fit happens.
        Returns the new entry, or ``None`` when this step made no fit."""
        if isinstance(loss, torch.Tensor) and loss.numel() != 1:
            raise ValueError(f"loss must be a scalar (a float or a one-element tensor), got "
                             f"a tensor of shape {tuple(loss.shape)}: pass loss.mean() (or "
                             "the reduction you train on).")
        if loss is not None:  # the second signal: the loss over its running minimum
            self._losses.append(float(loss))
            mean = sum(self._losses) / len(self._losses)
            if math.isfinite(mean):
                self._loss_min = min(self._loss_min, mean)
        recorded = self.recorder.record()  # steps 1, 1 + every, ...
        if self._lr is not None:
            self._lr.tick(recorded)
        if self.step_count % self.settings.interval \
                or self.recorder.n_snapshots < self.settings.window:
            return None
        return self._fit(loss)

    @torch.no_grad()
    def _fit(self, loss) -> dict:
        layers, broken, growth, forecast = self._layers()
        amp = [v["amplification"] for v in layers.values()]
        raw = max([math.inf] * bool(broken) + [
            math.inf if a is None else math.log10(max(a, 1e-300)) for a in amp])
        # one window of minibatch noise can look like growth: the score is the mean of the
        # last `smooth` fits' projections (a non-finite one counts in full)
        self._raw.append(raw)
        recent = self._raw[-self.smooth:]
        score = math.inf if not all(map(math.isfinite, recent)) else sum(recent) / len(recent)
        converged = not broken and all(
            v["remaining"] is not None and v["remaining"] < self.settle_tol
            for v in layers.values())
        null = None if self.alarm_rate is None else \
            _null_test(growth, self.alarm_rate, self.min_growth * self.every, forecast,
                       self.forecast)
        # instability None: unbounded (an infinite projection or non-finite weights)
        entry = {"step": self.step_count, "loss": None if loss is None else number(loss),
                 "instability": number(score), "instability_raw": number(raw),
                 "null": null, "loss_spike": self._spike(), "converged": converged,
                 "non_finite": broken, "layers": layers}
        self.record["entries"].append(entry)
        if self.alarm_rate is None:  # the deprecated rule
            flagged = score > self.threshold
        else:
            flagged = bool(broken) or null["flagged"]
        if self.alarm_rate is not None and not broken and self.step_count <= self.burn_in:
            flagged = False  # the optimizer's state still builds up
        self._flagged_run = self._flagged_run + 1 if flagged else 0
        if self.record["warning"] is None and (
                self._flagged_run >= self.persist or broken or self.alarm_rate is None
                and flagged):
            self.record["warning"] = {
                "step": self.step_count, "instability": number(score),
                "reason": "non-finite weights" if broken else
                ("instability above threshold" if self.alarm_rate is None else
                 f"growth beyond the null in {self.persist} consecutive fit(s)"),
                **({} if null is None or broken else
                   {"layer": null["layer"], "p_value": null["p_value"]})}
        if converged and self.record["converged_at"] is None:
            self.record["converged_at"] = self.step_count
        if self.writer is not None:
            self._log(entry)
        return entry

    def _spike(self) -> float | None:
        """The mean of the last 10 losses given to ``step`` over the smallest such mean so
        far (``None`` without losses, or with a minimum at or below 0)."""
        if not self._losses or not self._loss_min > 0:
            return None
        mean = sum(self._losses) / len(self._losses)
        return number(mean / self._loss_min) if math.isfinite(mean) else None

    def _layers(self) -> tuple[dict, list, dict, dict]:
        """Each layer's entry, the layers with non-finite weights, and for the null test
        ``{layer: (growth, growth of each surrogate)}`` and, with ``forecast``,
        ``{layer: (held-out residual, each surrogate's)}`` (layers at rest are left out)."""
        layers, broken, growth, forecast = {}, [], {}, {}
        scale = None if self._lr is None else list(self._lr.spacing)
        if scale is not None and not all(v > 0 for v in scale):
            scale = None  # lr 0 somewhere: no lr time for this window
        # the same orders for every layer (one null for the whole model), drawn from the
        # step: the same on every rank and after a resume
        orders = None if self.alarm_rate is None else \
            time_orders(self.window - 1, self.surrogates, seed=self.step_count)
        for g, X in zip(self.recorder.partition.groups, self.recorder.snapshots(),
                        strict=True):
            if not torch.isfinite(X).all():  # NaN/Inf weights: the run has blown up
                broken += g.layers
                continue
            options = {"every": self.every, "horizon": self.horizon, "eps": self._eps,
                       "unit_tol": self.unit_tol}
            w = reduce_window(X, scale)  # one pass over the window for both fits
            s = block_spectra(w, rank=self.rank, **options)
            n = None if orders is None else null_growth(w, orders, rank=self.null_rank)
            f = None if self.forecast is None else \
                null_forecast(w, orders, rank=self.null_rank)
            for b, name in enumerate(g.layers):
                layers[name] = layer_entry(s, b, self.every)
                if n is not None and not bool(s.at_rest[b]):
                    growth[name] = (float(n[0][b]), n[1][b])
                    layers[name]["growth"] = float(n[0][b])
                if f is not None and name in growth:
                    forecast[name] = (float(f[0][b]), f[1][b])
        layers = {n: layers[n] for n in self.names if n in layers}
        return layers, broken, growth, forecast

    def _log(self, entry: dict) -> None:
        w, t = self.writer, entry["step"]
        if entry["instability"] is not None:
            w.add_scalar("koopman/instability", entry["instability"], t)
        w.add_scalar("koopman/converged", float(entry["converged"]), t)
        for name, v in entry["layers"].items():
            tag = f"koopman/{name or 'model'}"
            w.add_scalar(f"{tag}/spectral_radius", v["spectral_radius"], t)
            w.add_scalar(f"{tag}/gap_to_one", v["gap_to_one"], t)
            w.add_scalar(f"{tag}/unit_share", v["unit_share"], t)
            if v["eigenvalues"]:
                w.add_histogram(f"{tag}/eigenvalue_modulus",
                                torch.tensor([math.hypot(*z) for z in v["eigenvalues"]]), t)

    # ------------------------------------------------------------------ output
    def save(self, path) -> Path:
        """Write ``record`` as JSON; returns the path."""
        return save_record(self.record, path)

    def plot(self, path=None, **kwargs):
        """The spectra over training (``kooptrain.diagnostics.plot_spectra``)."""
        return plot_spectra(self.record, path, **kwargs)

    def state_dict(self) -> dict:
        """Everything to continue the record bit-identically, versioned; ``load_state_dict``
        also reads a kooptrain 0.1 state."""
        return {"kind": STATE_KIND, "version": STATE_VERSION,
                "settings": self.settings.signature(), "recorder": self.recorder.state_dict(),
                "record": json.loads(json.dumps(self.record)), "raw": list(self._raw),
                "flagged_run": self._flagged_run, "losses": list(self._losses),
                "loss_min": number(self._loss_min),
                "lr_clock": None if self._lr is None else self._lr.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; raises ``ValueError`` for a state of another monitor
        (settings, model), naming what differs; nothing is loaded then."""
        if isinstance(state, dict) and "version" not in state and "record" in state:
            state = monitor_state_from_v1(self, state, STATE_KIND, STATE_VERSION)
        check_state(STATE_KIND, STATE_VERSION, self.settings, state,
                    required=("recorder", "record", "raw", "lr_clock"))
        self.recorder.load_state_dict(state["recorder"])
        self.record = json.loads(json.dumps(state["record"]))
        self._raw = [float(v) for v in state["raw"]]
        self._flagged_run = int(state.get("flagged_run", 0))  # states before 0.3: none
        self._losses = deque((float(v) for v in state.get("losses", [])), maxlen=10)
        m = state.get("loss_min")
        self._loss_min = math.inf if m is None else float(m)
        if self._lr is not None:
            self._lr.load_state_dict(state["lr_clock"])


settings_properties(KoopmanMonitor, MonitorSettings)
