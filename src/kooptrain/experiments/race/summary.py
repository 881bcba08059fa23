"""The race's arithmetic on curves and rows: targets, when a curve first reaches one, medians
over seeds, the noise band, the verdict and the performance profile. Pure functions of
JSON-ready data; a curve point is ``[wall, cpu, flops, step, heldout, train, accuracy]``."""

from __future__ import annotations

import math
import statistics

WALL, CPU, FLOPS, STEP, HELDOUT, TRAIN, ACCURACY = range(7)
MEASURES = {"wall": WALL, "cpu": CPU, "flops": FLOPS, "steps": STEP}
FRACTIONS = (0.25, 0.5, 1.0)

# The goal, as numbers (verdict below) and as words (GOAL, quoted by the report).
GOAL_SPEEDUP = 2  # the best accelerated run reaches the 50% target this many times sooner
GOAL_SLOWER = 1.05  # ... and is never slower than this factor times its own plain optimizer
_SHARE = {2: "half", 3: "a third", 4: "a quarter"}.get(GOAL_SPEEDUP, f"1/{GOAL_SPEEDUP} of")
GOAL = ("Goal, in words: with medians over seeds, on the held-out 50% target, the Koopman "
        f"accelerator (1) needs at most {_SHARE} the wall time and the compute of the "
        f"reference plain optimizer, (2) is never more than {100 * GOAL_SLOWER - 100:.0f}% "
        "slower than its own plain optimizer, and (3) is ahead of the linear-extrapolation "
        "ablation, of RNA and Anderson, and of every other baseline, by more than the noise "
        "band.")


def first_reach(curve, target: float, column: int = HELDOUT):
    """The first point of ``curve`` whose ``column`` is at or below ``target``, else None."""
    for point in curve:
        v = point[column]
        if v is not None and v <= target:
            return point
    return None


def best_by(curve, step: int, column: int) -> float:
    """The lowest ``column`` value among the points at or before ``step`` (inf if none)."""
    vals = [p[column] for p in curve if p[STEP] <= step and p[column] is not None]
    return min(vals) if vals else math.inf


def fix_targets(curves, budget: int, column: int = HELDOUT) -> dict:
    """``{"25%": ..., "50%": ..., "100%": ...}``: the median over seeds of the best value the
    reference's ``curves`` (one per seed) reached by that share of the budget."""
    return {f"{int(f * 100)}%": statistics.median(best_by(c, round(f * budget), column)
                                                  for c in curves) for f in FRACTIONS}


def rows_for(per_seed: list[dict], best: str, budget: int) -> tuple[list[dict], dict]:
    """One row per (run, seed, target) and the targets: held-out ones (what the race is
    judged on) and training-loss ones beside them, both from ``plain:best``."""
    ref = f"plain:{best}"
    targets = {"heldout": fix_targets([s["curves"][ref] for s in per_seed], budget, HELDOUT),
               "train": fix_targets([s["curves"][ref] for s in per_seed], budget, TRAIN)}
    rows = []
    for s in per_seed:
        for key, curve in s["curves"].items():
            method, opt = key.split(":", 1)
            last, tot = curve[-1], s["totals"][key]
            for name in targets["heldout"]:
                h = first_reach(curve, targets["heldout"][name], HELDOUT)
                t = first_reach(curve, targets["train"][name], TRAIN)
                rows.append({
                    "method": method, "optimizer": opt, "seed": s["seed"], "target_name": name,
                    "target": targets["heldout"][name], "train_target": targets["train"][name],
                    **{f"{m}_to_target": None if h is None else h[c]
                       for m, c in MEASURES.items()},
                    "steps_to_train_target": None if t is None else t[STEP],
                    "wall_to_train_target": None if t is None else t[WALL],
                    "final_heldout": last[HELDOUT], "final_train": last[TRAIN],
                    "final_accuracy": last[ACCURACY],
                    **{f"total_{k}": v for k, v in tot.items()}})
    return rows, targets


def _median(values) -> float:
    return statistics.median(math.inf if v is None else v for v in values)


