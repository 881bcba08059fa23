"""Per-coordinate trust in a Koopman prediction, after Predictive Differential Training
(PDT): a coordinate takes its predicted value only if the predicted move goes the way its
last move went, and by between 1 and ``tau + 1`` times as far; every other coordinate stays.
Used as ``KoopmanAccelerator(predictor=CoordinateTrust(tau))``, where the accelerator still
judges the whole candidate (and undoes it) like any jump."""

from __future__ import annotations

import torch

from ._validation import check_int
from .koopman import FitSettings, KoopmanOperator

__all__ = ["CoordinateTrust", "trusted_move"]


def trusted_move(last: torch.Tensor, previous: torch.Tensor, predicted: torch.Tensor,
                 tau: int) -> torch.Tensor:
    """``predicted`` where its move from ``last`` has the sign of the last move
    ``last - previous`` and a size in ``[1, tau + 1]`` times it; ``last`` elsewhere (also
    where the last move is zero). All three ``(..., d)``; returns ``(..., d)``."""
    move, step = predicted - last, last - previous
    size, ref = move.abs(), step.abs()
    ok = (torch.sign(move) == torch.sign(step)) & (step != 0) & (size >= ref) \
        & (size <= (tau + 1) * ref)
    return torch.where(ok, predicted, last)


class CoordinateTrust:
    """A predictor for ``KoopmanAccelerator(predictor=...)``: the Koopman prediction
    ``tau`` snapshots ahead (one fit per block group, ``observables`` and ``stabilize`` as
    the accelerator's), kept per coordinate by ``trusted_move``.

    Parameters
    ----------
    tau : int >= 1
        Snapshots ahead (PDT predicts 5 epochs ahead from 5 epoch-end snapshots). A move is
        trusted up to ``tau + 1`` times the last one.
    observables, stabilize : see ``KoopmanOperator``; default the accelerator's
        (``"affine"``, ``"clip"``).

    ``X (B, d, m) -> (B, d)``. Its settings are in its name, so an accelerator checkpoint
    saved with another ``tau`` is refused like any other setting.
    """

    def __init__(self, tau: int = 5, observables: str = "affine",
                 stabilize: str | None = "clip"):
        self.tau = check_int(tau, "tau", 1)
        self.observables, self.stabilize = observables, stabilize
        FitSettings(observables=observables, stabilize=stabilize)  # validates them
        self.__qualname__ = (f"CoordinateTrust(tau={self.tau}, observables={observables!r}, "
                             f"stabilize={stabilize!r})")

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        op = KoopmanOperator(observables=self.observables, stabilize=self.stabilize,
                             no_fixed_point="stay").fit(X)
        predicted = op.predict(self.tau).to(X.dtype)
        return trusted_move(X[..., -1], X[..., -2], predicted, self.tau)

    def __repr__(self) -> str:
        return self.__qualname__
