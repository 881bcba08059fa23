"""``kooptrain race``: time and compute to a held-out target, Koopman methods against the
optimizers and what a practitioner would try instead. ``task`` is the protocol every task
is written on (``builtin`` holds the five built-in ones), ``workloads`` the race's view of
a task, ``methods`` the runs, ``experiment`` races them in lockstep (``run``, ``tune``),
``summary`` judges, ``report`` and ``figures`` write the report from the results JSON."""

from .experiment import TASKS, run, tune
from .task import PlainOptimizer, Task, TaskError, check_task, load_task
from .workloads import TUNED, Workload, workload

__all__ = ["TASKS", "TUNED", "PlainOptimizer", "Task", "TaskError", "Workload", "check_task",
           "load_task", "run", "tune", "workload"]
