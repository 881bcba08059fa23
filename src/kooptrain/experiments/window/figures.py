"""Figures of the window experiment (``kooptrain reproduce``), drawn from the results JSON.

Every figure is saved at ``DPI``; legends sit outside the data; axes carry labels and
units; values beyond a panel's clipped range are drawn as open triangles on its edge
instead of stretching the axis.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..harness.plotting import DPI, loss_unit, pyplot

FIGURES = ("loss_curves.png", "fig1e.png", "horizon_sweep.png", "spectra.png")

# configurations drawn in the horizon sweep: identity observables solid, affine dashed,
# the baselines grey/black with their own markers
_SWEEP_STYLE = {
    "node (paper)": dict(color="tab:blue", ls="-", marker="o", lw=2.0),
    "weight": dict(color="tab:orange", ls="-", marker="."),
    "quasi-node q=4": dict(color="tab:green", ls="-", marker="."),
    "layer": dict(color="tab:red", ls="-", marker="."),
    "network": dict(color="tab:purple", ls="-", marker="."),
    "node affine": dict(color="tab:blue", ls="--", marker="."),
    "node affine clip": dict(color="tab:cyan", ls="--", marker="."),
    "layer affine clip": dict(color="tab:red", ls="--", marker="."),
    "network affine clip": dict(color="tab:purple", ls="--", marker="."),
    "linear": dict(color="0.45", ls="-.", marker="x", lw=1.2),
    "do-nothing": dict(color="k", ls=":", marker="s", ms=4, lw=1.2),
}


def _bottom_legend(fig, handles, labels, height_in: float) -> float:
    """A legend in rows under the panels, as many columns as the width allows; returns
    the figure fraction it takes (pass it to ``tight_layout(rect=(0, frac, 1, top))``)."""
    width = fig.get_size_inches()[0]
    longest = max((len(t) for t in labels), default=10)
    ncol = max(1, min(len(labels), int(width / (0.45 + 0.075 * longest))))
    rows = math.ceil(len(labels) / ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    return min(0.4, (0.22 * rows + 0.1) / height_in)


def _log_ticks(ax, values) -> None:
    """Tick a log x axis exactly at ``values`` (the horizons), as plain integers."""
    from matplotlib.ticker import NullLocator

    ax.set_xticks(list(values))
    ax.set_xticklabels([str(v) for v in values])
    ax.xaxis.set_minor_locator(NullLocator())


def _clipped(ax, xs, ys, lo, hi, **style):
    """Plot ``ys`` on a log axis clipped to ``[lo, hi]``; points above (or missing: a
    diverged jump) are open triangles on the top edge, points below on the bottom edge."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True)]
    inside = [(x, y if y is not None and math.isfinite(y) else hi) for x, y in pts]
    ax.plot([x for x, _ in inside], [min(max(y, lo), hi) for _, y in inside], **style)
    over = [x for x, y in pts if y is None or not math.isfinite(y) or y > hi]
    under = [x for x, y in pts if y is not None and math.isfinite(y) and y < lo]
    c = style.get("color")
    if over:
        ax.plot(over, [hi] * len(over), "^", mfc="none", color=c, ms=7, clip_on=False)
    if under:
        ax.plot(under, [lo] * len(under), "v", mfc="none", color=c, ms=7, clip_on=False)
    ax.set_ylim(lo, hi)


