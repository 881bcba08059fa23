"""Figures of the race: loss against wall time for every method, and one accelerated run
with its accepted and rejected jumps."""

from __future__ import annotations

from pathlib import Path

from ..harness.plotting import loss_unit, pyplot, tidy_log_axis

RACE_FIGURES = ("race_loss_vs_time.png", "race_jumps.png")


def _style(method: str):
    """Koopman runs solid and thick; plain dashed; ablation and baselines thin."""
    return {"plain": ("--", 1.2), "koopman": ("-", 2.2), "linear-extrapolation": (":", 1.2),
            "lawa": ("-.", 1.0)}.get(method, ((0, (1, 1)), 1.0))


# the three panels of the loss-against-time figure: which runs each one draws
PANELS = (
    ("each optimizer, plain and with Koopman jumps", ("plain", "koopman")),
    ("the ablation: Koopman against linear extrapolation", ("koopman", "linear-extrapolation")),
    ("the best plain optimizer against the alternatives",
     ("plain*", "koopman*", "lawa", "ema", "swa", "lookahead", "schedulefree")),
)


def _color(cmap, method: str, opt: str):
    opts = ["adam", "adadelta", "adagrad", "sgd", "schedulefree"]
    return {"ema": "0.45", "swa": "0.2", "lookahead": "tab:brown",
            "lawa": "tab:pink"}.get(method) or cmap(opts.index(opt) if opt in opts else 9)


def in_panel(method: str, opt: str, wanted, best: str) -> bool:
    """``wanted`` names methods; ``"plain*"`` / ``"koopman*"``: only on the best plain
    optimizer."""
    return method in wanted or (f"{method}*" in wanted and opt == best)


def draw_race_figures(res: dict, out: Path) -> None:
    plt = pyplot(report_fonts=False)
    task = res["settings"]["task"]
    targets = res["tuning"]["targets"]
    best = res["tuning"]["best_plain"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), dpi=150, sharey=True)
    cmap = plt.get_cmap("tab10")
    for ax, (title, wanted) in zip(axes, PANELS, strict=True):
        for key, runs in sorted(res["curves"].items()):
            method, opt = key.split(":")
            if not in_panel(method, opt, wanted, best):
                continue
            ls, lw = _style(method)
            pts = [(s, v) for s, _, v in runs[0] if v is not None and s > 0]  # seed 0
            if pts:
                ax.plot(*zip(*pts, strict=True), ls=ls, lw=lw,
                        color=_color(cmap, method, opt), label=f"{method} ({opt})")
        for name, t in targets.items():
            if t is not None:
                ax.axhline(t, color="k", lw=0.6, alpha=0.5)
                if ax is axes[-1]:  # named once, outside the data, right of the last panel
                    ax.text(1.01, t, f"{name} target", transform=ax.get_yaxis_transform(),
                            fontsize=8, ha="left", va="center", clip_on=False)
        ax.set_yscale("log")
        ax.set_xlabel("wall time (s), timed training only")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
                  frameon=False)
    axes[0].set_ylabel(f"evaluation loss ({loss_unit(task)})")
    tidy_log_axis(axes[0])
    fig.suptitle(f"{task}: loss against wall time (seed 0)")
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
