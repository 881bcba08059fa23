"""Hamiltonian network solver for the nonlinear oscillator (Mattheakis et al., arXiv 2001.11107).

H = p^2/2 + x^2/2 + lam x^4/4. The network maps t to (N_x, N_p); the solution
is parametrised so that the initial condition holds exactly:
x(t) = x0 + (1 - e^-t) N_x(t), p(t) = p0 + (1 - e^-t) N_p(t). The loss is the
mean squared residual of Hamilton's equations, dx/dt = p and dp/dt = -(x + lam x^3),
with time derivatives from autograd, on 200 collocation points perturbed every
iteration (full batch). No Koopman knowledge here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["HNN", "OscillatorProblem"]


class HNN(nn.Module):
    """1 -> hidden -> hidden -> 2 with sin activations (152 parameters at hidden=10)."""

    def __init__(self, hidden: int = 10):
        super().__init__()
        self.l1 = nn.Linear(1, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: ``(N, 1)`` -> ``(N, 2)`` raw outputs ``(N_x, N_p)``."""
        return self.out(torch.sin(self.l2(torch.sin(self.l1(t)))))


@dataclass
class OscillatorProblem:
    """The paper's first experiment: task = model + loss + data.

    Attributes mirror PAPER.md: ``lam=1``, ``x0=1.3``, ``p0=1``, ``t in [0, 4 pi]``,
    ``n_points=200``.
    """

    lam: float = 1.0
    x0: float = 1.3
    p0: float = 1.0
    t_max: float = 4 * math.pi
    n_points: int = 200
    hidden: int = 10
    name: str = "hnn"

    def __post_init__(self):
        self.grid = torch.linspace(0.0, self.t_max, self.n_points).reshape(-1, 1)
        self._reference = None

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return HNN(self.hidden)

    # --------------------------------------------------------------- data
    def batch(self, generator: torch.Generator) -> torch.Tensor:
        """Collocation points ``(N, 1)``: the grid jittered by up to half a spacing,
        kept inside ``[0, t_max]`` with ``t=0`` fixed (as in the HNN code)."""
        dt = self.t_max / (self.n_points - 1)
        noise = (torch.rand(self.grid.shape, generator=generator) - 0.5) * dt
        noise[0] = 0.0
        return (self.grid + noise).clamp(0.0, self.t_max)

    def eval_batch(self) -> torch.Tensor:
        """The fixed evaluation set: the unperturbed 200-point grid."""
        return self.grid

    # ------------------------------------------------------------ physics
    def solution(self, model: nn.Module, t: torch.Tensor, create_graph: bool = False):
        """``x, p, dx/dt, dp/dt``, each ``(N,)``, at times ``t`` ``(N, 1)``."""
        t = t.detach().clone().requires_grad_(True)
        raw = model(t)
        f = 1 - torch.exp(-t)
        x = self.x0 + f[:, 0] * raw[:, 0]
        p = self.p0 + f[:, 0] * raw[:, 1]
        dx, = torch.autograd.grad(x.sum(), t, create_graph=create_graph, retain_graph=True)
        dp, = torch.autograd.grad(p.sum(), t, create_graph=create_graph)
        return x, p, dx[:, 0], dp[:, 0]

    def loss(self, model: nn.Module, t: torch.Tensor) -> torch.Tensor:
        """Mean squared residual of Hamilton's equations (differentiable)."""
        x, p, dx, dp = self.solution(model, t, create_graph=True)
        return ((dx - p) ** 2 + (dp + x + self.lam * x**3) ** 2).mean()

    def eval_loss(self, model: nn.Module) -> float:
        x, p, dx, dp = self.solution(model, self.eval_batch())
        return float(((dx - p) ** 2 + (dp + x + self.lam * x**3) ** 2).mean().detach())

    def energy(self, x, p):
        return p**2 / 2 + x**2 / 2 + self.lam * x**4 / 4

    def reference(self) -> np.ndarray:
        """``(N, 2)`` ``(x, p)`` on the grid from ``scipy.integrate.solve_ivp`` (rtol 1e-11)."""
        if self._reference is None:
            from scipy.integrate import solve_ivp

            sol = solve_ivp(
                lambda t, y: [y[1], -(y[0] + self.lam * y[0] ** 3)],
                (0.0, self.t_max), [self.x0, self.p0], method="DOP853",
                t_eval=np.clip(self.grid[:, 0].double().numpy(), 0.0, self.t_max),
                rtol=1e-11, atol=1e-12,
            )
            self._reference = sol.y.T
        return self._reference

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Solution error against the ODE reference and the energy drift."""
        x, p, _, _ = self.solution(model, self.eval_batch())
        x, p = x.detach().double().numpy(), p.detach().double().numpy()
        ref = self.reference()
        e0 = float(self.energy(self.x0, self.p0))
        return {
            "solution_rmse": float(np.sqrt(((x - ref[:, 0]) ** 2 + (p - ref[:, 1]) ** 2).mean())),
            "energy_drift": float(np.abs(self.energy(x, p) - e0).max() / e0),
        }
