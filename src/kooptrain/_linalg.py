"""Batched linear-algebra kernels of the engine: least-squares operators, powers, spectra.

Every function works on stacks of small matrices ``(..., r, r)`` in float64, with no Python
loop over blocks except for cache-sized chunks on CPU.
"""

from __future__ import annotations

import math

import torch

# Normal equations lose ~cond(X0)^2 * eps. The guard bounds cond(X0) from above by
# kappa = sqrt(tr(G) tr(G^-1)) (at most sqrt(d) * cond): blocks up to CHOLESKY_MAX_COND are
# solved from G directly (error <= 1e-8); blocks up to REFINED_MAX_COND get one step of
# iterative refinement on the least-squares residual (Bjorck 1967), which multiplies the
# error by ~kappa^2 eps <= 1e-4 (measured: within 1e-9 of the SVD answer at kappa = 9e5);
# all other blocks are refitted by SVD.
CHOLESKY_MAX_COND = 1e4
REFINED_MAX_COND = 1e6
# Eigenvector matrices worse conditioned than this cannot be trusted to recompose an
# operator (defective or nearly defective K, e.g. a block whose weights never move).
MAX_EIGVEC_COND = 1e8
# On CPU, batches run in chunks of about this many bytes (cache-sized; see apply_powers).
CPU_CHUNK_BYTES = 1 << 23
# Tall blocks (a layer or the whole network against a short window: at least TSQR_MIN_ROWS
# rows and TSQR_MIN_RATIO times as many rows as snapshots) are fitted in an orthonormal basis
# of their window, found in place by a QR of row chunks of TSQR_ROWS (tall_qr_).
TSQR_MIN_ROWS, TSQR_MIN_RATIO, TSQR_ROWS = 1 << 16, 16, 1 << 14


def is_tall(d: int, m: int) -> bool:
    """Whether a ``(d, m)`` window is fitted in a basis of itself (``tall_qr_``)."""
    return d >= TSQR_MIN_ROWS and d >= TSQR_MIN_RATIO * m


def raise_if_nonfinite(out: torch.Tensor) -> None:
    """``FloatingPointError`` counting the block rows of ``out`` that hold NaN/Inf."""
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        blocks = bad.reshape(-1, *bad.shape[-1:]).any(-1).sum()
        raise FloatingPointError(
            f"the Koopman prediction overflowed in {int(blocks)} block row(s): the fitted "
            "operator has modes with |lambda| > 1 that grow exponentially at this horizon. "
            "Use stabilize='clip' (or 'drop'), a shorter horizon T, or rank truncation."
        )


