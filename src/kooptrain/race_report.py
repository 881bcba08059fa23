"""Turn race results (the JSON of ``kooptrain race``) into report.md and PNG figures."""

from __future__ import annotations

import math
from pathlib import Path

from .figures import loss_unit, tidy_log_axis

RACE_FIGURES = ("race_loss_vs_time.png", "race_jumps.png")
GOAL = ("Goal, in words: with medians over seeds, the Koopman accelerator (1) needs at most "
        "half the wall time of the best plain optimizer to reach the 50% target, (2) is "
        "never more than 5% slower than its own plain optimizer, and (3) is ahead of the "
        "linear-extrapolation ablation and of every baseline.")


def _sec(x) -> str:
    return "never" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.2f}"


def _steps(x) -> str:
    return "never" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.0f}"


def _style(method: str):
    """Koopman runs solid and thick; plain dashed; ablation and baselines thin."""
    return {"plain": ("--", 1.2), "koopman": ("-", 2.2), "linear-extrapolation": (":", 1.2),
            "lawa": ("-.", 1.0)}.get(method, ((0, (1, 1)), 1.0))


def _figures(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = res["settings"]["task"]
    targets = res["tuning"]["targets"]
    fig, ax = plt.subplots(figsize=(9, 5), dpi=150)
    cmap = plt.get_cmap("tab10")
    opts = ["adam", "adadelta", "adagrad", "sgd", "schedulefree"]
    for key, runs in sorted(res["curves"].items()):
        method, opt = key.split(":")
        ls, lw = _style(method)
        color = cmap(opts.index(opt) if opt in opts else 9)
        if method in ("ema", "swa", "lookahead", "lawa"):
            color = {"ema": "0.45", "swa": "0.2", "lookahead": "tab:brown",
                     "lawa": "tab:pink"}[method]
        c = runs[0]  # seed 0
        pts = [(s, v) for s, _, v in c if v is not None and s > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), ls=ls, lw=lw, color=color,
                    label=f"{method} ({opt})")
    for name, t in targets.items():
        if t is not None:
            ax.axhline(t, color="k", lw=0.6, alpha=0.5)
            ax.annotate(f"{name} target", (ax.get_xlim()[1], t), fontsize=8, ha="right",
                        va="bottom")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s), timed training only")
    ax.set_ylabel(f"evaluation loss ({loss_unit(task)})")
    tidy_log_axis(ax)
    ax.set_title(f"{task}: loss against wall time (seed 0)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(out / RACE_FIGURES[0])
    plt.close(fig)

    hist_key = next((k for k in ("koopman:" + res["tuning"]["best_plain"], "koopman:adam")
                     if k in res.get("histories", {})), None)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=150)
    if hist_key is not None:
        c = res["curves"][hist_key][0]
        pts = [(st, v) for _, st, v in c if v is not None]
        opt = hist_key.split(":")[1]
        ax.plot(*zip(*pts, strict=True), color="tab:blue", lw=1.5, label=f"koopman ({opt})")
        plain = res["curves"].get("plain:" + opt)
        if plain:
            pts = [(st, v) for _, st, v in plain[0] if v is not None]
            ax.plot(*zip(*pts, strict=True), color="0.5", ls="--", lw=1.2,
                    label=f"plain ({opt})")
        hist = res["histories"][hist_key]
        acc = [(h["step"], h["loss_after"]) for h in hist if h["accepted"]]
        rej = [(h["step"], h["loss_before"]) for h in hist if not h["accepted"]
               and h["loss_before"] is not None]
        if acc:
            ax.scatter(*zip(*acc, strict=True), marker="v", color="tab:green", s=30, zorder=3,
                       label=f"accepted jump ({len(acc)})")
        if rej:
            ax.scatter(*zip(*rej, strict=True), marker="x", color="tab:red", s=20, zorder=3,
                       label=f"rejected attempt ({len(rej)})")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"evaluation loss ({loss_unit(task)})")
    tidy_log_axis(ax)
    ax.set_title(f"{task}: one accelerated run (seed 0) and its jumps")
    if hist_key is None:
        ax.text(0.5, 0.5, "no accelerated run with a jump history in these results",
                transform=ax.transAxes, ha="center", va="center")
    else:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(out / RACE_FIGURES[1])
    plt.close(fig)


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
    never_slower = {o: m(("koopman", o)) <= 1.05 * m(("plain", o)) for o in opts}
    speedup = best_plain[0] / best_koop[0] if best_koop[0] > 0 else math.inf
    return {"best_plain": best_plain, "best_koopman": best_koop, "speedup": speedup,
            "clause1": speedup >= 2, "never_slower": never_slower,
            "clause2": all(never_slower.values()), "best_other": best_other,
            "clause3": best_koop[0] < best_other[0]}


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
    _figures(res, out)
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
          f"({'meets' if v['clause1'] else 'misses'} the 2x clause).",
          "- Never more than 5% slower than its own plain optimizer: " +
          ", ".join(f"{o} {'yes' if ok else '**no**'}" for o, ok in v["never_slower"].items())
          + ".",
          f"- Best non-Koopman alternative: {v['best_other'][1]}, {_sec(v['best_other'][0])} s;"
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
