"""``kooptrain race``: wall-clock time to a target loss, Koopman jumps against the rest.

For one task, every method trains the task's model for the same number of steps
from the same seeds, in this process, one after the other. What is timed: the
optimizer step (zero_grad, loss, backward, step) plus whatever the method adds
(recording, fitting, the closure's evaluations, averaging). What is not: drawing
the batch, and the evaluation of the curve every ``eval_every`` steps.

Methods (``method`` / ``optimizer`` in the JSON rows):

* ``plain``: Adam, Adadelta, Adagrad, SGD with momentum, each at its tuned lr;
* ``koopman``: the same plus ``KoopmanAccelerator`` with the defaults below;
* ``linear-extrapolation``: the same accelerator with ``predictor="linear"`` (ablation);
* ``lawa``: the same accelerator with ``predictor="average"`` (latest-weight averaging);
* ``ema``, ``swa`` (``torch.optim.swa_utils``), ``lookahead``: around the best plain
  optimizer; ``schedulefree``: Schedule-Free AdamW from the ``schedulefree`` package.

Targets are fixed before the race from the tuning runs (a separate seed): the loss
the best plain optimizer reaches at 25%, 50% and 100% of its budget.
"""

from __future__ import annotations

import math
import time

import torch

from ...accelerator import KoopmanAccelerator
from ..harness.jsonio import json_safe
from ..harness.optimizers import OPTIMIZERS
from ..harness.optimizers import make_optimizer as _make_optimizer
from ..harness.plan import RunPlan, progress_bar
from ..harness.provenance import SCHEMA_VERSION, provenance
from ..harness.tasks import make_problem as _task_problem
from ..harness.timing import timed_step
from .baselines import Lookahead
from .summary import first_reach, fix_targets, medians_to_target

__all__ = ["BASELINES", "BUDGET", "OPTIMIZERS", "TASKS", "TUNED", "make_optimizer",
           "judge_closure", "make_problem", "run", "train", "tune"]

TASKS = ("hnn", "mnist1d", "digits")
BASELINES = ("ema", "swa", "lookahead", "schedulefree")
# Budgets in optimizer steps, and the curve's evaluation period.
BUDGET = {"hnn": 3000, "mnist1d": 1900, "digits": 1200}
EVAL_EVERY = {"hnn": 20, "mnist1d": 10, "digits": 10}
TUNING_SEED = 100
# The lr grids; `kooptrain race TASK --tune` reruns them and prints the choice, which is
# committed here (TUNED) and in results/race/tuning-TASK.json.
LR_GRID = {
    "adam": (1e-3, 3e-3, 1e-2, 3e-2),
    "adadelta": (0.3, 1.0, 3.0),
    "adagrad": (1e-2, 3e-2, 1e-1),
    "sgd": (1e-3, 3e-3, 1e-2, 3e-2),
    "schedulefree": (1e-3, 3e-3, 1e-2, 3e-2),
}
TUNED: dict[str, dict[str, float]] = {
    "hnn": {"adam": 0.01, "adadelta": 0.3, "adagrad": 0.1, "sgd": 0.003, "schedulefree": 0.03},
    "mnist1d": {"adam": 0.01, "adadelta": 3.0, "adagrad": 0.1, "sgd": 0.03, "schedulefree": 0.03},
    "digits": {"adam": 3e-3, "adadelta": 1.0, "adagrad": 3e-2, "sgd": 3e-2,
               "schedulefree": 3e-3},
}
# The accelerator's settings in the race: KoopmanAccelerator's own defaults, which are
# the winners of benchmarks/accelerator_design.py (see docs/accelerator.md).
ACCELERATOR: dict = {}


def make_optimizer(name: str, params, lr: float):
    """``name`` (one of ``OPTIMIZERS`` or ``"schedulefree"``) at learning rate ``lr``."""
    return _make_optimizer(name, params, lr=lr)


