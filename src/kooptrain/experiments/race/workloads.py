"""A ``Task`` as the race's methods use it (``Workload``): optimizers built by name, batch
sources per seed, scores in eval mode, the accelerators' judge, all moved to the race's
device. Built from a user's task or a built-in one (``builtin``); the only way in is the
task protocol (``task.py``)."""

from __future__ import annotations

import copy

import torch

from .builtin import (
    BEST,
    BUDGETS,
    EVAL_EVERY,
    LR_GRID,
    TASKS,
    TUNED,
    TUNED_EXTRAPOLATION,
    builtin_task,
)
from .task import Task, check_task, evaluating, to_device

__all__ = ["BEST", "BUDGETS", "EVAL_EVERY", "LR_GRID", "TASKS", "TUNED", "TUNED_EXTRAPOLATION",
           "Workload", "evaluating", "workload"]


class Workload:
    """The race's view of ``task`` at learning rates ``lr`` (default the task's) and
    ``budget`` steps (default the task's), on ``device``.

    Attributes: ``task`` (its name), ``spec`` (the ``Task``), ``budget``, ``eval_every``,
    ``plain`` (the plain optimizers' names), ``best`` (the reference), ``lr`` (every
    optimizer's lr, ``schedulefree`` included), ``clip``, ``heldout_name``, ``info``;
    ``judge_size`` and ``screen_size`` (the accelerators' judge and screen batch sizes:
    ``None``/``0`` is the task's own judge, no screen) and ``bn_batches`` (how many of the
    task's ``bn_loader`` batches a refresh uses; 0 turns refreshes off), which the design
    benchmarks vary."""

    def __init__(self, task: Task, lr: dict | None = None, budget: int | None = None,
                 device: torch.device | str = "cpu"):
        self.spec, self.task, self.device = task, task.name, torch.device(device)
        self.budget = int(budget or task.budget)
        self.eval_every = task.eval_every
        self.optimizers = dict(task.optimizers)
        self.schedulefree = task.schedulefree
        self.plain = tuple(self.optimizers)
        self.best = task.reference
        self.lr = {k: s.lr for k, s in self.optimizers.items()}
        self.lr["schedulefree"] = self.schedulefree.lr if self.schedulefree else \
            self.optimizers[self.best].lr
        self.lr.update(lr or {})
        self.grid = {k: s.grid for k, s in self.optimizers.items() if s.grid}
        sf_grid = self.schedulefree.grid if self.schedulefree else \
            self.optimizers[self.best].grid
        if sf_grid:
            self.grid["schedulefree"] = sf_grid
        self.clip, self.heldout_name, self.info = task.clip, task.heldout_name, dict(task.info)
        self.judge_size: int | None = None
        self.screen_size = 0
        self.bn_batches = len(list(task.bn_loader())) if task.bn_loader else 0
        fixed = task.fixed_batch
        self.fixed_batch = to_device(next(task.batches(0)) if fixed is None else fixed,
                                     self.device)

    def but(self, **changes) -> Workload:
        """A copy with some attributes changed (``w.but(judge_size=128)``); the task and
        its data are shared."""
        unknown = sorted(set(changes) - set(vars(self)))
        if unknown:
            raise AttributeError(f"a Workload has no attribute(s) {unknown}.")
        other = copy.copy(self)
        vars(other).update(changes)
        return other

    # ----------------------------------------------------------- the model
    def make_model(self, seed: int) -> torch.nn.Module:
        """The task's model for ``seed``, on the race's device."""
        return self.spec.model(seed).to(self.device)

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        return self.spec.loss(model, batch)

    def closure_optimizer(self, name: str) -> bool:
        """Whether ``name`` steps as ``step(closure)`` on the fixed batch (L-BFGS)."""
        spec = self.optimizers.get(name)  # Schedule-Free is a method's, not a plain one
        return spec is not None and spec.closure

    def sequence(self, name: str) -> tuple[str, str] | None:
        """``(first, then)`` of a sequence optimizer (Adam, then L-BFGS), else ``None``."""
        spec = self.optimizers.get(name)
        return None if spec is None else spec.sequence

    # ----------------------------------------------------------- optimizers
    def make_optimizer(self, name: str, model: torch.nn.Module, lr: float | None = None):
        """``(optimizer, scheduler or None)`` for a plain optimizer ``name``."""
        spec = self.optimizers[name]
        opt = spec.make([p for p in model.parameters() if p.requires_grad],
                        lr=self.lr[name] if lr is None else lr)
        return opt, spec.schedule(opt, self.budget) if spec.schedule else None

    def make_schedulefree(self, model: torch.nn.Module):
        """Schedule-Free AdamW over ``model`` at ``lr["schedulefree"]``, in train mode."""
        if self.schedulefree is not None:
            opt = self.schedulefree.make(list(model.parameters()), lr=self.lr["schedulefree"])
        else:
            from ..harness.optimizers import make_optimizer

            opt = make_optimizer("schedulefree", model.parameters(), lr=self.lr["schedulefree"])
        opt.train()
        return opt

    # ---------------------------------------------------------------- data
    def sampler(self, seed: int):
        """A batch source of its own (``next()`` gives the next batch), the same sequence
        for every method of a seed, on the race's device."""
        source = self.spec.batches(seed)
        if self.device.type == "cpu":
            return source
        return (to_device(b, self.device) for b in source)

    def bn_loader(self):
        """The first ``bn_batches`` of the task's BatchNorm batches, or ``None``."""
        if not self.bn_batches:
            return None
        return [to_device(b, self.device) for b in list(self.spec.bn_loader())[
            : self.bn_batches]]

    # ------------------------------------------------------------- scores
    def heldout(self, model) -> dict:
        """``{"heldout": float, ...}``: the score targets are set on (lower is better),
        plus ``accuracy`` where the task has one; in eval mode."""
        with evaluating(model):
            out = {"heldout": float(self.spec.heldout(model))}
            if self.spec.accuracy is not None:
                out["accuracy"] = float(self.spec.accuracy(model))
        return out

    def train_score(self, model) -> float:
        """The task's training score (``train_loss``, else its judge's value), in eval
        mode."""
        with evaluating(model):
            if self.spec.train_loss is not None:
                return float(self.spec.train_loss(model))
            return float(self.judge(model)())

    def judge(self, model, size: int | None = None):
        """The accelerators' closure: the task's ``judge`` (given ``size``, or
        ``judge_size``, where one is set), else the training loss on the fixed batch
        without a graph, in eval mode (so BatchNorm's running statistics, refreshed per
        candidate by ``bn_loader``, are what is judged)."""
        size = size or self.judge_size
        if self.spec.judge is not None:
            return self.spec.judge(model) if size is None else self.spec.judge(model, size)
        batch = self.fixed_batch if size is None else _first(self.fixed_batch, size)

        def closure():
            with torch.no_grad(), evaluating(model):
                return float(self.spec.loss(model, batch))
        return closure


def _first(batch, size: int):
    """The first ``size`` rows of every tensor of a batch."""
    if isinstance(batch, torch.Tensor):
        return batch[:size]
    if isinstance(batch, tuple | list):
        return type(batch)(_first(b, size) for b in batch)
    if isinstance(batch, dict):
        return {k: _first(v, size) for k, v in batch.items()}
    return batch


def workload(task: str | Task, lr: dict | None = None, budget: int | None = None,
             device: torch.device | str = "cpu", check: bool = False) -> Workload:
    """The ``Workload`` of ``task`` (a ``Task``, or the name of a built-in one) at its own
    learning rates (or ``lr``) and budget (or ``budget`` steps), on ``device``. ``check``:
    first run every piece once (``check_task``)."""
    spec = builtin_task(task, budget) if isinstance(task, str) else task
    if not isinstance(spec, Task):
        raise TypeError(f"a race task is a Task or a built-in task's name, got "
                        f"{type(task).__name__}.")
    if check:
        check_task(spec, device)
    return Workload(spec, lr=lr, budget=budget, device=device)
