"""Figures of the race: held-out loss against wall time and against compute, one accelerated
run with its jumps and its training loss beside the held-out one, and the performance
profile across tasks."""

from __future__ import annotations

import math
from pathlib import Path

from ..harness.plotting import pyplot, tidy_log_axis
from .summary import FLOPS, HELDOUT, STEP, TRAIN, WALL

RACE_FIGURES = ("race_heldout.png", "race_jumps.png")
PROFILE_FIGURE = "race_profile.png"

# the two rows of the held-out figure: which methods each one draws (on the reference
# optimizer; "plain" rows add the other plain optimizers)
ROWS = (
    ("Koopman jumps against iterate extrapolation",
     ("plain", "koopman", "linear-extrapolation", "rna", "anderson", "rna-offline")),
    ("Koopman jumps against averaging, Lookahead and Schedule-Free",
     ("plain", "koopman", "lawa", "ema", "swa", "lookahead", "schedulefree", "bn-refresh",
      "plain*")),
    ("Evaluation copies and hand-offs: Koopman averages against EMA and SWA",
     ("plain", "ema", "swa", "koopman-average", "koopman-average-weights", "schedulefree",
      "schedulefree-koopman-average", "adam-koopman-lbfgs", "plain*")),
)
STYLE = {  # method -> (color, linestyle, linewidth)
    "plain": ("k", "--", 1.4), "koopman": ("tab:blue", "-", 2.2),
    "linear-extrapolation": ("tab:cyan", ":", 1.4), "rna": ("tab:red", "-", 1.2),
    "anderson": ("tab:orange", "-", 1.2), "rna-offline": ("tab:red", (0, (1, 1)), 1.2),
    "lawa": ("tab:pink", "-.", 1.1), "ema": ("0.45", "-", 1.0), "swa": ("0.2", ":", 1.2),
    "lookahead": ("tab:brown", "-", 1.0), "schedulefree": ("tab:green", "-", 1.3),
    "bn-refresh": ("tab:olive", (0, (3, 1, 1, 1)), 1.2),
    # the Koopman copies and hand-offs: the Koopman blue family, each its own dash
    "koopman-average": ("tab:purple", "-", 1.4),
    "koopman-average-weights": ("tab:purple", (0, (4, 2)), 1.2),
    "schedulefree-koopman-average": ("tab:green", (0, (4, 2)), 1.4),
    "adam-koopman-lbfgs": ("navy", (0, (1, 2)), 1.6),
}
OTHER_PLAIN = ("goldenrod", "teal", "tab:gray", "tab:olive")  # no Koopman purple


def _selected(res: dict, wanted) -> list[tuple[str, str, tuple]]:
    """``(key, label, style)`` of the runs a row draws, in a fixed order."""
    best = res["settings"]["best_plain"]
    out = []
    for m in wanted:
        if m == "plain*":
            others = [k for k in res["curves"] if k.startswith("plain:") and k != f"plain:{best}"]
            for i, k in enumerate(sorted(others)):
                out.append((k, k.replace(":", " "), (OTHER_PLAIN[i % 4], "--", 1.0)))
            continue
        # on the reference optimizer, else on the one the method brings (Schedule-Free's,
        # the hand-off's Adam then L-BFGS)
        keys = [f"{m}:{best}"] + sorted(k for k in res["curves"] if k.startswith(f"{m}:"))
        key = next((k for k in keys if k in res["curves"]), None)
        if key is not None:
            opt = key.split(":", 1)[1]
            out.append((key, m if opt == m else f"{m} ({opt})", STYLE[m]))
    return out


def _line(ax, curve, xcol: int, ycol: int, style, label, scale: float = 1.0):
    pts = [(p[xcol] * scale, p[ycol]) for p in curve if p[ycol] is not None and p[xcol] > 0]
    if pts:
        color, ls, lw = style
        ax.plot(*zip(*pts, strict=True), color=color, ls=ls, lw=lw, label=label)


