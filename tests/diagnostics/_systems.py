"""Systems with known spectra for the diagnostics tests."""

import torch
from torch import nn


class Trajectory(nn.Module):
    """A "model" whose single parameter is set to a given trajectory, one state per step."""

    def __init__(self, d: int, dtype=torch.float64):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d, dtype=dtype))

    def set(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.weight.copy_(x)


def linear_system(eigenvalues, *, seed: int = 0, conjugate: torch.Tensor | None = None):
    """``(A, c)`` of ``x_{t+1} = A x_t + c`` with the given real eigenvalues, ``A = T diag
    T^{-1}`` for a random well-conditioned ``T`` (times ``conjugate`` if given)."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    d = len(lam)
    g = torch.Generator().manual_seed(seed)
    T = torch.randn(d, d, generator=g, dtype=torch.float64) + 3 * torch.eye(d, dtype=torch.float64)
    A = T @ torch.diag(lam) @ torch.linalg.inv(T)
    c = torch.randn(d, generator=g, dtype=torch.float64)
    if conjugate is not None:
        S = conjugate
        A, c = S @ A @ torch.linalg.inv(S), S @ c
    return A, c


def run(A, c, x0, steps: int):
    """``(d, steps + 1)`` trajectory of ``x_{t+1} = A x_t + c`` from ``x0``."""
    xs = [x0]
    for _ in range(steps):
        xs.append(A @ xs[-1] + c)
    return torch.stack(xs, -1)


def monitored(X: torch.Tensor, **monitor_options):
    """Feed the columns of ``X`` ``(d, T)`` to a ``KoopmanMonitor`` as successive weights."""
    from kooptrain import KoopmanMonitor

    model = Trajectory(X.shape[0], X.dtype)
    mon = KoopmanMonitor(model, **monitor_options)
    for t in range(X.shape[1]):
        model.set(X[:, t])
        mon.step()
    return mon


def rotation_trajectory(moduli, angles, steps: int, *, seed: int = 0):
    """``(2k, steps + 1)`` trajectory of an affine linear system whose eigenvalues are the
    conjugate pairs ``moduli[j] * exp(+-i angles[j])``: ``x_{t+1} - x* = A (x_t - x*)`` with
    ``A = T blockdiag(r_j Rot(theta_j)) T^{-1}`` for a random well-conditioned ``T``. Near
    the unit circle and well apart, the modes stay observable in every window."""
    blocks = [r * torch.tensor([[torch.cos(torch.tensor(a)), -torch.sin(torch.tensor(a))],
                                [torch.sin(torch.tensor(a)), torch.cos(torch.tensor(a))]],
                               dtype=torch.float64) for r, a in zip(moduli, angles, strict=True)]
    R = torch.block_diag(*blocks)
    d = R.shape[0]
    g = torch.Generator().manual_seed(seed)
    T = torch.randn(d, d, generator=g, dtype=torch.float64) + 3 * torch.eye(d, dtype=torch.float64)
    A = T @ R @ torch.linalg.inv(T)
    xstar = torch.randn(d, generator=g, dtype=torch.float64)
    xs = [xstar + T @ torch.ones(d, dtype=torch.float64)]
    for _ in range(steps):
        xs.append(xstar + A @ (xs[-1] - xstar))
    return torch.stack(xs, -1)


def unstable_plus_noise(seed, lam=1.2, noise=0.1, d=20, steps=60):
    """``x_{t+1} = A x_t + noise``: one mode growing by ``lam`` a step, the other ``d - 1``
    decaying by 0.5 and driven by the noise."""
    g = torch.Generator().manual_seed(seed)
    A = 0.5 * torch.eye(d, dtype=torch.float64)
    A[0, 0] = lam
    x = 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
    x[0] = 1.0
    xs = [x]
    for _ in range(steps - 1):
        xs.append(A @ xs[-1] + noise * torch.randn(d, generator=g, dtype=torch.float64))
    return torch.stack(xs, -1)
