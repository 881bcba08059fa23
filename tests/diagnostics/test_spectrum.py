"""block_spectra against systems whose spectra and fixed points are known."""

import math

import pytest
import torch
from _systems import linear_system, run

from kooptrain.diagnostics import block_spectra

LAM = [0.9, 0.7, 0.5, -0.3]


def test_an_affine_linear_system_gives_its_eigenvalues_and_its_fixed_point():
    A, c = linear_system(LAM)
    X = run(A, c, torch.ones(4, dtype=torch.float64), 11)
    s = block_spectra(X[None], every=1, horizon=10)
    torch.testing.assert_close(s.eigenvalues[0].real, torch.tensor(LAM, dtype=torch.float64))
    assert s.eigenvalues[0].imag.abs().max() < 1e-9
    assert s.radius.item() == pytest.approx(0.9) and s.gap.item() == pytest.approx(0.1)
    assert s.shares.sum().item() == pytest.approx(1.0)
    xstar = torch.linalg.solve(torch.eye(4, dtype=torch.float64) - A, c)
    true_rest = ((xstar - X[:, -1]).norm() / X[:, -1].norm()).item()
    assert s.remaining.item() == pytest.approx(true_rest, rel=1e-8)
    # the projected motion ten steps on, from the last increment's decomposition
    big = s.shares[0] >= 0.01
    w = s.shares[0][big] / s.shares[0][big].sum()
    want = torch.prod(s.eigenvalues[0].abs()[big] ** (10 * w))
    assert s.amplification.item() == pytest.approx(want.item())
    assert not s.at_rest.item()


def test_a_change_of_coordinates_leaves_the_spectrum_unchanged():
    A, c = linear_system(LAM)
    X = run(A, c, torch.ones(4, dtype=torch.float64), 11)
    g = torch.Generator().manual_seed(3)
    S = torch.randn(4, 4, generator=g, dtype=torch.float64) + 2 * torch.eye(4, dtype=torch.float64)
    P = torch.eye(4, dtype=torch.float64)[torch.tensor([2, 0, 3, 1])]
    base = block_spectra(X[None]).eigenvalues
    for M in (S, P):
        other = block_spectra((M @ X)[None]).eigenvalues
        torch.testing.assert_close(other, base, atol=1e-8, rtol=0)


def test_gradient_descent_past_the_stability_limit_grows_at_the_known_rate():
    """GD on 0.5 * h * x^2 with step lr: increments scale by 1 - lr * h each step."""
    h = torch.tensor([1.0, 4.0], dtype=torch.float64)
    lr = 0.55  # 1 - lr * 4 = -1.2: the stiff direction oscillates and grows
    x = torch.tensor([1.0, 1.0], dtype=torch.float64)
    xs = [x]
    for _ in range(12):
        x = x - lr * h * x
        xs.append(x)
    s = block_spectra(torch.stack(xs, -1)[None], every=1, horizon=20)
    lead = s.eigenvalues[0, 0]
    assert lead.real.item() == pytest.approx(-1.2) and abs(lead.imag.item()) < 1e-9
    assert math.isinf(s.remaining.item())  # a growing mode: no fixed point ahead
    assert s.amplification.item() > 1.2 ** 10  # the growing mode carries most of the motion


def test_motion_below_the_weights_rounding_is_at_rest():
    X = torch.ones(1, 6, 8, dtype=torch.float32)
    X[..., 1::2] += 1e-7 * torch.randn(1, 6, 4)  # float32 rounding noise only
    s = block_spectra(X.to(torch.float64), eps=torch.finfo(torch.float32).eps)
    assert s.at_rest.item() and s.amplification.item() == 1.0


@pytest.mark.parametrize("X", [torch.zeros(3, 3), torch.zeros(1, 3, 3)])
def test_too_few_snapshots_or_no_block_axis_is_refused(X):
    with pytest.raises(ValueError, match=r"\(B, d, m\) with m >= 4"):
        block_spectra(X)


