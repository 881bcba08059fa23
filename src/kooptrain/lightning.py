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

__all__ = ["KoopmanCallback", "KoopmanMonitorCallback", "LoopCallback"]


class LoopCallback(pl.Callback):
    """What both callbacks share: build the object that rides the loop (``_build``) when
    training starts, with the module and its first optimizer; step it after every optimizer
    step (it follows ``trainer.global_step``, so a batch that only accumulated gradients
    does not count); save its ``state_dict`` in Lightning checkpoints under ``key`` and load
    it back on resume. ``step_count`` is its optimizer steps (0 before training starts)."""

    key = "state"

    def __init__(self):
        self._pending_state = None
        self._global_step = None

    def _build(self, pl_module, optimizer):  # pragma: no cover - each subclass has its own
        raise NotImplementedError

    def _step(self, pl_module, outputs) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def _target(self):
        return getattr(self, self.key)

    @property
    def step_count(self) -> int:
        return 0 if self._target is None else self._target.step_count

    def on_fit_start(self, trainer, pl_module) -> None:
        opt = trainer.optimizers[0] if trainer.optimizers else None
        setattr(self, self.key, self._build(pl_module, opt))
        self._global_step = trainer.global_step
        if self._pending_state is not None:
            self._target.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # a batch that only accumulated gradients did not step the optimizer
        if self._target is not None and trainer.global_step != self._global_step:
            self._global_step = trainer.global_step
            self._step(pl_module, outputs)

    def state_dict(self) -> dict:
        return {} if self._target is None else {self.key: self._target.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.key in state_dict:
            self._pending_state = state_dict[self.key]


class KoopmanCallback(LoopCallback):
    """Verified Koopman jumps in ``Trainer.fit``.

    Parameters
    ----------
    closure : callable ``(pl_module) -> loss``
        Judges candidate weights: the loss on a fixed batch, no backward.
    **accelerator_options : passed to ``KoopmanAccelerator``. With ``bn_loader``, the
        ``LightningModule`` needs a ``forward`` (``update_bn`` calls it on each batch).

    ``callback.accelerator`` is available after ``on_fit_start``; its
    ``state_dict`` is saved in Lightning checkpoints and restored on resume.

    Example
    -------
    >>> cb = KoopmanCallback(lambda m: m.val_loss_on_fixed_batch(), window=20)  # doctest: +SKIP
    >>> pl.Trainer(callbacks=[cb]).fit(model)                                  # doctest: +SKIP
    """

    key = "accelerator"

    def __init__(self, closure: Callable[[pl.LightningModule], object],
                 **accelerator_options):
        super().__init__()
        if not callable(closure):
            raise TypeError(f"closure must be callable (pl_module -> loss), got "
                            f"{type(closure).__name__}.")
        self.closure, self.options = closure, accelerator_options
        self.accelerator: KoopmanAccelerator | None = None

    def _build(self, pl_module, optimizer) -> KoopmanAccelerator:
        if optimizer is None:
            raise RuntimeError("KoopmanCallback needs an optimizer; configure_optimizers "
                               "returned none.")
        return KoopmanAccelerator(pl_module, optimizer, **self.options)

    def _step(self, pl_module, outputs) -> None:
        self.accelerator.step(lambda: self.closure(pl_module))


class KoopmanMonitorCallback(LoopCallback):
    """A ``KoopmanMonitor`` in ``Trainer.fit``: it steps after every optimizer step (it
    follows ``trainer.global_step``, so gradient accumulation is handled) and never
    changes the weights.

    Parameters
    ----------
    path : optional file for the record (JSON), written at the end of training.
    lr_time : bool
        Read the spectra in learning-rate time, from the first optimizer (the monitor's
        ``optimizer=``). Default True: a warm-up or a decay is then not read as growth or
        decay of the dynamics.
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

    key = "monitor"

    def __init__(self, path=None, *, lr_time: bool = True, **monitor_options):
        super().__init__()
        if "optimizer" in monitor_options:
            raise TypeError("KoopmanMonitorCallback takes the trainer's optimizer itself; "
                            "pass lr_time=False to read the spectra in step time instead.")
        self.path, self.lr_time, self.options = path, lr_time, monitor_options
        self.monitor: KoopmanMonitor | None = None

    def _build(self, pl_module, optimizer) -> KoopmanMonitor:
        return KoopmanMonitor(pl_module, optimizer=optimizer if self.lr_time else None,
                              **self.options)

    def _step(self, pl_module, outputs) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.monitor.step(loss=None if loss is None else float(loss.detach()))

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.path is not None and self.monitor is not None and trainer.is_global_zero:
            self.monitor.save(self.path)