def summarize(rows: list[dict]) -> list[dict]:
    """Medians over seeds per method, optimizer and target; an unreached target counts as
    infinitely slow (so a median is finite only if most seeds reached it)."""
    out, groups = [], {}
    for r in rows:
        groups.setdefault((r["method"], r["optimizer"], r["target_name"]), []).append(r)
    for (method, opt, name), rs in groups.items():
        d = {"method": method, "optimizer": opt, "target_name": name, "target": rs[0]["target"],
             "n_seeds": len(rs), "reached": sum(r["steps_to_target"] is not None for r in rs)}
        for m in MEASURES:
            d[f"median_{m}"] = _median(r[f"{m}_to_target"] for r in rs)
        d["median_steps_to_train_target"] = _median(r["steps_to_train_target"] for r in rs)
        d["median_wall_to_train_target"] = _median(r["wall_to_train_target"] for r in rs)
        for k in ("final_heldout", "final_train", "final_accuracy"):
            vals = [r[k] for r in rs if r[k] is not None]
            d[k] = statistics.median(vals) if vals else None
        for k in ("total_closure_calls", "total_fits", "total_grad_evals", "total_steps"):
            d[k] = statistics.median(r[k] for r in rs)
        d["jumps_accepted"] = sum(r["total_jumps_accepted"] for r in rs)
        d["jumps_tried"] = sum(r["total_jumps_tried"] for r in rs)
        out.append(d)
    return out


def medians(res: dict) -> list[dict]:
    """``res["summary"]`` with every median that JSON stored as null (never reached) back
    to ``inf``."""
    return [{k: (math.inf if v is None and k.startswith("median_") else v)
             for k, v in d.items()} for d in res["summary"]]


def lookup(res: dict, method: str, opt: str, name: str = "50%") -> dict | None:
    for d in medians(res):
        if (d["method"], d["optimizer"], d["target_name"]) == (method, opt, name):
            return d
    return None


def noise_band(res: dict) -> dict:
    """How far apart the two identical copies of the reference optimizer are, per measure:
    ``median_factor``, the largest ``exp|log(copy / plain)|`` over the targets of the medians
    over seeds; ``per_seed_factor``, the same over single seeds; and ``factor``, the larger of
    the two: the band a difference between methods must exceed. Their steps and compute must
    agree exactly (``identical``)."""
    best = res["settings"]["best_plain"]
    rows = [r for r in res["results"] if r["optimizer"] == best
            and r["method"] in ("plain", "plain-copy")]
    by = {(r["method"], r["seed"], r["target_name"]): r for r in rows}
    out = {"identical": all(
        by[("plain", s, n)][f"{m}_to_target"] == by[("plain-copy", s, n)][f"{m}_to_target"]
        for (meth, s, n) in by if meth == "plain" for m in ("steps", "flops"))}
    for m in ("wall", "cpu"):
        logs, per_seed = [], []
        for n in sorted({k[2] for k in by}):
            a, b = lookup(res, "plain", best, n), lookup(res, "plain-copy", best, n)
            if a and b and 0 < a[f"median_{m}"] < math.inf and 0 < b[f"median_{m}"] < math.inf:
                logs.append(abs(math.log(b[f"median_{m}"] / a[f"median_{m}"])))
            for (meth, s, nn), r in by.items():
                if meth == "plain" and nn == n:
                    x, y = r[f"{m}_to_target"], by[("plain-copy", s, n)][f"{m}_to_target"]
                    if x and y:
                        per_seed.append(abs(math.log(y / x)))
        med = math.exp(max(logs)) if logs else None
        seed = math.exp(max(per_seed)) if per_seed else None
        out[m] = {"median_factor": med, "per_seed_factor": seed,
                  "factor": max((f for f in (med, seed) if f is not None), default=None)}
    return out


def cost_ratio(a: float, b: float) -> float:
    """``a / b`` for costs to a target, where a target reached at the start costs 0: equal
    zeros are a tie (1), a zero beside a cost is infinitely faster or slower."""
    if b > 0:
        return a / b
    return 1.0 if a == b else math.inf


