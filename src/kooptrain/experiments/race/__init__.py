"""``kooptrain race``: wall time to a target loss, Koopman jumps against the optimizers and
what a practitioner would try instead. ``experiment`` races, ``summary`` judges, ``report`` and
``figures`` write the report from the results JSON."""

from .experiment import (
    BUDGET,
    OPTIMIZERS,
    TASKS,
    TUNED,
    judge_closure,
    make_optimizer,
    make_problem,
    run,
    train,
    tune,
)

__all__ = ["BUDGET", "OPTIMIZERS", "TASKS", "TUNED", "judge_closure", "make_optimizer",
           "make_problem", "run", "train", "tune"]
