"""The race's workloads: for each task, the problem, its budget, the plain optimizers (with
their schedules and clipping), the held-out score, the training score and the accelerator's
judge. Everything a method needs to know about a task, and nothing about methods.

Tasks:

* ``hnn``: the paper's Hamiltonian network (152 weights), full batch. Held out: the mean
  squared residual at 200 fixed collocation points that training never draws.
* ``mnist1d``: the paper's MLP on MNIST-1D, minibatches of 64. Held out: test cross-entropy.
* ``pinn``: a physics-informed tanh MLP for 1-D viscous Burgers, full batch with second
  derivatives through autograd. Held out: the relative L2 error against scipy's reference.
* ``mnist1d-cnn``: a residual 1-D CNN with BatchNorm (~116k weights) on MNIST-1D.
* ``lm``: a byte-level decoder-only transformer (4 pre-norm blocks, causal attention) on the
  Python standard library's sources, AdamW with weight decay, linear warm-up then cosine
  decay, gradient clipping. Held out: validation loss in nats per token, by document.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..harness.optimizers import make_optimizer as _make_optimizer

__all__ = ["BEST", "BUDGETS", "EVAL_EVERY", "LR_GRID", "TASKS", "TUNED", "TUNED_EXTRAPOLATION",
           "Workload", "evaluating", "workload"]

TASKS = ("hnn", "mnist1d", "pinn", "mnist1d-cnn", "lm")
# budgets in optimizer steps, and the evaluation period of the curves
BUDGETS = {"hnn": 3000, "mnist1d": 1900, "pinn": 5000, "mnist1d-cnn": 1500, "lm": 3000}
EVAL_EVERY = {"hnn": 20, "mnist1d": 10, "pinn": 50, "mnist1d-cnn": 25, "lm": 100}


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


@dataclass
class Workload:
    """One task of the race. ``plain``: the plain optimizers; ``best``: the reference one
    (chosen on the tuning seed before the race; the targets are its held-out losses and the
    baselines wrap it); ``lr``: tuned learning rates (``schedulefree`` included)."""

    task: str
    problem: object
    budget: int
    eval_every: int
    plain: tuple[str, ...]
    best: str
    lr: dict[str, float]
    heldout_name: str
    clip: float | None = None
    warmup: float = 0.0  # fraction of the budget; then cosine decay to 10% (lm only)
    judge_size: int = 1024
    screen_size: int = 0  # > 0: the accelerator screens candidates on this many examples
    bn_batches: int = 0
    extras: dict = field(default_factory=dict)

    # ----------------------------------------------------------- optimizers
    def make_optimizer(self, name: str, model: torch.nn.Module, lr: float | None = None):
        """``(optimizer, scheduler or None)`` for a plain optimizer ``name``."""
        lr = self.lr[name] if lr is None else lr
        params = [p for p in model.parameters() if p.requires_grad]
        if name == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
        elif name == "lbfgs":
            # one iteration per step; max_eval must be given: torch's default,
            # max_iter * 5 // 4 = 1, leaves the line search no evaluation, and once past
            # its first iteration the optimizer stops moving
            opt = torch.optim.LBFGS(params, lr=lr, max_iter=1, max_eval=25, history_size=50,
                                    line_search_fn="strong_wolfe")
        else:
            opt = _make_optimizer(name, params, lr=lr)
        return opt, self.schedule(opt)

    def schedule(self, opt):
        """Linear warm-up over ``warmup * budget`` steps, then cosine decay to 10% of the
        lr at the budget; ``None`` for the tasks that train at a constant lr."""
        if not self.warmup:
            return None
        warm = max(1, round(self.warmup * self.budget))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            frac = min(1.0, (step - warm) / max(1, self.budget - warm))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    # ---------------------------------------------------------------- data
    def sampler(self, seed: int):
        """A batch source of its own (``next()`` gives the next batch), the same sequence
        for every method of a seed."""
        gen = torch.Generator().manual_seed(10_000 + seed)
        p = self.problem
        if hasattr(p, "steps_per_epoch"):  # minibatch classifiers: reshuffled every epoch
            def batches():
                n = len(p.y_train)
                while True:
                    perm = torch.randperm(n, generator=gen)
                    for i in range(0, n, p.batch_size):
                        idx = perm[i : i + p.batch_size]
                        yield p.x_train[idx], p.y_train[idx]
        else:
            def batches():
                while True:
                    yield p.batch(gen)
        return batches()

    def bn_loader(self):
        """``bn_batches`` fixed training inputs for ``update_bn``, or ``None``."""
        if not self.bn_batches:
            return None
        p = self.problem
        size = p.batch_size * 4
        return [p.x_train[i * size : (i + 1) * size] for i in range(self.bn_batches)]

    # ------------------------------------------------------------- scores
    def heldout(self, model) -> dict:
        """``{"heldout": float, ...}``: the score targets are set on (lower is better),
        plus ``accuracy`` for the classifiers."""
        p = self.problem
        with evaluating(model):
            if self.task == "pinn":
                return {"heldout": p.metrics(model)["relative_l2"]}
            if self.task == "hnn":
                return {"heldout": _hnn_residual(p, model, p.heldout_points)}
            if self.task == "lm":
                return {"heldout": p.eval_loss(model)}
            with torch.no_grad():
                logits = model(p.x_test)
            return {"heldout": float(torch.nn.functional.cross_entropy(logits, p.y_test)),
                    "accuracy": float((logits.argmax(1) == p.y_test).float().mean())}

    def train_score(self, model) -> float:
        """The training loss on a fixed training set: HNN's training grid, the PINN's fixed
        batch, as many training windows as validation ones (lm), and the first
        ``len(test split)`` training samples (classifiers)."""
        p = self.problem
        with evaluating(model):
            if self.task == "lm":
                return p.train_loss(model)
            if self.task == "pinn":
                return float(p.loss(model, self.extras["train_batch"]).detach())
            if self.task == "hnn":
                return p.eval_loss(model)
            n = len(p.y_test)
            with torch.no_grad():
                return float(torch.nn.functional.cross_entropy(model(p.x_train[:n]),
                                                               p.y_train[:n]))

    def judge(self, model, size: int | None = None):
        """The accelerator's closure: the training loss on a fixed batch (the first
        ``size`` examples, default ``judge_size``), no backward (BatchNorm in eval mode, so
        its running statistics, refreshed per candidate by ``bn_loader``, are what is
        judged). HNN and the PINN judge on their fixed collocation points (or the first
        ``size`` of them)."""
        p, n = self.problem, size or self.judge_size
        if self.task == "hnn":
            if size is not None:
                raise ValueError("the hnn judge has no size: it is the solver's own loss.")
            return lambda: p.eval_loss(model)
        if self.task == "pinn":
            fixed = self.extras["train_batch"]
            if size is not None:
                fixed = _first(fixed, size)
            return lambda: float(p.loss(model, fixed).detach())
        if self.task == "lm":
            x, y = p.train_eval_batch
            fixed = (x[:n], y[:n])

            def lm_closure():
                with torch.no_grad():
                    return float(p.loss(model, fixed))
            return lm_closure
        x, y = p.x_train[:n], p.y_train[:n]

        def closure():
            with torch.no_grad(), evaluating(model):
                return float(torch.nn.functional.cross_entropy(model(x), y))
        return closure


def _first(batch: dict, size: int) -> dict:
    """The PINN's batch cut to ``size`` interior points, and its initial and boundary
    points in the same proportion."""
    frac = min(1.0, size / len(batch["interior"]))
    return {k: v[: max(1, round(frac * len(v)))] for k, v in batch.items()}


def _hnn_residual(p, model, t) -> float:
    x, q, dx, dq = p.solution(model, t)
    return float(((dx - q) ** 2 + (dq + x + p.lam * x**3) ** 2).mean().detach())


# The committed choice of `kooptrain race TASK --tune` on the tuning seed (seed 100): lowest
# final held-out loss (results/race/TASK/tuning-TASK.json, 2026-12-01). L-BFGS is untuned
# (lr 1 with a strong-Wolfe line search).
TUNED: dict[str, dict[str, float]] = {
    "hnn": {"adam": 0.01, "adadelta": 0.3, "adagrad": 0.1, "sgd": 0.003, "schedulefree": 0.03},
    "mnist1d": {"adam": 1e-3, "adadelta": 3.0, "adagrad": 0.03, "sgd": 0.03,
                "schedulefree": 3e-3},
    "pinn": {"adam": 1e-3, "lbfgs": 1.0, "adam-lbfgs": 1.0, "schedulefree": 3e-3},
    "mnist1d-cnn": {"adam": 0.01, "sgd": 0.01, "schedulefree": 3e-3},
    "lm": {"adamw": 0.01, "schedulefree": 0.01},
}
# RNA / Anderson: the window (k = window - 1 differences) and the regulariser lam
TUNED_EXTRAPOLATION: dict[str, dict] = {
    "hnn": {"window": 5, "lam": 1e-2}, "mnist1d": {"window": 10, "lam": 1e-8},
    "pinn": {"window": 10, "lam": 1e-2}, "mnist1d-cnn": {"window": 10, "lam": 1e-2},
    "lm": {"window": 10, "lam": 1e-8}}
# the reference optimizer: the plain one with the lowest final held-out loss
BEST = {"hnn": "adam", "mnist1d": "adadelta", "pinn": "adam", "mnist1d-cnn": "sgd",
        "lm": "adamw"}
LR_GRID = {
    "hnn": {"adam": (1e-3, 3e-3, 1e-2, 3e-2), "adadelta": (0.3, 1.0, 3.0),
            "adagrad": (1e-2, 3e-2, 1e-1), "sgd": (1e-3, 3e-3, 1e-2, 3e-2),
            "schedulefree": (1e-3, 3e-3, 1e-2, 3e-2)},
    "pinn": {"adam": (1e-3, 3e-3, 1e-2), "schedulefree": (1e-3, 3e-3, 1e-2)},
    "mnist1d-cnn": {"adam": (1e-3, 3e-3, 1e-2), "sgd": (1e-2, 3e-2, 1e-1),
                    "schedulefree": (1e-3, 3e-3, 1e-2)},
    "lm": {"adamw": (1e-3, 3e-3, 1e-2), "schedulefree": (1e-3, 3e-3, 1e-2)},
}
LR_GRID["mnist1d"] = LR_GRID["hnn"]


def workload(task: str, lr: dict | None = None, budget: int | None = None) -> Workload:
    """The ``Workload`` of ``task`` (one of ``TASKS``) at the tuned lrs (or ``lr``) and the
    task's budget (or ``budget`` steps)."""
    if task not in TASKS:
        raise ValueError(f"unknown race task {task!r}; choose from {TASKS}.")
    lrs = dict(TUNED[task] if lr is None else lr)
    common = {"task": task, "budget": budget or BUDGETS[task], "eval_every": EVAL_EVERY[task],
              "best": BEST[task], "lr": lrs}
    if task == "hnn":
        from ...problems.hnn import OscillatorProblem

        p = OscillatorProblem()
        g = torch.Generator().manual_seed(777)  # off the training grid and its jitter
        p.heldout_points = (torch.rand(200, 1, generator=g) * p.t_max).sort(0).values
        return Workload(problem=p, plain=("adam", "adadelta", "adagrad", "sgd"),
                        heldout_name="residual at held-out collocation points", **common)
    if task in ("mnist1d", "mnist1d-cnn"):
        from ...problems.classifiers import load_task

        p = load_task("mnist1d")
        if task == "mnist1d":
            return Workload(problem=p, plain=("adam", "adadelta", "adagrad", "sgd"),
                            heldout_name="test cross-entropy", **common)
        p.model = "rescnn"
        return Workload(problem=p, plain=("adam", "sgd"), heldout_name="test cross-entropy",
                        bn_batches=2, **common)
    if task == "pinn":
        from ...problems.burgers import BurgersProblem

        p = BurgersProblem(n_collocation=500, hidden=32, depth=4, n_x=256)
        fixed = p.batch(torch.Generator().manual_seed(99))  # L-BFGS, the judge, train score
        return Workload(problem=p, plain=("adam", "lbfgs", "adam-lbfgs"),
                        heldout_name="relative L2 error against the scipy reference",
                        extras={"train_batch": fixed}, **common)
    from ...problems.lm import LanguageModelProblem

    p = LanguageModelProblem(d=48, heads=4, blocks=4, context=64, batch_size=16, n_eval=64)
    return Workload(problem=p, plain=("adamw",), heldout_name="validation loss (nats per token)",
                    clip=1.0, warmup=0.05, judge_size=16, extras={"corpus": p.info}, **common)
