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

Minibatch noise alone scatters eigenvalues on a ring near ``|lambda| = 1``, so a growing
mode means something only against what noise would give. ``surrogates`` (time orders of
the increments) refit the same window with its increments shuffled in time: each
increment's size and direction are kept, their order is destroyed. If the increments are
exchangeable (noise with no dynamics), the window's ``growth`` is exactly as likely to rank
anywhere among its surrogates', which is what the monitor's false-alarm rate rests on
(``null_growth``). A window is reduced once to an ``n x n`` matrix (the ``R`` of ``D = Q R``,
or the Gram matrix ``D^T D``) that every reordering only permutes, so a surrogate costs an
``n x n`` fit whatever the layer's width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._linalg import svd_operator
from ..koopman import DEFAULT_RTOL

__all__ = ["BlockSpectra", "ReducedWindow", "block_spectra", "null_forecast", "null_growth",
           "reduce_window", "time_orders"]


@dataclass
class ReducedWindow:
    """A window of snapshots reduced once for every fit of it (``reduce_window``).

    R : ``(B, r, n)`` float64, ``r = min(d, n)``: the R factor of the window's ``n``
        increments ``D = Q R`` (each divided by its ``scale``), time last. Every fit here
        reads the increments only through ``R`` (``D^T D = R^T R``, the same eigenvalues,
        modes and shares at any width).
    norm : ``(B,)`` float64, the norm of each block's last snapshot.
    eps : the snapshots' resolution (their dtype's machine epsilon).
    last_scale : the last interval's ``scale`` (1 without one): what turns the scaled
        increments back into weights, for the distances (``motion``, ``remaining``).
    """

    R: torch.Tensor
    norm: torch.Tensor
    eps: float
    last_scale: float = 1.0


def reduce_window(X: torch.Tensor, scale=None) -> ReducedWindow:
    """Reduce ``X`` ``(B, d, m)`` (snapshots, time last, ``m >= 4``) to its ``ReducedWindow``:
    one float64 pass over the window and one QR; ``scale`` as in ``block_spectra``."""
    if isinstance(X, ReducedWindow):
        if scale is not None:
            raise ValueError("scale is given to reduce_window, not with its ReducedWindow.")
        return X
    eps = torch.finfo(X.dtype if X.dtype.is_floating_point else torch.float64).eps
    D = _increments(X)
    R = torch.linalg.qr(D, mode="r")[1]
    last = 1.0
    if scale is not None:  # D diag(1/s) = Q (R diag(1/s)): the same fits, an n x n pass
        scale = _scale(scale, D.shape[-1], R.device)
        R, last = R / scale, float(scale[-1])
    norm = torch.linalg.vector_norm(X[..., -1].to(torch.float64), dim=-1)
    return ReducedWindow(R, norm, eps, last)


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
        above ``min_share`` has ``|lambda| >= 1``. With a ``scale``, at the last
        interval's scale (the current lr, in lr time), in weights all the same.
    motion : the last increment's norm relative to the weights' norm (in weights, with a
        ``scale`` too).
    at_rest : bool, the motion is below the snapshots' rounding (see ``floor``).
    growth : the share-weighted mean of ``log |lambda_k|`` over the modes with a share of
        at least ``min_share``: the log growth of the motion per snapshot interval (above
        0: growing). ``log10(amplification) = growth * horizon / every / ln 10``.
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
    growth: torch.Tensor


