"""Engine tests: against an independent reference, known solutions and invariants."""

import math

import numpy as np
import pytest
import torch
from _trajectories import linear_trajectory

from kooptrain import KoopmanOperator, SnapshotStatistics
from kooptrain._representation import LowRankOperator


def reference_prediction(X: np.ndarray, T: int) -> np.ndarray:
    """The paper's estimator written independently: U = X' pinv(X), U^T x_m (NumPy)."""
    U = X[:, 1:] @ np.linalg.pinv(X[:, :-1])
    return np.linalg.matrix_power(U, T) @ X[:, -1]


@pytest.mark.parametrize("d,m", [(4, 30), (12, 13), (13, 12), (40, 9), (1, 5)])
def test_matches_pinv_reference(rng, d, m):
    X = rng.standard_normal((3, d, m))
    op = KoopmanOperator().fit(X)
    for T in (0, 1, 2, 7, 64):
        got = op.predict(T).numpy()
        for b in range(3):
            ref = reference_prediction(X[b], T)
            np.testing.assert_allclose(got[b], ref, rtol=1e-6, atol=1e-9 * np.abs(ref).max())


def test_numpy_and_torch_inputs_agree_and_return_float64_tensors(rng):
    X = rng.standard_normal((2, 3, 10)).astype(np.float32)
    a = KoopmanOperator().fit(X).predict(5)
    b = KoopmanOperator().fit(torch.from_numpy(X)).predict(5)
    assert isinstance(a, torch.Tensor) and a.dtype == torch.float64
    assert a.shape == (2, 3)
    torch.testing.assert_close(a, b)


def test_sequence_of_horizons_matches_single_predictions(rng):
    X = rng.standard_normal((5, 4, 20))
    op = KoopmanOperator().fit(X)
    hs = [0, 3, 1, 10, 10, 33]
    many = op.predict(hs)
    assert many.shape == (5, 4, len(hs))  # time last, like X and trajectory
    for i, h in enumerate(hs):
        torch.testing.assert_close(many[..., i], op.predict(h))


def test_trajectory_matches_predict(rng):
    for d, m in [(3, 20), (15, 6)]:
        X = rng.standard_normal((2, d, m)) * 0.3
        op = KoopmanOperator().fit(X)
        traj = op.trajectory(6)
        assert traj.shape == (2, d, 6)
        torch.testing.assert_close(traj, op.predict(list(range(1, 7))))
        # and each column is the operator applied once more: x_{t+1} = U x_t
        U = op.operator
        torch.testing.assert_close(traj[..., 1:], U @ traj[..., :-1])


def test_jordan_block_drift_predicted_exactly():
    """Affine + linear drift gives [[1, b], [0, 1]]: eigendecompositions fail, powers don't."""
    t = np.arange(12.0)
    X = np.stack([0.5 * t + 2.0, -0.25 * t], 0)  # weights drifting linearly
    op = KoopmanOperator(observables="affine").fit(X)
    for T in (1, 100, 1000):
        expected = np.array([0.5 * (11 + T) + 2.0, -0.25 * (11 + T)])
        np.testing.assert_allclose(op.predict(T).numpy(), expected, rtol=1e-8)


def test_affine_recovers_nonzero_fixed_point(rng):
    A = np.array([[0.9, 0.05], [0.0, 0.7]])
    c = np.array([0.3, -0.2])
    X = linear_trajectory(A, np.array([1.0, 1.0]), 25, c)
    x_star = np.linalg.solve(np.eye(2) - A, c)
    op = KoopmanOperator(observables="affine").fit(X)
    np.testing.assert_allclose(op.predict(math.inf).numpy(), x_star, rtol=1e-8)
    np.testing.assert_allclose(op.predict_fixed_point().numpy(), x_star, rtol=1e-8)
    # identity observables cannot represent x -> A x + c with a fixed point != 0
    ident = KoopmanOperator().fit(X)
    assert np.abs(ident.predict(2000).numpy() - x_star).max() > 1e-3


def test_low_rank_form_is_exact_operator_not_projected_dmd(rng):
    """d > m-1: predictions equal U^T x_m with U = X1 pinv(X0), including T=0 (identity)."""
    d, m = 50, 8
    X = rng.standard_normal((d, m))
    op = KoopmanOperator().fit(X)
    assert isinstance(op.representation_, LowRankOperator)  # low-rank path taken
    U = X[:, 1:] @ np.linalg.pinv(X[:, :-1])
    for T in (0, 1, 5):
        np.testing.assert_allclose(op.predict(T).numpy(),
                                   np.linalg.matrix_power(U, T) @ X[:, -1], rtol=1e-7,
                                   atol=1e-10)
    # x_m lies outside span(X0); projected DMD would lose that component at T=0 and T=1
    W = op.representation_.W
    proj = W @ (W.mT @ torch.from_numpy(X[:, -1]))
    assert (proj - torch.from_numpy(X[:, -1])).norm() > 1e-3


