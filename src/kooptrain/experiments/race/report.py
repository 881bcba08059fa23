"""Turn race results (the JSON of ``kooptrain race``) into report.md and PNG figures."""

from __future__ import annotations

import math
from pathlib import Path

from .figures import RACE_FIGURES, draw_race_figures
from .summary import GOAL, GOAL_SPEEDUP, verdict

__all__ = ["RACE_FIGURES", "write_race_report"]


def _sec(x) -> str:
    return "never" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.2f}"


def _run_name(key) -> str:
    """``("lawa", "adam")`` -> ``lawa (adam)``, as the tables and figures name runs."""
    return "none" if key is None else f"{key[0]} ({key[1]})"


def _steps(x) -> str:
    return "never" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.0f}"


def _where_time_goes(res: dict) -> list[str]:
    """Per accelerated run of seed 0: attempts, acceptance, horizons, and the share of the
    timed run spent in attempts (fits, predictions, closure evaluations)."""
    L = ["## Where the time goes (seed 0 of each accelerated run)", "",
         "| run | attempts | accepted | closure calls per attempt | median horizon kept | "
         "time in attempts | share of the run's time |", "|---|---|---|---|---|---|---|"]
    for key, hist in sorted(res.get("histories", {}).items()):
        if not hist:
            continue
        total = res["curves"][key][0][-1][0]
        spent = sum(h["seconds"] for h in hist)
        acc = [h for h in hist if h["accepted"]]
        hs = sorted(h["horizon"] for h in acc if isinstance(h["horizon"], (int, float)))
        med_h = f"{hs[len(hs) // 2]:g}" if hs else "n/a"
        evals = sum(h["evaluations"] for h in hist) / len(hist)
        L.append(f"| {key} | {len(hist)} | {len(acc)} ({100 * len(acc) / len(hist):.0f}%) | "
                 f"{evals:.1f} | {med_h} | {spent:.2f} s | "
                 f"{100 * spent / total if total else 0:.0f}% |")
    return L + [""]


def write_race_report(res: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    draw_race_figures(res, out)
    s, p, t = res["settings"], res["provenance"], res["tuning"]
    L = [f"# kooptrain race: {s['task']}", "",
         f"{s['seeds']} seed(s) per method, {s['steps']} optimizer steps each, loss evaluated "
         f"every {s['eval_every']} steps (untimed). Machine: {p['cpu']}, {p['cores']} cores, "
         f"{p['threads']} torch threads; torch {p['torch']}; commit {p['git_commit']}"
         f"{' (with uncommitted changes)' if p.get('git_dirty') else ''}; {p['date']}.", "",
         f"Learning rates (tuned on seed {t.get('seed', 100)}): "
         + ", ".join(f"{k} {v:g}" for k, v in s["lr"].items()) + ".", "",
         f"Targets, fixed from the plain runs before any other method ran: the best plain "
         f"optimizer (**{t['best_plain']}**, lowest median loss at half the budget) reached "
         "these median losses after 25%, 50% and 100% of its budget: " +
         ", ".join(f"{k} = {v:.4g}" for k, v in t["targets"].items() if v is not None) +
         ".", "", GOAL, ""]
    v = verdict(res)
    L += ["## Verdict", "",
          f"- Best plain optimizer to the 50% target: {v['best_plain'][1]}, "
          f"{_sec(v['best_plain'][0])} s (median).",
          f"- Best Koopman-accelerated run: {v['best_koopman'][1]}, {_sec(v['best_koopman'][0])}"
          f" s: **{v['speedup']:.2f}x** the best plain optimizer's speed "
          f"({'meets' if v['clause1'] else 'misses'} the {GOAL_SPEEDUP}x clause).",
          "- Never more than 5% slower than its own plain optimizer: " +
          ", ".join(f"{o} {'yes' if ok else '**no**'}" for o, ok in v["never_slower"].items())
          + ".",
          f"- Best non-Koopman alternative: {_run_name(v['best_other'][1])}, "
          f"{_sec(v['best_other'][0])} s;"
          f" Koopman is {'ahead' if v['clause3'] else '**not ahead**'}.", ""]
    L += _where_time_goes(res)
    L += ["## Time and steps to each target (medians over seeds)", "",
          "| method | optimizer | 25%: s | 50%: s | 50%: steps | 100%: s | reached 50% | "
          "jumps accepted / tried |", "|---|---|---|---|---|---|---|---|"]
    by = {}
    for d in res["summary"]:
        by.setdefault((d["method"], d["optimizer"]), {})[d["target_name"]] = d
    for (method, opt), d in by.items():
        half = d.get("50%", {})
        L.append(f"| {method} | {opt} | {_sec(d.get('25%', {}).get('median_seconds'))} | "
                 f"{_sec(half.get('median_seconds'))} | {_steps(half.get('median_steps'))} | "
                 f"{_sec(d.get('100%', {}).get('median_seconds'))} | "
                 f"{half.get('reached')}/{half.get('n_seeds')} | "
                 f"{half.get('jumps_accepted')} / {half.get('jumps_tried')} |")
    L += ["", "'never': the target was not reached within the budget by at least half the "
          "seeds. Times count the optimizer steps and everything the method adds (recording, "
          "fits, the closure's evaluations, averaging).", "",
          "## Figures", "", f"![loss against wall time]({RACE_FIGURES[0]})", "",
          f"![one accelerated run]({RACE_FIGURES[1]})", ""]
    path = out / "report.md"
    path.write_text("\n".join(L))
    return path
