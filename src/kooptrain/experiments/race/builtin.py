"""The race's five built-in tasks, each a ``Task`` (``task.py``) like any user's:

* ``hnn``: the paper's Hamiltonian network (152 weights), full batch. Held out: the mean
  squared residual at 200 fixed collocation points that training never draws.
* ``mnist1d``: the paper's MLP on MNIST-1D, minibatches of 64. Held out: test cross-entropy.
* ``pinn``: a physics-informed tanh MLP for 1-D viscous Burgers, full batch with second
  derivatives through autograd. Held out: the relative L2 error against scipy's reference.
* ``mnist1d-cnn``: a residual 1-D CNN with BatchNorm (~116k weights) on MNIST-1D.
* ``lm``: a byte-level decoder-only transformer (4 pre-norm blocks, causal attention) on the
  Python standard library's sources, AdamW with weight decay, linear warm-up then cosine
  decay, gradient clipping. Held out: validation loss in nats per token, by document.

The learning rates are the committed choice of ``kooptrain race TASK --tune`` on the tuning
seed (``TUNED``); the reference optimizer is the plain one with the lowest final held-out
loss there (``BEST``).
"""

from __future__ import annotations

import functools
import math

import torch

from ..harness.optimizers import make_optimizer
from .task import PlainOptimizer, Task, evaluating

__all__ = ["BEST", "BUDGETS", "BUILTIN", "EVAL_EVERY", "LR_GRID", "TASKS", "TUNED",
           "TUNED_EXTRAPOLATION", "builtin_task", "hnn_heldout_points", "warmup_cosine"]

TASKS = ("hnn", "mnist1d", "pinn", "mnist1d-cnn", "lm")
# budgets in optimizer steps, and the evaluation period of the curves
BUDGETS = {"hnn": 3000, "mnist1d": 1900, "pinn": 5000, "mnist1d-cnn": 1500, "lm": 3000}
EVAL_EVERY = {"hnn": 20, "mnist1d": 10, "pinn": 50, "mnist1d-cnn": 25, "lm": 100}

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


def _named(name: str):
    return functools.partial(make_optimizer, name)


def _optimizers(task: str, names) -> dict[str, PlainOptimizer]:
    grid = LR_GRID[task]
    return {n: PlainOptimizer(_named(n), lr=TUNED[task][n], grid=grid.get(n, ()))
            for n in names}


def _schedulefree(task: str, **hyper) -> PlainOptimizer:
    return PlainOptimizer(functools.partial(make_optimizer, "schedulefree", **hyper),
                          lr=TUNED[task]["schedulefree"], grid=LR_GRID[task]["schedulefree"])


def _common(task: str, budget: int | None) -> dict:
    return {"name": task, "budget": budget or BUDGETS[task], "eval_every": EVAL_EVERY[task],
            "reference": BEST[task], "schedulefree": _schedulefree(task)}


def _seeded(draw):
    """``batches(seed)`` from ``draw(generator)``: every seed's sequence has its own
    generator, offset from the model seeds."""
    def batches(seed: int):
        gen = torch.Generator().manual_seed(10_000 + seed)
        while True:
            yield draw(gen)
    return batches


def hnn_heldout_points(p) -> torch.Tensor:
    """``(200, 1)`` sorted times in ``[0, t_max]`` of the oscillator problem ``p``, drawn
    from their own generator: off the training grid and its jitter."""
    g = torch.Generator().manual_seed(777)
    return (torch.rand(200, 1, generator=g) * p.t_max).sort(0).values


def hnn(budget: int | None = None) -> Task:
    from ...problems.hnn import OscillatorProblem

    p = OscillatorProblem()
    points = hnn_heldout_points(p)

    def residual(model) -> float:
        x, q, dx, dq = p.solution(model, points)
        return float(((dx - q) ** 2 + (dq + x + p.lam * x**3) ** 2).mean().detach())

    def judge(model, size=None):
        if size is not None:
            raise ValueError("the hnn judge has no size: it is the solver's own loss.")
        return lambda: p.eval_loss(model)

    return Task(model=p.make_model, batches=_seeded(p.batch), loss=p.loss, heldout=residual,
                judge=judge, train_loss=p.eval_loss,
                optimizers=_optimizers("hnn", ("adam", "adadelta", "adagrad", "sgd")),
                heldout_name="residual at held-out collocation points",
                **_common("hnn", budget))