def _tall_window(d: int, m: int, lam, offset: bool, seed: int) -> torch.Tensor:
    """``x_t = x* + sum_i c_i lam_i^t v_i`` ``(1, d, m)``: a tall window of known modes."""
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(d, len(lam), generator=g, dtype=torch.float64)
    t = torch.arange(m, dtype=torch.float64)
    X = V @ (torch.tensor(lam, dtype=torch.float64)[:, None] ** t)
    if offset:
        X = X + 3 * torch.randn(d, 1, generator=g, dtype=torch.float64)
    return X[None], V


@pytest.mark.parametrize("observables,stabilize,lam", [
    ("identity", None, [0.9, 0.7, 0.5, -0.3]),
    ("identity", "clip", [1.05, 0.7, 0.5, -0.3]),
    ("affine", None, [0.9, 0.7, 0.5, -0.3]),
    ("affine", "clip", [1.05, 0.7, 0.5, -0.3]),
])
def test_a_tall_window_fitted_in_its_basis_is_the_same_fit(monkeypatch, observables,
                                                           stabilize, lam):
    """A window tall enough to be fitted in an orthonormal basis of itself (a layer, the
    whole network) gives the fit of the direct route, at every horizon, with the same
    spectrum, held-out errors, path and fixed point, and modes along the true ones."""
    from kooptrain import _linalg

    d, m = _linalg.TSQR_MIN_ROWS, 9
    X, V = _tall_window(d, m, lam, offset=observables == "affine", seed=3)
    opts = dict(observables=observables, stabilize=stabilize, holdout=2)
    tall = KoopmanOperator(**opts).fit(X)
    assert "basis of the window" in tall.representation_.describe()
    with monkeypatch.context() as mp:
        mp.setattr(_linalg, "TSQR_MIN_ROWS", 10 * d)
        direct = KoopmanOperator(**opts).fit(X)
    assert "basis" not in direct.representation_.describe()
    scale = float(X.abs().max())
    close = dict(rtol=1e-8, atol=1e-9 * scale)
    torch.testing.assert_close(tall.predict([0, 1, 7, 300]), direct.predict([0, 1, 7, 300]),
                               **close)
    torch.testing.assert_close(tall.trajectory(3), direct.trajectory(3), **close)
    torch.testing.assert_close(tall.residual_, direct.residual_, rtol=1e-6, atol=1e-9)
    ev = lambda op: op.eigenvalues.abs().sort(-1).values  # noqa: E731
    torch.testing.assert_close(ev(tall), ev(direct), rtol=1e-8, atol=1e-10)
    if observables == "affine" and stabilize is None:  # settles at x*
        torch.testing.assert_close(tall.predict(math.inf), direct.predict(math.inf), **close)
        torch.testing.assert_close(tall.predict(math.inf), X[..., 0] - V.sum(-1), **close)
    if stabilize is None and observables == "identity":  # modes along the true directions
        lam_fit, modes = tall.eigenvalues[0], tall.modes[0]
        for i, li in enumerate(lam):
            j = int((lam_fit - li).abs().argmin())
            assert abs(complex(lam_fit[j]) - li) < 1e-8
            cos = (modes[:, j].real @ V[:, i]).abs() / (modes[:, j].real.norm() * V[:, i].norm())
            assert float(cos) > 1 - 1e-8


def test_eigenvalues_and_modes_of_known_map(rng):
    lam = np.array([0.95, 0.5, -0.3])
    S = rng.standard_normal((3, 3))
    A = S @ np.diag(lam) @ np.linalg.inv(S)
    X = linear_trajectory(A, rng.standard_normal(3), 10)
    op = KoopmanOperator().fit(X)
    assert op.eigenvalues.shape == (3,)
    np.testing.assert_allclose(np.sort(op.eigenvalues.real.numpy()), np.sort(lam), atol=1e-8)
    # U phi = lambda phi for every mode
    U = op.operator.to(torch.complex128)
    torch.testing.assert_close(U @ op.modes, op.modes * op.eigenvalues, atol=1e-9, rtol=1e-9)


def test_eigenvalue_count_is_min_d_and_m_minus_1(rng):
    assert KoopmanOperator().fit(rng.standard_normal((4, 7, 30))).eigenvalues.shape == (4, 7)
    assert KoopmanOperator().fit(rng.standard_normal((4, 30, 7))).eigenvalues.shape == (4, 6)


