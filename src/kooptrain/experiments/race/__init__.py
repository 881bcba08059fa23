"""``kooptrain race``: time and compute to a held-out target, Koopman jumps against the
optimizers and what a practitioner would try instead. ``workloads`` holds the tasks,
``methods`` the runs, ``experiment`` races them in lockstep, ``summary`` judges, ``report``
and ``figures`` write the report from the results JSON."""

from .experiment import TASKS, run, tune
from .workloads import TUNED, Workload, workload

__all__ = ["TASKS", "TUNED", "Workload", "run", "tune", "workload"]
