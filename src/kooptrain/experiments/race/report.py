"""Turn race results (the JSON of ``kooptrain race``) into report.md and PNG figures, and
several tasks' results into the performance profile."""

from __future__ import annotations

import math
from pathlib import Path

from ..harness.provenance import describe_code
from .figures import PROFILE_FIGURE, RACE_FIGURES, draw_profile, draw_race_figures
from .summary import (
    GOAL,
    GOAL_SPEEDUP,
    compare,
    cost_ratio,
    lookup,
    medians,
    noise_band,
    profile,
    verdict,
)

__all__ = ["RACE_FIGURES", "write_profile", "write_race_report"]


def _num(x, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and (math.isinf(x) or math.isnan(x))):
        return "never"
    return f"{x:{fmt}}"


def _factor(x) -> str:
    return "n/a" if x is None else f"x{x:.3f} ({100 * (x - 1):.1f}%)"


def _command(s: dict, p: dict, t: dict) -> str:
    # a run that tuned records its grid; one that used the committed choice does not. A
    # task file is named by its path (and factory), as it was given
    f = p.get("task_file")
    task = s["task"] if not f else f["path"] + ("" if f.get("factory", "task") == "task"
                                                 else f":{f['factory']}")
    return (f"OMP_NUM_THREADS={s.get('threads') or p['threads']} kooptrain race {task}"
            + (" --full" if s.get("full") else "") + (" --tune" if "grid" in t else "")
            + (f" --methods {','.join(s['methods'])}" if s.get("methods") else ""))


def _header(res: dict) -> list[str]:
    s, p, t = res["settings"], res["provenance"], res["tuning"]
    L = [f"# kooptrain race: {s['task']}", "",
         f"Command: `{_command(s, p, t)}`. Machine: {p['cpu']}"
         f"{' (' + p['cpu_capability'] + ')' if p.get('cpu_capability') else ''}"
         f"{'; ' + p['cpu_signature'] if p.get('cpu_signature') else ''}, "
         f"{p['cores']} cores, "
         f"{p['threads']} torch thread(s); torch {p['torch']}; {describe_code(p)}; "
         f"{p['date']}.", "",
         f"{s['seeds']} seed(s), {s['steps']} optimizer steps per run, scored every "
         f"{s['eval_every']} steps (untimed). The {len(s['plan'])} runs of a seed advance in "
         "lockstep in one process (one step each, in rotating order), so a slow phase of the "
         "machine hits them alike; each run's clock counts only its own work."]
    if not s.get("full"):
        L += ["", "**Not the full race**: without `--full` only the reference optimizer, its "
              "copy, Koopman jumps, RNA and Schedule-Free run, on one seed. The committed "
              "reports use `--full` (every method, 3 seeds)."]
    how = "" if "grid" in t else (f"; the committed choice of `--tune`, results/race/"
                                  f"{s['task']}/tuning-{s['task']}.json")
    lrs = ("the task's own, not tuned; `--tune` chooses them from its grids"
           if t.get("given") else f"tuned on seed {t.get('seed', 100)}, lowest final "
           f"held-out loss{how}")
    L += ["", f"Held-out score: **{s['heldout']}**. Learning rates ({lrs}): "
          + ", ".join(f"{k} {v:g}" for k, v in s["lr"].items()) + f". Reference optimizer: "
          f"**{s['best_plain']}**. RNA/Anderson: window {s['extrapolation']['window']} "
          f"(k = {s['extrapolation']['window'] - 1}), lam {s['extrapolation']['lam']:g}."]
    if s.get("warmup"):
        L += ["", f"Schedule: linear warm-up over {100 * s['warmup']:.0f}% of the budget, then "
              f"cosine decay to 10%; gradient clipping at norm {s['clip']:g}; AdamW weight "
              "decay 0.1."]
    if "corpus" in s:
        c = s["corpus"]
        L += ["", f"Corpus: the {c['documents']} top-level `*.py` files of `{c['root']}` "
              f"(sha256 {c['sha256'][:16]}...), {c['train_bytes']:,} training bytes in "
              f"{c['train_documents']} documents, {c['val_bytes']:,} validation bytes in "
              f"{c['val_documents']} other documents."]
    tg = res["tuning"]["targets"]
    L += ["", "Targets: the median over seeds of the best held-out loss the reference reached by "
          "25%, 50% and 100% of its budget: " + ", ".join(
              f"{k} = {_num(v, '.4g')}" for k, v in tg["heldout"].items())
          + ". Training-loss targets, beside them: " + ", ".join(
              f"{k} = {_num(v, '.4g')}" for k, v in tg["train"].items()) + ".", "", GOAL, ""]
    return L