def test_the_null_s_rank_1_growth_is_the_rank_1_fit_s_on_a_window_with_a_leading_mode():
    """``null_growth`` reads the leading mode from the Gram matrix of the increments (by
    repeated squaring); on windows whose motion has a clear leading direction that is the
    rank-1 DMD of ``block_spectra``, and every reordering is the same function."""
    from kooptrain.diagnostics.spectrum import null_growth, time_orders

    g = torch.Generator().manual_seed(0)
    t = torch.arange(10, dtype=torch.float64)
    direction = torch.randn(6, 40, 1, generator=g, dtype=torch.float64)
    X = direction * 1.1 ** t + 0.01 * torch.randn(6, 40, 10, generator=g,
                                                    dtype=torch.float64)
    growth, null = null_growth(X, time_orders(9, 50, seed=1), rank=1)
    assert torch.allclose(growth, block_spectra(X, rank=1).growth, rtol=1e-8, atol=1e-10)
    assert torch.allclose(growth, torch.full((6,), math.log(1.1), dtype=torch.float64),
                          atol=0.02)
    assert null.shape == (6, 50) and bool((null < growth[:, None]).all())


def test_a_reduced_window_gives_the_fits_of_the_window_itself_in_lr_time_too():
    """``reduce_window`` (the increments' R factor, scaled after the QR) serves both fits:
    the same spectra and null as the window given whole, with or without a scale, against
    the increments divided by the scale by hand."""
    from kooptrain.diagnostics.spectrum import null_growth, reduce_window, time_orders

    g = torch.Generator().manual_seed(3)
    X = torch.randn(3, 30, 9, generator=g, dtype=torch.float64).cumsum(-1)
    scale = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    orders = time_orders(8, 20, seed=4)
    # by hand: weights whose increments are the scaled ones, the same last snapshot's norm
    D = (X[..., 1:] - X[..., :-1]) / scale
    Y = torch.cat([X[..., :1], X[..., :1] + D.cumsum(-1)], -1)
    Y = Y * (torch.linalg.vector_norm(X[..., -1], dim=-1)
             / torch.linalg.vector_norm(Y[..., -1], dim=-1))[:, None, None]
    for w, s in ((reduce_window(X), None), (reduce_window(X, scale), scale)):
        direct = block_spectra(X, scale=s)
        mine = block_spectra(w)
        for name in ("eigenvalues", "shares", "growth", "motion", "remaining"):
            assert torch.allclose(getattr(mine, name), getattr(direct, name), rtol=1e-9,
                                  atol=1e-12), name
        a = null_growth(w, orders)
        b = null_growth(X, orders, scale=s)
        assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    scaled = block_spectra(reduce_window(X, scale))
    by_hand = block_spectra(Y)
    assert torch.allclose(scaled.eigenvalues.abs(), by_hand.eigenvalues.abs(), rtol=1e-8,
                          atol=1e-10)
    with pytest.raises(ValueError, match="scale is given to reduce_window"):
        block_spectra(reduce_window(X), scale=scale)


def test_distances_are_in_weights_whatever_the_scale():
    """A constant ``scale`` (a constant lr in lr time) changes no eigenvalue and no distance:
    ``motion``, ``remaining`` and ``at_rest`` stay in units of the weights (they were in
    units of weights per unit of scale, which made the convergence flag and the rounding
    floor depend on the lr)."""
    g = torch.Generator().manual_seed(5)
    lam = torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(12, 3, generator=g, dtype=torch.float64))[0]
    t = torch.arange(10, dtype=torch.float64)
    X = (1.0 + (Q @ (lam[:, None] ** t))).unsqueeze(0)    # settling towards 1
    plain = block_spectra(X)
    for c in (1e-3, 7.0):
        s = block_spectra(X, scale=torch.full((9,), c, dtype=torch.float64))
        assert torch.allclose(s.eigenvalues, plain.eigenvalues, rtol=1e-9, atol=1e-12)
        for name in ("motion", "remaining"):
            assert torch.allclose(getattr(s, name), getattr(plain, name), rtol=1e-9), name
        assert bool((s.at_rest == plain.at_rest).all())
    # the geometric series of the three modes, from the last snapshot on
    D = X[0, :, 1:] - X[0, :, :-1]
    exact = torch.linalg.vector_norm(Q @ (lam ** 9 / (1 - lam) * (lam - 1))) / \
        torch.linalg.vector_norm(X[0, :, -1])
    assert torch.allclose(plain.remaining[0], exact, rtol=1e-6)
    assert torch.allclose(plain.motion[0], torch.linalg.vector_norm(D[:, -1])
                          / torch.linalg.vector_norm(X[0, :, -1]))


