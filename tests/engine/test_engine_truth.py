"""Paths that once returned a plausible wrong answer: each now raises, warns or is right.

Every test here failed on the engine before the fix (issue #6).
"""

import math

import numpy as np
import pytest
import torch
from _trajectories import linear_trajectory

from kooptrain import KoopmanOperator, NoFixedPointError, SnapshotStatistics
from kooptrain._linalg import apply_powers as _apply_powers


# ------------------------------------------------------------------ fixed point
def test_missing_fixed_point_raises_instead_of_zeros(rng):
    """Identity observables, a contraction: no eigenvalue near 1, so no fixed point."""
    X = linear_trajectory(np.diag([0.9, 0.5]), np.array([1.0, 2.0]), 20)
    op = KoopmanOperator().fit(X)
    with pytest.raises(NoFixedPointError, match="affine"):
        op.predict(math.inf)
    assert not bool(op.fixed_point_found_)


def test_missing_fixed_point_can_stay_per_block(rng):
    """Block 0 settles at a fixed point (eigenvalue 1); block 1 contracts to nowhere."""
    A0 = np.array([[1.0, 0.0], [0.0, 0.6]])
    X = np.stack([linear_trajectory(A0, np.array([2.0, 1.0]), 15),
                  linear_trajectory(np.diag([0.9, 0.5]), np.array([1.0, 2.0]), 15)])
    op = KoopmanOperator(no_fixed_point="stay").fit(X)
    x = op.predict(math.inf)
    assert op.fixed_point_found_.tolist() == [True, False]
    np.testing.assert_allclose(x[0].numpy(), [2.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(x[1].numpy(), X[1, :, -1], rtol=1e-12)  # stays at x_m
    with pytest.raises(NoFixedPointError, match="1 of 2"):
        KoopmanOperator().fit(X).predict(math.inf)


def test_drift_along_jordan_block_is_no_fixed_point():
    """Affine + linear drift: lambda = 1 twice, but the state never settles."""
    t = np.arange(12.0)
    X = np.stack([0.5 * t + 2.0, -0.25 * t], 0)
    op = KoopmanOperator(observables="affine", no_fixed_point="stay").fit(X)
    np.testing.assert_allclose(op.predict(math.inf).numpy(), X[:, -1], rtol=1e-9)
    assert not bool(op.fixed_point_found_)
    with pytest.raises(NoFixedPointError):
        KoopmanOperator(observables="affine").fit(X).predict(math.inf)


def test_affine_fixed_point_of_wide_blocks_is_the_settling_point(rng):
    """d = 40 > m: weights converge to x* != 0; the jump lands near x*, not at zeros."""
    d, m = 40, 12
    x_star = rng.standard_normal(d) + 3.0
    decay = 0.7 ** np.arange(m)
    X = x_star[:, None] + np.outer(rng.standard_normal(d), decay)
    op = KoopmanOperator(observables="affine").fit(X)
    x = op.predict(math.inf).numpy()
    assert bool(op.fixed_point_found_)
    np.testing.assert_allclose(x, x_star, atol=1e-6)
    # these data span {x*, v}: identity observables see x* as an exact lambda = 1 mode
    ident = KoopmanOperator(fixed_point_tol=1e-6).fit(X)
    np.testing.assert_allclose(ident.predict(math.inf).numpy(), x_star, atol=1e-6)


# --------------------------------------------------------- affine, exact lambda=1
@pytest.mark.parametrize("d,m", [(3, 30), (40, 12), (11, 12), (12, 12)])
def test_affine_constant_is_exactly_invariant(rng, d, m):
    X = rng.standard_normal((2, d, m)) + 5.0
    op = KoopmanOperator(observables="affine").fit(X)
    U = op.operator  # (2, d+1, d+1)
    e = torch.zeros(d + 1, dtype=torch.float64)
    e[-1] = 1.0
    torch.testing.assert_close(U[:, -1, :], e.expand(2, -1), rtol=0, atol=1e-14)
    assert ((op.eigenvalues - 1).abs().amin(-1) < 1e-12).all()
    # the constant observable stays 1 along the whole rollout
    last = torch.cat([torch.from_numpy(X[..., -1]), torch.ones(2, 1, dtype=torch.float64)], -1)
    full = op.representation_.rollout(last, 1000)
    torch.testing.assert_close(full[:, -1, :], torch.ones(2, 1000, dtype=torch.float64),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("d,m", [(3, 30), (40, 12)])
def test_affine_equals_centred_least_squares_reference(rng, d, m):
    """x -> A x + c with A = X1c pinv(X0c), c = mean(X1) - A mean(X0), in NumPy."""
    X = rng.standard_normal((d, m)) * 0.1 + rng.standard_normal((d, 1))
    X0, X1 = X[:, :-1], X[:, 1:]
    mu0, mu1 = X0.mean(1, keepdims=True), X1.mean(1, keepdims=True)
    A = (X1 - mu1) @ np.linalg.pinv(X0 - mu0, rcond=1e-6)
    c = (mu1 - A @ mu0)[:, 0]
    x = X[:, -1]
    ref = {}
    for t in range(1, 26):
        x = A @ x + c
        ref[t] = x
    op = KoopmanOperator(observables="affine").fit(X)
    got = op.predict([1, 5, 25])  # (d, 3)
    for i, t in enumerate([1, 5, 25]):
        np.testing.assert_allclose(got[:, i].numpy(), ref[t], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(op.trajectory(25)[:, -1].numpy(), ref[25], rtol=1e-7, atol=1e-9)


def test_affine_trajectory_drops_the_constant_row(rng):
    X = rng.standard_normal((3, 4, 20))
    op = KoopmanOperator(observables="affine").fit(X)
    traj = op.trajectory(5)
    assert traj.shape == (3, 4, 5)
    torch.testing.assert_close(traj, op.predict([1, 2, 3, 4, 5]))
    assert op.trajectory(0).shape == (3, 4, 0)
    assert KoopmanOperator().fit(X).trajectory(0).shape == (3, 4, 0)


# --------------------------------------------------- stabilisation everywhere
@pytest.mark.parametrize("obs", ["identity", "affine"])
def test_operator_eigenvalues_and_predictions_agree_after_stabilize(rng, obs):
    """Wide blocks: .operator, .eigenvalues, .modes and predict describe one operator."""
    d, m = 30, 10
    X = np.cumprod(1.0 + 0.05 * rng.standard_normal((d, m)), axis=1)  # growing, noisy
    op = KoopmanOperator(observables=obs, stabilize="clip").fit(X)
    U = op.operator
    lam_U = torch.linalg.eigvals(U)
    assert lam_U.abs().max() <= 1 + 1e-8
    assert op.eigenvalues.abs().max() <= 1 + 1e-8
    # the non-zero spectrum of the dense operator is the reported spectrum
    big = lam_U[lam_U.abs() > 1e-6]
    assert big.numel() == (op.eigenvalues.abs() > 1e-6).sum()
    for lam in op.eigenvalues[op.eigenvalues.abs() > 1e-6]:
        assert (big - lam).abs().min() < 1e-6
    # modes are eigenvectors of the operator
    torch.testing.assert_close(U.to(op.modes.dtype) @ op.modes, op.modes * op.eigenvalues,
                               atol=1e-8, rtol=1e-8)
    # predictions are powers of that operator
    x = torch.as_tensor(X[:, -1], dtype=torch.float64)
    if obs == "affine":
        x = torch.cat([x, x.new_ones(1)])
    ref = torch.linalg.matrix_power(U, 7) @ x
    torch.testing.assert_close(op.predict(7), ref[:d], rtol=1e-8, atol=1e-10)


def test_drop_zeroes_unstable_modes_on_wide_blocks(rng):
    d, m = 30, 10
    X = np.cumprod(1.0 + 0.05 * rng.standard_normal((d, m)), axis=1)
    op = KoopmanOperator(stabilize="drop").fit(X)
    assert torch.linalg.eigvals(op.operator).abs().max() <= 1 + 1e-8
    plain = KoopmanOperator().fit(X)
    assert plain.eigenvalues.abs().max() > 1  # there was something to drop


# ------------------------------------------------------------------ stale state
def test_failed_fit_leaves_estimator_unfitted(rng):
    op = KoopmanOperator(holdout=3).fit(rng.standard_normal((4, 20)))
    op.predict(3)
    with pytest.raises(ValueError, match="holdout"):
        op.fit(rng.standard_normal((4, 4)))
    with pytest.raises(RuntimeError, match="not fitted"):
        op.predict(3)
    assert not hasattr(op, "residual_")
    op2 = KoopmanOperator().fit(rng.standard_normal((4, 20)))
    with pytest.raises(ValueError, match="NaN"):
        op2.fit(np.full((4, 5), np.nan))
    with pytest.raises(RuntimeError, match="not fitted"):
        op2.eigenvalues  # noqa: B018


def test_predict_uses_the_settings_of_the_fit(rng):
    X = rng.standard_normal((5, 30))
    op = KoopmanOperator(observables="affine").fit(X)
    before = op.predict(10)
    op.observables, op.stabilize, op.rtol = "identity", "drop", 0.5
    torch.testing.assert_close(op.predict(10), before, rtol=0, atol=0)
    assert op.predict(10).shape == (5,)


def test_fixed_point_tol_of_the_fit_is_used():
    A0 = np.array([[0.9995, 0.0], [0.0, 0.6]])
    X = linear_trajectory(A0, np.array([2.0, 1.0]), 15)
    op = KoopmanOperator(fixed_point_tol=1e-3).fit(X)
    op.fixed_point_tol = 1e-6  # changed after fit: ignored
    x = op.predict(math.inf)
    np.testing.assert_allclose(x.numpy(), [X[0, -1], 0.0], atol=1e-9)


# ------------------------------------------------------------ truncation rule
@pytest.mark.parametrize("obs", ["identity", "affine"])
@pytest.mark.parametrize("kw", [{}, {"rank": 3}, {"rtol": 1e-3}])
def test_window_and_streaming_are_one_rule_on_rank_deficient_data(rng, obs, kw):
    X = rng.standard_normal((3, 6, 40)) + 2.0
    X[0, 5] = 2 * X[0, 3] - X[0, 1]           # exactly dependent rows
    X[1, 4] = X[1, 2] + 1e-9 * rng.standard_normal(40)  # nearly dependent rows
    X = torch.from_numpy(X)
    a = KoopmanOperator(observables=obs, **kw).fit(X)
    b = KoopmanOperator(observables=obs, **kw).fit_statistics(SnapshotStatistics.from_snapshots(X))
    torch.testing.assert_close(a.predict(25), b.predict(25), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(a.operator, b.operator, rtol=1e-6, atol=1e-6)


def test_streaming_update_equals_from_snapshots(rng):
    X = torch.from_numpy(rng.standard_normal((4, 5, 30)) + 100.0)
    s = SnapshotStatistics.from_snapshots(X[..., :1])
    for t in range(1, 30):
        s.update(X[..., t])
    w = SnapshotStatistics.from_snapshots(X)
    for k in ("xx", "yx", "x_sum", "y_sum", "last", "origin"):
        torch.testing.assert_close(getattr(s, k), getattr(w, k), rtol=1e-9, atol=1e-9)
    assert s.count == w.count == 29
    # unshifted sums are the raw Gram matrices
    X0, X1 = X[..., :-1], X[..., 1:]
    G, C = s.unshifted()
    torch.testing.assert_close(G, X0 @ X0.mT, rtol=1e-12, atol=1e-8)
    torch.testing.assert_close(C, X1 @ X0.mT, rtol=1e-12, atol=1e-8)
    with pytest.raises(ValueError, match="shape"):
        s.update(X[0, :, 0])


def test_streaming_rejects_rtol_below_gram_resolution(rng):
    s = SnapshotStatistics.from_snapshots(rng.standard_normal((3, 10)))
    with pytest.raises(ValueError, match="running sums"):
        KoopmanOperator(rtol=1e-10).fit_statistics(s)
    with pytest.raises(TypeError, match="SnapshotStatistics"):
        KoopmanOperator().fit_statistics({"xx": 1})
    one = SnapshotStatistics.from_snapshots(rng.standard_normal((3, 1)))
    with pytest.raises(ValueError, match="fewer than 2"):
        KoopmanOperator().fit_statistics(one)


def test_streaming_keeps_precision_for_small_motion_around_large_weights(rng):
    """Weights ~1e3 moving by ~1e-3: shifted sums keep the affine fit accurate."""
    A = 0.9 * np.linalg.qr(rng.standard_normal((4, 4)))[0]
    Z = linear_trajectory(A, rng.standard_normal(4), 60, c=0.01 * rng.standard_normal(4))
    X = torch.from_numpy(1e3 + 1e-3 * Z)
    a = KoopmanOperator(observables="affine").fit(X)
    b = KoopmanOperator(observables="affine").fit_statistics(SnapshotStatistics.from_snapshots(X))
    motion = (X[:, -1] - X[:, -2]).norm()
    assert (a.predict(50) - b.predict(50)).norm() < 1e-6 * motion


# ------------------------------------------------------------ Cholesky guard
def blocks_with_condition(rng, conds, d=6, n=40):
    """(B, d, n+1) windows whose X0 has exactly the given condition numbers."""
    out = []
    for cond in conds:
        Q1 = np.linalg.qr(rng.standard_normal((d, d)))[0]
        Q2 = np.linalg.qr(rng.standard_normal((n + 1, d)))[0]
        s = np.geomspace(1.0, 1.0 / cond, d)
        out.append(Q1 @ np.diag(s) @ Q2.T)
    return np.stack(out)


def test_cholesky_guard_bounds_the_error_near_and_past_its_threshold(rng):
    conds = [10.0, 1e3, 5e3, 2e4, 1e6, 1e8]
    X = blocks_with_condition(rng, conds)
    op = KoopmanOperator().fit(X)
    # blocks at cond >= 2e4 always leave the plain Cholesky path (the estimate may send 5e3
    # too): up to the bound 1e6 = 1/rtol they are refined, beyond it refitted by SVD
    assert op.fallback_blocks_ == 2 and 1 <= op.refined_blocks_ <= 2
    for b in range(len(conds)):
        U = X[b, :, 1:] @ np.linalg.pinv(X[b, :, :-1], rcond=1e-6)
        err = np.abs(op.operator[b].numpy() - U).max() / np.abs(U).max()
        assert err < 1e-9, (conds[b], err)


def test_cholesky_guard_is_scale_free(rng):
    """Scaling one observable (weights vs bias) must not let a bad block through."""
    X = blocks_with_condition(rng, [1e6])
    X[0, -1] *= 1e3
    op = KoopmanOperator().fit(X)
    assert op.fallback_blocks_ == 1
    U = X[0, :, 1:] @ np.linalg.pinv(X[0, :, :-1], rcond=1e-6)
    np.testing.assert_allclose(op.operator[0].numpy(), U, rtol=0, atol=1e-9 * np.abs(U).max())


def test_many_blocks_run_through_the_chunked_cpu_path(rng):
    """More blocks than one cache-sized chunk: the result equals block-by-block fits."""
    from kooptrain import _linalg

    d, n = 20, 40
    chunk = _linalg.CPU_CHUNK_BYTES // (8 * d * (2 * n + 4 * d))
    B = 2 * chunk + 3
    X = rng.standard_normal((B, d, n + 1))
    X[chunk + 1, 3] = X[chunk + 1, 2]  # one singular block in the second chunk
    op = KoopmanOperator().fit(X)
    assert op.fallback_blocks_ == 1
    got = op.predict(4)
    for b in (0, chunk - 1, chunk, chunk + 1, B - 1):
        torch.testing.assert_close(got[b], KoopmanOperator().fit(X[b]).predict(4))


# ------------------------------------------------------- overflow and horizons
def test_powers_overflowing_along_an_absent_mode_stay_finite():
    """diag(10, 0.5)^1000 overflows, but the state has no component along the 10-mode."""
    K = torch.diag(torch.tensor([10.0, 0.5], dtype=torch.float64)).unsqueeze(0)
    z = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    out = _apply_powers(K, z, torch.tensor([3, 1000]))
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 0.125], dtype=torch.float64))
    assert out[0, 1, 0] == 0 and out[0, 1, 1] == pytest.approx(0.5**1000, rel=1e-9)
    # a real overflow still reaches the caller as non-finite (and predict raises)
    out = _apply_powers(K, torch.tensor([[1e-300, 1.0]], dtype=torch.float64),
                        torch.tensor([1000]))
    assert not torch.isfinite(out[0, 0, 0])


def test_tensor_horizons(rng):
    op = KoopmanOperator().fit(rng.standard_normal((2, 4, 20)))
    torch.testing.assert_close(op.predict(torch.tensor(5)), op.predict(5))
    torch.testing.assert_close(op.predict(torch.tensor([1, 5])), op.predict([1, 5]))
    torch.testing.assert_close(op.predict(np.array([1, 5])), op.predict([1, 5]))
    assert op.predict(np.int64(3)).shape == (2, 4)
    assert op.predict((2, 3, 4)).shape == (2, 4, 3)


@pytest.mark.parametrize("cond", [3e4, 1.5e5, 4e5, 9e5])
def test_refinement_takes_each_block_to_the_svd_answer(rng, cond):
    """Between the plain guard and 1/rtol, one refinement step brings every block as close
    to the SVD solution (numpy's pinv) as two backward-stable solves agree, cond * 1e-14
    (unrefined normal equations are off by ~cond^2 eps: 1e-7 at 3e4, 2e-5 at 9e5)."""
    X = blocks_with_condition(rng, [cond] * 3)
    op = KoopmanOperator().fit(X)
    assert op.refined_blocks_ == 3 and op.fallback_blocks_ == 0
    for b in range(3):
        U = X[b, :, 1:] @ np.linalg.pinv(X[b, :, :-1], rcond=1e-6)
        err = np.abs(op.operator[b].numpy() - U).max() / np.abs(U).max()
        assert err < cond * 1e-14, (cond, err)
