import numpy as np
import pytest
import torch


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def linear_trajectory(A: np.ndarray, x0: np.ndarray, m: int, c=None) -> np.ndarray:
    """Snapshots (d, m) of x_{t+1} = A x_t (+ c)."""
    xs = [x0]
    for _ in range(m - 1):
        xs.append(A @ xs[-1] + (0 if c is None else c))
    return np.stack(xs, -1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
