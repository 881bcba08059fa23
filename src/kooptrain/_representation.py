"""How a fitted operator ``U`` is stored: the dense ``d x d`` matrix, the exact low-rank
form ``U = B W^T``, or either of them fitted on the coordinates of a tall window in an
orthonormal basis of it, ``U = Q U_r Q^T``. All offer the same operations, so the estimator
never asks which one it holds.

Powers run on the small matrix ``K``: ``K = U`` for the dense form, ``K = W^T B``
``(r x r)`` for the low-rank one, where ``U^T x = B K^(T-1) W^T x`` for ``T >= 1`` (the
same operator, not the projected-DMD approximation). Shapes: ``x`` is ``(..., d)``.
"""

from __future__ import annotations

import torch

from ._linalg import apply_powers, augment_rows, stabilize_spectrum


class _Representation:
    """Shared by both forms: the spectrum of ``K`` (computed once) and stabilisation."""

    K: torch.Tensor
    _eig: tuple[torch.Tensor, torch.Tensor] | None

    def eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lambda (..., r), Y (..., r, r))`` of ``K``, complex; cached."""
        if self._eig is None:
            self._eig = torch.linalg.eig(self.K)
        return self._eig

    def stabilized(self, how: str, reuse: bool = False):
        """The same form with every ``|lambda| > 1`` clipped onto the unit circle or
        dropped (``how``); its spectrum is known and kept. ``reuse``: this form is not used
        again, so its factors may take the change in place (a whole network's are each as
        large as its window)."""
        lam, Y = self.eig()
        K_new, lam = stabilize_spectrum(self.K, lam, Y, how)
        return self._with_reduced(K_new, (lam, Y), reuse)


class DenseOperator(_Representation):
    """``U = K``, ``(..., d, d)``."""

    def __init__(self, K: torch.Tensor, eig=None):
        self.K, self._eig = K, eig

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``U x``, ``(..., d)``."""
        return (self.K @ x.unsqueeze(-1)).squeeze(-1)

    def powers(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """``U^s x`` for each positive ``s`` in ``steps``: ``(..., k, d)``."""
        return apply_powers(self.K, x, steps)

    def rollout(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """``[U x, U^2 x, ..., U^T x]``, ``(..., d, T)``, ``T >= 1``."""
        z, cols = x.unsqueeze(-1), []
        for _ in range(T):
            z = self.K @ z
            cols.append(z)
        return torch.cat(cols, -1)

    def limit(self, P: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x`` carried through the projector ``P`` (``(..., r, r)``, on ``K``'s space)."""
        return (P @ x.unsqueeze(-1)).squeeze(-1)

    def modes(self, Y: torch.Tensor) -> torch.Tensor:
        """Eigenvectors of ``K`` as modes of ``U``, ``(..., d, r)``."""
        return Y

    def dense(self) -> torch.Tensor:
        return self.K

    def affine(self, c: torch.Tensor) -> DenseOperator:
        """``[[U, c], [0, 1]]``: the map ``x -> U x + c`` on ``(x, 1)``."""
        return DenseOperator(augment_rows(self.K, c))

    def _with_reduced(self, K: torch.Tensor, eig, reuse: bool = False) -> DenseOperator:
        return DenseOperator(K, eig)

    def describe(self) -> str:
        return "dense"


class LowRankOperator(_Representation):
    """``U = B W^T`` with ``B, W`` ``(..., d, r)``; ``K = W^T B`` unless given."""

    def __init__(self, B: torch.Tensor, W: torch.Tensor, K: torch.Tensor | None = None,
                 eig=None):
        self.B, self.W = B, W
        self.K = W.mT @ B if K is None else K
        self._eig = eig

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (self.B @ (self.W.mT @ x.unsqueeze(-1))).squeeze(-1)

    def powers(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        z = (self.W.mT @ x.unsqueeze(-1)).squeeze(-1)
        return apply_powers(self.K, z, steps - 1) @ self.B.mT

    def rollout(self, x: torch.Tensor, T: int) -> torch.Tensor:
        z = self.W.mT @ x.unsqueeze(-1)
        cols = [z]
        for _ in range(T - 1):
            z = self.K @ z
            cols.append(z)
        return self.B @ torch.cat(cols, -1)

    def limit(self, P: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (self.B @ (P @ (self.W.mT @ x.unsqueeze(-1)))).squeeze(-1)

    def modes(self, Y: torch.Tensor) -> torch.Tensor:
        return self.B.to(Y.dtype) @ Y

    def dense(self) -> torch.Tensor:
        return self.B @ self.W.mT

    def affine(self, c: torch.Tensor) -> LowRankOperator:
        return LowRankOperator(augment_rows(self.B, c), augment_rows(self.W, torch.zeros_like(c)))

    def _with_reduced(self, K: torch.Tensor, eig, reuse: bool = False) -> LowRankOperator:
        # U' = U + W (K' - K) W^T changes U only inside range(W): W^T B' = K'
        dK = K - self.K
        if not (reuse and self.B.is_contiguous()):
            return LowRankOperator(self.B + self.W @ dK, self.W, K, eig)
        flat = lambda t: t.reshape(-1, *t.shape[-2:])  # noqa: E731 - views
        flat(self.B).baddbmm_(flat(self.W), flat(dK))  # no temporary as large as B
        return LowRankOperator(self.B, self.W, K, eig)

    def describe(self) -> str:
        return f"low-rank r={self.K.shape[-1]}"


class LiftedOperator:
    """``U = Q U_r Q^T``: the operator ``inner`` (either form above), fitted on the
    coordinates ``R`` of a tall window ``X = Q R`` in its orthonormal basis ``Q``
    ``(..., d, k)``. Exact: ``X1 X0^+ = Q (R1 R0^+) Q^T``, and the spectrum, the modes'
    coefficients and every residual are those of ``inner``. The window's only large array
    is ``Q``; ``extra`` trailing coordinates (the affine constant) are not lifted.

    It is built already stabilised and affine (``inner`` is), so it has no ``affine``."""

    def __init__(self, Q: torch.Tensor, inner, extra: int = 0):
        self.Q, self.inner, self.extra = Q, inner, extra

    @property
    def K(self) -> torch.Tensor:
        return self.inner.K

    def eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.eig()

    def stabilized(self, how: str, reuse: bool = False) -> LiftedOperator:
        return LiftedOperator(self.Q, self.inner.stabilized(how, reuse), self.extra)

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d + extra)`` -> ``(..., k + extra)``: ``Q^T x``."""
        d = self.Q.shape[-2]
        z = (self.Q.mT @ x[..., :d].unsqueeze(-1)).squeeze(-1)
        return torch.cat([z, x[..., d:]], -1) if self.extra else z

    def _up(self, y: torch.Tensor) -> torch.Tensor:
        """``(..., j, k + extra)`` -> ``(..., j, d + extra)``: ``Q`` on each row."""
        k = self.Q.shape[-1]
        out = y[..., :k] @ self.Q.mT
        return torch.cat([out, y[..., k:]], -1) if self.extra else out

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._up(self.inner.apply(self._down(x)).unsqueeze(-2)).squeeze(-2)

    def powers(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return self._up(self.inner.powers(self._down(x), steps))

    def rollout(self, x: torch.Tensor, T: int) -> torch.Tensor:
        return self._up(self.inner.rollout(self._down(x), T).mT).mT

    def limit(self, P: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._up(self.inner.limit(P, self._down(x)).unsqueeze(-2)).squeeze(-2)

    def modes(self, Y: torch.Tensor) -> torch.Tensor:
        M = self.inner.modes(Y).mT  # (..., r, k + extra) complex; Q is real
        return torch.complex(self._up(M.real.contiguous()),
                             self._up(M.imag.contiguous())).mT

    def dense(self) -> torch.Tensor:
        return self._up(self._up(self.inner.dense()).mT).mT

    def describe(self) -> str:
        return f"{self.inner.describe()} in a {self.Q.shape[-1]}-vector basis of the window"
