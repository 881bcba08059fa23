"""``kooptrain race``: time and compute to a held-out target, Koopman jumps against the rest.

For one task (``workloads``), every method (``methods``) trains the task's model from the
same seed on the same batches. The methods of a seed advance in **lockstep** in this one
process: step 1 of every method, then step 2 of every method, ..., with the order rotated
each step. A slow phase of the machine therefore hits every method alike. Each run's own
meter counts only its own work (wall seconds, thread CPU seconds) and its calls are
tallied into a deterministic FLOP count. Every ``eval_every`` steps each run is scored,
untimed, on held-out data and on a fixed training set.

Targets are the held-out losses that the reference plain optimizer (chosen on the tuning
seed) reaches at 25%, 50% and 100% of its budget, medians over the race's seeds; they are a
function of the plain runs alone. The reference optimizer also runs twice (``plain-copy``):
the two copies make identical steps, so their difference in time is the noise band.
"""

from __future__ import annotations

import math
import statistics

from ..harness.jsonio import json_safe
from ..harness.plan import RunPlan, progress_bar
from ..harness.provenance import SCHEMA_VERSION, provenance
from . import methods as _methods
from .methods import EXTRAPOLATION, METHODS, Costs, make_run, methods_for
from .summary import rows_for, summarize
from .task import Task
from .workloads import TASKS, TUNED_EXTRAPOLATION, workload

__all__ = ["DEFAULT_SEEDS", "FULL_SEEDS", "TASKS", "TUNING_SEED", "default_plan", "leader",
           "lockstep", "race_seed", "run", "select", "tune"]

TUNING_SEED = 100
DEFAULT_SEEDS, FULL_SEEDS = 1, 3
# CSV columns of a curve point (one per evaluation)
COLUMNS = ("wall", "cpu", "flops", "step", "heldout", "train", "accuracy")


def default_plan(w) -> list[tuple[str, str]]:
    """The methods of a run without ``--full``: the reference optimizer, its copy (the noise
    band), Koopman jumps on it, RNA, and Schedule-Free AdamW."""
    keep = {("plain", w.best), ("plain-copy", w.best), ("koopman", w.best), ("rna", w.best),
            ("schedulefree", "schedulefree")}
    return [mo for mo in methods_for(w) if mo in keep]


def race_seed(w, seed: int, plan, costs: Costs, accelerator=None, extrapolation=None,
              bar=None) -> dict:
    """Every (method, optimizer) of ``plan`` on ``seed``, in lockstep; returns the curves
    (``COLUMNS`` per evaluation), totals, jump counts and the accelerators' histories."""
    runs = {f"{m}:{o}": make_run(w, m, o, seed, costs, accelerator, extrapolation) for m, o in plan}
    return lockstep(w, seed, runs, bar)


def leader(curves: dict) -> str:
    """``"leader METHOD:OPTIMIZER HELDOUT"``: the run with the lowest held-out score at the
    last evaluation (for the progress bar)."""
    last = {k: c[-1][4] for k, c in curves.items() if c and c[-1][4] is not None}
    if not last:
        return "leader: none finite"
    k = min(last, key=last.get)
    return f"leader {k} {last[k]:.4g}"


def lockstep(w, seed: int, runs: dict, bar=None) -> dict:
    """Step every run of ``runs`` (``{"method:optimizer": Run}``) through the budget in
    rotating order, scoring all of them every ``eval_every`` steps; what ``race_seed``
    returns."""
    curves: dict[str, list] = {k: [] for k in runs}

    def record(k, r):
        t, s = r.totals(), r.score()
        curves[k].append([t["wall"], t["cpu"], t["flops"], r.steps, s["heldout"], s["train"],
                          s.get("accuracy")])

    for k, r in runs.items():
        record(k, r)
    order = list(runs)
    for step in range(1, w.budget + 1):
        turn = step % len(order)
        for k in order[turn:] + order[:turn]:  # nobody always goes first
            runs[k].step()
        if step % w.eval_every == 0 or step == w.budget:
            for k, r in runs.items():
                record(k, r)
            if bar is not None:
                bar.set_postfix_str(leader(curves), refresh=False)
        if bar is not None:
            bar.update(1)
    return {"seed": seed, "curves": curves,
            "totals": {k: {**r.totals(), **r.jumps()} for k, r in runs.items()},
            "histories": {k: r.history() for k, r in runs.items()
                          if r.history() is not None}}


