"""The regularised fixed point of a trajectory's increments, batched over blocks: where the
linear dynamics fitted to a window are heading.

With ``D`` the increments of the window ``X`` ``(..., d, m)``, ``U S V^T`` the thin SVD of
``D[..., :-1]`` (singular values below ``rtol`` times the largest dropped) and
``K = U^T D[..., 1:] V S^{-1}`` the increments' operator in that basis (projected DMD), the sum
of every future increment is ``y = (I - K)^{-1} K z`` for the last increment ``z = U^T d``.
Here ``y`` solves the Tikhonov-regularised least-squares problem

    min ||(I - K) y - K z||^2 + lam (||I - K||^2 + ||K||^2) ||y||^2,

so a mode with ``lambda ~ 1`` (a drift with no limit) gives a finite answer: the regulariser
caps how far the estimate runs along it, and exactly at ``lambda = 1`` it does not move. With
``lam = 0`` and a spectral radius below 1 the answer is the exact limit of the fitted
dynamics. ``I - K`` is formed from the second differences, ``U^T (D_0 - D_1) V S^{-1}``, not
by subtraction: near ``lambda = 1`` that would cancel to rounding noise (a straight drift
then gave ``|1 - lambda| ~ 1e-16`` and an estimate ~1e15 away). The estimate is
``x_m + U y``. Cost ``O(d m^2)`` per block; nothing ``d x d`` is formed.
"""

from __future__ import annotations

import torch

__all__ = ["regularised_fixed_point"]


def regularised_fixed_point(X: torch.Tensor, lam: float = 1e-5, rtol: float = 1e-10
                            ) -> torch.Tensor:
    """The regularised limit of the window ``X`` ``(..., d, m)``, ``m >= 3``, time last;
    returns ``(..., d)`` in float64. A block whose iterates stood still returns its last
    snapshot; one whose system is singular (``lam = 0`` and an eigenvalue of exactly 1: no
    limit, in exact arithmetic) returns NaN, for the caller to refuse."""
    if X.shape[-1] < 3:
        raise ValueError(f"the regularised fixed point needs at least 3 iterates "
                         f"(snapshots), got {X.shape[-1]}.")
    X = X.to(torch.float64)
    D = X[..., 1:] - X[..., :-1]  # (..., d, m - 1)
    U, S, Vh = torch.linalg.svd(D[..., :-1], full_matrices=False)  # r = min(d, m - 2)
    keep = S > rtol * S[..., :1]  # (..., r); nothing kept where the window stood still
    s_inv = torch.where(keep, 1.0 / torch.where(keep, S, 1.0), 0.0)
    both = (keep[..., :, None] & keep[..., None, :]).to(X.dtype)
    K = (U.mT @ D[..., 1:] @ Vh.mT) * s_inv[..., None, :] * both  # (..., r, r)
    eye = torch.eye(K.shape[-1], dtype=X.dtype, device=X.device)
    # I - K, identity on the dropped directions (they decouple: their rhs is 0)
    A = (U.mT @ (D[..., :-1] - D[..., 1:]) @ Vh.mT) * s_inv[..., None, :] * both \
        + eye * (1 - both)
    rhs = K @ (U.mT @ D[..., -1:])  # (..., r, 1)
    scale = torch.linalg.matrix_norm(A * both, ord=2) ** 2 \
        + torch.linalg.matrix_norm(K, ord=2) ** 2
    y, info = torch.linalg.solve_ex(A.mT @ A + (lam * scale)[..., None, None] * eye,
                                    A.mT @ rhs)
    out = X[..., -1] + (U @ y)[..., 0]
    return torch.where((info == 0)[..., None], out, torch.nan)
