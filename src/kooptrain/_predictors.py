"""Where a jump may land: each predictor turns a recorder's window into candidate weights,
``[(horizon, {name: tensor})]`` in the order the accelerator evaluates them.

A horizon is in optimizer steps (``None`` for a candidate without one, ``math.inf`` for the
fixed point). All predictors go through the same verification.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._sharded import SharedFit, row_slice
from .koopman import KoopmanOperator
from .recorder import SnapshotRecorder, predict_blocks

__all__ = ["PREDICTORS", "PredictorSpec", "average", "custom", "koopman", "linear",
           "select", "shared_koopman", "split_koopman"]


@dataclass(frozen=True)
class PredictorSpec:
    """What a predictor needs to know besides the window."""

    horizons: tuple[int, ...]  # optimizer steps, multiples of ``every``
    every: int = 1
    engine: dict = field(default_factory=dict)  # KoopmanOperator options
    max_residual: float | None = None
    holdout: int = 0
    fixed_point: bool = False
    spacing: tuple[float, ...] | None = None  # the window's intervals in lr time, or None

    @property
    def steps(self) -> list[int]:
        """The horizons in recorded steps."""
        return [h // self.every for h in self.horizons]


def koopman(rec: SnapshotRecorder, spec: PredictorSpec) -> list[tuple]:
    """The fitted operators at every horizon (one fit), then the fixed point if asked;
    with ``max_residual``, blocks that forecast their own held-out snapshots badly stay."""
    holdout = spec.holdout if spec.max_residual is not None else 0
    forecast = rec.fit(spacing=spec.spacing, **spec.engine, holdout=holdout)
    many = forecast.predict(snapshots=spec.steps, max_residual=spec.max_residual)  # (*shape, k)
    out = [(h, {n: v[..., i] for n, v in many.items()}) for i, h in enumerate(spec.horizons)]
    if spec.fixed_point:
        out.append((math.inf, forecast.predict(snapshots=math.inf)))
    return out


def linear(rec: SnapshotRecorder, spec: PredictorSpec) -> list[tuple]:
    """The ablation: ``x_t + (h / every) (x_t - x_{t-every})``."""
    part = rec.partition
    blocks = [(X[..., -1], X[..., -1] - X[..., -2]) for X in rec.snapshots()]
    return [(h, part.unflatten(part.scatter([x + s * v for x, v in blocks])))
            for h, s in zip(spec.horizons, spec.steps, strict=True)]


def average(rec: SnapshotRecorder, spec: PredictorSpec) -> list[tuple]:
    """The mean of the window (LAWA): one candidate, no horizon."""
    part = rec.partition
    return [(None, part.unflatten(part.scatter([X.mean(-1) for X in rec.snapshots()])))]


PREDICTORS = {"koopman": koopman, "linear": linear, "average": average}


def shared_koopman(consensus, replicated: bool):
    """``koopman`` with the fit shared by the ranks (``_sharded.SharedFit``), for blocks
    whose rows span ranks (layer and network granularity).

    replicated : DDP (every rank holds the whole window): each rank fits its
        ``row_slice`` of every block, and a candidate's rows are all-gathered when it is
        judged. Otherwise (FSDP) each rank's window is its shard, and so is its candidate.

    A candidate's values are a callable here, resolved only when it is judged, so
    candidates never judged are never sent."""
    def predict(rec: SnapshotRecorder, spec: PredictorSpec) -> list[tuple]:
        part = rec.partition
        windows = rec.snapshots(spec.spacing)
        rows = [row_slice(X.shape[1], consensus.world, consensus.rank) if replicated
                else slice(None) for X in windows]
        holdout = spec.holdout if spec.max_residual is not None else 0
        order = sorted(((g, j) for g, grp in enumerate(part.groups)
                        for j in range(grp.n_blocks)),
                       key=lambda gj: part.groups[gj[0]].layers[gj[1]])
        fit = SharedFit([X[:, r, :] for X, r in zip(windows, rows, strict=True)], order,
                        consensus.all_gather, consensus.rank,
                        {**spec.engine, "holdout": holdout})

        def assemble(blocks):
            if replicated:
                blocks = [_gather(b.to(X.dtype), 1, X.shape[1], consensus)
                          for b, X in zip(blocks, windows, strict=True)]
            return part.unflatten(part.scatter(blocks))

        return _lazy(spec, fit.predict(spec.steps, max_residual=spec.max_residual),
                     lambda: fit.predict(math.inf), assemble)

    return predict


def split_koopman(consensus):
    """``koopman`` under DDP for blocks that are small (node, quasi-node and weight
    granularity): rank ``r`` fits its ``row_slice`` of every group's blocks, and a
    candidate's blocks are all-gathered when it is judged (values as callables, as in
    ``shared_koopman``). The same operators as one rank fitting every block."""
    def predict(rec: SnapshotRecorder, spec: PredictorSpec) -> list[tuple]:
        part = rec.partition
        windows = rec.snapshots(spec.spacing)
        holdout = spec.holdout if spec.max_residual is not None else 0
        mine = [X[row_slice(X.shape[0], consensus.world, consensus.rank)] for X in windows]
        ops = [KoopmanOperator(**spec.engine, holdout=holdout).fit(X) if len(X) else None
               for X in mine]

        def at(T) -> list[torch.Tensor]:  # this rank's blocks, (n_r, d[, k]) per group
            inf = T == math.inf  # as in ``koopman``: the fixed point ignores max_residual
            tail = () if inf else (len(T),)
            return [predict_blocks(op, T, None if inf else spec.max_residual)
                    if op is not None
                    else X.new_zeros((0, X.shape[1]) + tail, dtype=torch.float64)
                    for op, X in zip(ops, mine, strict=True)]

        def assemble(blocks):
            blocks = [_gather(b.to(X.dtype), 0, X.shape[0], consensus)
                      for b, X in zip(blocks, windows, strict=True)]
            return part.unflatten(part.scatter(blocks))

        return _lazy(spec, at(spec.steps), lambda: at(math.inf), assemble)

    return predict


def _lazy(spec: PredictorSpec, many, fixed_point, assemble) -> list[tuple]:
    """Candidates whose values are assembled (and, across ranks, sent) only when judged:
    one per horizon from ``many`` (this rank's blocks, horizons last), then the fixed point
    (``fixed_point()``) if asked."""
    out = [(h, lambda i=i: assemble([b[..., i] for b in many]))
           for i, h in enumerate(spec.horizons)]
    if spec.fixed_point:
        out.append((math.inf, lambda: assemble(fixed_point())))
    return out


def _gather(b: torch.Tensor, dim: int, n: int, consensus) -> torch.Tensor:
    """The whole tensor from every rank's ``row_slice`` of its ``n`` entries along ``dim``
    (0: blocks, 1: rows), one all-gather of ``ceil(n / world)`` of them per rank."""
    size = -(-n // consensus.world)
    shape = list(b.shape)
    shape[dim] = size
    pad = b.new_zeros(shape)
    pad.narrow(dim, 0, b.shape[dim]).copy_(b)
    return consensus.all_gather(pad).movedim(0, dim).flatten(dim, dim + 1).narrow(dim, 0, n)


def custom(fn):
    """A predictor from a user's map ``fn(X (B, d, m)) -> (B, d)``, applied to every block
    group's window (time last): one candidate without a horizon. What ``fn`` returns is
    checked, so a wrong shape is a clear ``TypeError``, never a silent rejection."""
    def predict(rec: SnapshotRecorder, spec: PredictorSpec) -> list[tuple]:
        part, blocks = rec.partition, []
        for X in rec.snapshots(spec.spacing):
            out = fn(X)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(X.shape[:-1]):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise TypeError(f"predictor {getattr(fn, '__name__', fn)!r} must return a "
                                f"tensor of shape {tuple(X.shape[:-1])} (B, d) for a window "
                                f"of shape {tuple(X.shape)} (B, d, m); got {got}.")
            blocks.append(out.to(X.dtype))
        return [(None, part.unflatten(part.scatter(blocks)))]

    return predict


def select(predictor, granularity: str, consensus, sharded: bool):
    """The predictor function for the accelerator's ``predictor`` setting: a built-in one by
    name, ``custom(f)`` for a callable; under ``torch.distributed`` the built-in operator
    shares its work between the ranks (docs/distributed.md): wide blocks share one fit from
    every rank's rows; small ones are split among DDP's ranks (under FSDP each rank's are
    its own already)."""
    if callable(predictor):
        return custom(predictor)
    if consensus.active and predictor == "koopman":
        if granularity in ("layer", "network"):
            return shared_koopman(consensus, replicated=not sharded)
        if not sharded:
            return split_koopman(consensus)
    return PREDICTORS[predictor]
