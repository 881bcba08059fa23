"""Turn window-experiment results (the JSON) into report.md and PNG figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

FIGURES = ("loss_curves.png", "scatter.png", "horizon_sweep.png", "spectra.png")


def _fmt(x, spec=".3g"):
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, float) and math.isinf(x):
        return "inf (diverged)"
    return format(x, spec)


def _loss(x):
    """A Koopman loss: null in the JSON means the jump diverged (inf/NaN)."""
    return "diverged" if x is None else _fmt(x)


def _range(d, key):
    r = d.get(key + "_range")
    if not r or d.get("n_seeds", 1) < 2:
        return ""
    return f" [{_loss(r[0])}–{_loss(r[1])}]" if key == "loss_ratio" else \
        f" [{_fmt(r[0])}–{_fmt(r[1])}]"


def _figures(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["settings"]
    opts = list(res["curves"])
    rows = res["results"]
    n = max(len(opts), 1)

    # loss curves with Koopman predictions overlaid
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False, dpi=64)
    for ax, o in zip(axes[0], opts, strict=False):
        c = res["curves"][o]
        steps, losses = zip(*c["points"], strict=True)
        ax.semilogy(steps, losses, color="k", lw=1, label=f"{o} (seed {c['seed']})")
        ax.axvspan(s["t1"], s["t2"], color="0.9", label="recorded window")
        for cfg, mk in (("node (paper)", "o"), ("node affine clip", "s"), ("do-nothing", "x")):
            pts = [(s["t2"] + r["T"], r["loss_koopman"]) for r in rows
                   if r["optimizer"] == o and r["seed"] == c["seed"] and r["config"] == cfg
                   and r["split"] == "report" and r["T"] is not None
                   and r["loss_koopman"] is not None]
            if pts:
                ax.semilogy(*zip(*sorted(pts), strict=True), mk + "--", ms=4, label=cfg)
        ax.set_xlabel("step")
        ax.set_ylabel("evaluation loss")
        ax.set_title(o)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png")
    plt.close(fig)

    # Fig. 1e: |error| against |true evolution|, per parameter
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.4), squeeze=False, dpi=64)
    for ax, o in zip(axes[0], opts, strict=False):
        for cfg, d in res["scatter"].get(o, {}).items():
            ax.loglog(d["evolution"], d["error"], ".", ms=3, alpha=0.6, label=cfg)
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k:", lw=0.8, label="error = evolution")
        ax.set_xlabel("|w(t2+T) - w(t2)|")
        ax.set_ylabel("|prediction - w(t2+T)|")
        stride = max([d.get("stride", 1) for d in res["scatter"].get(o, {}).values()] or [1])
        ax.set_title(f"{o}, T={s['T']}" + (f" (every {stride}th parameter)" if stride > 1
                                            else ""))
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "scatter.png")
    plt.close(fig)

    # horizon sweep: median error/evolution and loss ratio against T
    configs = [c["name"] for c in s["configurations"] if not c["fixed_point"]] + ["linear",
                                                                                 "do-nothing"]
    fig, axes = plt.subplots(2, n, figsize=(4 * n, 5.5), squeeze=False, dpi=64)
    for j, o in enumerate(opts):
        for cfg in configs:
            xs, etg, ratio = [], [], []
            for h in s["horizons"]:
                rs = [r for r in rows if r["optimizer"] == o and r["config"] == cfg
                      and r["T"] == h and r["split"] == "report"]
                if not rs:
                    continue
                e = sorted(r["error_to_growth"] if r["error_to_growth"] is not None
                           else math.inf for r in rs)
                q = sorted((r["loss_koopman"] / r["loss_optimizer"]) if r["loss_koopman"]
                           is not None and r["loss_optimizer"] else math.inf for r in rs)
                xs.append(h)
                etg.append(e[len(e) // 2])
                ratio.append(q[len(q) // 2])
            style = {"linear": "k--", "do-nothing": "k:"}.get(cfg, "-")
            axes[0, j].loglog(xs, etg, style, marker=".", lw=1, label=cfg)
            axes[1, j].loglog(xs, ratio, style, marker=".", lw=1, label=cfg)
        axes[0, j].axhline(1, color="0.5", lw=0.6)
        axes[1, j].axhline(1, color="0.5", lw=0.6)
        axes[0, j].set_title(o)
        axes[0, j].set_ylabel("median |err| / median |evolution|")
        axes[1, j].set_ylabel("loss(Koopman) / loss(optimizer)")
        axes[1, j].set_xlabel("horizon T (steps)")
    axes[0, 0].legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "horizon_sweep.png")
    plt.close(fig)

    # spectra per layer on the unit circle (paper's node operators)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False, dpi=64)
    th = [2 * math.pi * k / 200 for k in range(201)]
    for ax, o in zip(axes[0], opts, strict=False):
        ax.plot([math.cos(t) for t in th], [math.sin(t) for t in th], "k", lw=0.6)
        for layer, ev in (res["spectra"].get(o) or {}).items():
            ax.plot(ev["re"], ev["im"], ".", ms=4, alpha=0.7, label=f"layer {layer or '-'}")
        ax.set_aspect("equal")
        ax.set_title(f"{o}: node operators")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "spectra.png")
    plt.close(fig)


def write_report(res: dict, out_dir: str | Path) -> Path:
    """Write ``report.md`` and the figures into ``out_dir``; returns the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _figures(res, out)
    s, p = res["settings"], res["provenance"]
    L = [f"# kooptrain reproduction: {s['task']}", ""]
    L += [f"Dogra & Redman (2020) prediction-window experiment. Recorded steps {s['t1']}.."
          f"{s['t2']} ({s['t2'] - s['t1'] + 1} snapshots), main horizon T = {s['T']}, "
          f"horizons {list(s['horizons'])}; {s['seeds']} report seed(s) per optimizer plus "
          f"{s['select_seeds']} selection seed(s) (1000+) used only to choose the 'selected' "
          f"configuration. {'Paper-scale settings (--full).' if s['full'] else ''}", "",
          f"Machine: {p['cpu']}, {p['cores']} cores, {p['threads']} torch threads; torch "
          f"{p['torch']}; commit {p['git_commit']}"
          f"{' (with uncommitted changes)' if p.get('git_dirty') else ''}; {p['date']}.", ""]
    L += ["## Goal per optimizer", "",
          "Goal (issue #3), medians over report seeds at T: speedup >= 100x, "
          "loss_koopman <= loss_optimizer, and loss_optimizer <= 0.8 loss_t2 (training "
          "still moves).", "",
          "| optimizer | configuration | role | speedup | loss t2 | loss optimizer | "
          "loss Koopman | Koopman/optimizer | err/evolution | goal met |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for sm in res["summary"]:
        seen = set()
        for role in ("paper", "selected", "closest", "linear", "do_nothing"):
            d = sm.get(role)
            if not d or (d["config"], role in ("linear", "do_nothing")) in seen:
                continue
            seen.add((d["config"], role in ("linear", "do_nothing")))
            met = d["goal_met"] if role not in ("linear", "do_nothing") else None
            L.append(f"| {sm['optimizer']} | {d['config']} | {role} | {_fmt(d['speedup'])} | "
                     f"{_fmt(d['loss_t2'])} | {_fmt(d['loss_optimizer'])} | "
                     f"{_loss(d['loss_koopman'])} | {_loss(d['loss_ratio'])} | "
                     f"{_fmt(d['error_to_growth'])} | "
                     f"{'-' if met is None else ('**MET**' if met else 'not met')} |")
    L.append("")
    for sm in res["summary"]:
        sel = sm.get("selected") or {}
        clo = sm.get("closest") or {}
        verdict = "met" if sel.get("goal_met") else "NOT met"
        why = []
        if sel and not sel["goal_speedup"]:
            why.append(f"speedup {_fmt(sel['speedup'])} < 100")
        if sel and not sel["goal_loss"]:
            why.append(f"Koopman loss is {_fmt(sel['loss_ratio'])}x the optimizer's")
        if sel and not sel["goal_moving"]:
            why.append("the optimizer's own loss fell by less than 20% over the window")
        L.append(f"- **{sm['optimizer']}**: goal {verdict} by the selected configuration "
                 f"'{sel.get('config')}'{': ' + '; '.join(why) if why else ''}. Closest on the "
                 f"report seeds: '{clo.get('config')}' (Koopman/optimizer loss "
                 f"{_fmt(clo.get('loss_ratio'))}, speedup {_fmt(clo.get('speedup'))}).")
    L += ["", "## All configurations at T", "",
          "Medians over report seeds, with [min–max] over seeds.", "",
          "| optimizer | configuration | speedup | loss Koopman | Koopman/optimizer | "
          "err/evolution |", "|---|---|---|---|---|---|"]
    for sm in res["summary"]:
        for d in sm["all"]:
            L.append(f"| {sm['optimizer']} | {d['config']} | {_fmt(d['speedup'])}"
                     f"{_range(d, 'speedup')} | "
                     f"{_loss(d['loss_koopman'])} | {_loss(d['loss_ratio'])}"
                     f"{_range(d, 'loss_ratio')} | "
                     f"{_fmt(d['error_to_growth'])} |")
    L += ["", "## Figures", "",
          "Loss curves with Koopman predictions overlaid at t2+T:", "",
          "![loss curves](loss_curves.png)", "",
          "Fig. 1e of the paper: per-parameter |error| against |true evolution| at T "
          "(points below the diagonal are better than doing nothing):", "",
          "![scatter](scatter.png)", "",
          "Horizon sweep: where do predictions stay good?", "", "![sweep](horizon_sweep.png)",
          "", "Koopman eigenvalues of the paper's node operators per layer:", "",
          "![spectra](spectra.png)", ""]
    L += ["## Complexity: predicted against measured", "",
          "Predicted FLOPs of fit + jump (docs/complexity.md) and the measured median "
          "koopman_seconds at T (first optimizer), next to the optimizer's T steps.", "",
          "| configuration | blocks (B x d) | predicted MFLOP | predicted MB | measured ms | "
          "implied GFLOP/s |", "|---|---|---|---|---|---|"]
    first = res["summary"][0]["optimizer"] if res["summary"] else None
    for name, c in res.get("complexity", {}).items():
        secs = sorted(r["koopman_seconds"] for r in res["results"] if r["config"] == name
                      and r["T"] == s["T"] and r["optimizer"] == first
                      and r["koopman_seconds"])
        ms = secs[len(secs) // 2] * 1e3 if secs else None
        shape = ", ".join(f"{g['blocks']}x{g['d']}" for g in c["groups"])
        L.append(f"| {name} | {shape} | {c['flops'] / 1e6:.3g} | {c['bytes'] / 1e6:.3g} | "
                 f"{_fmt(ms)} | {_fmt(c['flops'] / (ms * 1e6) if ms else None)} |")
    opt_rows = [r for r in res["results"] if r["T"] == s["T"] and r["config"] == "do-nothing"]
    if opt_rows:
        per_step = sorted(r["optimizer_seconds"] / s["T"] for r in opt_rows)
        L += ["", f"One optimizer step (forward + backward + step) took a median "
                  f"{per_step[len(per_step) // 2] * 1e3:.3g} ms here, so T = {s['T']} steps "
                  f"cost {per_step[len(per_step) // 2] * s['T']:.3g} s. The Koopman jump is "
                  f"small dense linear algebra whose time is dominated by per-call overhead "
                  f"at these sizes, which is why measured times sit far below the FLOP rate.",
              ""]
    path = out / "report.md"
    path.write_text("\n".join(L) + "\n")
    return path


def load(path: str | Path) -> dict:
    """A results JSON written by ``reproduce`` or ``race``; ValueError naming the file if it
    is missing, unreadable, not JSON, or not a kooptrain results file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}.") from e
    try:
        res = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); give the results.json that "
                         f"'kooptrain reproduce' or 'kooptrain race' wrote.") from e
    if not isinstance(res, dict):
        raise ValueError(f"{path} is not a kooptrain results file (top level is not an "
                         f"object).")
    for key in ("schema_version", "provenance", "settings", "results", "summary"):
        if key not in res:
            raise ValueError(f"{path} is not a kooptrain results file (missing {key!r}).")
    return res