def make_problem(task: str):
    """The problem of a race task (one of ``TASKS``)."""
    return _task_problem(task, tasks=TASKS)


def judge_closure(task: str, problem, model):
    """The accelerator's judge: the loss on a fixed evaluation batch, no backward."""
    if task == "hnn":
        return lambda: problem.eval_loss(model)
    x, y = problem.x_train[:1024], problem.y_train[:1024]

    def closure():
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(x), y))

    return closure


def train(task: str, problem, method: str, optimizer: str, lr: float, seed: int,
          steps: int, eval_every: int, accelerator: dict | None = None) -> dict:
    """One run; returns the curve ``[(seconds, step, loss)]`` and jump counts."""
    model = problem.make_model(seed)
    base = "adam" if optimizer == "schedulefree" and method != "schedulefree" else optimizer
    opt = make_optimizer("schedulefree" if method == "schedulefree" else base,
                         model.parameters(), lr)
    if method == "lookahead":
        opt = Lookahead(opt, k=5, alpha=0.5)
    acc, avg = None, None
    if method in ("koopman", "linear-extrapolation", "lawa"):
        kw = dict(ACCELERATOR if accelerator is None else accelerator)
        if method != "koopman":
            kw["predictor"] = "linear" if method == "linear-extrapolation" else "average"
        acc = KoopmanAccelerator(model, opt, **kw)
    if method in ("ema", "swa"):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99)) \
            if method == "ema" else AveragedModel(model)
    swa_start = steps // 4
    judge = judge_closure(task, problem, model)
    gen = torch.Generator().manual_seed(10_000 + seed)
    curve, seconds = [(0.0, 0, problem.eval_loss(model))], 0.0
    sf = method == "schedulefree"
    if sf:
        opt.train()
    for step in range(1, steps + 1):
        batch = problem.batch(gen)
        t0 = time.perf_counter()
        timed_step(problem, model, opt, batch)
        if acc is not None:
            acc.step(judge)
        if avg is not None and (method == "ema" or step >= swa_start):
            avg.update_parameters(model)
        seconds += time.perf_counter() - t0
        if step % eval_every == 0 or step == steps:
            if sf:
                opt.eval()
            scored = avg.module if avg is not None and (method == "ema" or step >= swa_start) \
                else model
            loss = problem.eval_loss(scored)
            if sf:
                opt.train()
            curve.append((seconds, step, loss if math.isfinite(loss) else None))
    out = {"curve": curve, "jumps_tried": acc.jumps_tried if acc else 0,
           "jumps_accepted": acc.jumps_accepted if acc else 0}
    if acc is not None:
        out["history"] = [{k: v for k, v in h.items()} for h in acc.history]
    return out


def tune(task: str, progress=None) -> dict:
    """The lr grid on the tuning seed: choice = lowest final loss (ties: the larger lr)."""
    problem = make_problem(task)
    steps, every = BUDGET[task], EVAL_EVERY[task]
    runs = {}
    for name, grid in LR_GRID.items():
        method = "schedulefree" if name == "schedulefree" else "plain"
        for lr in grid:
            r = train(task, problem, method, name, lr, TUNING_SEED, steps, every)
            runs[(name, lr)] = r["curve"]
            if progress:
                progress.update(1)
    choice, final = {}, {}
    for name, grid in LR_GRID.items():
        def end(lr, name=name):
            loss = runs[(name, lr)][-1][2]
            return math.inf if loss is None else loss
        choice[name] = min(grid, key=lambda lr: (end(lr), -lr))
        final[name] = {str(lr): runs[(name, lr)][-1][2] for lr in grid}
    return {"task": task, "seed": TUNING_SEED, "grid": {k: list(v) for k, v in LR_GRID.items()},
            "final_loss": final, "choice": choice}