def time_orders(n: int, k: int, seed: int) -> torch.Tensor:
    """``(k, n)``: ``k`` random orders of ``n`` increments (each a permutation of
    ``0..n-1``), drawn from a generator seeded with ``seed``, so that a given seed gives the
    same orders on every rank and after a resume."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.stack([torch.randperm(n, generator=g) for _ in range(k)]) if k else \
        torch.zeros((0, n), dtype=torch.long)


def block_spectra(X: torch.Tensor | ReducedWindow, *, every: int = 1, horizon: int = 1000,
                  rank: int | None = None, unit_tol: float = 0.05,
                  min_share: float = 0.01, floor: float = 1e4,
                  eps: float | None = None, scale=None) -> BlockSpectra:
    """Fit one operator per block to the increments of ``X`` and summarise it.

    X : ``(B, d, m)`` snapshots of ``B`` blocks, ``m >= 4`` (3 increments at least), time
        last, ``every`` optimizer steps apart; or their ``reduce_window`` (then ``scale`` is
        the one given there).
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
    w = reduce_window(X, scale)
    eps = w.eps if eps is None else eps
    # the fit is of the R factor of D = QR (n x n): the same eigenvalues, modes and shares
    # as a fit of D itself, at any width
    R = w.R                                                     # (B, min(d, n), n)
    lam, shares, b, W, growth = _modes(R, rank, min_share)
    mod = lam.abs()
    radius = mod[..., 0]
    gap = (lam[..., 0] - 1).abs()
    unit_share = (shares * ((lam - 1).abs() <= unit_tol)).sum(-1)
    # the motion's growth over the horizon: the share-weighted geometric mean of the modes'
    # |lambda|^(horizon/every)
    amplification = torch.exp(growth * (horizon / every))
    # the geometric series of the decaying modes; a persistent one makes it unbounded
    stable = mod < 1
    coef = torch.where(stable, lam / torch.where(stable, 1 - lam, torch.ones_like(lam)),
                       torch.zeros_like(lam))
    # distances in weights, relative to their norm: the scaled increments times the last
    # interval's scale (the remaining path at the current lr; a decaying lr travels less)
    relative = w.last_scale / w.norm.clamp_min(1e-300)
    rest = torch.linalg.vector_norm(W @ (b * coef).unsqueeze(-1), dim=(-2, -1)) * relative
    persistent = ((~stable) & (shares > min_share)).any(-1)
    remaining = torch.where(persistent, torch.full_like(rest, math.inf), rest)
    motion = torch.linalg.vector_norm(R[..., -1], dim=-1) * relative  # ||D[..., -1]||
    # rounding each weight to eps puts noise of about eps * ||x|| into every increment; under
    # floor * eps of motion (a signal-to-noise ratio of 1e4 by default) the small modes
    # are noise and their fitted moduli mean nothing: such a block is at rest
    at_rest = motion < floor * eps
    amplification = torch.where(at_rest, torch.ones_like(amplification), amplification)
    growth = torch.where(at_rest, torch.zeros_like(growth), growth)
    return BlockSpectra(lam, shares, radius, gap, unit_share, amplification, remaining, motion,
                        at_rest, growth)


