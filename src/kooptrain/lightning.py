"""``KoopmanCallback`` (the accelerator) and ``KoopmanMonitorCallback`` (the diagnostics)
for PyTorch Lightning (optional extra).

    pip install "kooptrain[lightning]"

The callback builds a ``KoopmanAccelerator`` around the module and its first
optimizer when training starts, and calls ``step(closure)`` after every
optimizer step: with ``accumulate_grad_batches=k``, after every k-th batch, when
the weights change (it follows ``trainer.global_step``). The closure is yours: a
function of the ``LightningModule`` that returns the loss on a fixed evaluation batch
without calling backward.
"""

from __future__ import annotations

from collections.abc import Callable

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("kooptrain.lightning needs Lightning: pip install 'kooptrain[lightning]'"
                      ) from e

from .accelerator import KoopmanAccelerator
from .diagnostics.monitor import KoopmanMonitor

__all__ = ["KoopmanCallback", "KoopmanMonitorCallback"]


class KoopmanCallback(pl.Callback):
    """Verified Koopman jumps in ``Trainer.fit``.

    Parameters
    ----------
    closure : callable ``(pl_module) -> loss``
        Judges candidate weights: the loss on a fixed batch, no backward.
    **accelerator_options : passed to ``KoopmanAccelerator``.

    ``callback.accelerator`` is available after ``on_fit_start``; its
    ``state_dict`` is saved in Lightning checkpoints and restored on resume.

    Example
    -------
    >>> cb = KoopmanCallback(lambda m: m.val_loss_on_fixed_batch(), window=20)  # doctest: +SKIP
    >>> pl.Trainer(callbacks=[cb]).fit(model)                                  # doctest: +SKIP
    """

    def __init__(self, closure: Callable[[pl.LightningModule], object],
                 **accelerator_options):
        if not callable(closure):
            raise TypeError(f"closure must be callable (pl_module -> loss), got "
                            f"{type(closure).__name__}.")
        self.closure, self.options = closure, accelerator_options
        self.accelerator: KoopmanAccelerator | None = None
        self._pending_state = None
        self._global_step = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.optimizers:
            raise RuntimeError("KoopmanCallback needs an optimizer; configure_optimizers "
                               "returned none.")
        opt = trainer.optimizers[0]
        self.accelerator = KoopmanAccelerator(pl_module, opt, **self.options)
        self._global_step = trainer.global_step
        if self._pending_state is not None:
            self.accelerator.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # a batch that only accumulated gradients did not step the optimizer
        if self.accelerator is not None and trainer.global_step != self._global_step:
            self._global_step = trainer.global_step
            self.accelerator.step(lambda: self.closure(pl_module))

    def state_dict(self) -> dict:
        return {} if self.accelerator is None else {"accelerator":
                                                     self.accelerator.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "accelerator" in state_dict:
            self._pending_state = state_dict["accelerator"]


class KoopmanMonitorCallback(pl.Callback):
    """A ``KoopmanMonitor`` in ``Trainer.fit``: it steps after every optimizer step (it
    follows ``trainer.global_step``, so gradient accumulation is handled) and never
    changes the weights.

    Parameters
    ----------
    path : optional file for the record (JSON), written at the end of training.
    **monitor_options : passed to ``KoopmanMonitor``.

    The training loss is stored with each fit when ``training_step`` returns it (a tensor
    or a dict with ``"loss"``). ``callback.monitor`` is available after ``on_fit_start``;
    its state is saved in Lightning checkpoints and restored on resume. Under DDP every rank
    computes the same record (the replicas' weights are identical); only rank 0 writes it.

    Example
    -------
    >>> cb = KoopmanMonitorCallback(path="koopman.json", every=10)  # doctest: +SKIP
    >>> pl.Trainer(callbacks=[cb]).fit(model)                       # doctest: +SKIP
    >>> cb.monitor.warning, cb.monitor.converged_at                 # doctest: +SKIP
    """

    def __init__(self, path=None, **monitor_options):
        self.path, self.options = path, monitor_options
        self.monitor: KoopmanMonitor | None = None
        self._pending_state = None
        self._global_step = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.monitor = KoopmanMonitor(pl_module, **self.options)
        self._global_step = trainer.global_step
        if self._pending_state is not None:
            self.monitor.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is not None and trainer.global_step != self._global_step:
            self._global_step = trainer.global_step
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            self.monitor.step(loss=None if loss is None else float(loss.detach()))

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.path is not None and self.monitor is not None and trainer.is_global_zero:
            self.monitor.save(self.path)

    def state_dict(self) -> dict:
        return {} if self.monitor is None else {"monitor": self.monitor.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "monitor" in state_dict:
            self._pending_state = state_dict["monitor"]