def _classifier(task: str, budget: int | None = None) -> Task:
    from ...problems.classifiers import load_task

    p = load_task("mnist1d")
    n_test = len(p.y_test)
    if task == "mnist1d-cnn":
        p.model = "rescnn"

    def batches(seed: int):  # minibatches, reshuffled every epoch
        gen = torch.Generator().manual_seed(10_000 + seed)
        n = len(p.y_train)
        while True:
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, p.batch_size):
                idx = perm[i : i + p.batch_size]
                yield p.x_train[idx], p.y_train[idx]

    @torch.no_grad()
    def heldout(model) -> float:
        return float(torch.nn.functional.cross_entropy(model(p.x_test), p.y_test))

    @torch.no_grad()
    def accuracy(model) -> float:
        return float((model(p.x_test).argmax(1) == p.y_test).float().mean())

    @torch.no_grad()
    def train_loss(model) -> float:  # as many training samples as test ones
        return float(torch.nn.functional.cross_entropy(model(p.x_train[:n_test]),
                                                       p.y_train[:n_test]))

    def judge(model, size=None):
        x, y = p.x_train[: size or 1024], p.y_train[: size or 1024]

        def closure():
            with torch.no_grad(), evaluating(model):
                return float(torch.nn.functional.cross_entropy(model(x), y))
        return closure

    bn = None
    if task == "mnist1d-cnn":
        size = p.batch_size * 4

        def bn():  # two fixed batches of training inputs for update_bn
            return [p.x_train[i * size : (i + 1) * size] for i in range(2)]

    plain = ("adam", "sgd") if task == "mnist1d-cnn" else ("adam", "adadelta", "adagrad", "sgd")
    return Task(model=p.make_model, batches=batches, loss=p.loss, heldout=heldout,
                accuracy=accuracy, train_loss=train_loss, judge=judge, bn_loader=bn,
                optimizers=_optimizers(task, plain), heldout_name="test cross-entropy",
                **_common(task, budget))


def _first(batch: dict, size: int) -> dict:
    """The PINN's batch cut to ``size`` interior points, and its initial and boundary
    points in the same proportion."""
    frac = min(1.0, size / len(batch["interior"]))
    return {k: v[: max(1, round(frac * len(v)))] for k, v in batch.items()}


def pinn(budget: int | None = None) -> Task:
    from ...problems.burgers import BurgersProblem

    p = BurgersProblem(n_collocation=500, hidden=32, depth=4, n_x=256)
    fixed = p.batch(torch.Generator().manual_seed(99))  # L-BFGS, the judge, train score

    def judge(model, size=None):
        batch = fixed if size is None else _first(fixed, size)
        return lambda: float(p.loss(model, batch).detach())

    # one iteration per step; max_eval must be given: torch's default, max_iter * 5 // 4 = 1,
    # leaves the line search no evaluation, and once past its first iteration the optimizer
    # stops moving
    lbfgs = functools.partial(torch.optim.LBFGS, max_iter=1, max_eval=25, history_size=50,
                              line_search_fn="strong_wolfe")
    opts = _optimizers("pinn", ("adam",))
    opts["lbfgs"] = PlainOptimizer(lbfgs, lr=TUNED["pinn"]["lbfgs"], closure=True)
    opts["adam-lbfgs"] = PlainOptimizer(lr=TUNED["pinn"]["adam-lbfgs"],
                                        sequence=("adam", "lbfgs"))
    return Task(model=p.make_model, batches=_seeded(p.batch), loss=p.loss,
                heldout=lambda model: p.metrics(model)["relative_l2"], judge=judge,
                train_loss=lambda model: float(p.loss(model, fixed).detach()),
                fixed_batch=fixed, optimizers=opts,
                heldout_name="relative L2 error against the scipy reference",
                **_common("pinn", budget))


def warmup_cosine(warmup: float):
    """``schedule(optimizer, budget)``: linear warm-up over ``warmup * budget`` steps, then
    cosine decay to 10% of the lr at the budget."""
    def schedule(opt, budget: int):
        warm = max(1, round(warmup * budget))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            frac = min(1.0, (step - warm) / max(1, budget - warm))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return schedule


def lm(budget: int | None = None) -> Task:
    from ...problems.lm import LanguageModelProblem

    p = LanguageModelProblem(d=48, heads=4, blocks=4, context=64, batch_size=16, n_eval=64)
    x, y = p.train_eval_batch

    def judge(model, size=None):
        fixed = (x[: size or 16], y[: size or 16])

        def closure():
            with torch.no_grad():
                return float(p.loss(model, fixed))
        return closure

    warmup = 0.05
    adamw = functools.partial(torch.optim.AdamW, betas=(0.9, 0.95), weight_decay=0.1)
    common = _common("lm", budget)
    # Schedule-Free's own warm-up over the same steps, and the same weight decay
    common["schedulefree"] = _schedulefree("lm", weight_decay=0.1,
                                           warmup_steps=round(warmup * common["budget"]))
    return Task(model=p.make_model, batches=_seeded(p.batch), loss=p.loss,
                heldout=p.eval_loss, train_loss=p.train_loss, judge=judge, clip=1.0,
                optimizers={"adamw": PlainOptimizer(adamw, lr=TUNED["lm"]["adamw"],
                                                    grid=LR_GRID["lm"]["adamw"],
                                                    schedule=warmup_cosine(warmup))},
                heldout_name="validation loss (nats per token)",
                info={"warmup": warmup, "corpus": p.info}, **common)


BUILTIN = {"hnn": hnn, "mnist1d": functools.partial(_classifier, "mnist1d"), "pinn": pinn,
           "mnist1d-cnn": functools.partial(_classifier, "mnist1d-cnn"), "lm": lm}


def builtin_task(name: str, budget: int | None = None) -> Task:
    """The built-in ``Task`` called ``name`` (one of ``TASKS``), at its own budget or
    ``budget`` steps (the schedules are set from it)."""
    if name not in BUILTIN:
        raise ValueError(f"unknown race task {name!r}; choose from {TASKS}, or give a task "
                         "file (path/to/task.py).")
    return BUILTIN[name](budget)
