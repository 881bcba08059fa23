"""Figure defaults shared by every report: a headless pyplot with readable sizes, plain
tick labels on short log axes, and the unit of each task's loss."""

from __future__ import annotations

DPI = 150
LEGEND = 8  # pt


def pyplot(report_fonts: bool = True):
    """``matplotlib.pyplot`` on the Agg backend, with the window reports' font sizes unless
    ``report_fonts=False`` (matplotlib's own, as the race figures use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if report_fonts:
        plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
                             "legend.fontsize": LEGEND, "xtick.labelsize": 8,
                             "ytick.labelsize": 8})
    return plt


def tidy_log_axis(ax) -> None:
    """On a log y axis spanning under a decade, label the minor ticks in plain numbers
    (0.8, 0.9, 2) instead of leaving one lone 10^0."""
    from matplotlib.ticker import FuncFormatter

    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 10:
        fmt = FuncFormatter(lambda y, _: f"{y:g}")
        ax.yaxis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(fmt)


def loss_unit(task: str) -> str:
    return "MSE" if task == "hnn" else "cross-entropy, nats"
