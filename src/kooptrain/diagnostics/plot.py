"""The figure of a monitor record: Koopman eigenvalues over training, one panel per layer."""

from __future__ import annotations

import math

import numpy as np

from .record import load_record

__all__ = ["plot_spectra"]


def plot_spectra(record, path=None, *, layers=None, max_layers: int = 12, title=None):
    """Eigenvalues of every fit on the complex plane with the unit circle, coloured by the
    step of the fit, one panel per layer (the first ``max_layers``, or ``layers``), titled
    by the layer's name and module class; then one panel of the warning's readings over
    training (the null's ``-log10 p`` per fit, its ``alarm_rate`` line and the warning).
    Points outside the circle are modes whose motion grows. Each panel's axes hold the
    circle and the moduli up to one and a half times their 90th percentile; points beyond
    are drawn on the border as arrows and counted in the panel, so one outlier cannot
    squash every other fit. Returns the matplotlib
    ``Figure``; saves it to ``path`` if given. Needs matplotlib."""
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib is in every extra
        raise ImportError("plotting needs matplotlib: pip install 'kooptrain[reproduce]'.") \
            from e
    record = load_record(record)
    names = list(layers) if layers is not None else record["layers"][:max_layers]
    unknown = [n for n in names if n not in record["layers"]]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; the record has {record['layers']}.")
    entries = record["entries"]
    if not entries:
        raise ValueError("the record has no fits yet: train for at least one interval "
                         f"({record['settings']['interval']} steps).")
    types = dict(zip(record["layers"], record.get("layer_types") or [], strict=False))
    steps = [e["step"] for e in entries]
    norm = matplotlib.colors.Normalize(min(steps), max(steps))
    cols = min(4, len(names) + 1)
    rows = math.ceil((len(names) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 0.8, 3.1 * rows),
                             squeeze=False, constrained_layout=True)
    sc = None
    for ax, name in zip(axes.flat, names, strict=False):
        sc = _eigenvalue_panel(ax, entries, name, norm) or sc
        kind = types.get(name)
        label = name or "(model)"
        ax.set_title(f"{label} ({kind})" if kind else label, fontsize=9)
    _readings_panel(list(axes.flat)[len(names)], record)
    for ax in list(axes.flat)[len(names) + 1:]:
        ax.set_visible(False)
    if sc is not None:
        fig.colorbar(sc, ax=list(axes.flat)[:len(names)], shrink=0.8, label="training step")
    s = record["settings"]
    fig.suptitle(title or f"Koopman eigenvalues of the weight increments (one snapshot every "
                 f"{s['every']} steps, {s['window']} per fit)", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _eigenvalue_panel(ax, entries: list, name: str, norm):
    """One layer's eigenvalues of every fit; returns the scatter (or None)."""
    pts, when = [], []
    for e in entries:
        lay = e["layers"].get(name)
        if lay:
            pts += lay["eigenvalues"]
            when += [e["step"]] * len(lay["eigenvalues"])
    theta = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(theta), np.sin(theta), color="0.6", lw=0.8, ls="--")
    ax.axhline(0, color="0.85", lw=0.5)
    ax.axvline(0, color="0.85", lw=0.5)
    sc, r, outside = None, 1.1, 0
    if pts:
        z, when = np.asarray(pts, float), np.asarray(when)
        mod = np.hypot(z[:, 0], z[:, 1])
        # the bulk: up to 1.5 times the 90th percentile of the moduli (an outlier or two
        # cannot move it), and never less than the unit circle
        r = max(1.1, min(float(mod.max()), 1.5 * float(np.quantile(mod, 0.9))) * 1.05)
        far = mod > r
        outside = int(far.sum())
        if outside:  # on the border, pointing outwards
            z = z.copy()
            z[far] *= (r / mod[far])[:, None] * 0.97
        sc = ax.scatter(z[~far, 0], z[~far, 1], c=when[~far], cmap="viridis", norm=norm,
                        s=9, alpha=0.8, linewidths=0)
        if outside:
            ax.scatter(z[far, 0], z[far, 1], c=when[far], cmap="viridis", norm=norm, s=30,
                       marker=">", linewidths=0)
    ax.set_xlim(-r, r)
    ax.set_ylim(-r, r)
    ax.set_aspect("equal")
    ax.set_xlabel("Re λ", fontsize=8)
    ax.set_ylabel("Im λ", fontsize=8)
    ax.tick_params(labelsize=7)
    if outside:
        ax.text(0.02, 0.02, f"{outside} beyond |λ| = {r:.2g} (on the border)",
                transform=ax.transAxes, fontsize=7, color="0.3")
    return sc


def _readings_panel(ax, record: dict) -> None:
    """The null's -log10 p per fit (or 0.2's instability), the alarm line and the warning."""
    entries, s = record["entries"], record["settings"]
    steps = [e["step"] for e in entries]
    if s.get("alarm_rate") is not None:
        p = [e["null"]["p_value"] if e.get("null") else 1.0 for e in entries]
        grow = [bool(e.get("null") and e["null"]["flagged"]) for e in entries]
        ax.plot(steps, [-math.log10(v) for v in p], color="tab:blue", lw=1.2,
                label="-log10 p (the null)")
        ax.scatter([t for t, g in zip(steps, grow, strict=True) if g],
                   [-math.log10(v) for v, g in zip(p, grow, strict=True) if g],
                   color="tab:red", s=14, zorder=3, label="flagged (growing)")
        ax.axhline(-math.log10(s["alarm_rate"]), color="tab:red", lw=0.8, ls="--",
                   label=f"alarm_rate {s['alarm_rate']}")
        ax.set_ylabel("-log10 p", fontsize=8)
    else:
        inst = [e["instability"] for e in entries]
        ax.plot(steps, [math.nan if v is None else v for v in inst], color="tab:blue",
                label="instability")
        ax.axhline(s.get("threshold") or 1.0, color="tab:red", lw=0.8, ls="--",
                   label="threshold")
    if record.get("warning"):
        ax.axvline(record["warning"]["step"], color="k", lw=0.8, label="warning")
    ax.set_xlabel("optimizer step", fontsize=8)
    ax.set_title("the warning's readings", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, frameon=False)
