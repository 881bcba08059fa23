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
import statistics
import time

import torch

from ..accelerator import KoopmanAccelerator
from .baselines import Lookahead
from .provenance import SCHEMA_VERSION, provenance
from .window import _json_safe

TASKS = ("hnn", "mnist1d", "digits")
OPTIMIZERS = ("adam", "adadelta", "adagrad", "sgd")
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
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "schedulefree":
        import schedulefree

        return schedulefree.AdamWScheduleFree(params, lr=lr, warmup_steps=50)
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}.")


def make_problem(task: str):
    if task == "hnn":
        from ..problems.hnn import OscillatorProblem

        return OscillatorProblem()
    if task in ("mnist1d", "digits"):
        from ..problems.classifiers import load_task

        return load_task(task)
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}.")


def _closure(task: str, problem, model):
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
    judge = _closure(task, problem, model)
    gen = torch.Generator().manual_seed(10_000 + seed)
    curve, seconds = [(0.0, 0, problem.eval_loss(model))], 0.0
    sf = method == "schedulefree"
    if sf:
        opt.train()
    for step in range(1, steps + 1):
        batch = problem.batch(gen)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        problem.loss(model, batch).backward()
        opt.step()
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


def first_reach(curve, target: float):
    """``(seconds, step)`` of the first evaluation at or below ``target``, else Nones."""
    for sec, step, loss in curve:
        if loss is not None and loss <= target:
            return sec, step
    return None, None


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


def _targets(curves: dict, steps: int) -> dict:
    """Targets from the plain runs, fixed before any other method runs. ``curves`` maps
    each optimizer to its curves (one per seed). The best plain optimizer has the lowest
    median loss at 50% of the budget; the targets are its median losses at 25%, 50% and
    100% of the budget, so it reaches the 50% target at about half its budget."""
    def at(curve, frac):
        goal = round(frac * steps)
        vals = [loss for _, st, loss in curve if st <= goal and loss is not None]
        return min(vals) if vals else math.inf

    def med(o, frac):
        return statistics.median(at(c, frac) for c in curves[o])

    best = min(curves, key=lambda o: med(o, 0.5))
    return {"best_plain": best,
            "targets": {f"{int(f * 100)}%": med(best, f) for f in (0.25, 0.5, 1.0)}}


def run(task: str = "hnn", seeds: int = 3, steps: int | None = None, progress: bool = True,
        methods=None, accelerator: dict | None = None, tuning: dict | None = None,
        store_dir=None) -> dict:
    """The race for one task; returns the JSON-ready results.

    ``store_dir``: keep each finished run under ``store_dir/.kooptrain-partial`` and reuse
    the ones already there (resume after an interruption).
    """
    import json

    from .store import RunStore

    if task not in TASKS:
        raise ValueError(f"unknown race task {task!r}; choose from {TASKS}.")
    prov = provenance()  # at the start: the code that runs, not the code at the end
    problem = make_problem(task)
    steps = steps or BUDGET[task]
    every = EVAL_EVERY[task]
    lrs = (tuning or {}).get("choice") or TUNED[task]
    acc = dict(ACCELERATOR if accelerator is None else accelerator)
    store = RunStore(store_dir, {"task": task, "steps": steps, "eval_every": every,
                                 "lr": lrs, "accelerator": acc,
                                 "schema_version": SCHEMA_VERSION}) if store_dir else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=(len(OPTIMIZERS) * 3 + 5) * seeds, desc=f"race {task}", unit="run")
    results: dict = {}

    def go(method, opt, seed):
        lr = lrs["schedulefree" if method == "schedulefree" else opt]
        key = (method, opt, seed)
        r = store.load(key) if store else None
        if r is None:
            r = train(task, problem, method, opt, lr, seed, steps, every, accelerator)
            r = json.loads(json.dumps(r))  # the same types whether fresh or resumed
            if store:
                store.save(key, r)
        results[key] = (lr, r)
        if bar is not None:
            bar.update(1)

    for seed in range(seeds):  # plain runs first: they fix the targets
        for o in OPTIMIZERS:
            go("plain", o, seed)
    fixed = _targets({o: [results[("plain", o, sd)][1]["curve"] for sd in range(seeds)]
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
    return _json_safe({"schema_version": SCHEMA_VERSION, "kind": "race", "provenance": prov,
            "settings": {"task": task, "seeds": seeds, "steps": steps, "eval_every": every,
                         "lr": lrs, "accelerator": acc_settings or "KoopmanAccelerator "
                         "defaults", "lr_grid": {k: list(v) for k, v in LR_GRID.items()}},
            "tuning": tuning, "results": rows, "summary": summarize(rows),
            "curves": _compact(curves), "histories": histories})


def _compact(curves: dict) -> dict:
    return {k: [[[round(s, 4), st, None if v is None else float(f"{v:.5g}")]
                 for s, st, v in c] for c in cs] for k, cs in curves.items()}


def summarize(rows: list[dict]) -> list[dict]:
    """Medians over seeds per method, optimizer and target; an unreached target counts as
    infinitely slow in the median."""
    out = []
    keys = dict.fromkeys((r["method"], r["optimizer"], r["target_name"]) for r in rows)
    for method, opt, name in keys:
        rs = [r for r in rows if (r["method"], r["optimizer"], r["target_name"]) ==
              (method, opt, name)]
        secs = [r["seconds_to_target"] if r["seconds_to_target"] is not None else math.inf
                for r in rs]
        steps = [r["steps_to_target"] if r["steps_to_target"] is not None else math.inf
                 for r in rs]
        out.append({"method": method, "optimizer": opt, "target_name": name,
                    "target": rs[0]["target"], "n_seeds": len(rs),
                    "reached": sum(r["seconds_to_target"] is not None for r in rs),
                    "median_seconds": statistics.median(secs),
                    "median_steps": statistics.median(steps),
                    "jumps_accepted": sum(r["jumps_accepted"] for r in rs),
                    "jumps_tried": sum(r["jumps_tried"] for r in rs)})
    return out