def _noise(res: dict) -> list[str]:
    b = noise_band(res)
    return ["## Noise band", "",
            f"The reference optimizer ran twice per seed as two identical methods. Steps and "
            f"compute to every target: {'identical' if b['identical'] else '**not identical**'}"
            ". Their times differ by:", "",
            "| measure | medians over seeds | worst single seed | the band (the larger) |",
            "|---|---|---|---|"] + [
            f"| {name} | {_factor(b[m]['median_factor'])} | {_factor(b[m]['per_seed_factor'])} "
            f"| **{_factor(b[m]['factor'])}** |" for m, name in (("wall", "wall"),
                                                               ("cpu", "thread CPU"))] + [
            "", "A wall-time difference between methods is called only beyond the band; compute "
            "and steps are counts and have none.", ""]


def _verdict(res: dict) -> list[str]:
    v = verdict(res)
    L = ["## Verdict (held-out 50% target, medians over seeds)", ""]
    for m, unit, scale in (("wall", "s", 1.0), ("flops", "TFLOP", 1e-12)):
        d = v["measures"][m]
        k = d["koopman"]
        o = d["best_other"]
        L.append(f"- **{'Wall time' if m == 'wall' else 'Compute'}**: reference "
                 f"{_num(d['reference'] * scale)} {unit}; best Koopman run "
                 + ("none" if k is None else f"({k[1]}) {_num(k[0] * scale)} {unit}")
                 + f", **{_num(d['speedup'], '.2f')}x** the reference "
                 f"({'meets' if d['clause1'] else 'misses'} the {GOAL_SPEEDUP}x clause); never "
                 "more than 5% slower than its own plain optimizer: "
                 + (", ".join(f"{o_} {'yes' if ok else '**no**'}"
                              for o_, ok in d["never_slower"].items()) or "n/a")
                 + "; best alternative: " + ("none" if o is None else
                                             f"{o[1]} ({o[2]}) {_num(o[0] * scale)} {unit}")
                 + f", Koopman {'ahead' if d['clause3'] else '**not ahead**'}.")
    return L + [""]