def test_predict_never_computes_eigendecomposition(rng, monkeypatch):
    op = KoopmanOperator().fit(rng.standard_normal((2, 5, 20)))

    def eig(*a, **k):
        raise AssertionError("predict computed an eigendecomposition")

    monkeypatch.setattr(torch.linalg, "eig", eig)
    op.predict(100)
    monkeypatch.undo()
    assert op.eigenvalues.shape == (2, 5)  # computed on first access


def test_stabilize_clips_unstable_modes_onto_unit_circle(rng):
    A = np.diag([1.05, 0.5])
    X = linear_trajectory(A, np.array([1.0, 1.0]), 10)
    plain = KoopmanOperator().fit(X)
    with pytest.raises(FloatingPointError, match="stabilize"):
        plain.predict(100_000)
    clip = KoopmanOperator(stabilize="clip").fit(X)
    np.testing.assert_allclose(np.sort(clip.eigenvalues.abs().numpy()), [0.5, 1.0], atol=1e-9)
    # the unstable coordinate freezes instead of blowing up; the stable one decays
    np.testing.assert_allclose(clip.predict(10_000).numpy(), [1.05**9, 0.0], atol=1e-9)
    drop = KoopmanOperator(stabilize="drop").fit(X)
    np.testing.assert_allclose(drop.predict(3).numpy(), [0.0, 0.5**12], atol=1e-12)


def test_rank_truncation_denoises(rng):
    """A rank-2 signal plus small noise: rank=2 recovers the clean dynamics better."""
    lam = np.array([0.99, 0.9])
    S = rng.standard_normal((20, 2))
    Z = linear_trajectory(np.diag(lam), np.array([1.0, 1.0]), 40)
    X = S @ Z + 1e-2 * rng.standard_normal((20, 40))
    truth = S @ (np.diag(lam) ** 30 @ Z[:, -1])
    full = KoopmanOperator().fit(X).predict(30).numpy()
    low = KoopmanOperator(rank=2).fit(X).predict(30).numpy()
    # both start from the noisy x_m, so the gain is bounded; truncation must still win
    assert np.linalg.norm(low - truth) < 0.7 * np.linalg.norm(full - truth)
    assert KoopmanOperator(rank=2).fit(X).eigenvalues.shape[-1] == 2


def test_rtol_equals_pinv_with_same_rtol(rng):
    """One relative cutoff on the singular values of X0, like pinv(rtol=...)."""
    X = rng.standard_normal((6, 30))
    X[5] = X[4] + 1e-5 * rng.standard_normal(30)  # a direction at ~4e-6 sigma_max
    for rc in (1e-6, 1e-4):
        U = X[:, 1:] @ np.linalg.pinv(X[:, :-1], rcond=rc)
        op = KoopmanOperator(rtol=rc).fit(X)
        # cond ~ 2e5 is beyond the plain Cholesky guard: refined at rtol=1e-6 (the bound
        # stays below 1/rtol), refitted by SVD at rtol=1e-4 (truncation may be needed)
        assert (op.refined_blocks_, op.fallback_blocks_) == ((1, 0) if rc == 1e-6 else (0, 1))
        # U has entries ~4e4 at rtol=1e-6: compare relative to its scale
        np.testing.assert_allclose(op.operator.numpy(), U, rtol=0, atol=1e-10 * np.abs(U).max())
    # the two cutoffs really differ here, so the test can tell them apart
    U4 = X[:, 1:] @ np.linalg.pinv(X[:, :-1], rcond=1e-4)
    U6 = X[:, 1:] @ np.linalg.pinv(X[:, :-1], rcond=1e-6)
    assert np.abs(U4 - U6).max() > 1e-2
    # default rtol is DEFAULT_RTOL = 1e-6
    np.testing.assert_allclose(KoopmanOperator().fit(X).operator.numpy(), U6, rtol=0,
                               atol=1e-10 * np.abs(U6).max())
    np.testing.assert_allclose(KoopmanOperator(rtol=1e-4).fit(X).operator.numpy(), U4,
                               rtol=1e-6, atol=1e-9)


def test_rank_deficient_square_blocks_fall_back_to_pinv(rng):
    """Exactly collinear rows make X0 X0^T singular: Cholesky fails, SVD pinv takes over."""
    X = rng.standard_normal((3, 5, 30))
    X[1, 4] = 2 * X[1, 3]
    op = KoopmanOperator().fit(X)
    assert op.fallback_blocks_ == 1
    for b in range(3):
        np.testing.assert_allclose(op.predict(4)[b].numpy(), reference_prediction(X[b], 4),
                                   rtol=1e-6, atol=1e-9)


