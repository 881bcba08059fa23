"""One Koopman fit shared by every rank, each holding some rows of every block.

Under DDP the replicas hold the same window, so each rank can fit a slice of the rows and
leave the rest to the others; under FSDP each rank holds only its shard of the rows. Either
way the operator of a block whose rows are spread over ranks comes from small factors:

* each rank factors its rows of the block's window, ``X_r = Q_r R_r`` (thin QR, ``R_r`` at
  most ``m x m``; ``2 d_r m^2`` FLOPs);
* the ranks all-gather their ``R_r`` (``m^2`` float64 numbers per block and rank) and every
  rank factors the stack ``[R_1; ...; R_w] = Q_s R``;
* then ``X = Q R`` with ``Q = diag(Q_r) Q_s`` orthonormal, so the exact DMD of ``X`` is the
  DMD of the ``m x m`` matrix ``R`` lifted by ``Q``: ``X1 X0^+ = Q (R1 R0^+) Q^T``, with the
  same singular values, eigenvalues, stabilisation, fixed point and held-out errors
  (``Q`` preserves every inner product of the snapshots: ``X^T X = R^T R``).

Every rank fits the same small operator on ``R`` (the same numbers through the same code, so
bit for bit the same) and predicts only its own rows, ``Q_r Q_s[r] y``. No rank ever holds
another rank's rows, and the per-rank cost of the fit falls with the world size.
"""

from __future__ import annotations

import math

import torch

from .koopman import KoopmanOperator

__all__ = ["SharedFit", "qr_factors", "row_slice"]


def row_slice(d: int, world: int, rank: int) -> slice:
    """The rows ``[lo, hi)`` of a block of ``d`` rows that ``rank`` fits under DDP (the
    ``torch.chunk`` split, as FSDP shards)."""
    size = -(-d // world)
    lo = min(d, rank * size)
    return slice(lo, min(d, lo + size))


def qr_factors(X: torch.Tensor):
    """``X`` ``(n, d, m)`` -> ``Q`` ``(n, d, k)``, ``R`` ``(n, m, m)`` (zero rows below the
    ``k = min(d, m)`` real ones), float64."""
    n, d, m = X.shape
    Q, R = torch.linalg.qr(X.to(torch.float64))
    k = R.shape[-2]
    if k < m:
        R = torch.cat([R, R.new_zeros(n, m - k, m)], -2)
    return Q, R


class SharedFit:
    """The operators of ``n`` blocks whose rows are spread over ranks.

    Parameters
    ----------
    windows : list of ``(n_g, d_g, m)`` tensors, this rank's rows of each group's blocks
        (time last).
    order : list of ``(g, j)``, the blocks in the order every rank agrees on (``n`` in all).
    gather : callable ``(n, m, m) -> (world, n, m, m)``, an all-gather over the ranks.
    rank : this rank's place in what ``gather`` returns.
    engine : ``KoopmanOperator`` options (``holdout`` among them).

    ``predict(steps)`` gives this rank's rows at every horizon, ``(n_g, d_g, k)`` per group;
    ``predict(math.inf)`` the fixed point, ``(n_g, d_g)``. ``residual_``: the held-out error
    per group's blocks, or ``None``.
    """

    def __init__(self, windows, order, gather, rank: int, engine: dict):
        m = windows[0].shape[-1]
        self._last = [X[..., -1].to(torch.float64) for X in windows]
        factors = [qr_factors(X) for X in windows]
        R = torch.stack([factors[g][1][j] for g, j in order])  # (n, m, m)
        stack = gather(R)  # (w, n, m, m)
        world = stack.shape[0]
        Qs, Rg = torch.linalg.qr(stack.transpose(0, 1).reshape(len(order), world * m, m))
        self.operator = KoopmanOperator(**engine).fit(Rg)  # the same on every rank
        place = {gj: i for i, gj in enumerate(order)}
        self._where = [torch.tensor([place[(g, j)] for j in range(X.shape[0])])
                       for g, X in enumerate(windows)]
        self._lift = []  # (n_g, d_g, m): this rank's rows of Q
        for (Q, _), idx in zip(factors, self._where, strict=True):
            k = Q.shape[-1]
            self._lift.append(Q @ Qs[idx, rank * m: rank * m + k, :])
        res = self.operator.residual_
        self.residual_ = None if res is None else [res[idx] for idx in self._where]

    def predict(self, T, *, max_residual: float | None = None) -> list[torch.Tensor]:
        """This rank's rows ``T`` recorded steps ahead: ``(n_g, d_g, k)`` per group for a
        list of ``k`` horizons, ``(n_g, d_g)`` for ``math.inf`` (blocks without a fixed
        point, and with ``max_residual`` blocks above it, stay where they are)."""
        inf = T == math.inf
        Y = self.operator.predict(T)  # (n, m) or (n, m, k)
        stay = None
        if inf:
            stay = ~self.operator.fixed_point_found_.reshape(-1)
        if max_residual is not None:
            bad = self.operator.residual_ > max_residual
            stay = bad if stay is None else stay | bad
        out = []
        for lift, last, idx in zip(self._lift, self._last, self._where, strict=True):
            y = Y[idx]
            b = lift @ (y if not inf else y.unsqueeze(-1))
            b = b.squeeze(-1) if inf else b
            if stay is not None:
                s = stay[idx].reshape(-1, *([1] * (b.ndim - 1)))
                b = torch.where(s, last.reshape(last.shape + (1,) * (b.ndim - 2)), b)
            out.append(b)
        return out