def run(task: str = "hnn", seeds: int = 3, steps: int | None = None, progress: bool = True,
        methods=None, accelerator: dict | None = None, tuning: dict | None = None,
        store_dir=None) -> dict:
    """The race for one task; returns the JSON-ready results.

    ``store_dir``: keep each finished run under ``store_dir/.kooptrain-partial`` and reuse
    the ones already there (resume after an interruption).
    """
    if task not in TASKS:
        raise ValueError(f"unknown race task {task!r}; choose from {TASKS}.")
    prov = provenance()  # at the start: the code that runs, not the code at the end
    problem = make_problem(task)
    steps = steps or BUDGET[task]
    every = EVAL_EVERY[task]
    lrs = (tuning or {}).get("choice") or TUNED[task]
    acc = dict(ACCELERATOR if accelerator is None else accelerator)
    runs = RunPlan([], store_dir, {"task": task, "steps": steps, "eval_every": every,
                                   "lr": lrs, "accelerator": acc,
                                   "schema_version": SCHEMA_VERSION})
    bar = progress_bar(progress, total=(len(OPTIMIZERS) * 3 + 5) * seeds,
                       desc=f"race {task}", unit="run")
    results: dict = {}

    def go(method, opt, seed):
        lr = lrs["schedulefree" if method == "schedulefree" else opt]
        r = runs.get((method, opt, seed), lambda: train(task, problem, method, opt, lr, seed,
                                                        steps, every, accelerator))
        results[(method, opt, seed)] = (lr, r)
        if bar is not None:
            bar.update(1)

    for seed in range(seeds):  # plain runs first: they fix the targets
        for o in OPTIMIZERS:
            go("plain", o, seed)
    fixed = fix_targets({o: [results[("plain", o, sd)][1]["curve"] for sd in range(seeds)]
                      for o in OPTIMIZERS}, steps)
    best = fixed["best_plain"]
    plan = [("koopman", o) for o in OPTIMIZERS] + \
        [("linear-extrapolation", o) for o in OPTIMIZERS] + [("lawa", best)] + \
        [(b, best) for b in ("ema", "swa", "lookahead")] + [("schedulefree", "schedulefree")]
    if methods:
        plan = [(m, o) for m, o in plan if m in methods]
    for seed in range(seeds):
        for method, opt in plan:
            go(method, opt, seed)
    if bar is not None:
        bar.close()
    rows, curves, histories = [], {}, {}
    for (method, opt, seed), (lr, r) in results.items():
        key = f"{method}:{opt}"
        curves.setdefault(key, []).append(r["curve"])
        if "history" in r and seed == 0:
            histories[key] = r["history"]
        for name, target in fixed["targets"].items():
            sec, st = first_reach(r["curve"], target)
            rows.append({"task": task, "method": method, "optimizer": opt, "lr": lr,
                         "seed": seed, "target_name": name, "target": target,
                         "seconds_to_target": sec, "steps_to_target": st,
                         "final_loss": r["curve"][-1][2], "seconds_total": r["curve"][-1][0],
                         "jumps_accepted": r["jumps_accepted"],
                         "jumps_tried": r["jumps_tried"]})
    tuning = {**(tuning or {"choice": lrs, "seed": TUNING_SEED}), **fixed}
    acc_settings = dict(ACCELERATOR if accelerator is None else accelerator)
    return json_safe({"schema_version": SCHEMA_VERSION, "kind": "race", "provenance": prov,
            "settings": {"task": task, "seeds": seeds, "steps": steps, "eval_every": every,
                         "lr": lrs, "accelerator": acc_settings or "KoopmanAccelerator "
                         "defaults", "lr_grid": {k: list(v) for k, v in LR_GRID.items()}},
            "tuning": tuning, "results": rows, "summary": medians_to_target(rows),
            "curves": _compact(curves), "histories": histories})


def _compact(curves: dict) -> dict:
    return {k: [[[round(s, 4), st, None if v is None else float(f"{v:.5g}")]
                 for s, st, v in c] for c in cs] for k, cs in curves.items()}
