"""An all-or-nothing change to a model's parameters, its buffers and an optimizer's state.

Used by the accelerator to try a jump: everything it changes is saved first, and either
``commit()`` keeps the change or leaving the ``with`` block without it (a rejection, an
exception, Ctrl-C) puts everything back bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from .partition import Partition

# optimizer state entries that are a first moment / momentum: extrapolating the
# weights leaves them pointing along the old path (Leap+Verify: they explode the loss)
MOMENTUM_KEYS = ("exp_avg", "momentum_buffer")


class Transaction:
    """Snapshot of ``partition``'s parameters and the model's buffers (BatchNorm's running
    statistics) on entry; of the optimizer state once ``protect_optimizer()`` is called
    (before changing it).

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1)
    >>> before = model.weight.detach().clone()
    >>> with Transaction(Partition(model), model, torch.optim.SGD(model.parameters())) as tx:
    ...     tx.assign({"weight": torch.zeros(1, 2), "bias": torch.zeros(1)})
    >>> bool(torch.equal(model.weight, before))           # not committed: rolled back
    True
    """

    def __init__(self, partition: Partition, model: nn.Module, optimizer):
        self.partition, self.model, self.optimizer = partition, model, optimizer
        self.committed = False
        self._params = None
        self._state = self._momenta = None
        self._buffers = self._bn_momenta = None

    def __enter__(self) -> Transaction:
        self._params = [p.detach().clone() for p in self.partition.params]
        self._buffers = [b.detach().clone() for b in self.model.buffers()]
        self._bn_momenta = [(m, m.momentum) for m in self.model.modules()
                            if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return self

    def assign(self, values: dict[str, torch.Tensor]) -> None:
        """Write candidate parameter values (``{name: tensor}``)."""
        self.partition.assign(values)

    def protect_optimizer(self) -> None:
        """Save the optimizer's state (its per-parameter dicts and their first moments)."""
        self._state = {k: dict(v) for k, v in self.optimizer.state.items()}
        self._momenta = {(k, key): v[key].clone() for k, v in self._state.items()
                         for key in MOMENTUM_KEYS if isinstance(v.get(key), torch.Tensor)}

    def restore_buffers(self) -> None:
        """Put the buffers and the BatchNorm momenta (``update_bn`` sets them to ``None``
        while it runs) back as they were on entry."""
        with torch.no_grad():
            for b, v in zip(self.model.buffers(), self._buffers, strict=True):
                b.copy_(v)
        for m, momentum in self._bn_momenta:
            m.momentum = momentum

    def restore_parameters(self) -> None:
        """Put the parameters and buffers back as they were on entry (the transaction
        stays open: candidates can still be assigned)."""
        self.restore_buffers()
        with torch.no_grad():
            for p, s in zip(self.partition.params, self._params, strict=True):
                p.copy_(s)
        self.partition.refresh()

    def commit(self) -> None:
        self.committed = True

    def rollback(self) -> None:
        """Put back everything saved: buffers, optimizer state, then the parameters."""
        with torch.no_grad():
            if self._state is not None:
                for (k, key), v in self._momenta.items():
                    self._state[k][key].copy_(v)
                self.optimizer.state.clear()
                self.optimizer.state.update(self._state)
        self.restore_parameters()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None or not self.committed:
            self.rollback()
        return False  # an exception propagates
