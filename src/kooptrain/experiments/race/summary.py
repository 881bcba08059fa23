"""The race's arithmetic on result rows: when a curve first reaches a target, the targets
themselves, medians over seeds, and the goal's verdict. Pure functions of JSON-ready dicts."""

from __future__ import annotations

import math
import statistics

# The goal, as numbers (verdict below) and as words (GOAL, quoted by the report).
GOAL_SPEEDUP = 2  # the best accelerated run reaches the 50% target this many times sooner
GOAL_SLOWER = 1.05  # ... and is never slower than this factor times its own plain optimizer
_SHARE = {2: "half", 3: "a third", 4: "a quarter"}.get(GOAL_SPEEDUP, f"1/{GOAL_SPEEDUP} of")
GOAL = ("Goal, in words: with medians over seeds, the Koopman accelerator (1) needs at most "
        f"{_SHARE} the wall time of the best plain optimizer to reach the 50% target, (2) is "
        f"never more than {100 * GOAL_SLOWER - 100:.0f}% slower than its own plain optimizer, "
        "and (3) is ahead of the linear-extrapolation ablation and of every baseline.")


def first_reach(curve, target: float):
    """``(seconds, step)`` of the first evaluation at or below ``target``, else Nones."""
    for sec, step, loss in curve:
        if loss is not None and loss <= target:
            return sec, step
    return None, None


def fix_targets(curves: dict, steps: int) -> dict:
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


def medians_to_target(rows: list[dict]) -> list[dict]:
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


def verdict(res: dict) -> dict:
    """The goal's three clauses on the 50% target, medians over seeds."""
    med = {(d["method"], d["optimizer"]): d["median_seconds"] for d in res["summary"]
           if d["target_name"] == "50%"}

    def m(key):
        v = med.get(key)
        return math.inf if v is None else v

    opts = sorted({o for meth, o in med if meth == "plain"})
    best_plain = min((m(("plain", o)), o) for o in opts)
    best_koop = min((m(("koopman", o)), o) for o in opts)
    others = [k for k in med if k[0] not in ("plain", "koopman")]
    best_other = min((m(k), k) for k in others) if others else (math.inf, None)
    never_slower = {o: m(("koopman", o)) <= GOAL_SLOWER * m(("plain", o)) for o in opts}
    speedup = best_plain[0] / best_koop[0] if best_koop[0] > 0 else math.inf
    return {"best_plain": best_plain, "best_koopman": best_koop, "speedup": speedup,
            "clause1": speedup >= GOAL_SPEEDUP, "never_slower": never_slower,
            "clause2": all(never_slower.values()), "best_other": best_other,
            "clause3": best_koop[0] < best_other[0]}
