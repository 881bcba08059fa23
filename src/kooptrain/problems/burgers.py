"""A physics-informed network for the 1-D viscous Burgers equation (Raissi et al. 2019).

    u_t + u u_x = nu u_xx,  x in [-1, 1], t in [0, 1],  nu = 0.01 / pi,
    u(x, 0) = -sin(pi x),   u(-1, t) = u(1, t) = 0.

The network maps ``(x, t)`` to ``u``. The loss is the mean squared PDE residual at
collocation points drawn afresh every step (derivatives, second order in ``x``, through
autograd), plus the initial and boundary conditions; one step is full-batch. The held-out
score is the relative L2 error against a classical reference: the method of lines on a fine
grid, integrated by scipy's stiff solver. No Koopman knowledge here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["BurgersProblem", "burgers_reference"]


def burgers_reference(nu: float, n_x: int = 512, t_eval=None,
                      amplitude: float = 1.0) -> tuple[np.ndarray, ...]:
    """``(x (n_x,), t (n_t,), u (n_t, n_x))`` from ``u(x, 0) = -amplitude sin(pi x)``: the
    method of lines with second-order finite differences (the convection term in
    conservative form, ``(u^2 / 2)_x``) on a uniform grid with Dirichlet ends, integrated by
    ``scipy.integrate.solve_ivp`` (BDF, rtol 1e-8)."""
    from scipy.integrate import solve_ivp

    x = np.linspace(-1.0, 1.0, n_x)
    h = x[1] - x[0]
    t_eval = np.linspace(0.0, 1.0, 101) if t_eval is None else np.asarray(t_eval, float)

    def rhs(_, u_in):
        u = np.concatenate([[0.0], u_in, [0.0]])  # u(+-1) = 0
        flux = 0.5 * u * u
        conv = (flux[2:] - flux[:-2]) / (2 * h)
        diff = (u[2:] - 2 * u[1:-1] + u[:-2]) / (h * h)
        return nu * diff - conv

    sol = solve_ivp(rhs, (0.0, float(t_eval[-1])), -amplitude * np.sin(np.pi * x[1:-1]),
                    method="BDF",
                    t_eval=t_eval, rtol=1e-8, atol=1e-10)
    if not sol.success:  # pragma: no cover - the solver's own failure, reported as such
        raise RuntimeError(f"the Burgers reference did not converge: {sol.message}")
    u = np.zeros((len(t_eval), n_x))
    u[:, 1:-1] = sol.y.T
    return x, t_eval, u


def _mlp(hidden: int, depth: int) -> nn.Sequential:
    layers, width = [], 2
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.Tanh()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 1))


@dataclass
class BurgersProblem:
    """Task = model + loss + data for the Burgers PINN (the problem interface of
    ``OscillatorProblem``: ``make_model``, ``batch``, ``loss``, ``eval_loss``, ``metrics``).

    ``n_collocation`` interior points per step, ``n_boundary`` initial and boundary points;
    ``hidden`` x ``depth`` tanh layers; ``n_x`` grid points of the reference.
    """

    nu: float = 0.01 / math.pi
    n_collocation: int = 1000
    n_boundary: int = 100
    hidden: int = 20
    depth: int = 4
    n_x: int = 512
    name: str = "burgers"

    def __post_init__(self):
        g = torch.Generator().manual_seed(12345)  # held out: training never draws these
        self.heldout = self._interior(g, self.n_collocation)
        self._reference = None

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return _mlp(self.hidden, self.depth)

    def _interior(self, g: torch.Generator, n: int) -> torch.Tensor:
        """``(n, 2)`` points ``(x, t)`` uniform in the domain."""
        u = torch.rand(n, 2, generator=g)
        return torch.stack([2 * u[:, 0] - 1, u[:, 1]], 1)

    def batch(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Interior points, initial points ``(x, 0)`` and boundary points ``(+-1, t)``."""
        m = self.n_boundary
        x0 = 2 * torch.rand(m, generator=generator) - 1
        tb = torch.rand(m, generator=generator)
        side = torch.where(torch.rand(m, generator=generator) < 0.5, -1.0, 1.0)
        return {"interior": self._interior(generator, self.n_collocation),
                "initial": torch.stack([x0, torch.zeros(m)], 1),
                "boundary": torch.stack([side, tb], 1)}

    def residual(self, model: nn.Module, xt: torch.Tensor,
                 create_graph: bool = True) -> torch.Tensor:
        """``u_t + u u_x - nu u_xx`` at the points ``xt`` ``(n, 2)``, ``(n,)``."""
        xt = xt.detach().requires_grad_(True)
        u = model(xt)[:, 0]
        (du,) = torch.autograd.grad(u.sum(), xt, create_graph=True)
        u_x, u_t = du[:, 0], du[:, 1]
        (d2u,) = torch.autograd.grad(u_x.sum(), xt, create_graph=create_graph)
        return u_t + u * u_x - self.nu * d2u[:, 0]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        r = self.residual(model, batch["interior"])
        x0 = batch["initial"]
        ic = model(x0)[:, 0] + torch.sin(math.pi * x0[:, 0])
        bc = model(batch["boundary"])[:, 0]
        return r.pow(2).mean() + ic.pow(2).mean() + bc.pow(2).mean()

    def eval_loss(self, model: nn.Module) -> float:
        """The mean squared PDE residual on the held-out collocation points."""
        r = self.residual(model, self.heldout, create_graph=False)
        return float(r.detach().pow(2).mean())

    def reference(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._reference is None:
            self._reference = burgers_reference(self.nu, self.n_x)
        return self._reference

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """``relative_l2``: ``||u_net - u_ref|| / ||u_ref||`` on the reference grid."""
        x, t, u_ref = self.reference()
        X, T = np.meshgrid(x, t)
        xt = torch.tensor(np.stack([X.ravel(), T.ravel()], 1), dtype=torch.float32)
        with torch.no_grad():
            u = model(xt)[:, 0].double().numpy().reshape(u_ref.shape)
        return {"relative_l2": float(np.linalg.norm(u - u_ref) / np.linalg.norm(u_ref))}
