"""The Burgers PINN task: its reference solver against the equation's known properties, and
its loss and score on a network."""

import math

import numpy as np
import torch

from kooptrain.problems.burgers import BurgersProblem, burgers_reference

NU = 0.01 / math.pi


def test_reference_keeps_the_initial_and_boundary_conditions_and_the_odd_symmetry():
    x, t, u = burgers_reference(NU, n_x=129, t_eval=np.linspace(0, 0.5, 11))
    np.testing.assert_allclose(u[0], -np.sin(np.pi * x), atol=1e-12)
    assert np.all(u[:, 0] == 0) and np.all(u[:, -1] == 0)
    np.testing.assert_allclose(u[:, ::-1], -u, atol=1e-7)  # u(-x, t) = -u(x, t)


def test_reference_dissipates_energy_and_converges_with_the_grid():
    t = np.linspace(0, 0.15, 4)  # before the front steepens past what 129 points resolve
    x1, _, u1 = burgers_reference(NU, n_x=129, t_eval=t)
    x2, _, u2 = burgers_reference(NU, n_x=257, t_eval=t)
    energy = (u2 ** 2).sum(1) * (x2[1] - x2[0])
    assert np.all(np.diff(energy) < 0)  # viscosity only removes energy
    np.testing.assert_allclose(u2[:, ::2], u1, atol=2e-3)  # the same solution, finer


def test_the_small_amplitude_limit_is_the_heat_equation():
    """At amplitude 1e-4 convection is negligible: -a sin(pi x) decays as exp(-nu pi^2 t)."""
    nu, a = 0.05, 1e-4
    x, t, u = burgers_reference(nu, n_x=257, t_eval=[0.0, 0.5, 1.0], amplitude=a)
    for k, tk in enumerate(t):
        # second-order differences see the eigenvalue 4 sin^2(pi h / 2) / h^2 ~ pi^2
        expected = -a * math.exp(-nu * math.pi ** 2 * tk) * np.sin(np.pi * x)
        np.testing.assert_allclose(u[k], expected, atol=a * 1e-3)


def test_loss_residual_and_score_on_a_network():
    p = BurgersProblem(n_collocation=64, n_boundary=16, hidden=8, depth=2, n_x=65)
    model = p.make_model(0)
    batch = p.batch(torch.Generator().manual_seed(0))
    loss = p.loss(model, batch)
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert all(q.grad is not None and bool(torch.isfinite(q.grad).all())
               for q in model.parameters())
    assert math.isfinite(p.eval_loss(model))
    assert p.metrics(model)["relative_l2"] > 0.5  # an untrained network is far off
    # the held-out points are fixed and never drawn in training
    assert torch.equal(p.heldout, BurgersProblem(n_collocation=64).heldout)


def test_the_residual_of_an_exact_solution_is_zero():
    """u = 0 solves the PDE: a network whose output layer is zero has no residual."""
    p = BurgersProblem(n_collocation=32, hidden=4, depth=1)
    model = p.make_model(0)
    with torch.no_grad():
        model[-1].weight.zero_()
        model[-1].bias.zero_()
    assert p.eval_loss(model) == 0.0
