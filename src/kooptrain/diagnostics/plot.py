"""The figure of a monitor record: Koopman eigenvalues over training, one panel per layer."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["plot_spectra"]


def plot_spectra(record, path=None, *, layers=None, max_layers: int = 12, title=None):
    """Eigenvalues of every fit on the complex plane with the unit circle, coloured by the
    step of the fit, one panel per layer (the first ``max_layers``, or ``layers``).
    Points outside the circle are modes whose motion grows. Returns the matplotlib
    ``Figure``; saves it to ``path`` if given. Needs matplotlib."""
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib is in every extra
        raise ImportError("plotting needs matplotlib: pip install 'kooptrain[reproduce]'.") \
            from e
    from .compare import load_record

    record = load_record(record)
    names = list(layers) if layers is not None else record["layers"][:max_layers]
    unknown = [n for n in names if n not in record["layers"]]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; the record has {record['layers']}.")
    entries = record["entries"]
    if not entries:
        raise ValueError("the record has no fits yet: train for at least one interval "
                         f"({record['settings']['interval']} steps).")
    steps = [e["step"] for e in entries]
    norm = matplotlib.colors.Normalize(min(steps), max(steps))
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 0.8, 3.1 * rows),
                             squeeze=False, constrained_layout=True)
    theta = np.linspace(0, 2 * np.pi, 400)
    sc = None
    for ax, name in zip(axes.flat, names, strict=False):
        pts, when = [], []
        for e in entries:
            lay = e["layers"].get(name)
            if lay:
                pts += lay["eigenvalues"]
                when += [e["step"]] * len(lay["eigenvalues"])
        ax.plot(np.cos(theta), np.sin(theta), color="0.6", lw=0.8, ls="--")
        ax.axhline(0, color="0.85", lw=0.5)
        ax.axvline(0, color="0.85", lw=0.5)
        if pts:
            z = np.asarray(pts)
            sc = ax.scatter(z[:, 0], z[:, 1], c=when, cmap="viridis", norm=norm, s=9,
                            alpha=0.8, linewidths=0)
            r = max(1.1, float(np.hypot(z[:, 0], z[:, 1]).max()) * 1.05)
        else:
            r = 1.1
        ax.set_xlim(-r, r)
        ax.set_ylim(-r, r)
        ax.set_aspect("equal")
        ax.set_title(name or "(model)", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("Re λ", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("Im λ", fontsize=8)
    if sc is not None:
        fig.colorbar(sc, ax=axes, shrink=0.8, label="training step")
    s = record["settings"]
    fig.suptitle(title or f"Koopman eigenvalues of the weight increments (one snapshot every "
                 f"{s['every']} steps, {s['window']} per fit)", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
