"""The race's task protocol: everything the race needs to know about a model, and nothing
about methods. The five built-in tasks (``builtin``) are written on it, and so is any task
a user brings (``kooptrain race my_task.py``).

A task file defines a factory (``task`` unless named as ``path.py:factory``) that returns a
``Task``::

    import torch
    from kooptrain.experiments import PlainOptimizer, Task

    def task():
        x, y = torch.randn(512, 8), torch.randn(512, 1)
        xt, yt = torch.randn(128, 8), torch.randn(128, 1)

        def model(seed):
            torch.manual_seed(seed)
            return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(),
                                       torch.nn.Linear(32, 1))

        def batches(seed):
            g = torch.Generator().manual_seed(seed)
            while True:
                i = torch.randint(len(x), (64,), generator=g)
                yield x[i], y[i]

        def loss(model, batch):
            return torch.nn.functional.mse_loss(model(batch[0]), batch[1])

        def heldout(model):
            with torch.no_grad():
                return float(torch.nn.functional.mse_loss(model(xt), yt))

        return Task("regression", model=model, batches=batches, loss=loss, heldout=heldout,
                    optimizers={"adam": PlainOptimizer(torch.optim.Adam, lr=1e-3,
                                                       grid=(3e-4, 1e-3, 3e-3))},
                    budget=500)

``Task`` checks its pieces when it is built (``TaskError`` names the piece and the fix);
``check_task`` then runs each piece once on a fresh model, which is what the race does
before it starts.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import numbers
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["PlainOptimizer", "Task", "TaskError", "check_task", "evaluating", "load_task",
           "split_spec", "to_device"]


class TaskError(ValueError):
    """A race task that cannot be raced: the message names the piece and the fix."""


class evaluating:
    """``with evaluating(model):`` eval mode inside, the previous mode after."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self.was = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *args):
        self.model.train(self.was)


def _fail(task: str, piece: str, what: str, fix: str):
    raise TaskError(f"task {task!r}: {piece} {what}; {fix}.")


@dataclass(frozen=True)
class PlainOptimizer:
    """One plain optimizer of a task, as the race builds and tunes it.

    ``make(params, lr=lr)`` returns a ``torch.optim.Optimizer`` over ``params`` (a list of
    the model's trainable parameters): ``torch.optim.Adam`` itself, or a
    ``functools.partial`` with the other settings fixed. ``lr``: the learning rate the race
    uses; ``grid``: the values ``--tune`` tries (empty: untuned). ``schedule(optimizer,
    budget)``: an lr scheduler stepped after every optimizer step, or ``None``.
    ``closure=True``: the optimizer steps as ``step(closure)`` (L-BFGS), on the task's
    ``fixed_batch``. ``sequence=(first, then)``: two of the task's other optimizers, the
    first for half the budget, then the second (Adam, then L-BFGS); ``make`` is then unused.
    """

    make: Callable[..., torch.optim.Optimizer] | None = None
    lr: float = 1e-3
    grid: tuple[float, ...] = ()
    schedule: Callable[[torch.optim.Optimizer, int], Any] | None = None
    closure: bool = False
    sequence: tuple[str, str] | None = None

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(float(v) for v in self.grid))


