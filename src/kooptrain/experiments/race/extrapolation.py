"""Classical iterate extrapolation, the race's strongest non-Koopman competitors.

* **RNA**, regularized nonlinear acceleration (Scieur, d'Aspremont & Bach, NeurIPS 2016):
  from iterates ``x_0 .. x_k`` and their differences ``R = [x_1 - x_0, ..., x_k - x_{k-1}]``,
  solve ``(R^T R / ||R^T R|| + lam I) z = 1``, set ``c = z / sum(z)`` and return
  ``sum_i c_i x_i`` over ``x_0 .. x_{k-1}``.
* **Anderson acceleration** (type II, on the fixed-point map ``x_i -> x_{i+1}``): the same
  affine combination of the residuals, minimal in norm, applied to the images
  ``x_1 .. x_k`` (``beta = 1``; ``beta < 1`` mixes in the iterates).

* **The regularised Koopman fixed point**: a linear operator ``K`` fitted to the increments
  ``d_{i+1} = K d_i`` (projected DMD, rank cut at ``rtol``), and the sum of every future
  increment, ``y = (I - K)^{-1} K d_k``, found by Tikhonov-regularised least squares, so a
  ``lambda ~ 1`` mode gives a finite candidate: the ``lambda ~ 1`` candidate of the issue
  that RNA is raced against, on the same snapshots.

All cost ``O(k^2 p)`` plus a ``k x k`` solve and never form a ``p x p`` matrix. Shapes:
``X`` is ``(p, k + 1)``, time last, as everywhere in kooptrain.
"""

from __future__ import annotations

import torch

from ..._fixed_point import regularised_fixed_point


def _coefficients(R: torch.Tensor, lam: float) -> torch.Tensor:
    """``c`` with ``sum(c) = 1`` minimising ``||R c||^2 + lam ||R^T R|| ||c||^2``, ``(k,)``."""
    RR = R.mT @ R
    scale = torch.linalg.matrix_norm(RR, ord=2)
    if not bool(scale > 0):  # the iterates stood still: any affine combination is exact
        return torch.full((R.shape[-1],), 1.0 / R.shape[-1], dtype=R.dtype, device=R.device)
    k = RR.shape[-1]
    A = RR / scale + lam * torch.eye(k, dtype=R.dtype, device=R.device)
    # (A + lam I) z = 1, c = z / sum(z) is the stationary point of the constrained problem;
    # solved as its KKT system [[A, 1], [1^T, 0]] [c; mu] = [0; 1] so that a singular A
    # (more iterates than dimensions, lam = 0) still gives the minimiser
    ones = torch.ones(k, 1, dtype=R.dtype, device=R.device)
    kkt = torch.cat([torch.cat([A, ones], 1),
                     torch.cat([ones.mT, torch.zeros(1, 1, dtype=R.dtype, device=R.device)],
                               1)], 0)
    rhs = torch.zeros(k + 1, 1, dtype=R.dtype, device=R.device)
    rhs[-1] = 1.0
    return torch.linalg.lstsq(kkt, rhs, driver="gelsd").solution[:k, 0]


def rna(X: torch.Tensor, lam: float = 1e-5) -> torch.Tensor:
    """RNA extrapolation of the iterates ``X`` ``(p, k + 1)``; returns ``(p,)``."""
    X = X.to(torch.float64)
    c = _coefficients(X[:, 1:] - X[:, :-1], lam)
    return X[:, :-1] @ c


def anderson(X: torch.Tensor, lam: float = 0.0, beta: float = 1.0) -> torch.Tensor:
    """Anderson acceleration from the iterates ``X`` ``(p, k + 1)`` of a fixed-point
    iteration ``x_{i+1} = g(x_i)``; returns ``(p,)``: ``sum_i c_i (beta g(x_i) + (1 - beta)
    x_i)`` with ``c`` the residuals' minimal-norm affine combination (``lam`` regularises
    it as in RNA)."""
    X = X.to(torch.float64)
    c = _coefficients(X[:, 1:] - X[:, :-1], lam)
    return beta * (X[:, 1:] @ c) + (1 - beta) * (X[:, :-1] @ c)


def koopman_fixed_point(X: torch.Tensor, lam: float = 1e-5, rtol: float = 1e-10
                        ) -> torch.Tensor:
    """The regularised fixed point of the increments' linear dynamics, from the iterates
    ``X`` ``(p, k + 1)``; returns ``(p,)``: ``kooptrain``'s own estimate (the one
    ``KoopmanAverage`` keeps), here one candidate of the verified accelerator. Without
    regularisation and with a spectral radius below 1 it is the limit of the fitted
    dynamics; at an eigenvalue of exactly 1 (a drift with no limit) the candidate stays.
    """
    return regularised_fixed_point(X, lam=lam, rtol=rtol)