# ------------------------------------------------------------------ the held-out forecast
def test_exact_linear_increments_forecast_their_held_out_increment_exactly():
    """Increments that grow by 1.1 along one direction: the operator fitted without the last
    increment forecasts it exactly (residual 0), at rank 1 and with every mode; shuffled,
    the same increments do not (their order no longer follows the growth)."""
    from kooptrain.diagnostics.spectrum import null_forecast, time_orders

    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 30, 1, generator=g, dtype=torch.float64)
    X = u * (1.1 ** torch.arange(10, dtype=torch.float64)).cumsum(0)
    orders = time_orders(9, 30, seed=2)
    for rank in (1, None):
        r, null = null_forecast(X, orders, rank=rank)
        assert r.shape == (2,) and null.shape == (2, 30)
        assert bool((r < 1e-12).all()), (rank, r)
        moved = (orders[:, -2:] != torch.tensor([7, 8])).any(-1)  # the last two reordered
        assert bool((null[:, moved] > 1e-6).all())


def test_the_rank_1_forecast_from_the_gram_matrix_is_the_rank_1_fit_s():
    """The Gram route (rank 1) gives the residual of the rank-1 projected DMD through the
    engine's SVD path, which ``rank=None`` at a window of rank 1 also is."""
    from kooptrain.diagnostics.spectrum import null_forecast, time_orders

    g = torch.Generator().manual_seed(1)
    t = torch.arange(10, dtype=torch.float64)
    X = torch.randn(4, 25, 1, generator=g, dtype=torch.float64) * 1.05 ** t \
        + 0.02 * torch.randn(4, 25, 10, generator=g, dtype=torch.float64)
    orders = time_orders(9, 40, seed=3)
    gram = null_forecast(X, orders, rank=1)
    svd = null_forecast(X, orders, rank=2)  # rank 2 differs: the check that rank matters
    from kooptrain.diagnostics.spectrum import reduce_window
    w = reduce_window(X)
    # rank 1 through svd_operator on the window with its orders, by hand
    from kooptrain._linalg import svd_operator
    everyone = torch.cat([torch.arange(9)[None], orders])
    Rp = w.R[..., everyone].movedim(-2, 1)
    B_, U = svd_operator(Rp[..., :7], Rp[..., 1:8], 1, 1e-12)
    f = U @ ((U.mT @ B_) @ (U.mT @ Rp[..., 7:8]))
    by_hand = (Rp[..., 8:] - f).square().sum((-2, -1)) / Rp[..., 8].square().sum(-1)
    torch.testing.assert_close(gram[0], by_hand[:, 0], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(gram[1], by_hand[:, 1:], rtol=1e-6, atol=1e-9)
    assert not torch.allclose(svd[1], gram[1])


def test_noise_forecasts_no_better_than_its_surrogates_at_the_stated_rate():
    """Random walks (exchangeable increments): the window's held-out residual ranks
    uniformly among its surrogates', so at most 10% of surrogates forecast at least as
    well in 10% of windows, within binomial noise over 400 windows."""
    from kooptrain.diagnostics.spectrum import null_forecast, time_orders

    g = torch.Generator().manual_seed(7)
    X = torch.randn(400, 20, 10, generator=g, dtype=torch.float64).cumsum(-1)
    r, null = null_forecast(X, time_orders(9, 99, seed=8))
    q = (1 + (null <= r[:, None]).sum(-1)) / 100
    rate, sd = float((q <= 0.1).double().mean()), math.sqrt(0.1 * 0.9 / 400)
    assert 0.1 - 3 * sd <= rate <= 0.1 + 3 * sd, rate


def test_one_unstable_mode_plus_noise_forecasts_better_than_its_surrogates():
    """``x_{t+1} = A x_t + noise`` with one mode growing by 1.2 a step: once the mode
    dominates the noise (steps 20-29), the held-out increment is forecast to within 10% of
    its energy, better than by 95% of the shuffled windows; from the start (steps 0-9,
    noise as large as the growth), still better than most."""
    from _systems import unstable_plus_noise

    from kooptrain.diagnostics.spectrum import null_forecast, time_orders

    runs = torch.stack([unstable_plus_noise(s, steps=30) for s in range(20)])
    orders = time_orders(9, 99, seed=1)
    for X, worst, most in ((runs[..., 20:], 0.1, 0.05), (runs[..., :10], 1.0, 0.1)):
        r, null = null_forecast(X, orders)
        q = (1 + (null <= r[:, None]).sum(-1)) / 100
        assert bool((r < worst).all()) and float(q.median()) <= most, (r, q)
