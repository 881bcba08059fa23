"""The exceptions kooptrain raises beyond the built-in ones."""

from __future__ import annotations

__all__ = ["ModelChangedError", "NoFixedPointError"]


class NoFixedPointError(ArithmeticError):
    """``predict(math.inf)`` found blocks whose linear model has no fixed point."""


class ModelChangedError(RuntimeError):
    """The model's parameters changed (model surgery) after a ``Partition`` was built."""
