"""RNA and Anderson acceleration against their definitions, on problems with known answers."""

import numpy as np
import pytest
import torch

from kooptrain.experiments.race.extrapolation import anderson, rna


def affine_iterates(rng, p=5, k=8, rho=0.9):
    """Iterates of x -> A x + b (spectral radius rho) and the fixed point x*."""
    Q = np.linalg.qr(rng.standard_normal((p, p)))[0]
    A = Q @ np.diag(rho * np.linspace(-1, 1, p)) @ Q.T
    b = rng.standard_normal(p)
    x_star = np.linalg.solve(np.eye(p) - A, b)
    xs = [rng.standard_normal(p)]
    for _ in range(k):
        xs.append(A @ xs[-1] + b)
    return torch.from_numpy(np.stack(xs, -1)), torch.from_numpy(x_star), A, b


def test_rna_without_regularisation_recovers_the_fixed_point_of_an_affine_iteration(rng):
    X, x_star, _, _ = affine_iterates(rng, p=5, k=7)  # k = p + 2 residuals: enough
    torch.testing.assert_close(rna(X, lam=0.0), x_star, rtol=1e-8, atol=1e-8)
    # with too few iterates it is only closer than the last one, not exact
    near = rna(X[:, :4], lam=0.0)
    assert torch.linalg.norm(near - x_star) < torch.linalg.norm(X[:, 3] - x_star)


def test_anderson_recovers_the_fixed_point_and_is_one_map_ahead_of_rna(rng):
    X, x_star, A, b = affine_iterates(rng, p=4, k=7)
    torch.testing.assert_close(anderson(X), x_star, rtol=1e-8, atol=1e-8)
    # the same coefficients applied to the images: one application of the map to RNA's point
    few = X[:, :4]
    At, bt = torch.from_numpy(A), torch.from_numpy(b)
    torch.testing.assert_close(anderson(few), At @ rna(few, lam=0.0) + bt)
    torch.testing.assert_close(anderson(few, beta=0.0), rna(few, lam=0.0))


def test_coefficients_follow_the_normalised_regularised_gram_system(rng):
    X = torch.from_numpy(rng.standard_normal((6, 5)))
    lam = 0.3
    R = X[:, 1:] - X[:, :-1]
    RR = (R.T @ R).numpy()
    z = np.linalg.solve(RR / np.linalg.norm(RR, 2) + lam * np.eye(4), np.ones(4))
    c = z / z.sum()
    torch.testing.assert_close(rna(X, lam=lam), X[:, :-1] @ torch.from_numpy(c))
    # large lam: the coefficients tend to the plain average of the iterates
    torch.testing.assert_close(rna(X, lam=1e6), X[:, :-1].mean(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", [rna, anderson])
def test_iterates_that_stood_still_give_themselves_back(method):
    X = torch.ones(3, 4, dtype=torch.float64) * torch.tensor([[1.0], [2.0], [3.0]])
    torch.testing.assert_close(method(X), X[:, 0])
