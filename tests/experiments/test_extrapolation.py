"""RNA and Anderson acceleration against their definitions, on problems with known answers."""

import numpy as np
import pytest
import torch

from kooptrain.experiments.race.extrapolation import anderson, koopman_fixed_point, rna


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


def test_the_koopman_fixed_point_without_regularisation_is_the_limit_of_an_affine_iteration(rng):
    X, x_star, _, _ = affine_iterates(rng, p=4, k=7)  # 6 increment pairs span the 4 dims
    torch.testing.assert_close(koopman_fixed_point(X, lam=0.0), x_star, rtol=1e-7, atol=1e-7)


def test_regularisation_caps_the_koopman_fixed_point_as_an_eigenvalue_nears_one(rng):
    """Increments that shrink by 0.999 a step have their limit 999 steps ahead: found
    without regularisation, capped with it, and a drift with no limit (lambda = 1) stays."""
    v = torch.from_numpy(rng.standard_normal(3))
    X = torch.stack([v * sum(0.999**j for j in range(i)) for i in range(6)], -1)
    ahead = lambda lam: float((koopman_fixed_point(X, lam=lam) - X[:, -1]) @ v  # noqa: E731
                              / (v @ v) / 0.999**4)  # in units of the last increment
    assert ahead(0.0) == pytest.approx(0.999 / (1 - 0.999), rel=1e-6)  # 999 increments
    assert 1 < ahead(1e-4) < 0.999 / (1 - 0.999)
    drift = torch.stack([v * i for i in range(6)], -1)
    torch.testing.assert_close(koopman_fixed_point(drift, lam=1e-2), drift[:, -1])
    still = torch.ones(3, 5, dtype=torch.float64)
    torch.testing.assert_close(koopman_fixed_point(still, lam=1e-2), still[:, -1])
    with pytest.raises(ValueError, match="at least 3 iterates"):
        koopman_fixed_point(drift[:, :2])
