"""The engine: batched finite-section Koopman operators (exact DMD) in torch.

This module knows nothing about ``nn.Module``, optimizers or data. Tensors go
in; operators and predictions come out. Shapes follow one convention, time on
the **last** axis everywhere:

* snapshots ``X`` are ``(..., d, m)``: ``d`` observables, ``m`` snapshots; the
  leading axes ``...`` are independent blocks;
* a state is ``(..., d)``; ``k`` horizons give ``(..., d, k)``; a trajectory of
  ``T`` steps is ``(..., d, T)``.

The estimator is Dogra & Redman's (NeurIPS 2020, Sec. 3): with
``X0 = [x_1 .. x_{m-1}]`` and ``X1 = [x_2 .. x_m]``, ``U = X1 X0^+`` and the
prediction ``T`` steps past the last snapshot is ``U^T x_m``.

When ``X0`` can have full row rank the operator is the plain ``d x d`` matrix;
otherwise it is the exact low-rank form from the thin SVD ``X0 = W S V^T``,
``U = B W^T`` with ``B = X1 V S^+``, so no ``d x d`` matrix is ever formed. A tall
window (a layer, the whole network) is first factored in place, ``X = Q R``, and fitted
on ``R``: ``U = Q (R1 R0^+) Q^T``, the same operator in one copy of the window
(``_representation.py`` holds the forms behind one interface).

Affine observables fit ``x_{t+1} = A x_t + c`` with the offset solved
explicitly (``A`` from the centred snapshots, ``c = mean(X1) - A mean(X0)``), so
the constant observable is exactly invariant (``lambda = 1``) at every width.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ._linalg import (
    chunked_window_operator,
    is_tall,
    normal_equations,
    pinv_from_gram,
    raise_if_nonfinite,
    recompose_checked,
    svd_operator,
    tall_qr_,
)
from ._representation import DenseOperator, LiftedOperator, LowRankOperator
from ._validation import (
    check_array,
    check_choice,
    check_finite,
    check_fraction,
    check_horizons,
    check_int,
    check_optional_int,
    check_positive,
    check_snapshots,
)
from .errors import NoFixedPointError
from .statistics import SnapshotStatistics

__all__ = ["DEFAULT_RTOL", "FitSettings", "KoopmanOperator"]

OBSERVABLES = ("identity", "affine")
STABILIZE = (None, "clip", "drop")
NO_FIXED_POINT = ("raise", "stay")
# The one truncation rule, in every path (window SVD, window Cholesky, streaming
# Gram): singular values of X0 below rtol * sigma_max are dropped. Running sums
# resolve sigma_i only down to ~sqrt(eps) * sigma_max, so the default sits well above.
DEFAULT_RTOL = 1e-6
GRAM_MIN_RTOL = 1e-7


@dataclass(frozen=True)
class FitSettings:
    """The validated, frozen settings of a ``KoopmanOperator`` (see its parameters)."""

    observables: str = "identity"
    rank: int | None = None
    rtol: float = DEFAULT_RTOL
    stabilize: str | None = None
    holdout: int = 0
    fixed_point_tol: float = 1e-3
    no_fixed_point: str = "raise"

    def __post_init__(self):
        check_choice(self.observables, "observables", OBSERVABLES)
        check_choice(self.stabilize, "stabilize", STABILIZE)
        object.__setattr__(self, "rank", check_optional_int(self.rank, "rank"))
        rtol = DEFAULT_RTOL if self.rtol is None else self.rtol
        object.__setattr__(self, "rtol", check_fraction(rtol, "rtol"))
        object.__setattr__(self, "holdout", check_int(self.holdout, "holdout", 0))
        object.__setattr__(self, "fixed_point_tol",
                           check_positive(self.fixed_point_tol, "fixed_point_tol"))
        check_choice(self.no_fixed_point, "no_fixed_point", NO_FIXED_POINT)


class KoopmanOperator:
    """Batched finite-section Koopman operator: exact DMD, ``U = X1 X0^+``.

    One operator is fitted per block (leading axes of ``X``) with no Python
    loop over blocks. Solved in float64 on the input's device, whatever the
    input dtype; results are float64 torch tensors on that device.

    Parameters
    ----------
    observables : {"identity", "affine"}
        ``"identity"`` is the paper's choice: each weight is an observable.
        ``"affine"`` appends a constant observable ``1``: the fit is
        ``x -> A x + c`` with ``c`` solved explicitly, so the constant stays
        exactly ``1`` and a trajectory settling at ``x* != 0`` is representable.
    rank : int, optional
        Keep at most ``rank`` singular directions of ``X0`` (denoising; smaller
        operators). Default: no truncation beyond ``rtol``.
    rtol : float, optional
        Drop singular values of ``X0`` below ``rtol * sigma_max`` (torch's
        ``pinv(rtol=...)``). Default ``DEFAULT_RTOL = 1e-6``, the same rule for
        window and streaming fits (running sums cannot resolve below ~1e-7).
    stabilize : {None, "clip", "drop"}
        What to do with eigenvalues ``|lambda| > 1`` before extrapolating:
        ``"clip"`` projects them onto the unit circle, ``"drop"`` zeroes their
        modes. The stabilised operator is what ``predict``, ``operator``,
        ``eigenvalues`` and ``modes`` all report. Costs an eigendecomposition
        per block.
    holdout : int
        If ``> 0``, also fit on all but the last ``holdout`` snapshots and score
        the forecast of those held-out snapshots into ``residual_``. In-sample
        errors are ~0 whenever ``d >= m-1``, so only held-out errors can tell a
        good block from a bad one.
    fixed_point_tol : float
        Eigenvalues with ``|lambda - 1| <= fixed_point_tol`` count as the
        stationary modes kept by ``predict(math.inf)``.
    no_fixed_point : {"raise", "stay"}
        What ``predict(math.inf)`` does for a block without a fixed point (no
        eigenvalue near 1, or a drift that never settles): raise
        ``NoFixedPointError`` (default), or leave that block at ``x_m``.
        ``fixed_point_found_`` reports the blocks either way.

    Attributes (after ``fit``)
    --------------------------
    settings_ : ``FitSettings``, the frozen settings the fit used.
    n_blocks_, n_observables_, n_snapshots_ : the batch, ``d`` and ``m``.
    residual_ : ``(...)`` held-out relative error per block, or ``None``.
    refined_blocks_ : number of blocks whose normal equations needed iterative
        refinement to be accurate (``docs/complexity.md``).
    fallback_blocks_ : number of blocks refitted by SVD/eigh because their
        normal equations could not be made accurate.
    representation_ : the fitted operator in the form ``predict`` uses (dense ``U``, the
        exact low-rank ``B W^T`` of wide blocks, or for tall ones either form fitted in an
        orthonormal basis of the window; ``kooptrain._representation``), for inspection.

    Example
    -------
    >>> import torch
    >>> A = torch.tensor([[0.9, 0.1], [0.0, 0.8]], dtype=torch.float64)
    >>> x = [torch.tensor([1.0, 1.0], dtype=torch.float64)]
    >>> for _ in range(9):
    ...     x.append(A @ x[-1])
    >>> X = torch.stack(x, -1)                  # (d=2, m=10)
    >>> op = KoopmanOperator().fit(X)
    >>> bool(torch.allclose(op.predict(5), torch.linalg.matrix_power(A, 5) @ x[-1]))
    True
    """

    def __init__(
        self,
        *,
        observables: str = "identity",
        rank: int | None = None,
        rtol: float | None = None,
        stabilize: str | None = None,
        holdout: int = 0,
        fixed_point_tol: float = 1e-3,
        no_fixed_point: str = "raise",
    ):
        self.observables = observables
        self.rank = rank
        self.rtol = rtol
        self.stabilize = stabilize
        self.holdout = holdout
        self.fixed_point_tol = fixed_point_tol
        self.no_fixed_point = no_fixed_point

    def get_params(self) -> dict:
        """The constructor's arguments as given (scikit-learn's convention)."""
        return {k: getattr(self, k) for k in ("observables", "rank", "rtol", "stabilize",
                                              "holdout", "fixed_point_tol", "no_fixed_point")}

    def __repr__(self) -> str:
        defaults = asdict(FitSettings()) | {"rtol": None}  # the constructor's defaults
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()
                         if v is not defaults[k] and v != defaults[k])
        text = f"KoopmanOperator({args})"
        if hasattr(self, "_op"):
            text += (f"  # fitted: {self.n_blocks_} block(s), d={self.n_observables_}, "
                     f"m={self.n_snapshots_}, {self._op.describe()}")
        return text

    # ------------------------------------------------------------------ fit
    def _unfit(self) -> None:
        # a fit that fails must not leave the previous operator answering predict
        for name in ("_op", "settings_", "residual_", "fixed_point_found_"):
            self.__dict__.pop(name, None)

    def fit(self, X, *, copy: bool = True) -> KoopmanOperator:
        """Fit one operator per block.

        X : ``(..., d, m)`` snapshots (torch tensor or numpy array), time last.
        copy : ``False`` lets a tall fit factor a float64 ``X`` in place (it is left
            holding an orthonormal basis of itself): a whole network's window is then not
            copied. Other inputs are never written to.
        Returns ``self``. On any error the estimator is left unfitted.

        A tall window (``d >= 65536`` and ``d >= 16 m``: a layer or the whole network) is
        fitted in an orthonormal basis ``Q`` of itself, ``X = Q R`` (``m x m`` ``R``):
        the fit on ``R`` lifted by ``Q`` is the same operator, and ``Q`` is all it keeps of
        the window (``docs/complexity.md``).
        """
        self._unfit()
        p = FitSettings(**self.get_params())
        converted = not _is_float64(X)  # check_snapshots then makes a float64 copy
        X = check_snapshots(X)
        m = X.shape[-1]
        if is_tall(X.shape[-2], m):
            return self._fit_tall(X, p, owned=converted or not copy)
        residual = None
        if p.holdout:
            _check_holdout(m, p)
            residual = _holdout_residual(X, p)
        self._set_shape(X.shape[:-2], X.shape[-2], m, X.device)
        last = X[..., -1].clone()  # a copy, so that the window itself is not kept alive
        X0, X1 = X[..., :-1], X[..., 1:]
        mu0 = mu1 = None
        if p.observables == "affine":
            mu0, mu1 = X0.mean(-1, keepdim=True), X1.mean(-1, keepdim=True)
            X0, X1 = X0 - mu0, X1 - mu1
            mu0, mu1 = mu0.squeeze(-1), mu1.squeeze(-1)
        del X  # the centred copies replace it: a float64 copy of a float32 window goes now
        self._set_operator(self._solve_window(X0, X1, p), mu0, mu1, last, p)
        self.residual_ = residual
        return self

    def _fit_tall(self, X: torch.Tensor, p: FitSettings, owned: bool) -> KoopmanOperator:
        """``X = Q R`` in place (on a copy unless ``owned``), the same fit on ``R``
        ``(..., m, m)``, lifted by ``Q``: ``Q`` preserves every inner product of the
        snapshots, so operator, spectrum, truncation and held-out errors are ``R``'s."""
        m = X.shape[-1]
        if p.holdout:
            _check_holdout(m, p)
        d = X.shape[-2]
        self._set_shape(X.shape[:-2], d, m, X.device)
        extra = 1 if p.observables == "affine" else 0
        last = X.new_empty(X.shape[:-2] + (d + extra,))  # with the constant, in one allocation
        last[..., :d] = X[..., -1]
        last[..., d:] = 1.0
        Q = X if owned else X.clone()
        del X
        small = KoopmanOperator(**asdict(p)).fit(tall_qr_(Q))
        self._op = LiftedOperator(Q, small._op, extra)
        self._last, self.settings_, self.residual_ = last, p, small.residual_
        self.refined_blocks_, self.fallback_blocks_ = small.refined_blocks_, \
            small.fallback_blocks_
        return self

    def fit_statistics(self, stats: SnapshotStatistics) -> KoopmanOperator:
        """Fit from running sums (streaming) instead of a stored window.

        Gives the same operator as ``fit`` on the same snapshots, under the same
        truncation rule ``rtol`` (which must be ``>= 1e-7`` here: a Gram matrix
        resolves singular values only to ~``sqrt(eps)``). Returns ``self``.
        """
        self._unfit()
        p = FitSettings(**self.get_params())
        if p.holdout:
            raise ValueError("holdout needs stored snapshots; use fit(X) or holdout=0.")
        if p.rtol < GRAM_MIN_RTOL:
            raise ValueError(f"rtol={p.rtol} is below what running sums resolve "
                             f"({GRAM_MIN_RTOL}); use rtol >= {GRAM_MIN_RTOL} or fit(X) "
                             "on a stored window.")
        if not isinstance(stats, SnapshotStatistics):
            raise TypeError(f"stats must be SnapshotStatistics, got {type(stats).__name__}.")
        if stats.count < 1:
            raise ValueError("statistics hold fewer than 2 snapshots; record more first.")
        fields = ("xx", "yx", "x_sum", "y_sum", "last") + (("origin",) if stats.origin
                                                             is not None else ())
        t = {k: check_array(getattr(stats, k), f"statistics.{k}") for k in fields}
        for k, v in t.items():
            check_finite(v, f"statistics.{k}")
        stats = SnapshotStatistics(**t, count=stats.count)
        d = stats.last.shape[-1]
        self._set_shape(stats.last.shape[:-1], d, stats.count + 1, stats.last.device)
        mu0 = mu1 = None
        if p.observables == "affine":
            G, C, mu0, mu1 = stats.centred()
        else:
            G, C = stats.unshifted()
        U, _, _, bad = normal_equations(G, C, p.rtol, p.rank)
        if bool(bad.any()):
            U[bad] = pinv_from_gram(G[bad], C[bad], p.rtol, p.rank)
        self.fallback_blocks_ = int(bad.sum())
        self._set_operator(DenseOperator(U), mu0, mu1, stats.last, p)
        return self

    def _set_shape(self, batch, d: int, m: int, device) -> None:
        self.batch_shape_ = tuple(batch)
        self.n_blocks_ = math.prod(self.batch_shape_)
        self.n_observables_ = d
        self.n_snapshots_ = m
        self.device_ = device
        self.fallback_blocks_ = self.refined_blocks_ = 0

    def _solve_window(self, X0: torch.Tensor, X1: torch.Tensor, p: FitSettings):
        """``A = X1 X0^+``, dense where ``X0`` can have full row rank, else low-rank."""
        d, n = X0.shape[-2], X0.shape[-1]
        # centred snapshots have rank <= n - 1, so the dense form needs d <= n - 1 then
        full_rank_possible = d <= (n - 1 if p.observables == "affine" else n)
        if not full_rank_possible or p.rank is not None:
            return LowRankOperator(*svd_operator(X0, X1, p.rank, p.rtol))
        # Well-posed square case: guarded (and, where needed, refined) normal equations;
        # blocks that stay too ill-conditioned are refitted by SVD.
        U, bad, self.refined_blocks_ = chunked_window_operator(X0, X1, p.rtol)
        if bool(bad.any()):
            Bb, Wb = svd_operator(X0[bad], X1[bad], None, p.rtol)
            U[bad] = Bb @ Wb.mT
        self.fallback_blocks_ = int(bad.sum())
        return DenseOperator(U)

    def _set_operator(self, op, mu0, mu1, last, p: FitSettings) -> None:
        """Store ``A`` (stabilised if asked), then (affine) ``[[A, c], [0, 1]]``."""
        if p.stabilize is not None:
            op = op.stabilized(p.stabilize, reuse=True)  # the unclipped form is dropped
        if mu0 is not None:  # affine: x -> A x + c, c = mean(X1) - A mean(X0)
            op = op.affine(mu1 - op.apply(mu0))
            last = torch.cat([last, last.new_ones(last.shape[:-1] + (1,))], -1)
        self._op, self._last, self.settings_ = op, last, p

    # ------------------------------------------------------------ predict
    def _require_fit(self) -> None:
        if not hasattr(self, "_op"):
            raise RuntimeError("This KoopmanOperator is not fitted yet; call fit(X) first.")

    def predict(self, T=1) -> torch.Tensor:
        """State ``T`` steps after the last snapshot: ``U^T x_m``.

        T : int ``>= 0`` -> ``(..., d)``; a 1-D sequence of ``k`` horizons ->
            ``(..., d, k)`` (time last, like ``trajectory``); ``math.inf`` -> the
            fixed point (see ``predict_fixed_point``). Cost grows like
            ``log2(max T)`` (repeated squaring; exact for defective, e.g.
            Jordan, operators). A 0-d or 1-d tensor of horizons on any device works.
        Raises ``FloatingPointError`` if the prediction overflows (unstable
        modes at a long horizon): use ``stabilize="clip"`` or a shorter ``T``.
        """
        self._require_fit()
        horizons, scalar = check_horizons(T)
        if horizons is None:
            return self.predict_fixed_point()
        out = self._finish(self._predict_horizons(horizons))  # (..., k, d)
        return out[..., 0, :] if scalar else out.transpose(-1, -2)

    def _predict_horizons(self, horizons: torch.Tensor) -> torch.Tensor:
        """``(..., k, d_aug)`` for the given int64 horizons."""
        x = self._last
        k = horizons.numel()
        pos = horizons > 0
        if bool(pos.all()):  # no copy of the state beside the prediction (a whole network)
            return self._op.powers(x, horizons)
        out = x.unsqueeze(-2).expand(*x.shape[:-1], k, x.shape[-1]).clone()
        if not bool(pos.any()):
            return out
        out[..., pos.to(out.device), :] = self._op.powers(x, horizons[pos])
        return out

    def trajectory(self, T: int) -> torch.Tensor:
        """States at steps ``1 .. T`` after the last snapshot, ``(..., d, T)``.

        Rolls the operator forward step by step (``O(T r^2)``), which is what a
        whole path costs anyway; for single states use ``predict``. ``T = 0``
        gives an empty ``(..., d, 0)``.
        """
        self._require_fit()
        horizons, scalar = check_horizons(T)
        if horizons is None or not scalar:
            raise TypeError("trajectory(T) takes one finite int T.")
        T = int(horizons[0])
        if T == 0:
            return self._last.new_zeros(self._last.shape[:-1] + (self.n_observables_, 0))
        traj = self._op.rollout(self._last, T)[..., : self.n_observables_, :]
        raise_if_nonfinite(traj)
        return traj

    def predict_fixed_point(self) -> torch.Tensor:
        """Infinite-horizon state from the modes with ``lambda ~ 1``, ``(..., d)``.

        Modes with ``|lambda - 1| <= fixed_point_tol`` are kept; all others are
        treated as transients (``|lambda| < 1`` decays; unstable ones are
        dropped rather than extrapolated). With ``observables="affine"`` the
        constant observable supplies an exact ``lambda = 1`` mode, so a
        trajectory settling at ``x* != 0`` is captured.

        A block has a fixed point only if the result is stationary,
        ``|U x* - x*| <= 2 tol |x*|`` (a drift along a Jordan block at
        ``lambda = 1`` is not). A block with no kept mode is its own candidate,
        ``x* = x_m``: found only if it is already at rest (e.g. all zeros).
        ``fixed_point_found_`` ``(...)`` says which blocks do; the others raise
        ``NoFixedPointError`` or, with ``no_fixed_point="stay"``, stay at ``x_m``.
        """
        self._require_fit()
        tol = self.settings_.fixed_point_tol
        lam, Y = self._op.eig()
        keep = (lam - 1).abs() <= tol
        P, ok = recompose_checked(torch.where(keep, torch.ones_like(lam),
                                              torch.zeros_like(lam)), Y)
        x = self._last
        xs = self._op.limit(P, x)
        # no lambda ~ 1 mode, or (nearly) dependent eigenvectors and so no projector: the
        # block's candidate is its last state, a fixed point only if it is stationary
        # (a block at rest, e.g. all zeros) -- the test below decides
        xs = torch.where((ok & keep.any(-1)).unsqueeze(-1), xs, x)
        norm = torch.linalg.vector_norm(xs, dim=-1)
        moved = torch.linalg.vector_norm(self._op.apply(xs) - xs, dim=-1)
        found = (moved <= 2 * tol * norm) & torch.isfinite(norm)
        self.fixed_point_found_ = found
        if not bool(found.all()):
            if self.settings_.no_fixed_point == "raise":
                n_bad = int((~found).sum())
                raise NoFixedPointError(
                    f"{n_bad} of {found.numel()} block(s) have no fixed point: no eigenvalue "
                    f"within fixed_point_tol={tol} of 1, or a drift that does not settle. Use "
                    "observables='affine' (an exact lambda = 1), a larger fixed_point_tol, or "
                    "no_fixed_point='stay' to leave those blocks at their last state "
                    "(fixed_point_found_ lists them)."
                )
            xs = torch.where(found.unsqueeze(-1), xs, x)
        return self._finish(xs.unsqueeze(-2))[..., 0, :]

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        out = out[..., : self.n_observables_]  # drops the affine constant
        raise_if_nonfinite(out)
        return out

    @property
    def representation_(self):
        self._require_fit()
        return self._op

    # ----------------------------------------------------------- spectrum
    @property
    def eigenvalues(self) -> torch.Tensor:
        """Koopman eigenvalues, ``(..., r)`` complex, ``r = min(d, m-1)`` (affine:
        ``min(d, m-2) + 1``, including the constant's exact 1).

        Computed on first access (a plain ``predict`` never pays for it).
        """
        self._require_fit()
        return self._op.eig()[0]

    @property
    def modes(self) -> torch.Tensor:
        """Exact DMD modes ``(..., d, r)`` complex: ``B Y`` with ``K Y = Y Lambda``
        (affine: ``d + 1`` rows, the last one the constant's)."""
        self._require_fit()
        return self._op.modes(self._op.eig()[1])

    @property
    def operator(self) -> torch.Tensor:
        """The dense ``(..., d, d)`` operator (stabilised if asked; affine:
        ``(d+1, d+1)``). Forms ``B W^T`` for low-rank fits: avoid for wide blocks
        (memory ``O(d^2)``)."""
        self._require_fit()
        return self._op.dense()


def _is_float64(X) -> bool:
    return getattr(X, "dtype", None) in (torch.float64, np.float64)


def _check_holdout(m: int, p: FitSettings) -> None:
    if m - p.holdout < 2:
        raise ValueError(
            f"holdout={p.holdout} leaves {m - p.holdout} snapshot(s) to fit; "
            f"need at least 2 (record more than {p.holdout + 1} snapshots)."
        )


def _holdout_residual(X: torch.Tensor, p: FitSettings) -> torch.Tensor:
    """``(...)`` relative error of the forecast of the last ``p.holdout`` snapshots by an
    operator fitted, with the same settings, on the others."""
    h = p.holdout
    sub = KoopmanOperator(**asdict(replace(p, holdout=0))).fit(X[..., :-h])
    pred = sub._op.rollout(sub._last, h)[..., : X.shape[-2], :]  # drops the constant
    truth = X[..., -h:]
    base = X[..., -h - 1 : -h]
    err = torch.linalg.vector_norm(pred - truth, dim=(-2, -1))
    scale = torch.linalg.vector_norm(truth - base, dim=(-2, -1))
    tiny = torch.finfo(torch.float64).tiny
    return err / scale.clamp_min(tiny)
