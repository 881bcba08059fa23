"""What a window of recorded weights says about the training dynamics, block by block.

The operator is fitted to the window's *increments* ``dx_t = x_{t+1} - x_t``, not to the
weights: ``dx_{t+1} = K dx_t``. Weights barely move relative to their size, so an operator
on the weights always has an eigenvalue at 1 that only says "the weights are still there".
On the increments every eigenvalue is about the motion:

* ``|lambda| < 1``: the motion along that mode dies out; the weights settle.
* ``lambda ~ 1``: steady drift along that mode (a constant velocity).
* ``|lambda| > 1``: the motion along that mode grows by ``|lambda|`` per snapshot interval.

A linear map with eigenvalues ``lambda`` acting on the weights (``x_{t+1} = A x_t + c``)
gives increments with exactly those eigenvalues, and any invertible change of coordinates
(a permutation of hidden units, say) leaves them unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..koopman import DEFAULT_RTOL

__all__ = ["BlockSpectra", "block_spectra"]


@dataclass
class BlockSpectra:
    """Per-block spectral summary of a window; every tensor has the batch shape ``(B,)``
    except ``eigenvalues`` and ``shares``, ``(B, r)``.

    eigenvalues : complex, the operator's eigenvalues on the increments (per snapshot
        interval), sorted by decreasing modulus; truncated directions give 0.
    shares : the share of the last increment carried by each mode, summing to 1 (0 for
        truncated directions).
    radius : ``max |lambda|``.
    gap : ``|lambda_lead - 1|``, the leading eigenvalue's distance from 1.
    unit_share : the share of the last increment in modes with ``|lambda - 1| <= unit_tol``.
    amplification : ``prod_k |lambda_k|^(share_k horizon/every)`` over the modes with a
        share of at least ``min_share`` (shares renormalised): how much larger the motion is
        projected to be ``horizon`` steps from now (1: the same; above 1: growing), the
        share-weighted geometric mean over the modes.
    remaining : the projected distance still to travel, ``||sum_k b_k phi_k lambda_k /
        (1 - lambda_k)||``, relative to the weights' norm; ``inf`` while a mode with a share
        above ``min_share`` has ``|lambda| >= 1``.
    motion : the last increment's norm relative to the weights' norm.
    at_rest : bool, the motion is below the snapshots' rounding (see ``floor``).
    """

    eigenvalues: torch.Tensor
    shares: torch.Tensor
    radius: torch.Tensor
    gap: torch.Tensor
    unit_share: torch.Tensor
    amplification: torch.Tensor
    remaining: torch.Tensor
    motion: torch.Tensor
    at_rest: torch.Tensor


def block_spectra(X: torch.Tensor, *, every: int = 1, horizon: int = 1000,
                  rank: int | None = None, unit_tol: float = 0.05,
                  min_share: float = 0.01, floor: float = 1e4,
                  eps: float | None = None, scale=None) -> BlockSpectra:
    """Fit one operator per block to the increments of ``X`` and summarise it.

    X : ``(B, d, m)`` snapshots of ``B`` blocks, ``m >= 4`` (3 increments at least), time
        last, ``every`` optimizer steps apart.
    horizon : optimizer steps over which ``amplification`` projects the motion.
    rank : optional truncation of the operator (see ``KoopmanOperator``).
    scale : optional ``(m - 1,)`` positive divisors of the increments, e.g. the learning
        rate summed over each interval, so that a schedule's warm-up or decay is not read
        as growth or decay of the dynamics ("learning-rate time").
    min_share : modes with less of the last increment are left out of ``amplification``.
    floor, eps : a block whose last increment is below ``floor * eps`` of its weights' norm
        is ``at_rest``: its amplification is set to 1 (no instability from rounding
        noise); ``remaining`` is left as fitted. ``eps``: the resolution of the
        weights (default: that of ``X``'s dtype; pass the parameters' if coarser).
    """
    if X.dim() != 3 or X.shape[-1] < 4:
        raise ValueError(f"X must be (B, d, m) with m >= 4 snapshots, got {tuple(X.shape)}.")
    if eps is None:
        eps = torch.finfo(X.dtype if X.dtype.is_floating_point else torch.float64).eps
    X = X.to(torch.float64)
    D = X[..., 1:] - X[..., :-1]                                # (B, d, n) increments
    if scale is not None:  # e.g. the learning rate summed over each interval: lr time
        scale = torch.as_tensor(scale, dtype=torch.float64, device=X.device)
        if scale.shape != (D.shape[-1],) or not bool((scale > 0).all()):
            raise ValueError(f"scale must hold {D.shape[-1]} positive numbers (one per "
                             f"interval), got shape {tuple(scale.shape)}.")
        D = D / scale
    # projected DMD on the increments: the operator in the POD basis U of D0 (the same
    # eigenvalues as exact DMD, the same truncation rule as the engine), so that everything
    # after the one SVD is r x r, whatever the layer's width
    D0, D1 = D[..., :-1], D[..., 1:]
    U, S, Vh = torch.linalg.svd(D0, full_matrices=False)        # (B,d,k) (B,k) (B,k,k)
    k = S.shape[-1]
    keep = S > DEFAULT_RTOL * S[..., :1]
    if rank is not None:
        keep &= torch.arange(k, device=S.device) < rank
    sinv = torch.where(keep, 1 / S.clamp_min(1e-300), torch.zeros_like(S))
    At = (U.mT @ D1 @ Vh.mT) * sinv.unsqueeze(-2) * keep.unsqueeze(-1)  # truncated: 0
    lam, W = torch.linalg.eig(At)                               # (B,k), (B,k,k) unit columns
    a = (U.mT @ D[..., -1:]).squeeze(-1) * keep                  # the last increment in U
    b = torch.linalg.solve(W, a.to(W.dtype))                     # ... in the modes
    real = lam.abs() > 1e-9                                     # truncated directions: 0
    weight = b.abs() * real
    total = weight.sum(-1, keepdim=True)
    shares = torch.where(total > 0, weight / total.clamp_min(1e-300), torch.zeros_like(weight))
    lam = torch.where(real, lam, torch.zeros_like(lam))
    order = torch.argsort(lam.abs(), dim=-1, descending=True)
    lam, shares = lam.gather(-1, order), shares.gather(-1, order)
    b, W = b.gather(-1, order), W.gather(-1, order.unsqueeze(-2).expand_as(W))
    mod = lam.abs()
    radius = mod[..., 0]
    gap = (lam[..., 0] - 1).abs()
    unit_share = (shares * ((lam - 1).abs() <= unit_tol)).sum(-1)
    # modes carrying under min_share of the motion are left out (fits of noise give
    # spurious |lambda| > 1 modes with tiny amplitudes); the rest are renormalised
    # the motion's growth over the horizon: the share-weighted geometric mean of the modes'
    # |lambda|^(horizon/every), so one noisy mode cannot dominate
    big = shares >= min_share
    w = shares * big / (shares * big).sum(-1, keepdim=True).clamp_min(1e-300)
    amplification = torch.exp((w * mod.clamp_min(1e-300).log()).sum(-1) * (horizon / every))
    norm = torch.linalg.vector_norm(X[..., -1], dim=-1).clamp_min(1e-300)
    # the geometric series of the decaying modes; a persistent one makes it unbounded
    stable = mod < 1
    coef = torch.where(stable, lam / torch.where(stable, 1 - lam, torch.ones_like(lam)),
                       torch.zeros_like(lam))
    rest = torch.linalg.vector_norm(W @ (b * coef).unsqueeze(-1), dim=(-2, -1)) / norm
    persistent = ((~stable) & (shares > min_share)).any(-1)
    remaining = torch.where(persistent, torch.full_like(rest, math.inf), rest)
    motion = torch.linalg.vector_norm(D[..., -1], dim=-1) / norm
    # rounding each weight to eps puts noise of about eps * ||x|| into every increment; under
    # floor * eps of motion (a signal-to-noise ratio of 1e4 by default) the small modes
    # are noise and their fitted moduli mean nothing: such a block is at rest
    at_rest = motion < floor * eps
    amplification = torch.where(at_rest, torch.ones_like(amplification), amplification)
    return BlockSpectra(lam, shares, radius, gap, unit_share, amplification, remaining, motion,
                        at_rest)
