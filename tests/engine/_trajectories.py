"""Known trajectories for the engine's tests."""

import numpy as np


def linear_trajectory(A: np.ndarray, x0: np.ndarray, m: int, c=None) -> np.ndarray:
    """Snapshots (d, m) of x_{t+1} = A x_t (+ c)."""
    xs = [x0]
    for _ in range(m - 1):
        xs.append(A @ xs[-1] + (0 if c is None else c))
    return np.stack(xs, -1)
