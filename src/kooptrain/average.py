"""``KoopmanAverage``: an evaluation copy of a model at the Koopman estimate of where its
training trajectory is heading, in the manner of ``torch.optim.swa_utils.AveragedModel``.
Training never sees it: the training weights and the optimizer state are only read."""

from __future__ import annotations

import copy
import dataclasses
import warnings
import weakref

import torch
from torch import nn

from ._fixed_point import regularised_fixed_point
from ._settings import Settings, check_state, settings_properties
from ._validation import check_choice, check_fraction, check_int
from .partition import GRANULARITIES, Partition

__all__ = ["AverageSettings", "KoopmanAverage"]

KIND = "kooptrain.KoopmanAverage"
VERSION = 1
SOURCES = ("weights", "ema")


@dataclasses.dataclass(frozen=True)
class AverageSettings(Settings):
    """The validated, frozen settings of a ``KoopmanAverage`` (see its parameters)."""

    every: int = 10
    window: int = 8
    granularity: str = "network"
    source: str = "ema"
    decay: float = 0.99
    lam: float = 1e-3

    def __post_init__(self):
        put = object.__setattr__.__get__(self)
        put("every", check_int(self.every, "every", 1))
        put("window", check_int(self.window, "window", 3))
        check_choice(self.granularity, "granularity", tuple(g for g in GRANULARITIES
                                                          if g != "quasi-node"))
        check_choice(self.source, "source", SOURCES)
        decay = check_fraction(self.decay, "decay")
        if decay == 0:
            raise ValueError("decay=0 is no average; use source='weights' instead.")
        put("decay", decay)
        lam = check_fraction(self.lam, "lam")  # the regulariser is relative: [0, 1)
        put("lam", lam)


