"""The tasks every experiment can run: one factory from a task name to its problem."""

from __future__ import annotations

TASKS = ("hnn", "mnist", "mnist1d", "digits")


def make_problem(task: str, mnist_dir: str | None = None, tasks=TASKS):
    """The problem object of ``task`` (model, loss, data); ``tasks`` limits the choice."""
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; choose one of {tuple(tasks)}.")
    if task == "hnn":
        from ...problems.hnn import OscillatorProblem

        return OscillatorProblem()
    from ...problems.classifiers import load_task

    return load_task(task, mnist_dir)
