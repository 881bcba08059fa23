"""The state that a weight change leaves stale, and what the accelerator does with it: the
BatchNorm statistics of every judged point and of the kept weights, and the optimizer's
state after a kept jump (the policies of ``optimizer_state``)."""

from __future__ import annotations

import torch

from ._transaction import MOMENTUM_KEYS, Transaction

__all__ = ["BN_REFRESH", "STATE_POLICIES", "StatePolicy"]

STATE_POLICIES = ("keep", "momentum", "reset")
BN_REFRESH = ("each", "kept")


class StatePolicy:
    """``prepare(tx)`` before the closure judges a point; ``apply(tx)`` once a jump is kept.

    optimizer_state : one of ``STATE_POLICIES``: after a kept jump, keep the optimizer's
        state, zero its first moments (``MOMENTUM_KEYS``), or clear it.
    bn_loader : batches for ``torch.optim.swa_utils.update_bn``, or ``None``.
    bn_refresh : one of ``BN_REFRESH`` (with ``bn_loader``): ``"each"`` judges every point
        with statistics recomputed for it, ``"kept"`` every point with those of before.
    """

    def __init__(self, model, optimizer, optimizer_state: str, bn_loader, bn_refresh: str):
        self.model, self.optimizer = model, optimizer
        self.optimizer_state, self.bn_loader, self.bn_refresh = \
            optimizer_state, bn_loader, bn_refresh

    def prepare(self, tx: Transaction) -> None:
        """The BatchNorm statistics of the weights about to be judged: recomputed from
        ``bn_loader`` (``"each"``), else those of before the attempt. The same for the
        current weights and every candidate, so no side wins on statistics alone."""
        if self.bn_loader is not None and self.bn_refresh == "each":
            self.refresh()
        else:
            tx.restore_buffers()

    def apply(self, tx: Transaction) -> None:
        """After a kept jump: statistics of its own for the new weights (or, without
        ``bn_loader``, those of before: a closure's forward passes leave no trace), then
        ``optimizer_state``; the optimizer state is saved in ``tx`` first, so an exception
        part-way undoes this too."""
        tx.protect_optimizer()
        if self.bn_loader is None:
            tx.restore_buffers()
        else:
            self.refresh()
        if self.optimizer_state == "reset":
            self.optimizer.state.clear()
        elif self.optimizer_state == "momentum":
            for v in self.optimizer.state.values():
                for key in MOMENTUM_KEYS:
                    if isinstance(v.get(key), torch.Tensor):
                        v[key].zero_()

    def refresh(self) -> None:
        if self.bn_loader is not None:
            from torch.optim.swa_utils import update_bn

            update_bn(self.bn_loader, self.model)
