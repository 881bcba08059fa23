"""Running sums from which a Koopman operator is fitted without storing the snapshots."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validation import check_array, check_finite

__all__ = ["SnapshotStatistics"]


@dataclass
class SnapshotStatistics:
    """Running sums from which an operator is fitted without storing snapshots.

    For snapshots ``x_1 .. x_m`` of each block (all tensors share the leading
    block shape ``...``), with ``y_t = x_t - origin`` (a per-block shift that
    keeps the sums accurate when weights move little around a large value):

    * ``xx``: ``(..., d, d)``, ``sum_{t<m} y_t y_t^T``
    * ``yx``: ``(..., d, d)``, ``sum_{t<m} y_{t+1} y_t^T``
    * ``x_sum``: ``(..., d)``, ``sum_{t<m} y_t``; ``y_sum``: ``(..., d)``, ``sum_{t>1} y_t``
    * ``last``: ``(..., d)``, ``x_m`` (unshifted); ``count``: ``m - 1``, the number of pairs
    * ``origin``: ``(..., d)`` or ``None`` (no shift).

    Build them from a window with ``from_snapshots`` (one snapshot is enough to
    start) and append snapshots with ``update``.

    Example
    -------
    >>> import torch
    >>> X = torch.randn(4, 3, 10, dtype=torch.float64)        # (B, d, m)
    >>> s = SnapshotStatistics.from_snapshots(X[..., :1])
    >>> for t in range(1, 10):
    ...     s.update(X[..., t])
    >>> s.count
    9
    """

    xx: torch.Tensor
    yx: torch.Tensor
    x_sum: torch.Tensor
    y_sum: torch.Tensor
    last: torch.Tensor
    count: int
    origin: torch.Tensor | None = None

    @classmethod
    def from_snapshots(cls, X) -> SnapshotStatistics:
        """Float64 statistics of a window ``X`` of shape ``(..., d, m)``, ``m >= 1``,
        shifted by its first snapshot."""
        X = check_array(X)
        if X.ndim < 2 or X.shape[-1] < 1:
            raise ValueError(f"X must have shape (..., d, m) with m >= 1; got {tuple(X.shape)}.")
        check_finite(X, "X")
        origin = X[..., 0].clone()
        Y = X - origin.unsqueeze(-1)
        Y0, Y1 = Y[..., :-1], Y[..., 1:]
        return cls(xx=Y0 @ Y0.mT, yx=Y1 @ Y0.mT, x_sum=Y0.sum(-1), y_sum=Y1.sum(-1),
                   last=X[..., -1].clone(), count=X.shape[-1] - 1, origin=origin)

    def update(self, x) -> None:
        """Append one snapshot ``x`` of shape ``(..., d)`` (in place)."""
        x = check_array(x, "x").to(self.last.device)
        if x.shape != self.last.shape:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected {tuple(self.last.shape)}.")
        o = self.origin if self.origin is not None else torch.zeros_like(x)
        prev, y = (self.last - o).unsqueeze(-1), (x - o).unsqueeze(-1)
        self.xx.add_(prev @ prev.mT)
        self.yx.add_(y @ prev.mT)
        self.x_sum.add_(prev.squeeze(-1))
        self.y_sum.add_(y.squeeze(-1))
        self.last.copy_(x)
        self.count += 1

    def unshifted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X0 X0^T, X1 X0^T)`` of the raw snapshots, ``(..., d, d)`` each."""
        if self.origin is None:
            return self.xx, self.yx
        o, n = self.origin.unsqueeze(-1), float(self.count)
        sx, sy = self.x_sum.unsqueeze(-1), self.y_sum.unsqueeze(-1)
        oo = n * (o @ o.mT)
        return (self.xx + sx @ o.mT + o @ sx.mT + oo, self.yx + sy @ o.mT + o @ sx.mT + oo)

    def centred(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(X0c X0c^T, X1c X0c^T, mean(X0), mean(X1))`` with each half centred
        on its own mean; the shift cancels, so no precision is lost to it."""
        n = float(self.count)
        mx, my = self.x_sum / n, self.y_sum / n
        G = self.xx - mx.unsqueeze(-1) @ self.x_sum.unsqueeze(-2)
        C = self.yx - my.unsqueeze(-1) @ self.x_sum.unsqueeze(-2)
        if self.origin is not None:
            mx, my = mx + self.origin, my + self.origin
        return G, C, mx, my