def augment_rows(M: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """``[[M, col], [0, 1]]`` for ``M`` ``(..., d, r)`` and ``col`` ``(..., d)``, built in
    one allocation (for a whole network, ``M`` is as large as its window)."""
    d, r = M.shape[-2:]
    out = M.new_zeros(M.shape[:-2] + (d + 1, r + 1))
    out[..., :d, :r] = M
    out[..., :d, r] = col
    out[..., d, r] = 1.0
    return out


# ------------------------------------------------------------------ spectra
def stabilize_spectrum(K: torch.Tensor, lam: torch.Tensor, Y: torch.Tensor, how: str):
    """``(K', lam')``: ``K`` with every mode of ``|lambda| > 1`` moved onto the unit
    circle (``"clip"``) or removed (``"drop"``); blocks without such a mode stay exactly
    ``K``. A block whose eigenvectors are (nearly) dependent cannot be recomposed as
    ``Y diag(lam') Y^-1``; it is scaled instead, ``K / rho(K)``, which also leaves no
    ``|lambda| > 1`` (same eigenvectors, every eigenvalue divided by the spectral radius).
    """
    mod = lam.abs()
    need = (mod > 1).any(-1)  # (...,) blocks with an unstable mode
    if not bool(need.any()):
        return K, lam
    unstable = mod[need] > 1
    lam_n = lam[need]
    if how == "clip":
        new = torch.where(unstable, lam_n / mod[need].clamp_min(1e-300), lam_n)
    else:
        new = torch.where(unstable, torch.zeros_like(lam_n), lam_n)
    rec, ok = recompose_checked(new, Y[need])
    rho = mod[need].amax(-1)
    scaled = K[need] / rho[..., None, None]
    K, lam = K.clone(), lam.clone()
    K[need] = torch.where(ok[..., None, None], rec, scaled)
    lam[need] = torch.where(ok[..., None], new, lam_n / rho[..., None])
    return K, lam


def recompose_checked(lam: torch.Tensor, Y: torch.Tensor):
    """Real ``Y diag(lam) Y^-1`` (conjugate pairs keep it real) ``(..., r, r)``, and a
    ``(...)`` mask of the blocks where it can be trusted: ``Y`` invertible and
    conditioned below ``MAX_EIGVEC_COND``, result finite (others hold zeros)."""
    R, info = torch.linalg.solve_ex(Y.mT, (Y * lam.unsqueeze(-2)).mT)
    rec = R.mT.real
    ok = (info == 0) & (torch.linalg.cond(Y) < MAX_EIGVEC_COND) & \
        torch.isfinite(rec).flatten(-2).all(-1)
    return torch.where(ok[..., None, None], rec, torch.zeros_like(rec)), ok


# ----------------------------------------------------------- least squares
def normal_equations(G: torch.Tensor, C: torch.Tensor, rtol: float, rank,
                     limit_cond: float = CHOLESKY_MAX_COND):
    """``U = C G^-1`` by batched Cholesky; returns ``(U, Ginv, bound, bad)``.

    ``bound = sqrt(tr(G) tr(G^-1))`` bounds ``cond(X0)`` from above. A block is ``bad``
    (needs another method) when Cholesky fails, when ``rank`` asks for truncation, or when
    the bound exceeds ``min(limit_cond, 1/rtol)``: passing blocks keep every direction
    under the ``rtol`` rule.
    """
    L, info = torch.linalg.cholesky_ex(G)
    failed = (info != 0)[..., None, None]
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    Ginv = torch.cholesky_inverse(torch.where(failed, eye, L))  # failed blocks fall back
    U = C @ Ginv
    trace = G.diagonal(dim1=-2, dim2=-1).sum(-1) * Ginv.diagonal(dim1=-2, dim2=-1).sum(-1)
    limit = limit_cond if rtol == 0 else min(limit_cond, 1.0 / rtol)
    ok = (info == 0) & (trace <= limit * limit)  # NaN compares False: falls back
    if rank is not None and rank < G.shape[-1]:
        ok = torch.zeros_like(ok)  # truncation is the eigh path's job
    return U, Ginv, trace, ~ok


def refine(U: torch.Tensor, Ginv: torch.Tensor, X0: torch.Tensor, X1: torch.Tensor
           ) -> torch.Tensor:
    """One step of iterative refinement of ``U = X1 X0^+`` on the residual: ``U + (X1 - U
    X0) X0^T G^-1``. The residual is formed from the snapshots, not from ``G``, so the step
    removes all but ~``cond(X0)^2 eps`` of the error that squaring ``X0`` introduced."""
    return U + ((X1 - U @ X0) @ X0.mT) @ Ginv


def chunked_window_operator(X0: torch.Tensor, X1: torch.Tensor, rtol: float):
    """``U = X1 X0^+`` for full-row-rank-capable blocks ``(..., d, n)``, ``d <= n``, in
    cache-sized chunks on CPU (``docs/complexity.md`` says what that saves). Returns
    ``(U, bad, n_refined)``: blocks whose conditioning bound exceeds
    ``min(REFINED_MAX_COND, 1/rtol)`` (or that need truncation) are ``bad`` and must be
    refitted by SVD; blocks between ``CHOLESKY_MAX_COND`` and that limit are refined."""
    lead, d, n = X0.shape[:-2], X0.shape[-2], X0.shape[-1]
    X0f, X1f = X0.reshape(-1, d, n), X1.reshape(-1, d, n)
    N = X0f.shape[0]
    chunk = N if X0.device.type != "cpu" else max(1, CPU_CHUNK_BYTES // (8 * d * (2 * n + 4 * d)))
    U = X0f.new_empty((N, d, d))
    bad = torch.empty(N, dtype=torch.bool, device=X0.device)
    limit2 = CHOLESKY_MAX_COND ** 2
    n_refined = 0
    for s in range(0, N, chunk):
        a, b = X0f[s : s + chunk], X1f[s : s + chunk]
        Uc, Ginv, bound2, badc = normal_equations(a @ a.mT, b @ a.mT, rtol, None,
                                                  REFINED_MAX_COND)
        fix = ~badc & (bound2 > limit2)  # accurate only after refinement
        if bool(fix.any()):
            Uc[fix] = refine(Uc[fix], Ginv[fix], a[fix], b[fix])
            n_refined += int(fix.sum())
        U[s : s + chunk], bad[s : s + chunk] = Uc, badc
    return U.reshape(*lead, d, d), bad.reshape(lead), n_refined


def tall_qr_(X: torch.Tensor, rows: int = TSQR_ROWS) -> torch.Tensor:
    """The thin QR ``X = Q R`` of tall blocks ``(..., d, k)``, ``d >= k``, **in place**:
    ``X`` becomes the orthonormal ``Q`` and ``R`` ``(..., k, k)`` is returned.

    TSQR: a QR of each chunk of ``rows`` rows (``Q_i R_i``, written over the chunk), a QR
    of the stacked ``R_i`` (``Q_s R``), then ``Q_i Q_s[i]`` over each chunk. Backward
    stable like the Householder QR it is made of; no temporary is larger than a chunk, so
    a whole network's window is factored in the memory it already takes."""
    d, k = X.shape[-2:]
    if d < k:
        raise ValueError(f"tall_qr_ needs d >= k, got a ({d} x {k}) block.")
    rows = max(rows, 4 * k)
    n = max(1, d // rows)
    cuts = [round(i * d / n) for i in range(n + 1)]
    if n == 1:
        Q, R = torch.linalg.qr(X)
        X.copy_(Q)
        return R
    # one allocation for the stacked R_i before the loop: small tensors kept between the
    # chunks' temporaries would pin the allocator's heap (measured: +2 copies of X)
    Rs = X.new_empty(X.shape[:-2] + (n * k, k))
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        Q, R = torch.linalg.qr(X[..., a:b, :])
        X[..., a:b, :] = Q
        Rs[..., i * k:(i + 1) * k, :] = R
        del Q, R
    Qs, R = torch.linalg.qr(Rs)
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        X[..., a:b, :] = X[..., a:b, :] @ Qs[..., i * k:(i + 1) * k, :]
    return R


def svd_operator(X0: torch.Tensor, X1: torch.Tensor, rank, rtol: float):
    """Exact-DMD factors ``B = X1 V S^+``, ``W`` from the thin SVD ``X0 = W S V^T``."""
    W, S, Vh = torch.linalg.svd(X0, full_matrices=False)
    keep = S > rtol * S[..., :1]
    if rank is not None:
        keep &= torch.arange(S.shape[-1], device=S.device) < rank
        W, S, Vh, keep = W[..., :rank], S[..., :rank], Vh[..., :rank, :], keep[..., :rank]
    inv = torch.where(keep, 1.0 / torch.where(keep, S, torch.ones_like(S)), torch.zeros_like(S))
    # zeroed directions also drop out of W, so U = B W^T is exactly X1 pinv(X0); in place:
    # for a whole network W and B are each as large as the window
    W.mul_(keep.to(W.dtype).unsqueeze(-2))
    B = X1 @ Vh.mT
    B.mul_(inv.unsqueeze(-2))
    return B, W


def pinv_from_gram(G: torch.Tensor, C: torch.Tensor, rtol: float, rank) -> torch.Tensor:
    """``U = C G^+`` through the Gram eigendecomposition; ``sigma_i = sqrt(eval_i)``, so
    the ``rtol`` rule on singular values is ``rtol^2`` on eigenvalues."""
    evals, V = torch.linalg.eigh(G)  # ascending
    keep = evals > (rtol * rtol) * evals[..., -1:].clamp_min(0)
    if rank is not None:
        keep &= torch.arange(evals.shape[-1], device=evals.device) >= evals.shape[-1] - rank
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)),
                      torch.zeros_like(evals))
    return (C @ V) * inv.unsqueeze(-2) @ V.mT