def test_streaming_statistics_give_same_operator_as_window(rng):
    X = torch.from_numpy(rng.standard_normal((4, 6, 40)))
    stats = SnapshotStatistics.from_snapshots(X)
    for obs in ("identity", "affine"):
        a = KoopmanOperator(observables=obs).fit(X)
        b = KoopmanOperator(observables=obs).fit_statistics(stats)
        torch.testing.assert_close(a.operator, b.operator, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(a.predict(25), b.predict(25), rtol=1e-9, atol=1e-11)


def test_holdout_residual_flags_bad_block(rng):
    """Block 0 follows a linear map; block 1 is noise. Only the held-out score tells them apart."""
    A = 0.97 * np.linalg.qr(rng.standard_normal((8, 8)))[0]
    good = linear_trajectory(A, rng.standard_normal(8), 12)
    bad = rng.standard_normal((8, 12))
    X = np.stack([good, bad])
    op = KoopmanOperator(holdout=3).fit(X)
    assert op.residual_.shape == (2,)
    assert op.residual_[0] < 1e-6 and op.residual_[1] > 0.5
    # in-sample both look perfect: with d = m-1 the fit interpolates any data
    Xin = torch.from_numpy(X[..., :9])
    U = KoopmanOperator().fit(Xin).operator
    insample = (U @ Xin[..., :-1] - Xin[..., 1:]).norm(dim=(-2, -1)) / Xin.norm(dim=(-2, -1))
    assert (insample < 1e-8).all()


def test_batched_leading_axes_are_independent(rng):
    X = rng.standard_normal((2, 3, 4, 15))
    batched = KoopmanOperator().fit(X).predict(9)
    assert batched.shape == (2, 3, 4)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(batched[i, j], KoopmanOperator().fit(X[i, j]).predict(9))


def test_repr_shows_the_options_that_differ_and_the_fit():
    assert repr(KoopmanOperator()) == "KoopmanOperator()"
    op = KoopmanOperator(observables="affine", stabilize="clip", rtol=1e-4)
    assert repr(op) == "KoopmanOperator(observables='affine', rtol=0.0001, stabilize='clip')"
    op.fit(torch.randn(3, 4, 12, dtype=torch.float64))
    assert repr(op) == ("KoopmanOperator(observables='affine', rtol=0.0001, stabilize='clip')"
                        "  # fitted: 3 block(s), d=4, m=12, dense")
    # values equal to the defaults are not shown, whichever objects hold them
    assert repr(KoopmanOperator(fixed_point_tol=float("1e-3"), holdout=int("0"),
                                observables="".join(["iden", "tity"]))) == "KoopmanOperator()"
    wide = KoopmanOperator().fit(torch.randn(40, 6, dtype=torch.float64))
    assert repr(wide).endswith("d=40, m=6, low-rank r=5")


def test_settings_are_frozen_and_the_holdout_refit_uses_all_of_them(rng):
    import dataclasses

    from kooptrain import FitSettings

    X = rng.standard_normal((2, 3, 25))
    op = KoopmanOperator(observables="affine", stabilize="drop", rtol=1e-3, holdout=4).fit(X)
    assert op.settings_ == FitSettings(observables="affine", stabilize="drop", rtol=1e-3,
                                       holdout=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.settings_.rtol = 0.5
    sub = KoopmanOperator(observables="affine", stabilize="drop", rtol=1e-3).fit(X[..., :-4])
    pred = sub.trajectory(4)
    truth, base = torch.from_numpy(X[..., -4:]), torch.from_numpy(X[..., -5:-4])
    expected = (torch.linalg.vector_norm(pred - truth, dim=(-2, -1))
                / torch.linalg.vector_norm(truth - base, dim=(-2, -1)))
    torch.testing.assert_close(op.residual_, expected)


def test_windows_from_training_are_refined_not_refitted_and_stay_accurate(rng):
    """Random walks (nearly collinear snapshots, cond(X0) ~ 3e4 as in training) take the
    refined normal equations: no SVD, and the pinv answer within the stated bound, 1e-8 of
    the operator's scale (the plain path's; refined blocks land near 1e-12)."""
    B, d, m = 40, 12, 60
    X = rng.standard_normal((B, d, 1)) + np.cumsum(1e-3 * rng.standard_normal((B, d, m)), -1)
    op = KoopmanOperator().fit(X)
    assert op.fallback_blocks_ == 0 and op.refined_blocks_ >= B // 2
    for b in range(B):
        U = X[b, :, 1:] @ np.linalg.pinv(X[b, :, :-1], rcond=1e-6)
        err = np.abs(op.operator[b].numpy() - U).max() / np.abs(U).max()
        assert err < 1e-8, (b, err)