def select(w, plan, methods) -> list[tuple[str, str]]:
    """The (method, optimizer) pairs of ``plan`` whose method is in ``methods`` (names of
    ``METHODS``; ``plain`` keeps every plain optimizer), plus the reference and its copy,
    which every race needs (the targets and the noise band), and the plain run of every
    other optimizer a kept method wraps (what it is compared with)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown race method(s) {', '.join(map(repr, unknown))}; choose "
                         f"from {', '.join(sorted(METHODS))}.")
    wrapped = {o for m, o in plan if m in methods} | {w.best}
    kept = [(m, o) for m, o in plan if m in methods or (m == "plain" and o in wrapped)
            or m == "plain-copy"]
    missing = sorted(set(methods) - {m for m, _ in kept})
    if missing:
        raise ValueError(f"method(s) {', '.join(missing)} do not apply to task {w.task!r} "
                         "(no BatchNorm for bn-refresh, no sequence optimizer for the "
                         "hand-off).")
    return kept


def _untuned(task, w) -> dict:
    """The learning rates a race without ``--tune`` used: a built-in task's are the choice
    its committed tuning made on ``TUNING_SEED``; a task file's are its own (``given``)."""
    if isinstance(task, str):
        return {"choice": w.lr, "seed": TUNING_SEED, "best": w.best}
    return {"choice": w.lr, "best": w.best, "given": True}


def run(task: str | Task = "hnn", seeds: int | None = None, steps: int | None = None,
        progress: bool = True, full: bool = False, methods=None, accelerator: dict | None = None,
        extrapolation: dict | None = None, tuning: dict | None = None, store_dir=None,
        prov: dict | None = None, device: str = "cpu") -> dict:
    """The race for one task (a ``Task``, or a built-in task's name); returns the
    JSON-ready results.

    ``full``: every method and ``FULL_SEEDS`` seeds (else ``default_plan`` and
    ``DEFAULT_SEEDS``). ``methods``: race only these methods (the reference and its copy
    always run), out of every method when given. ``store_dir``: keep each finished seed
    under ``store_dir/.kooptrain-partial`` and reuse it (``--resume``). ``prov``: the
    provenance taken when the process started (before ``--tune``), else now. ``device``:
    where the models train (``"cpu"``, ``"cuda"``, ``"mps"``).
    """
    prov = dict(prov or provenance())  # at the start: the code that runs, not at the end
    tuned = (tuning or {}).get("choice")
    w = workload(task, lr=tuned, budget=steps, device=device, check=not isinstance(task, str))
    if tuning and tuning.get("best"):
        w.best = tuning["best"]
    ex = dict(TUNED_EXTRAPOLATION.get(w.task, EXTRAPOLATION) if extrapolation is None
              else extrapolation)
    if tuning and tuning.get("extrapolation"):
        ex = dict(tuning["extrapolation"])
    plan = methods_for(w) if full or methods else default_plan(w)
    if methods:
        plan = select(w, plan, methods)
    seeds = seeds or (FULL_SEEDS if full else DEFAULT_SEEDS)
    acc = dict(_methods.ACCELERATOR if accelerator is None else accelerator)
    costs = Costs.measure(w)
    fingerprint = {"task": w.task, "steps": w.budget, "eval_every": w.eval_every, "lr": w.lr,
                   "best": w.best, "accelerator": acc, "extrapolation": ex,
                   "plan": [list(p) for p in plan], "schema_version": SCHEMA_VERSION}
    if prov.get("task_file"):  # a task file changed since the interrupted run: start over
        fingerprint["task_file"] = prov["task_file"]["sha256"]
    store = RunPlan([(s,) for s in range(seeds)], store_dir, fingerprint)
    bar = progress_bar(progress, total=seeds * w.budget, initial=store.resumed * w.budget,
                       desc=f"race {w.task} ({len(plan)} runs in lockstep)", unit="step")
    for (seed,) in store.todo:
        store.finish((seed,), race_seed(w, seed, plan, costs, acc, ex, bar))
    if bar is not None:
        bar.close()
    per_seed = [store.done[(s,)] for s in range(seeds)]
    prov["resumed_runs"] = store.resumed
    rows, targets = rows_for(per_seed, w.best, w.budget)
    settings = {"task": w.task, "seeds": seeds, "steps": w.budget,
                "eval_every": w.eval_every, "full": full, "plan": [list(p) for p in plan],
                "methods": list(methods) if methods else None,  # as asked (--methods)
                "lr": w.lr, "best_plain": w.best, "heldout": w.heldout_name, "clip": w.clip,
                "warmup": w.info.get("warmup", 0.0),
                "accelerator": acc or "KoopmanAccelerator defaults", "extrapolation": ex,
                "lr_grid": {k: list(v) for k, v in w.grid.items()},
                "columns": list(COLUMNS), "threads": prov.get("threads"),
                "device": str(w.device),
                **{k: v for k, v in w.info.items() if k != "warmup"}}
    return json_safe({
        "schema_version": SCHEMA_VERSION, "kind": "race", "provenance": prov,
        "settings": settings, "costs": vars(costs),
        "tuning": {**(tuning or _untuned(task, w)), "targets": targets},
        "results": rows, "summary": summarize(rows),
        "curves": {k: [_compact(s["curves"][k]) for s in per_seed] for k in per_seed[0]["curves"]},
        "totals": {k: [s["totals"][k] for s in per_seed] for k in per_seed[0]["totals"]},
        "histories": per_seed[0]["histories"]})