def _table(res: dict) -> list[str]:
    s = res["settings"]
    best = s["best_plain"]
    band = noise_band(res)["wall"]["factor"]
    ref = lookup(res, "plain", best)
    acc = any(d.get("final_accuracy") is not None for d in res["summary"])
    ref_wall = ref["median_wall"] if ref else math.inf
    L = ["## Every run (medians over seeds)", "",
         "Held-out targets: wall seconds to 25/50/100%; at 50%: thread CPU seconds, compute, "
         "steps, and the wall ratio to the reference read against the band. Beside them: steps "
         "to the training-loss 50% target, and the final held-out and training losses.", "",
         "| method | optimizer | 25% s | 50% s | 100% s | 50% CPU s | 50% TFLOP | 50% steps | "
         "50% vs reference | reached 50% | steps to train 50% | final held-out | final train |"
         + (" final accuracy |" if acc else "") + " closure calls | jumps kept / tried |",
         "|---" * (15 + acc) + "|"]
    by: dict = {}
    for d in medians(res):
        by.setdefault((d["method"], d["optimizer"]), {})[d["target_name"]] = d
    for (method, opt), d in by.items():
        h = d["50%"]
        ratio = h["median_wall"] / ref_wall if 0 < ref_wall < math.inf else math.nan
        vs = "n/a" if not math.isfinite(ratio) else f"{ratio:.2f}x, {compare(ratio, band)}"
        if h["median_wall"] == math.inf:
            vs = "never"
        L.append(f"| {method} | {opt} | {_num(d['25%']['median_wall'])} | "
                 f"{_num(h['median_wall'])} | {_num(d['100%']['median_wall'])} | "
                 f"{_num(h['median_cpu'])} | {_num(h['median_flops'] * 1e-12)} | "
                 f"{_num(h['median_steps'], '.0f')} | {vs} | {h['reached']}/{h['n_seeds']} | "
                 f"{_num(h['median_steps_to_train_target'], '.0f')} | "
                 f"{_num(h['final_heldout'], '.4g')} | {_num(h['final_train'], '.4g')} | "
                 + (f"{_num(h['final_accuracy'], '.3f')} | " if acc else "")
                 + f"{h['total_closure_calls']:.0f} | {h['jumps_accepted']} / "
                 f"{h['jumps_tried']} |")
    L += ["", "'never': the target was not reached within the budget by at least half the "
          "seeds. Wall and CPU time count each run's own work: the step (forward, backward, "
          "clipping, optimizer and schedule) and whatever the method adds (recording, fits, "
          "closure evaluations, BatchNorm refreshes, averaging, extrapolation). Compute "
          "counts FLOPs: forward and backward passes and closure evaluations with "
          "`torch.utils.flop_counter` (once per task, times the calls made), fits and "
          "extrapolations from the complexity model; optimizer updates (elementwise, O(p)) are "
          "not counted.", ""]
    return L


def _where_time_goes(res: dict) -> list[str]:
    L = ["## Where the time goes (seed 0 of each accelerated run)", "",
         "| run | attempts | accepted | closure calls per attempt | median horizon kept | "
         "time in attempts | share of the run's time |", "|---|---|---|---|---|---|---|"]
    handoffs = []
    for key, hist in sorted(res.get("histories", {}).items()):
        if hist and "seconds" not in hist[0]:  # not the accelerator's attempts: a hand-off
            handoffs += [f"- {key}: at step {h['step']} kept **{h['kept']}** (judged "
                         + ", ".join(f"{k} {v:.4g}" for k, v in h["scores"].items()) + ")"
                         for h in hist]
            continue
        if not hist:
            continue
        total = res["totals"][key][0]["wall"]
        spent = sum(h["seconds"] for h in hist)
        kept = [h for h in hist if h["accepted"]]
        hs = sorted(h["horizon"] for h in kept if isinstance(h["horizon"], (int, float)))
        med_h = f"{hs[len(hs) // 2]:g}" if hs else "n/a"
        evals = sum(h["evaluations"] for h in hist) / len(hist)
        L.append(f"| {key} | {len(hist)} | {len(kept)} ({100 * len(kept) / len(hist):.0f}%) | "
                 f"{evals:.1f} | {med_h} | {spent:.2f} s | "
                 f"{100 * spent / total if total else 0:.0f}% |")
    if handoffs:
        L += ["", "The hand-off at the switch (seed 0): the candidate kept, and the judged "
                  "training loss of each one (`now`: the weights Adam left).", "", *handoffs]
    return L + [""]