@dataclass
class Task:
    """A model and its training problem, as the race needs it (module docstring: a whole
    task file).

    Required:

    * ``name``: a short name (report titles, file names);
    * ``model(seed) -> nn.Module``: a fresh model, the same for the same seed;
    * ``batches(seed) -> iterator``: an endless source of training batches, the same
      sequence for the same seed (every method of a seed gets its own, identical one);
    * ``loss(model, batch) -> tensor``: the training loss, a scalar with a graph;
    * ``heldout(model) -> float``: the score the targets are set on, lower is better (run
      in eval mode, not timed);
    * ``optimizers``: ``{name: PlainOptimizer}``, the plain optimizers to race;
    * ``budget``: optimizer steps per run.

    Optional: ``eval_every`` (steps between scores; default ``budget // 50``);
    ``reference`` (the optimizer the targets and the wrapped methods use; default the
    first of ``optimizers``); ``clip`` (gradient-norm clipping); ``judge(model) -> () ->
    float`` (the accelerators' closure; default the training loss on ``fixed_batch``, no
    graph, eval mode); ``train_loss(model) -> float`` (the training score of the curves;
    default the judge's value); ``accuracy(model) -> float``; ``bn_loader() -> iterable``
    (training inputs for ``torch.optim.swa_utils.update_bn``, for models with BatchNorm);
    ``fixed_batch`` (a fixed training batch for the judge and for closure optimizers;
    default the first batch of ``batches(0)``); ``schedulefree`` (Schedule-Free AdamW's
    ``PlainOptimizer``; default ``schedulefree.AdamWScheduleFree`` at the reference's lr
    and grid); ``heldout_name`` (what the held-out score is, for the report); ``info``
    (JSON facts written into the results' settings).
    """

    name: str
    model: Callable[[int], torch.nn.Module]
    batches: Callable[[int], Iterator]
    loss: Callable[[torch.nn.Module, Any], torch.Tensor]
    heldout: Callable[[torch.nn.Module], float]
    optimizers: Mapping[str, PlainOptimizer]
    budget: int
    eval_every: int | None = None
    reference: str | None = None
    clip: float | None = None
    judge: Callable[..., Callable[[], float]] | None = None
    train_loss: Callable[[torch.nn.Module], float] | None = None
    accuracy: Callable[[torch.nn.Module], float] | None = None
    bn_loader: Callable[[], Iterable] | None = None
    fixed_batch: Any = None
    schedulefree: PlainOptimizer | None = None
    heldout_name: str = "held-out score"
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        name = self.name
        if not isinstance(name, str) or not name.strip():
            raise TaskError(f"a task's name must be a non-empty string, got {name!r}; "
                            "fix: Task('my-model', ...).")
        for piece, hint in (("model", "def model(seed): torch.manual_seed(seed); "
                                      "return MyNet()"),
                            ("batches", "def batches(seed): ... yield batch (forever)"),
                            ("loss", "def loss(model, batch): return F.mse_loss(...)"),
                            ("heldout", "def heldout(model): return float(test_loss)")):
            if not callable(getattr(self, piece)):
                _fail(name, piece, f"must be a function, got {getattr(self, piece)!r}",
                      f"fix: {hint}")
        for piece in ("judge", "train_loss", "accuracy", "bn_loader"):
            value = getattr(self, piece)
            if value is not None and not callable(value):
                _fail(name, piece, f"must be a function or None, got {value!r}",
                      "fix: pass a function, or leave it out")
        if not isinstance(self.budget, numbers.Integral) or self.budget < 10:
            _fail(name, "budget", f"must be an int of at least 10 steps, got {self.budget!r}",
                  "fix: budget=1000")
        if self.eval_every is None:
            self.eval_every = max(1, self.budget // 50)
        if not isinstance(self.eval_every, numbers.Integral) or self.eval_every < 1:
            _fail(name, "eval_every", f"must be a positive int, got {self.eval_every!r}",
                  "fix: eval_every=budget // 50")
        if self.clip is not None and not (isinstance(self.clip, numbers.Real)
                                          and self.clip > 0):
            _fail(name, "clip", f"must be a positive number or None, got {self.clip!r}",
                  "fix: clip=1.0")
        self._check_optimizers()

    def _check_optimizers(self) -> None:
        name, opts = self.name, self.optimizers
        example = "fix: optimizers={'adam': PlainOptimizer(torch.optim.Adam, lr=1e-3)}"
        if not isinstance(opts, Mapping) or not opts:
            _fail(name, "optimizers", f"must be a non-empty dict of PlainOptimizer, got "
                  f"{opts!r}", example)
        for key, spec in {**opts, "schedulefree": self.schedulefree}.items():
            if key == "schedulefree" and spec is None:
                continue
            piece = f"optimizers[{key!r}]" if key in opts else "schedulefree"
            if not isinstance(spec, PlainOptimizer):
                _fail(name, piece, f"must be a PlainOptimizer, got {spec!r}", example)
            if not (isinstance(spec.lr, numbers.Real) and spec.lr > 0 and
                    all(v > 0 and math.isfinite(v) for v in spec.grid)):
                _fail(name, piece, f"needs a positive lr and grid, got lr={spec.lr!r}, "
                      f"grid={spec.grid!r}", "fix: PlainOptimizer(..., lr=1e-3, "
                      "grid=(3e-4, 1e-3, 3e-3))")
            if spec.sequence is not None:
                if key == "schedulefree" or len(spec.sequence) != 2 or not all(
                        s in opts and s != key and opts[s].sequence is None
                        for s in spec.sequence):
                    _fail(name, piece, f"has sequence={spec.sequence!r}, which must name two "
                          "other optimizers of the task", "fix: optimizers={'adam': ..., "
                          "'lbfgs': ..., 'adam-lbfgs': PlainOptimizer(sequence=('adam', "
                          "'lbfgs'))}")
            elif not callable(spec.make):
                _fail(name, piece, f"needs make(params, lr=...), got {spec.make!r}",
                      "fix: PlainOptimizer(torch.optim.Adam, lr=1e-3)")
            if spec.schedule is not None and not callable(spec.schedule):
                _fail(name, piece, f"has schedule={spec.schedule!r}, not a function",
                      "fix: schedule=lambda opt, budget: torch.optim.lr_scheduler."
                      "CosineAnnealingLR(opt, budget)")
        if self.reference is None:
            self.reference = next(iter(opts))
        if self.reference not in opts or opts[self.reference].closure or \
                opts[self.reference].sequence is not None:
            steppable = [k for k, s in opts.items() if not s.closure and s.sequence is None]
            _fail(name, "reference", f"is {self.reference!r}, which is not an optimizer of "
                  f"the task that steps on batches", f"fix: reference= one of {steppable}")


def _finite(task: str, piece: str, value, fix: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            _fail(task, piece, f"returned a tensor of shape {tuple(value.shape)}, not one "
                  "number", fix)
        value = value.item()
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        _fail(task, piece, f"returned {type(value).__name__}, not a number", fix)
    if not math.isfinite(value):
        _fail(task, piece, f"returned {value} on a fresh model", "fix: it must be finite "
              "before training starts (check its data and its reduction)")
    return float(value)


def check_task(task: Task, device: torch.device | str = "cpu") -> None:
    """Run every piece of ``task`` once on a fresh model (seed 0), on ``device``, and raise
    ``TaskError`` at the first that cannot be raced: a model without trainable parameters,
    a batch source that is not an endless iterator, a loss that is not a scalar with a
    graph, a score that is not a finite number, an optimizer that does not build."""
    n = task.name
    model = task.model(0)
    if not isinstance(model, torch.nn.Module):
        _fail(n, "model(seed)", f"returned {type(model).__name__}, not an nn.Module",
              "fix: return the network itself")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        _fail(n, "model(seed)", "returned a module without trainable parameters",
              "fix: return the network to train")
    model.to(device)
    source = task.batches(0)
    if not isinstance(source, Iterator):
        _fail(n, "batches(seed)", f"returned {type(source).__name__}, not an iterator",
              "fix: write it as a generator that yields batches forever")
    batch = to_device(next(source), device)
    loss = task.loss(model, batch)
    scalar = "fix: return the mean loss of the batch, e.g. F.cross_entropy(model(x), y)"
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        _fail(n, "loss(model, batch)", f"returned {shape}, not a scalar tensor", scalar)
    if not loss.requires_grad:
        _fail(n, "loss(model, batch)", "returned a tensor without a graph", "fix: compute "
              "it from model(...) outside torch.no_grad(), and do not call .item()")
    _finite(n, "loss(model, batch)", loss.detach(), scalar)
    number = "fix: return float(score)"
    _finite(n, "heldout(model)", task.heldout(model), number)
    if task.accuracy is not None:
        _finite(n, "accuracy(model)", task.accuracy(model), number)
    if task.train_loss is not None:
        _finite(n, "train_loss(model)", task.train_loss(model), number)
    if task.judge is not None:
        closure = task.judge(model)
        if not callable(closure):
            _fail(n, "judge(model)", f"returned {closure!r}, not a function",
                  "fix: return a closure: lambda: float(loss_on_a_fixed_batch)")
        _finite(n, "judge(model)()", closure(), number)
    if task.bn_loader is not None:
        loader = task.bn_loader()
        if not isinstance(loader, Iterable) or next(iter(loader), None) is None:
            _fail(n, "bn_loader()", "returned no batches", "fix: return a list of input "
                  "batches, e.g. [x_train[:256], x_train[256:512]]")
    for key, spec in {**task.optimizers, "schedulefree": task.schedulefree}.items():
        if spec is None or spec.sequence is not None:
            continue
        try:
            opt = spec.make(params, lr=spec.lr)
        except Exception as err:  # the user's factory: report which one and why
            _fail(n, f"optimizers[{key!r}].make", f"raised {type(err).__name__}: {err}",
                  "fix: make(params, lr=...) must build an optimizer over params")
        if not isinstance(opt, torch.optim.Optimizer):
            _fail(n, f"optimizers[{key!r}].make", f"returned {type(opt).__name__}",
                  "fix: return a torch.optim.Optimizer")
        if spec.schedule is not None:
            spec.schedule(opt, task.budget)


def to_device(batch, device):
    """``batch`` (a tensor, or tuples, lists and dicts of them) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def split_spec(spec: str) -> tuple[str, str]:
    """``"path.py[:factory]"`` -> ``(path, factory)``, the factory ``task`` by default (a
    colon inside the path, as in ``C:\\...``, stays in the path)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".py") and tail.isidentifier():
        return head, tail
    return spec, "task"


def load_task(spec: str) -> Task:
    """The ``Task`` of ``"path/to/file.py[:factory]"``: the file is imported as a module and
    ``factory`` (default ``task``) called with no arguments. Every way this can fail is a
    ``TaskError`` that says what to write."""
    path, factory = split_spec(spec)
    file = Path(path)
    if file.suffix != ".py" or not file.is_file():
        raise TaskError(f"{path!r} is not a Python file; give the task as "
                        "path/to/task.py or path/to/task.py:factory.")
    name = f"kooptrain_task_{abs(hash(str(file.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise TaskError(f"{path}: importing it raised {type(err).__name__}: {err}") from err
    make = getattr(module, factory, None)
    if not callable(make):
        found = [k for k, v in vars(module).items() if inspect.isfunction(v)
                 and v.__module__ == name]
        raise TaskError(f"{path} defines no function {factory!r}; define def "
                        f"{factory}(): return Task(...), or name one of {found} as "
                        f"{path}:NAME.")
    task = make()
    if not isinstance(task, Task):
        raise TaskError(f"{path}:{factory}() returned {type(task).__name__}, not a Task; "
                        "fix: return kooptrain.experiments.Task(...).")
    return task