def compare(ratio: float, band: float | None) -> str:
    """``ratio`` = method / reference (lower is faster), read against a noise ``band``
    factor: "faster", "slower" or "within noise"."""
    band = band or 1.0
    if ratio < 1 / band:
        return "faster"
    if ratio > band:
        return "slower"
    return "within noise"


def verdict(res: dict) -> dict:
    """The goal's clauses on the held-out 50% target, medians over seeds, in wall time and
    in compute, each read against the measured noise band (compute has none)."""
    best = res["settings"]["best_plain"]
    band = noise_band(res)
    ref = lookup(res, "plain", best)
    out = {"reference": best, "band": band, "measures": {}}
    koop = [d for d in medians(res) if d["method"] == "koopman" and d["target_name"] == "50%"]
    others = [d for d in medians(res) if d["target_name"] == "50%"
              and d["method"] not in ("plain", "plain-copy", "koopman")]
    for m, bf in (("wall", band["wall"]["factor"]), ("flops", 1.0)):
        key = f"median_{m}"
        kbest = min(koop, key=lambda d: d[key], default=None)
        obest = min(others, key=lambda d: d[key], default=None)
        r = ref[key] if ref else math.inf
        speed = (r / kbest[key]) if kbest and kbest[key] > 0 else math.nan
        never = {}
        for d in koop:
            own = lookup(res, "plain", d["optimizer"])
            never[d["optimizer"]] = bool(own) and d[key] <= GOAL_SLOWER * own[key] * (bf or 1)
        out["measures"][m] = {
            "reference": r, "koopman": None if kbest is None else (kbest[key], kbest["optimizer"]),
            "speedup": speed, "clause1": speed >= GOAL_SPEEDUP, "never_slower": never,
            "clause2": bool(never) and all(never.values()),
            "best_other": None if obest is None else (obest[key], obest["method"],
                                                      obest["optimizer"]),
            "clause3": bool(kbest and obest) and compare(cost_ratio(kbest[key], obest[key]),
                                                         bf) == "faster"}
    return out


def profile(results: list[dict], measure: str = "wall", target: str = "50%",
            taus=(1, 1.25, 1.5, 2, 3, 4, 8)) -> dict:
    """A performance profile across tasks, AlgoPerf style: per method (named ``method`` or
    ``method (optimizer)`` where it runs on several), the fraction of tasks on which its
    median ``measure`` to ``target`` is within a factor tau of the fastest method on that
    task. A method that never reaches the target, or does not run on a task, counts as
    outside every tau."""
    per_task = {}
    for res in results:
        best = res["settings"]["best_plain"]
        times = {}
        for d in medians(res):
            if d["target_name"] != target:
                continue
            name = _profile_name(d["method"], d["optimizer"], best)
            if name is not None:
                times[name] = d[f"median_{measure}"]
        per_task[res["settings"]["task"]] = times
    names = sorted({n for t in per_task.values() for n in t})
    curves = {}
    for n in names:
        ratios = []
        for times in per_task.values():
            fastest = min(times.values())
            v = times.get(n, math.inf)
            ratios.append(v / fastest if fastest > 0 and math.isfinite(v) else math.inf)
        curves[n] = [sum(r <= tau for r in ratios) / len(ratios) for tau in taus]
    return {"measure": measure, "target": target, "taus": list(taus),
            "tasks": list(per_task), "fractions": curves}


def _profile_name(method: str, opt: str, best: str) -> str | None:
    """The profile compares each method on the reference optimizer (the alternatives to
    plain training, as a practitioner would pick among them); plain optimizers other than
    the reference keep their own name."""
    if method == "plain-copy":
        return None
    if method == "plain":
        return "plain (reference)" if opt == best else f"plain {opt}"
    if method == "koopman" and opt != best:
        return None
    return method


