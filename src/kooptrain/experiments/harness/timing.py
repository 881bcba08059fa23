"""Fair wall-clock timing: warm up first, then the median of repeats."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed_step(problem, model, optimizer, batch) -> float:
    """One optimizer step on ``batch`` (zero_grad, loss, backward, step); returns its wall
    time. Drawing the batch is the caller's and stays outside the clock."""
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    problem.loss(model, batch).backward()
    optimizer.step()
    return time.perf_counter() - t0