def _targets(ax, targets: dict, label: bool) -> None:
    """Target lines; with ``label``, their names right of the panel, pushed apart where
    targets lie close together so that no two names overlap. Call after the data is drawn
    (the names are placed in the axes' final coordinates)."""
    lines = sorted((t, name) for name, t in targets.items() if t is not None
                   and math.isfinite(t))
    for t, _ in lines:
        ax.axhline(t, color="k", lw=0.6, alpha=0.4)
    if not label or not lines:
        return
    lo, hi = (math.log(v) for v in ax.get_ylim())
    pos, last = [], -1.0
    for t, _ in lines:  # axes fractions, bottom up, at least 0.035 apart
        f = max((math.log(t) - lo) / (hi - lo), last + 0.035)
        pos.append(f)
        last = f
    for (t, name), f in zip(lines, pos, strict=True):
        ax.annotate(f"{name} target", xy=(1.0, (math.log(t) - lo) / (hi - lo)),
                    xycoords="axes fraction", xytext=(1.01, f), textcoords="axes fraction",
                    fontsize=7, ha="left", va="center", annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"})


def draw_race_figures(res: dict, out: Path) -> None:
    plt = pyplot(report_fonts=False)
    s = res["settings"]
    task, ylabel = s["task"], s["heldout"]
    targets = res["tuning"]["targets"]["heldout"]
    top = max((p[FLOPS] for cs in res["curves"].values() for p in cs[0]), default=1.0)
    unit, scale = next((u, f) for u, f in (("GFLOP", 1e-9), ("TFLOP", 1e-12),
                                          ("PFLOP", 1e-15)) if top * f < 1000 or u == "PFLOP")
    rows = [(title, runs) for title, wanted in ROWS if (runs := _selected(res, wanted))]
    fig, axes = plt.subplots(len(rows), 2, figsize=(13, 4.75 * len(rows)), dpi=150,
                             sharey=True, squeeze=False)
    for row, (title, runs) in zip(axes, rows, strict=True):
        for ax, (xcol, xlabel, xscale) in zip(row, ((WALL, "wall time (s), own work only", 1.0),
                                                    (FLOPS, f"compute ({unit})", scale)),
                                              strict=True):
            for key, label, style in runs:
                _line(ax, res["curves"][key][0], xcol, HELDOUT, style, label, xscale)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.25, which="both")
        row[0].set_ylabel(f"held-out: {ylabel}")
        row[0].legend(fontsize=8, loc="upper right", frameon=False)
        tidy_log_axis(row[0])
    for row in axes:  # once every row is drawn: the shared y limits are final
        for ax in row:
            _targets(ax, targets, label=ax is row[-1])
    fig.suptitle(f"{task}: held-out loss against wall time and against compute (seed 0)")
    fig.tight_layout()
    fig.savefig(out / RACE_FIGURES[0])
    plt.close(fig)
    _draw_jumps(plt, res, out)


def _draw_jumps(plt, res: dict, out: Path) -> None:
    s = res["settings"]
    best = s["best_plain"]
    key = f"koopman:{best}"
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=150)
    if key in res["curves"]:
        for k, color, name in ((key, "tab:blue", f"koopman ({best})"),
                               (f"plain:{best}", "0.35", f"plain ({best})")):
            c = res["curves"][k][0]
            _line(ax, c, STEP, HELDOUT, (color, "-", 1.6), f"{name}, held-out")
            _line(ax, c, STEP, TRAIN, (color, ":", 1.2), f"{name}, training loss")
        hist = res["histories"].get(key, [])
        acc = [(h["step"], h["loss_after"]) for h in hist if h["accepted"]]
        rej = [(h["step"], h["loss_before"]) for h in hist if not h["accepted"]
               and h["loss_before"] is not None]
        if acc:
            ax.scatter(*zip(*acc, strict=True), marker="v", color="tab:green", s=28, zorder=3,
                       label=f"accepted jump ({len(acc)}): the judge's loss after,\n"
                             "on the judge's own batch (not a point of the curves)")
        if rej:
            ax.scatter(*zip(*rej, strict=True), marker="x", color="tab:red", s=18, zorder=3,
                       label=f"rejected attempt ({len(rej)}): the judge's loss")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.text(0.5, 0.5, "no Koopman run on the reference optimizer in these results",
                transform=ax.transAxes, ha="center", va="center")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"held-out (solid): {s['heldout']}\ntraining loss (dotted)", fontsize=9)
    tidy_log_axis(ax)
    ax.set_title(f"{s['task']}: one accelerated run (seed 0), its jumps, and its training "
                 "loss beside the held-out loss", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / RACE_FIGURES[1])
    plt.close(fig)


def draw_profile(profiles: list[dict], path: Path) -> None:
    """One panel per measure: the fraction of tasks within a factor tau of the best."""
    plt = pyplot(report_fonts=False)
    fig, axes = plt.subplots(1, len(profiles), figsize=(6.5 * len(profiles), 5), dpi=150,
                             sharey=True, squeeze=False)
    for ax, prof in zip(axes[0], profiles, strict=True):
        for name, fr in sorted(prof["fractions"].items()):
            if name.startswith("plain ") and "reference" not in name:
                continue  # the other plain optimizers: in the table, not the figure
            color, ls, lw = STYLE.get(name.split(" ")[0], ("0.5", "--", 1.0))
            ax.step(prof["taus"], fr, where="post", color=color, ls=ls, lw=lw, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 1.5, 2, 3, 4, 6, 8], ["1", "1.5", "2", "3", "4", "6", "8"])
        ax.set_xlabel(f"tau: within this factor of the best {prof['measure']} to the "
                      f"{prof['target']} held-out target")
        ax.set_title(f"{prof['measure']}, {len(prof['tasks'])} tasks: "
                     + ", ".join(prof["tasks"]), fontsize=9)
        ax.grid(alpha=0.25)
    axes[0][0].set_ylabel("fraction of tasks")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("Performance profile (AlgoPerf style); a method that never reaches the "
                 "target is outside every tau")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
