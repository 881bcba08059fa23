"""The exceptions kooptrain raises beyond the built-in ones."""

from __future__ import annotations

__all__ = ["ModelChangedError", "NoFixedPointError", "RemoteRankError"]


class NoFixedPointError(ArithmeticError):
    """``predict(math.inf)`` found blocks whose linear model has no fixed point."""


class ModelChangedError(RuntimeError):
    """The model's parameters changed (model surgery) after a ``Partition`` was built."""


class RemoteRankError(RuntimeError):
    """Under ``torch.distributed``: another rank failed inside an attempt (its closure
    raised, or it was interrupted). Raised on the ranks whose own work went well; the
    failing rank raises its own exception. Every rank has rolled the attempt back."""