def loss_curves(res: dict, path: Path) -> None:
    """Top: the whole run. Bottom: the recorded window and the horizons, with the loss at
    the paper's and the affine-clip jumps next to the optimizer's own curve."""
    plt = pyplot()
    s, rows = res["settings"], res["results"]
    opts = list(res["curves"])
    n = max(len(opts), 1)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 6.2), squeeze=False, dpi=DPI)
    marks = (("node (paper)", "o", "tab:blue"), ("node affine clip", "s", "tab:cyan"),
             ("do-nothing", "x", "k"))
    end = s["t2"] + max(s["horizons"])
    for j, o in enumerate(opts):
        c = res["curves"][o]
        steps, losses = zip(*c["points"], strict=True)
        for ax in axes[:, j]:
            ax.semilogy(steps, losses, color="0.3", lw=1, label="optimizer (evaluation loss)")
            ax.axvspan(s["t1"], s["t2"], color="gold", alpha=0.25, lw=0,
                       label="recorded window t1..t2")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(f"evaluation loss ({loss_unit(s['task'])})")
        axes[0, j].set_title(f"{o}, seed {c['seed']}: whole run")
        if max(losses) < 5 * min(losses):  # under a decade: a log axis only adds clutter
            axes[0, j].set_yscale("linear")
        zoom = axes[1, j]
        left = max(0, s["t1"] - (s["t2"] - s["t1"]) // 5)
        zoom.set_xlim(left, end + (end - left) * 0.03)
        seen = [v for st, v in c["points"] if st >= left and v and math.isfinite(v)]
        lo, hi = (min(seen) / 3, max(seen) * 30) if seen else (1e-6, 1.0)
        for cfg, mk, color in marks:
            pts = sorted((s["t2"] + r["T"], r["loss_koopman"]) for r in rows
                         if r["optimizer"] == o and r["seed"] == c["seed"]
                         and r["config"] == cfg and r["split"] == "report"
                         and r["T"] is not None)
            if pts:
                xs, ys = zip(*pts, strict=True)
                _clipped(zoom, xs, ys, lo, hi, ls="none", marker=mk, color=color,
                         mfc="none" if mk == "o" else color, ms=6, label=f"jump: {cfg}")
        zoom.set_title(f"{o}: window and jumps to t2+T")
    handles, labels = axes[1, 0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], ls="none", marker="^", mfc="none", color="0.3"))
    labels.append("off the scale (or diverged)")
    frac = _bottom_legend(fig, handles, labels, 6.2)
    fig.tight_layout(rect=(0, frac, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def _networks(d: dict) -> dict:
    """``{seed: (errors, evolutions)}`` from a scatter entry (per-network lists since the
    25-network runs; one flat list, seed unknown, before)."""
    if d["error"] and isinstance(d["error"][0], list):
        return {sd: (e, v) for sd, e, v in zip(d["seeds"], d["error"], d["evolution"],
                                               strict=True)}
    return {None: (d["error"], d["evolution"])}


def pooled_medians(d: dict, seeds=None) -> tuple[float, float] | None:
    """Median |error| and median |evolution| pooled over the parameters of ``seeds``'
    networks (all by default): the numbers the authors' Fig. 1 script reports."""
    nets = _networks(d)
    keep = [v for sd, v in nets.items() if seeds is None or sd in seeds]
    err = [x for e, _ in keep for x in e if x is not None]
    evo = [x for _, v in keep for x in v if x is not None]
    if not err or not evo:
        return None
    return statistics.median(err), statistics.median(evo)


def fig1e(res: dict, path: Path) -> None:
    """Fig. 1e of the paper: per parameter, |error| against |true evolution| at T, pooled
    over networks: the authors' top-k selection, all networks, and the selected config."""
    plt = pyplot()
    s = res["settings"]
    paper = "node (paper)"
    sel = {x["optimizer"]: x for x in res.get("selection", [])}
    chosen = {sm["optimizer"]: (sm.get("selected") or {}).get("config")
              for sm in res["summary"]}
    opts = [o for o in res["curves"] if paper in res["scatter"].get(o, {})]
    cols = []
    for o in opts:
        row = []
        pub = (sel.get(o) or {}).get("published")
        n_all = (sel.get(o) or {}).get("all", {}).get("n")
        if pub and n_all and pub["n"] < n_all:
            row.append((paper, set(pub["seeds"]), f"as published: node operator\n"
                        f"top {pub['n']} of {n_all} by mean |error|"))
        row.append((paper, None, f"paper: node operator\nall {n_all or ''} networks"
                    .replace("  ", " ")))
        if chosen.get(o) and chosen[o] != paper and chosen[o] in res["scatter"][o]:
            row.append((chosen[o], None, f"selected: {chosen[o]}\nall networks"))
        cols.append(row)
    n_cols = max((len(r) for r in cols), default=1)
    fig, axes = plt.subplots(max(len(opts), 1), n_cols, figsize=(4.2 * n_cols,
                             3.3 * max(len(opts), 1)), squeeze=False, dpi=DPI)
    for i, (o, row) in enumerate(zip(opts, cols, strict=True)):
        for j in range(n_cols):
            ax = axes[i, j]
            if j >= len(row):
                ax.axis("off")
                continue
            cfg, seeds, title = row[j]
            d = res["scatter"][o][cfg]
            pts = [(v, e) for sd, (es, vs) in _networks(d).items()
                   if seeds is None or sd in seeds
                   for e, v in zip(es, vs, strict=True) if e is not None and v is not None]
            # the range that matters: up to 10x the largest true evolution (errors beyond
            # are marked on the top edge, not stretching the axis), down to the 1st
            # percentile of all values, at most six decades below the top
            evo = sorted(v for v, _ in pts if v > 0)
            both = sorted(x for p in pts for x in p if x > 0)
            hi = evo[-1] * 10 if evo else 1.0
            lo = max(both[int(0.01 * len(both))] if both else 1e-8, hi * 1e-6)
            clip = [(min(max(v, lo), hi), min(max(e, lo), hi)) for v, e in pts]
            kind = ["above" if e > hi else "below" if (v < lo or e < lo) else "in"
                    for v, e in pts]
            for k, mk, color in (("in", ".", "tab:blue"), ("below", "v", "tab:red"),
                                 ("above", "^", "tab:red")):
                sel_pts = [c for c, kk in zip(clip, kind, strict=True) if kk == k]
                if sel_pts:
                    ax.loglog([v for v, _ in sel_pts], [e for _, e in sel_pts], mk,
                              ms=2.5 if k == "in" else 4, alpha=0.5 if k == "in" else 0.8,
                              mfc=color if k == "in" else "none", color=color,
                              clip_on=False)
            ax.plot([lo, hi], [lo, hi], "k:", lw=1)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            med = pooled_medians(d, seeds)
            ratio = f"\nmedian |err| / median |evol| = {med[0] / med[1]:.3g}" \
                if med and med[1] > 0 else ""
            ax.set_title(f"{o}: {title}{ratio}", fontsize=9)
            ax.set_xlabel("|true evolution| = |w(t2+T) - w(t2)|")
            ax.set_ylabel("|error| = |prediction - w(t2+T)|")
    handles = [plt.Line2D([], [], ls="none", marker=".", color="tab:blue", ms=6),
               plt.Line2D([], [], ls=":", color="k"),
               plt.Line2D([], [], ls="none", marker="^", mfc="none", color="tab:red"),
               plt.Line2D([], [], ls="none", marker="v", mfc="none", color="tab:red")]
    height = 3.3 * max(len(opts), 1)
    frac = _bottom_legend(fig, handles, ["one parameter of one network",
                                         "error = evolution (no better than not jumping)",
                                         "error above the range (on the top edge)",
                                         "below the range (on the bottom/left edge)"],
                          height)
    fig.suptitle(f"Fig. 1e at T = {s['T']} (weights in parameter units)", fontsize=10)
    fig.tight_layout(rect=(0, frac, 1, 1 - 0.3 / height))
    fig.savefig(path)
    plt.close(fig)


def horizon_sweep(res: dict, path: Path) -> None:
    """Median error/evolution and median loss ratio against the horizon, per config."""
    plt = pyplot()
    s, rows = res["settings"], res["results"]
    opts = list(res["curves"])
    n = max(len(opts), 1)
    configs = [c["name"] for c in s["configurations"] if not c["fixed_point"]] + \
        ["linear", "do-nothing"]
    fig, axes = plt.subplots(2, n, figsize=(3.8 * n + 2.2, 6.0), squeeze=False, dpi=DPI)
    limits = ((0.01, 100.0), (0.3, 1000.0))
    for j, o in enumerate(opts):
        for cfg in configs:
            xs, etg, ratio = [], [], []
            for h in s["horizons"]:
                rs = [r for r in rows if r["optimizer"] == o and r["config"] == cfg
                      and r["T"] == h and r["split"] == "report"]
                if not rs:
                    continue
                xs.append(h)
                etg.append(statistics.median(
                    r["error_to_growth"] if r["error_to_growth"] is not None else math.inf
                    for r in rs))
                ratio.append(statistics.median(
                    r["loss_koopman"] / r["loss_optimizer"] if r["loss_koopman"] is not None
                    and r["loss_optimizer"] else math.inf for r in rs))
            if not xs:
                continue
            style = dict(_SWEEP_STYLE.get(cfg, {"marker": "."}), label=cfg)
            style.setdefault("lw", 1.2)
            for ax, ys, (lo, hi) in zip(axes[:, j], (etg, ratio), limits, strict=True):
                _clipped(ax, xs, ys, lo, hi, **style)
        for ax in axes[:, j]:
            ax.set_xscale("log")
            ax.set_yscale("log")
            _log_ticks(ax, s["horizons"])
            ax.axhline(1, color="0.6", lw=0.8, zorder=0)
            ax.set_xlabel("horizon T (optimizer steps)")
        axes[0, j].set_title(o)
        axes[0, j].set_ylabel("median |error| / median |evolution|")
        axes[1, j].set_ylabel("loss(Koopman) / loss(optimizer)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], ls="none", marker="^", mfc="none", color="0.3"))
    labels.append("off the scale (or diverged)")
    fig.legend(handles, labels, loc="center right", frameon=False, title="configuration")
    fig.tight_layout(rect=(0, 0, 1 - 2.2 / (3.8 * n + 2.2), 1))
    fig.savefig(path)
    plt.close(fig)


def spectra(res: dict, path: Path) -> None:
    """Eigenvalues of the paper's node operators per layer: the whole unit disc, and a
    zoom on lambda = 1 where a slowly converging network keeps most of them."""
    plt = pyplot()
    opts = [o for o in res["curves"] if res["spectra"].get(o)]
    n = max(len(opts), 1)
    fig, axes = plt.subplots(2, n, figsize=(3.6 * n, 7.0), squeeze=False, dpi=DPI)
    th = [2 * math.pi * k / 400 for k in range(401)]
    circle = ([math.cos(t) for t in th], [math.sin(t) for t in th])
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for j, o in enumerate(opts):
        layers = dict(sorted(res["spectra"][o].items(), key=lambda kv: (len(kv[0]), kv[0])))
        for ax, zoom in zip(axes[:, j], (False, True), strict=True):
            ax.plot(*circle, color="0.4", lw=0.8, label="unit circle |λ| = 1")
            for k, (layer, ev) in enumerate(layers.items()):
                ax.plot(ev["re"], ev["im"], ".", ms=4, alpha=0.7,
                        color=colors[k % len(colors)], label=f"layer {layer or '-'}")
            ax.set_xlabel("Re λ")
            ax.set_ylabel("Im λ")
            ax.axhline(0, color="0.8", lw=0.5, zorder=0)
            if zoom:
                ax.set_xlim(0.9, 1.02)
                ax.set_ylim(-0.06, 0.06)
                ax.set_title(f"{o}: zoom near λ = 1")
                out = sum(1 for ev in layers.values()
                          for re, im in zip(ev["re"], ev["im"], strict=True)
                          if not (0.9 <= re <= 1.02 and -0.06 <= im <= 0.06))
                ax.text(0.02, 0.03, f"{out} eigenvalue(s) outside this view",
                        transform=ax.transAxes, fontsize=8)
            else:
                ax.set_xlim(-1.15, 1.15)
                ax.set_ylim(-1.15, 1.15)
                ax.set_aspect("equal")
                ax.set_title(f"{o}: node operators")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    frac = _bottom_legend(fig, handles, labels, 7.0)
    fig.tight_layout(rect=(0, frac, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def draw_all(res: dict, out: Path) -> None:
    loss_curves(res, out / FIGURES[0])
    fig1e(res, out / FIGURES[1])
    horizon_sweep(res, out / FIGURES[2])
    spectra(res, out / FIGURES[3])
