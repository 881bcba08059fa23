"""The paper's protocol and our benchmarks (``window``: the prediction-window experiment;
``race``: time and compute to a held-out target, on built-in tasks or yours).

Racing your own model (docs/race.md)::

    from kooptrain.experiments import PlainOptimizer, Task, race

    results = race.run(Task(...), methods=["ema", "swa", "koopman"], seeds=3)

``Task`` and ``PlainOptimizer`` describe the model, its data, its losses and its
optimizers; ``check_task`` runs each piece once and names what cannot be raced
(``TaskError``); ``load_task("task.py:factory")`` reads a task file as
``kooptrain race task.py`` does.
"""

from .race.task import PlainOptimizer, Task, TaskError, check_task, load_task

__all__ = ["PlainOptimizer", "Task", "TaskError", "check_task", "load_task"]