class KoopmanAverage(nn.Module):
    """A copy of ``model`` whose weights are the regularised fixed point of the linear
    dynamics fitted to a coarse window of its training trajectory: the Koopman estimate of
    where training is heading (its ``lambda ~ 1`` limit), like an average but extrapolated.

    Call ``update_parameters(model)`` after every optimizer step, as with
    ``AveragedModel``, and evaluate the copy (``avg(x)`` or ``avg.module``). Every ``every``
    steps it takes a snapshot of the source (the first at step 1); once ``window`` are held,
    each snapshot refits the window per block (``granularity``) and writes the estimate
    into the copy. Before that, and for any block whose estimate is not finite, the copy
    holds the source at the last snapshot. Non-finite training weights are skipped (with a
    ``RuntimeWarning``): nothing non-finite is ever written. It never writes the training
    weights or the optimizer state.

    Parameters
    ----------
    model : nn.Module
        The model being trained (a ``DistributedDataParallel`` model is unwrapped: its
        replicas are identical, so every rank keeps the same copy, with no communication);
        the copy is a ``deepcopy`` of it. Its trainable
        parameters are fitted; buffers (BatchNorm's running statistics) are copied from the
        model at every snapshot. On a BatchNorm net, recompute them for the estimated
        weights with ``torch.optim.swa_utils.update_bn(loader, avg)`` before evaluating, as
        for SWA.
    every : int >= 1
        Optimizer steps between snapshots. Default 10.
    window : int >= 3
        Snapshots per fit (the increments' operator has rank ``<= window - 2``). Default 8.
    granularity : {"network", "layer", "node", "weight"}
        One fit for all parameters (default), one per module, per output unit or per scalar
        (see ``Partition``).
    source : {"ema", "weights"}
        Fit the exponential moving average of the training weights (``decay``; default), a
        denoised sequence with the same limit, or the training weights themselves.
    decay : float in (0, 1)
        The EMA's decay per step with ``source="ema"``. Default 0.99.
    lam : float in [0, 1)
        The Tikhonov regulariser of the fixed point, relative to the operator's norms: it
        caps how far the estimate runs along a mode with ``lambda ~ 1`` (a drift with no
        limit). ``0`` is the exact limit of the fitted dynamics. Default ``1e-3``.

    The defaults were chosen on the race's tuning seeds (``benchmarks/average_design.py``,
    docs/average.md, which also says how the copy compares with EMA and SWA).

    Attributes
    ----------
    module : nn.Module
        The evaluation copy.
    step_count : int
        ``update_parameters`` calls so far.
    estimating : bool
        Whether the copy holds an estimate (a full window was fitted), not the source.
    settings : AverageSettings

    ``state_dict`` holds the copy, the window and the EMA as buffers and the settings as
    extra state: a copy loaded from it continues bit for bit, and one built with other
    settings refuses it, naming each difference.

    Example
    -------
    >>> import torch
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> avg = KoopmanAverage(model, every=2, window=4)
    >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
    >>> for _ in range(20):
    ...     opt.zero_grad(); torch.nn.functional.mse_loss(model(x), y).backward()
    ...     opt.step(); avg.update_parameters(model)
    >>> avg.estimating, avg.step_count
    (True, 20)
    """

    def __init__(self, model: nn.Module, *, every: int = 10, window: int = 8,
                 granularity: str = "network", source: str = "ema", decay: float = 0.99,
                 lam: float = 1e-3):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        model = _unwrap(model)
        self.settings = AverageSettings(every, window, granularity, source, decay, lam)
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        if not trained:
            raise ValueError("model has no trainable parameters to follow.")
        if Partition(model, granularity="network").sharded:
            raise NotImplementedError(
                "KoopmanAverage does not follow sharded parameters (FSDP's fully_shard) yet: "
                "keep it on an unsharded model (DDP, or one rank loading a full state_dict).")
        self.module = copy.deepcopy(model)
        self._part = Partition(self.module, granularity=granularity,
                               params=[p for n, p in self.module.named_parameters()
                                       if n in trained])
        self.module.requires_grad_(False)  # an evaluation copy: no gradients
        n = self._part.n_params
        dt = self._part.dtype
        self.register_buffer("window_", torch.zeros(window, n, dtype=dt,
                                                    device=self._part.device))
        self.register_buffer("ema_", torch.zeros(n if source == "ema" else 0, dtype=dt,
                                                 device=self._part.device))
        self._steps = self._snapshots = self._ema_updates = 0
        self._vec = torch.empty(n, dtype=dt, device=self._part.device)
        self._source: tuple | None = None  # (weakref to the model, weakrefs to its params)

    # ------------------------------------------------------------- the verb
    @property
    def step_count(self) -> int:
        return self._steps

    @property
    def n_snapshots(self) -> int:
        return self._snapshots

    @property
    def estimating(self) -> bool:
        return self._snapshots >= self.settings.window

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Advance one optimizer step of ``model`` (the trained model, or any module with
        the same parameter names and shapes): update the EMA, and at a snapshot step take
        the snapshot and refit."""
        vec = self._read(model)
        s = self.settings
        self._steps += 1
        if not bool(torch.isfinite(vec).all()):
            warnings.warn(f"step {self._steps}: the model's parameters are not finite; "
                          "KoopmanAverage skipped them and keeps its copy as it was.",
                          RuntimeWarning, stacklevel=2)
            return
        if s.source == "ema":
            if self._ema_updates == 0:
                self.ema_.copy_(vec)
            else:
                self.ema_.lerp_(vec, 1 - s.decay)
            self._ema_updates += 1
            vec = self.ema_
        if (self._steps - 1) % s.every:
            return
        if self._snapshots < s.window:
            self.window_[self._snapshots].copy_(vec)
        else:
            self.window_.copy_(torch.roll(self.window_, -1, 0))
            self.window_[-1].copy_(vec)
        self._snapshots += 1
        theirs = dict(_unwrap(model).named_buffers())
        for name, mine in self.module.named_buffers():
            if name in theirs and theirs[name].shape == mine.shape:
                mine.copy_(theirs[name])
        self._write(self._estimate() if self.estimating else vec)

    def _read(self, model: nn.Module) -> torch.Tensor:
        """The source's parameters as one vector (in ``self._vec``); the model's names and
        shapes are checked once per model object."""
        params = None
        if self._source is not None and self._source[0]() is model:
            params = [r() for r in self._source[1]]
        if params is None or any(q is None for q in params):
            named = dict(_unwrap(model).named_parameters())
            wrong = [n for n, shape in zip(self._part.names, self._part.shapes, strict=True)
                     if n not in named or tuple(named[n].shape) != tuple(shape)]
            if wrong:
                raise ValueError(f"model does not match the averaged copy: parameter(s) "
                                 f"{wrong[:3]} missing or of another shape. Pass the model "
                                 "the KoopmanAverage was built from.")
            params = [named[n] for n in self._part.names]
            self._source = (weakref.ref(model), [weakref.ref(q) for q in params])
        return torch.cat([q.detach().reshape(-1).to(self._vec.dtype) for q in params],
                         out=self._vec)

    def _estimate(self) -> torch.Tensor:
        """The fixed point per block, ``(p,)``; a block with a non-finite estimate keeps
        the last snapshot."""
        X = self.window_.mT  # (p, m)
        out = X[:, -1].clone()
        blocks = self._part.gather(X.mT)  # per group (m, B, d)
        est = []
        for b, last in zip(blocks, self._part.gather(out), strict=True):
            y = regularised_fixed_point(b.permute(1, 2, 0), lam=self.settings.lam)
            ok = torch.isfinite(y).all(-1, keepdim=True)
            est.append(torch.where(ok, y.to(last.dtype), last))
        return self._part.scatter(est, out=out)

    def _write(self, vec: torch.Tensor) -> None:
        self._part.assign(self._part.unflatten(vec))

    # ----------------------------------------------------------- checkpoints
    def get_extra_state(self) -> dict:
        return {"kind": KIND, "version": VERSION, "settings": self.settings.signature(),
                "counts": [self._steps, self._snapshots, self._ema_updates]}

    def set_extra_state(self, state) -> None:
        check_state(KIND, VERSION, self.settings, state, required=("counts",))
        self._steps, self._snapshots, self._ema_updates = (int(c) for c in state["counts"])

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.settings.changed().items())


settings_properties(KoopmanAverage, AverageSettings)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` (whose replicas are identical, so every
    rank keeps the same copy without communicating)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