def null_growth(X: torch.Tensor | ReducedWindow, orders: torch.Tensor, *,
                rank: int | None = 1, scale=None,
                min_share: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """``(growth (B,), growth_null (B, K))``: the ``growth`` of each block's window (see
    ``BlockSpectra``; of its leading ``rank`` modes, all with ``rank=None``) and of the same
    window with its increments in each of the ``K`` ``orders`` (``time_orders``).

    X : ``(B, d, m)`` snapshots, time last, or their ``reduce_window``; ``scale`` as in
        ``block_spectra``.
    orders : ``(K, m - 1)`` permutations of the increments.

    At ``rank=1`` the leading mode of a window is read from the Gram matrix of its
    increments, ``G = D^T D = R^T R`` (``(m-1) x (m-1)``), which every order only permutes:
    ``lambda = v^T G01 v / sigma^2``, with ``(sigma^2, v)`` the top eigenpair of ``G00``
    (the Gram of the earlier increments, ``G01`` theirs with the later ones). That is the
    rank-1 DMD eigenvalue (written ``v^T G01 v / v^T G00 v``, ``v`` found by repeated
    squaring), at the cost of a few ``(m-2)``-square products per order."""
    R = reduce_window(X, scale).R
    everyone = _everyone(orders, R)
    if rank == 1:
        Gp = _permuted_gram(R, everyone)                        # (B, 1 + K, n, n)
        G00, G01 = Gp[..., :-1, :-1], Gp[..., :-1, 1:]
        v = _top_eigenvector(G00)
        num = (v.unsqueeze(-2) @ G01 @ v.unsqueeze(-1)).squeeze((-2, -1))
        den = (v.unsqueeze(-2) @ G00 @ v.unsqueeze(-1)).squeeze((-2, -1))
        ok = den > 0
        lam = num / torch.where(ok, den, torch.ones_like(den))
        growth = torch.where(ok, lam.abs().clamp_min(1e-300).log(), torch.zeros_like(lam))
    else:
        growth = _modes(R[..., everyone].movedim(-2, 1), rank, min_share)[-1]
    return growth[:, 0], growth[:, 1:]


def null_forecast(X: torch.Tensor | ReducedWindow, orders: torch.Tensor, *,
                  rank: int | None = 1, scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(residual (B,), residual_null (B, K))``: how well each block's window forecasts its
    last increment, held out of the fit, and the same for the window in each of the ``K``
    ``orders`` (``time_orders``), as in ``null_growth``.

    The operator (projected DMD, its leading ``rank`` modes; all with ``rank=None``) is
    fitted to the increments before the last, ``dx_1 .. dx_{n-1}``, and forecasts
    ``dx_n`` from ``dx_{n-1}``; ``residual = ||dx_n - K dx_{n-1}||^2 / ||dx_n||^2`` (0: a
    perfect forecast, 1: no better than forecasting no motion; 1 where nothing could be
    fitted). Dynamics forecast their own next increment better than the same increments
    in a random order do; noise does not, and then the window's residual ranks anywhere
    among its surrogates' with equal probability (a held-out residual test, in the spirit
    of Residual DMD).

    X : ``(B, d, m)`` snapshots, time last, or their ``reduce_window``; ``scale`` as in
        ``block_spectra``.
    orders : ``(K, m - 1)`` permutations of the increments."""
    R = reduce_window(X, scale).R
    everyone = _everyone(orders, R)
    n = R.shape[-1]
    if rank == 1:  # from the Gram matrix, as null_growth: a few (n-2)-square products
        Gp = _permuted_gram(R, everyone)                        # (B, 1 + K, n, n)
        E, F = Gp[..., :n - 2, :n - 2], Gp[..., :n - 2, 1:n - 1]
        v = _top_eigenvector(E)
        quad = lambda M: (v.unsqueeze(-2) @ M @ v.unsqueeze(-1)).squeeze((-2, -1))  # noqa: E731
        s2 = quad(E)
        ok = s2 > 0
        s2 = torch.where(ok, s2, torch.ones_like(s2))
        lam = quad(F) / s2
        # the mode's direction u = D v / sigma; its coordinate in the last two increments
        prev = (v * Gp[..., :n - 2, n - 2]).sum(-1) / s2.sqrt()
        last = (v * Gp[..., :n - 2, n - 1]).sum(-1) / s2.sqrt()
        total = Gp[..., n - 1, n - 1]
        miss = total - 2 * lam * prev * last + lam * lam * prev * prev
        ok &= total > 0
    else:
        Rp = R[..., everyone].movedim(-2, 1)                    # (B, 1 + K, r, n)
        B_, U = svd_operator(Rp[..., :n - 2], Rp[..., 1:n - 1], rank, DEFAULT_RTOL)
        At = U.mT @ B_
        forecast = U @ (At @ (U.mT @ Rp[..., n - 2:n - 1]))     # (B, 1 + K, r, 1)
        total = Rp[..., n - 1].square().sum(-1)
        miss = (Rp[..., n - 1:] - forecast).square().sum((-2, -1))
        ok = total > 0
    residual = torch.where(ok, miss.clamp_min(0) / torch.where(ok, total, torch.ones_like(
        total)), torch.ones_like(total))
    return residual[:, 0], residual[:, 1:]


def _everyone(orders, R: torch.Tensor) -> torch.Tensor:
    """``(1 + K, n)``: the window's own order, then ``orders`` (checked)."""
    n = R.shape[-1]
    orders = torch.as_tensor(orders, dtype=torch.long, device=R.device)
    if orders.dim() != 2 or orders.shape[1] != n:
        raise ValueError(f"orders must be (K, {n}) permutations of the increments, got shape "
                         f"{tuple(orders.shape)}.")
    return torch.cat([torch.arange(n, device=R.device)[None], orders])  # the real first


def _permuted_gram(R: torch.Tensor, everyone: torch.Tensor) -> torch.Tensor:
    """``(B, 1 + K, n, n)``: the Gram matrix ``R^T R`` of the increments in each order."""
    G = R.mT @ R
    return G[:, everyone[:, :, None], everyone[:, None, :]]


def _top_eigenvector(S: torch.Tensor, squarings: int = 6) -> torch.Tensor:
    """The leading eigenvector of each symmetric positive semi-definite ``S`` ``(..., k, k)``,
    by repeated squaring (``S^64``, normalised by its trace each time): the column of the
    power with the largest diagonal entry. Several times cheaper than ``eigh`` on stacks of
    small matrices; where the top two eigenvalues are within a few percent it returns a mix
    of their eigenvectors, the same function of every reordered window."""
    M = S / S.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)[..., None, None]
    for _ in range(squarings):
        M = M @ M
        M = M / M.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)[..., None, None]
    col = M.diagonal(dim1=-2, dim2=-1).argmax(-1)
    v = M.gather(-1, col[..., None, None].expand(*M.shape[:-1], 1)).squeeze(-1)
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-300)