def write_race_report(res: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    draw_race_figures(res, out)
    L = _header(res) + _noise(res) + _verdict(res) + _table(res) + _where_time_goes(res)
    L += ["## Figures", "", f"![held-out loss against wall time and compute]({RACE_FIGURES[0]})",
          "", f"![one accelerated run]({RACE_FIGURES[1]})", ""]
    path = out / "report.md"
    path.write_text("\n".join(L))
    return path


def _ratio(a, b) -> str:
    if a is None or b is None or not (0 < b < math.inf) or not (0 < a < math.inf):
        return "never" if b == math.inf else "n/a"
    return f"{a / b:.2f}x"


def _per_task(results: list[dict]) -> list[str]:
    """One line per task: the reference, Koopman jumps on it (speed-up in wall time and in
    compute, read against the band), the best alternative and the band."""
    L = ["## Per task (held-out 50% target, medians over seeds)", "",
         "Speed-ups are the reference's time (or compute) divided by the method's: above 1 is "
         "faster.", "",
         "| task | reference | its wall s / GFLOP / steps | Koopman: wall | compute | steps | "
         "RNA: wall | Anderson: wall | fastest alternative (wall) | fastest other plain "
         "optimizer (wall) | band |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        best = res["settings"]["best_plain"]
        band = noise_band(res)["wall"]["factor"]
        ref = lookup(res, "plain", best)
        k, r, a = (lookup(res, m, best) for m in ("koopman", "rna", "anderson"))
        alts = [d for d in medians(res) if d["target_name"] == "50%"
                and d["method"] not in ("plain", "plain-copy", "koopman")]
        fast = min(alts, key=lambda d: d["median_wall"], default=None)
        plains = [d for d in medians(res) if d["target_name"] == "50%"
                  and d["method"] == "plain" and d["optimizer"] != best]
        other = min(plains, key=lambda d: d["median_wall"], default=None)

        def wall(d, ref=ref, band=band):
            if d is None:
                return "n/a"
            x = _ratio(ref["median_wall"], d["median_wall"])
            if x.endswith("x"):
                x += f" ({compare(cost_ratio(d['median_wall'], ref['median_wall']), band)})"
            return x

        L.append(f"| {res['settings']['task']} | {best} | {_num(ref['median_wall'])} / "
                 f"{_num(ref['median_flops'] * 1e-9)} / {_num(ref['median_steps'], '.0f')} | "
                 f"{wall(k)} | {_ratio(ref['median_flops'], k and k['median_flops'])} | "
                 f"{_num(k and k['median_steps'], '.0f')} | {wall(r)} | {wall(a)} | "
                 + ("n/a" if fast is None else f"{fast['method']} ({fast['optimizer']}) "
                    f"{wall(fast)}") + " | "
                 + ("n/a" if other is None else f"{other['optimizer']} {wall(other)}")
                 + f" | {_factor(band)} |")
    return L + [""]


def write_profile(results: list[dict], out_dir: str | Path) -> Path:
    """``profile.md`` and the profile figure from several tasks' race results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profs = [profile(results, m) for m in ("wall", "flops")]
    fine = tuple(2 ** (3 * i / 300) for i in range(301))  # tau from 1 to 8, for the figure
    draw_profile([profile(results, m, taus=fine) for m in ("wall", "flops")],
                 out / PROFILE_FIGURE)
    L = ["# kooptrain race: performance profile across tasks", "",
         "For each task, each method's median time (or compute) to the held-out 50% target is "
         "divided by the fastest method's on that task; the profile is the fraction of tasks "
         "on which a method is within a factor tau of the fastest. Methods run on each task's "
         "reference optimizer. Tasks: " + ", ".join(profs[0]["tasks"]) + ".", ""]
    L += _per_task(results)
    for prof in profs:
        L += [f"## {prof['measure']}", "", "| method | " + " | ".join(
            f"tau={t:g}" for t in prof["taus"]) + " |", "|---" * (len(prof["taus"]) + 1) + "|"]
        for name, fr in sorted(prof["fractions"].items(), key=lambda kv: -sum(kv[1])):
            L.append(f"| {name} | " + " | ".join(f"{f:.2f}" for f in fr) + " |")
        L.append("")
    L += ["Sources: " + ", ".join(f"{r['settings']['task']} ({r['provenance']['date']}, commit "
                                   f"{r['provenance']['git_commit']})" for r in results) + ".",
          "", f"![performance profile]({PROFILE_FIGURE})", ""]
    path = out / "profile.md"
    path.write_text("\n".join(L))
    return path