# ------------------------------------------------------------------ powers
def apply_powers(K: torch.Tensor, z: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``K^s z`` for each ``s`` in ``steps``: ``(..., k, r)``, by repeated squaring.

    ``floor(log2 max s)`` batched squarings plus one batched mat-vec per set
    bit. On CPU the batch runs in cache-sized chunks through the whole chain
    (a 65x65 fp64 squaring moves about as many bytes as it does FLOPs; see
    ``docs/complexity.md``), reusing two buffers.
    Blocks whose squarings overflow are redone through the eigendecomposition,
    so a mode the state does not contain cannot turn ``inf * 0`` into NaN.
    """
    k, r = steps.numel(), K.shape[-1]
    lead = K.shape[:-2]
    v = z.unsqueeze(-2).expand(*z.shape[:-1], k, r).reshape(-1, k, r).clone()
    Kf = K.reshape(-1, r, r)
    smax = int(steps.max())
    if smax == 0:
        return v.reshape(*lead, k, r)
    nbits = smax.bit_length()
    masks = [((steps >> j) & 1).bool() for j in range(nbits)]
    sel = [None if bool(mk.all()) else mk.nonzero().squeeze(-1).to(v.device) for mk in masks]
    active = [bool(mk.any()) for mk in masks]
    n = Kf.shape[0]
    chunk = n if K.device.type != "cpu" else max(1, CPU_CHUNK_BYTES // (24 * r * r))
    bufs = [torch.empty((min(chunk, n), r, r), dtype=K.dtype, device=K.device) for _ in range(2)]
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        P, vc = Kf[s:e], v[s:e]
        for j in range(nbits):
            if active[j]:
                if sel[j] is None:
                    vc = vc @ P.mT
                else:
                    vc[:, sel[j], :] = vc[:, sel[j], :] @ P.mT
            if j + 1 < nbits:
                out = bufs[j % 2][: e - s]
                torch.matmul(P, P, out=out)
                P = out
        v[s:e] = vc
    bad = ~torch.isfinite(v).all(-1).all(-1)
    if bool(bad.any()):
        v[bad] = powers_by_eig(Kf[bad], z.reshape(-1, r)[bad], steps)
    return v.reshape(*lead, k, r)


def powers_by_eig(K: torch.Tensor, z: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``K^s z`` as ``Y diag(lambda^s) Y^-1 z`` ``(N, k, r)``, where a mode absent from ``z``
    (coefficient exactly 0) contributes 0 however large ``lambda^s`` is."""
    lam, Y = torch.linalg.eig(K)
    coef, info = torch.linalg.solve_ex(Y, z.to(Y.dtype))  # (N, r)
    # a defective K has no eigenbasis: its overflow stands (the caller raises)
    coef = torch.where((info == 0).unsqueeze(-1), coef, torch.full_like(coef, math.nan))
    s = steps.to(device=K.device, dtype=torch.float64).to(lam.dtype)
    growth = lam.unsqueeze(-2) ** s.reshape(1, -1, 1)  # (N, k, r)
    growth = torch.where(s.reshape(1, -1, 1) == 0, torch.ones_like(growth), growth)
    terms = torch.where(coef.unsqueeze(-2) == 0, torch.zeros_like(growth),
                        growth * coef.unsqueeze(-2))
    return (terms @ Y.mT).real