def _ratio_changes(a: dict, b: dict, measure: str) -> tuple[dict, list, float | None]:
    """Per method, its ``measure`` (wall or cpu) to the 50% target over the reference's, in
    ``a`` and in ``b``; each method's change ``exp|log(b / a)|`` (inf where one run reached
    the target and the other did not); and that of Koopman jumps on the reference (None
    where either is not finite)."""
    best = a["settings"]["best_plain"]
    key = f"median_{measure}"
    pa, pb = lookup(a, "plain", best), lookup(b, "plain", best)
    ratios, changes = {}, []
    for d in medians(a):
        if d["target_name"] != "50%" or (d["method"], d["optimizer"]) == ("plain", best):
            continue
        db = lookup(b, d["method"], d["optimizer"])
        xa = d[key] / pa[key] if pa else math.inf
        xb = db[key] / pb[key] if db and pb else math.inf
        ratios[f"{d['method']}:{d['optimizer']}"] = [xa, xb]
        if math.isfinite(xa) and math.isfinite(xb) and xa > 0 and xb > 0:
            changes.append(math.exp(abs(math.log(xb / xa))))
        elif math.isfinite(xa) != math.isfinite(xb):
            changes.append(math.inf)
    koop = ratios.get(f"koopman:{best}")
    change = math.exp(abs(math.log(koop[1] / koop[0]))) if koop and all(
        0 < x < math.inf for x in koop) else None
    return ratios, changes, change


def same_arithmetic(a: dict, b: dict) -> bool | None:
    """Whether two results were computed by the same float32 arithmetic, as far as their
    provenance can tell: False where the CPU model, the vector kernels torch picked
    (``cpu_capability``), the torch version or the CPU's signature (family, model,
    stepping, cache, flags) differ; True where all four are recorded by both and agree;
    None where too little is recorded to tell (results before 2026-12-08 have no
    signature). Two CPUs that both report AVX512, an AMD EPYC and an Intel Xeon, still
    round a long float32 run differently."""
    pa, pb = a["provenance"], b["provenance"]
    keys = ("cpu", "cpu_capability", "torch", "cpu_signature")
    if any(pa.get(k) is not None and pb.get(k) is not None and pa[k] != pb[k] for k in keys):
        return False
    return True if all(pa.get(k) is not None and pb.get(k) is not None for k in keys) \
        else None


def reproduction(a: dict, b: dict) -> dict:
    """Whether race results ``b`` reproduce ``a``.

    - ``identical_steps``, ``identical_flops``: the same steps and compute to every target in
      every row (counts, so exactly).
    - ``within_band``: each method's wall-time ratio to the reference at the 50% target
      changed by at most ``band``, the product of the two runs' noise bands: each run's
      ratio is uncertain by its own band, so two runs' ratios may differ by both.
      ``verdict_within_band``: the same for Koopman jumps on the reference, the verdict's
      ratio. ``cpu_*``: the same in thread-CPU seconds, which exclude the time a run waited
      for the machine.
    - ``same_arithmetic`` (see there); ``same_cpu_capability`` compares the kernels alone.

    The bands measure noise within one invocation; a rerun under another load can move a
    method's ratio beyond them, and this check reports it, not hides it."""
    def key(r):
        return (r["method"], r["optimizer"], r["seed"], r["target_name"])

    ra, rb = {key(r): r for r in a["results"]}, {key(r): r for r in b["results"]}
    out = {"same_rows": set(ra) == set(rb)}
    caps = [r["provenance"].get("cpu_capability") for r in (a, b)]
    out["same_cpu_capability"] = None if None in caps else caps[0] == caps[1]
    out["same_arithmetic"] = same_arithmetic(a, b)
    for m in ("steps", "flops"):
        out[f"identical_{m}"] = out["same_rows"] and all(
            ra[k][f"{m}_to_target"] == rb[k][f"{m}_to_target"] for k in ra)
    for measure, prefix in (("wall", ""), ("cpu", "cpu_")):
        bands = [noise_band(r)[measure]["factor"] or 1.0 for r in (a, b)]
        band = bands[0] * bands[1]
        ratios, changes, change = _ratio_changes(a, b, measure)
        worst = max(changes, default=1.0)
        out.update({f"{prefix}band": band, f"{prefix}worst_ratio_change": worst,
                    f"{prefix}median_ratio_change": statistics.median(changes)
                    if changes else 1.0,
                    f"{prefix}within_band": worst <= band,
                    f"{prefix}verdict_ratio_change": change,
                    f"{prefix}verdict_within_band": change is not None and change <= band,
                    f"{prefix}ratios_to_reference": ratios})
    return out