def _increments(X: torch.Tensor) -> torch.Tensor:
    """``(B, d, m - 1)`` float64 increments of ``X`` ``(B, d, m)``."""
    if X.dim() != 3 or X.shape[-1] < 4:
        raise ValueError(f"X must be (B, d, m) with m >= 4 snapshots, got {tuple(X.shape)}.")
    X = X.to(torch.float64)
    return X[..., 1:] - X[..., :-1]


def _scale(scale, n: int, device) -> torch.Tensor:
    """``scale`` as ``(n,)`` float64 positive divisors of the increments, or a ValueError."""
    scale = torch.as_tensor(scale, dtype=torch.float64, device=device)
    if scale.shape != (n,) or not bool((scale > 0).all()):
        raise ValueError(f"scale must hold {n} positive numbers (one per interval), got "
                         f"shape {tuple(scale.shape)}.")
    return scale


def _modes(R: torch.Tensor, rank: int | None, min_share: float):
    """Projected DMD of the increments ``R`` ``(..., r, n)`` (time last) through the
    engine's SVD path: eigenvalues sorted by decreasing modulus, the last increment's
    shares and amplitudes in the modes, the eigenvectors (in the POD basis) and ``growth``
    (see ``BlockSpectra``); truncated directions give 0."""
    B_, U = svd_operator(R[..., :-1], R[..., 1:], rank, DEFAULT_RTOL)  # (..,r,k) (..,r,k)
    At = U.mT @ B_                                              # (..., k, k)
    lam, W = torch.linalg.eig(At)                               # unit columns
    a = (U.mT @ R[..., -1:]).squeeze(-1)                         # the last increment in U
    a = a.to(W.dtype)
    b, info = torch.linalg.solve_ex(W, a)                       # ... in the modes
    bad = info != 0  # a defective operator: its eigenvectors are dependent
    if bool(bad.any()):
        b[bad] = (torch.linalg.pinv(W[bad]) @ a[bad].unsqueeze(-1)).squeeze(-1)
    real = lam.abs() > 1e-9                                     # truncated directions: 0
    weight = b.abs() * real
    total = weight.sum(-1, keepdim=True)
    shares = torch.where(total > 0, weight / total.clamp_min(1e-300), torch.zeros_like(weight))
    lam = torch.where(real, lam, torch.zeros_like(lam))
    order = torch.argsort(lam.abs(), dim=-1, descending=True)
    lam, shares = lam.gather(-1, order), shares.gather(-1, order)
    b, W = b.gather(-1, order), W.gather(-1, order.unsqueeze(-2).expand_as(W))
    # modes carrying under min_share of the motion are left out (fits of noise give
    # spurious |lambda| > 1 modes with tiny amplitudes); the rest are renormalised, and the
    # growth is their share-weighted mean log |lambda|, so one noisy mode cannot dominate
    big = shares >= min_share
    w = shares * big / (shares * big).sum(-1, keepdim=True).clamp_min(1e-300)
    growth = (w * lam.abs().clamp_min(1e-300).log()).sum(-1)
    return lam, shares, b, W, growth