def _compact(curve) -> list:
    return [[None if v is None else float(f"{v:.6g}") for v in point] for point in curve]


def tune(task: str | Task, steps: int | None = None, progress: bool = True,
         device: str = "cpu") -> dict:
    """The lr grids (each ``PlainOptimizer.grid``) and RNA's ``(window, lam)`` on the tuning
    seed, all in one lockstep: each optimizer's lr is the one with the lowest final
    held-out loss (ties: the larger lr); the reference optimizer is the plain one with the
    lowest final held-out loss; RNA's settings minimise the mean held-out loss over the run
    of its offline copy on the task's reference optimizer (an any-time criterion)."""
    w = workload(task, budget=steps, device=device, check=not isinstance(task, str))
    grid, base = w.grid, dict(w.lr)
    plan = []
    for name, values in grid.items():
        for lr in values:
            plan.append((("schedulefree" if name == "schedulefree" else "plain"), name, lr))
    for name in w.plain:
        if name not in grid:  # untuned (L-BFGS: lr 1 with a line search)
            plan.append(("plain", name, base[name]))
    exgrid = [{"window": m, "lam": lam} for m in (5, 10) for lam in (1e-8, 1e-5, 1e-2)]
    costs = Costs.measure(w)
    runs = {}
    for method, name, lr in plan:
        w.lr = {**base, name: lr}
        runs[(method, name, lr)] = make_run(w, method, name, TUNING_SEED, costs)
    ref = w.best
    w.lr = dict(base)
    for i, ex in enumerate(exgrid):
        runs[("rna-offline", ref, i)] = make_run(w, "rna-offline", ref, TUNING_SEED, costs,
                                                 extrapolation=ex)
    scores: dict = {k: [] for k in runs}
    bar = progress_bar(progress, total=w.budget, desc=f"tune {w.task} ({len(runs)} runs)",
                       unit="step")
    for step in range(1, w.budget + 1):
        for r in runs.values():
            r.step()
        if step % w.eval_every == 0 or step == w.budget:
            for k, r in runs.items():
                h = r.score()["heldout"]
                scores[k].append(math.inf if h is None else h)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    final = {name: {str(lr): scores[(m, n, lr)][-1] for m, n, lr in runs if n == name
                    and m != "rna-offline"} for name in list(grid) + list(w.plain)}
    choice = {name: max((float(lr) for lr in final[name]),
                        key=lambda lr, name=name: (-final[name][str(lr)], lr))
              for name in final}
    steppable = [o for o in w.plain if not w.closure_optimizer(o) and w.sequence(o) is None]
    best = min(steppable, key=lambda o: final[o][str(choice[o])])
    ex_scores = [statistics.fmean(scores[("rna-offline", ref, i)]) for i in range(len(exgrid))]
    return {"task": w.task, "seed": TUNING_SEED, "steps": w.budget,
            "grid": {k: list(v) for k, v in grid.items()}, "final_heldout": final,
            "choice": choice, "best": best, "extrapolation_grid": exgrid,
            "extrapolation_scores": ex_scores,
            "extrapolation": exgrid[min(range(len(exgrid)), key=ex_scores.__getitem__)]}
