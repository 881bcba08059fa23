"""The paper's prediction-window experiment (Dogra & Redman 2020, Sec. 4): ``run`` trains,
records, jumps and scores; ``summary`` judges the goal; ``report`` writes report.md and the
figures from the results JSON. ``experiment`` holds the run."""

from .experiment import PAPER, TASKS, default_settings, make_problem, run, run_one

__all__ = ["PAPER", "TASKS", "default_settings", "make_problem", "run", "run_one"]
