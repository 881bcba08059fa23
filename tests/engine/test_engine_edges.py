"""Engine edges: boundaries of every validated argument, fitted attributes, chunked
kernels, and error messages that carry the facts a user needs."""

import math

import numpy as np
import pytest
import torch
from _trajectories import linear_trajectory

from kooptrain import KoopmanOperator, NoFixedPointError, SnapshotStatistics, _linalg
from kooptrain._linalg import apply_powers as _apply_powers
from kooptrain._linalg import powers_by_eig as _powers_by_eig


# ------------------------------------------------------------ argument bounds
def test_argument_boundaries_are_inclusive_where_documented(rng):
    X = rng.standard_normal((3, 12))
    KoopmanOperator(rank=1).fit(X)            # smallest rank
    KoopmanOperator(rtol=0).fit(X)            # rtol in [0, 1)
    U = X[:, 1:] @ np.linalg.pinv(X[:, :-1], rcond=0)
    np.testing.assert_allclose(KoopmanOperator(rtol=0).fit(X).operator.numpy(), U,
                               rtol=1e-9, atol=1e-12)
    for bad in (1, 1.0, 1.5):
        with pytest.raises(ValueError, match="rtol"):
            KoopmanOperator(rtol=bad).fit(X)
    op = KoopmanOperator(holdout=10).fit(X)   # leaves exactly 2 snapshots to fit
    assert op.residual_.shape == ()
    assert KoopmanOperator().fit(X).residual_ is None
    s = SnapshotStatistics.from_snapshots(X[:, :2])  # 2 snapshots = 1 pair: enough
    assert KoopmanOperator(rtol=1e-7).fit_statistics(s).n_snapshots_ == 2


def test_the_rcond_alias_is_gone():
    with pytest.raises(TypeError, match="rcond"):
        KoopmanOperator(rtol=1e-3, rcond=1e-3)


def test_fitted_attributes(rng):
    X = rng.standard_normal((2, 3, 4, 9))
    op = KoopmanOperator(holdout=2).fit(X)
    assert op.batch_shape_ == (2, 3) and op.n_blocks_ == 6
    assert op.n_observables_ == 4 and op.n_snapshots_ == 9
    assert op.device_ == torch.device("cpu") and op.fallback_blocks_ == 0
    assert op.residual_.shape == (2, 3)
    wide = KoopmanOperator().fit(rng.standard_normal((2, 20, 6)))
    assert wide.fallback_blocks_ == 0 and wide.n_snapshots_ == 6
    s = SnapshotStatistics.from_snapshots(torch.from_numpy(X))
    st = KoopmanOperator().fit_statistics(s)
    assert (st.batch_shape_, st.n_blocks_, st.n_observables_, st.n_snapshots_) == \
        ((2, 3), 6, 4, 9)
    assert st.device_ == torch.device("cpu")


def test_fixed_point_found_does_not_survive_a_refit(rng):
    X = linear_trajectory(np.diag([1.0, 0.5]), np.array([1.0, 1.0]), 10)
    op = KoopmanOperator().fit(X)
    op.predict(math.inf)
    assert bool(op.fixed_point_found_)
    op.fit(X)
    assert not hasattr(op, "fixed_point_found_")


# --------------------------------------------------------------- holdout
def test_holdout_residual_is_the_documented_ratio_with_the_fit_options(rng):
    """residual = |forecast - truth| / |truth - x_{m-h}| over the h held-out snapshots,
    forecast by an operator fitted with the same options."""
    d, m, h = 6, 30, 4
    A = 1.02 * np.linalg.qr(rng.standard_normal((d, d)))[0]
    X = torch.from_numpy(linear_trajectory(A, rng.standard_normal(d), m)
                         + 0.05 * rng.standard_normal((d, m)) + 1.0)
    opts = dict(observables="affine", rank=3, rtol=1e-3, stabilize="clip")
    op = KoopmanOperator(holdout=h, **opts).fit(X)
    sub = KoopmanOperator(**opts).fit(X[:, :-h])
    pred = sub.trajectory(h)
    err = (pred - X[:, -h:]).norm()
    scale = (X[:, -h:] - X[:, -h - 1 : -h]).norm()
    assert float(op.residual_) == pytest.approx(float(err / scale), rel=1e-10)
    # the options matter here, so dropping one would change the score
    plain = KoopmanOperator(holdout=h).fit(X)
    assert abs(float(plain.residual_) - float(op.residual_)) > 1e-3


# ------------------------------------------------------------- trajectory
def test_trajectory_refuses_sequences_and_infinity(rng):
    op = KoopmanOperator().fit(rng.standard_normal((2, 3, 9)))
    for bad in (math.inf, [1, 2]):
        with pytest.raises(TypeError, match="one finite int"):
            op.trajectory(bad)
    batched = KoopmanOperator().fit(rng.standard_normal((2, 3, 4, 9)))
    assert batched.trajectory(0).shape == (2, 3, 4, 0)


# ------------------------------------------------------------ horizons
def test_largest_horizon_is_two_to_the_62(rng):
    X = linear_trajectory(np.diag([0.5, 0.25]), np.array([1.0, 1.0]), 8)
    op = KoopmanOperator().fit(X)
    np.testing.assert_allclose(op.predict(2**62).numpy(), [0.0, 0.0], atol=1e-300)
    with pytest.raises(ValueError, match="2\\*\\*62"):
        op.predict(2**62 + 1)


# ------------------------------------------------------------ error messages
def test_messages_name_the_problem(rng):
    with pytest.raises(ValueError, match="^X contains 2 NaN/Inf"):
        KoopmanOperator().fit(np.array([[1.0, np.nan, 2.0], [np.inf, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="^X contains 1 NaN"):
        SnapshotStatistics.from_snapshots(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="statistics.xx contains 1 NaN"):
        s = SnapshotStatistics.from_snapshots(rng.standard_normal((3, 10)))
        s.xx[0, 0] = np.nan
        KoopmanOperator().fit_statistics(s)
    with pytest.raises(ValueError, match="m >= 1; got \\(5,\\)"):
        SnapshotStatistics.from_snapshots(np.ones(5))
    with pytest.raises(ValueError, match="m >= 1"):
        SnapshotStatistics.from_snapshots(torch.zeros(2, 3, 0))
    with pytest.raises(TypeError, match="boolean"):
        KoopmanOperator().fit(torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="got list"):
        KoopmanOperator().fit([[1.0, 2.0]])
    with pytest.raises(TypeError, match="got dict"):
        KoopmanOperator().fit_statistics({})
    with pytest.raises(ValueError, match="holdout needs stored snapshots"):
        KoopmanOperator(holdout=2).fit_statistics(
            SnapshotStatistics.from_snapshots(rng.standard_normal((3, 10))))
    with pytest.raises(ValueError, match="leaves 1 snapshot\\(s\\).*more than 5 snapshots"):
        KoopmanOperator(holdout=4).fit(rng.standard_normal((2, 5)))


def test_overflow_message_counts_the_block_rows(rng):
    X = np.stack([linear_trajectory(np.diag([1.5, 0.5]), np.array([1.0, 1.0]), 6),
                  linear_trajectory(np.diag([0.5, 0.4]), np.array([1.0, 1.0]), 6),
                  linear_trajectory(np.diag([1.6, 0.5]), np.array([1.0, 1.0]), 6)])
    op = KoopmanOperator().fit(X)
    with pytest.raises(FloatingPointError, match="in 2 block row\\(s\\)"):
        op.predict(5000)
    with pytest.raises(FloatingPointError, match="in 4 block row\\(s\\)"):
        op.predict([5000, 6000, 1])  # 2 blocks x 2 overflowing horizons


def test_missing_fixed_point_message_counts_blocks():
    A1 = np.diag([1.0, 0.5])
    A0 = np.diag([0.9, 0.5])
    X = np.stack([linear_trajectory(A, np.array([1.0, 2.0]), 12) for A in (A0, A1, A0)])
    with pytest.raises(NoFixedPointError, match="2 of 3 block"):
        KoopmanOperator().fit(X).predict(math.inf)


def test_fixed_point_check_is_relative_to_the_state_size():
    """A stationary state of size 1e4 moving 1e-3 per step is still a fixed point at
    tol 1e-3 (relative motion 1e-7), and a drift of 1 per step on size 10 is not."""
    t = np.arange(20.0)
    slow = np.stack([1e4 + 1e-3 * t, 5e3 + 0 * t])
    op = KoopmanOperator(observables="affine", no_fixed_point="stay").fit(slow)
    op.predict(math.inf)
    assert bool(op.fixed_point_found_)
    fast = np.stack([10 + t, 5 + 0 * t])
    op = KoopmanOperator(observables="affine", no_fixed_point="stay").fit(fast)
    op.predict(math.inf)
    assert not bool(op.fixed_point_found_)


# ------------------------------------------------------------ chunked kernels
def test_chunked_fit_and_powers_equal_unchunked(rng, monkeypatch):
    """Tiny cache budget: fits and powers run in many chunks, with mixed horizons."""
    X = rng.standard_normal((7, 5, 12))
    X[4, 2] = X[4, 1]  # one block needs the SVD fallback, in a later chunk
    whole = KoopmanOperator().fit(X)
    hs = [0, 1, 3, 8, 13]
    ref = whole.predict(hs)
    monkeypatch.setattr(_linalg, "CPU_CHUNK_BYTES", 8 * 5 * (2 * 11 + 4 * 5) * 2)
    part = KoopmanOperator().fit(X)
    assert part.fallback_blocks_ == whole.fallback_blocks_ == 1
    torch.testing.assert_close(part.predict(hs), ref, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(_linalg, "CPU_CHUNK_BYTES", 24 * 5 * 5 * 3)
    torch.testing.assert_close(whole.predict(hs), ref, rtol=1e-12, atol=1e-12)


def test_powers_by_eigendecomposition_equal_matrix_powers(rng):
    K = torch.from_numpy(rng.standard_normal((3, 4, 4)) * 0.5)
    z = torch.from_numpy(rng.standard_normal((3, 4)))
    steps = torch.tensor([0, 1, 2, 5])
    got = _powers_by_eig(K, z, steps)
    assert got.shape == (3, 4, 4)
    for b in range(3):
        for i, s in enumerate(steps.tolist()):
            ref = torch.linalg.matrix_power(K[b], s) @ z[b]
            torch.testing.assert_close(got[b, i], ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_apply_powers(K, z, steps), got, rtol=1e-9, atol=1e-12)


def test_overflow_rescue_only_touches_the_overflowing_blocks():
    K = torch.stack([torch.diag(torch.tensor([10.0, 0.5], dtype=torch.float64)),
                     torch.tensor([[0.9, 0.1], [0.0, 0.8]], dtype=torch.float64)])
    z = torch.tensor([[0.0, 3.0], [1.0, 2.0]], dtype=torch.float64)
    steps = torch.tensor([1, 1000])
    out = _apply_powers(K, z, steps)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 1.5], dtype=torch.float64))
    assert out[0, 1, 1] == pytest.approx(3 * 0.5**1000, rel=1e-9)
    torch.testing.assert_close(out[1], _apply_powers(K[1:], z[1:], steps)[0], rtol=0, atol=0)


# ------------------------------------------------------------ guard and rules
def test_guard_follows_a_coarse_rtol(rng):
    """rtol = 1e-3 with cond(X0) = 1500: the rule drops the smallest direction, so the
    block must not take the (keep-everything) Cholesky path."""
    from test_engine_truth import blocks_with_condition

    X = blocks_with_condition(rng, [1500.0, 50.0], d=2)
    op = KoopmanOperator(rtol=1e-3).fit(X)
    assert op.fallback_blocks_ == 1
    for b in range(2):
        U = X[b, :, 1:] @ np.linalg.pinv(X[b, :, :-1], rcond=1e-3)
        np.testing.assert_allclose(op.operator[b].numpy(), U, rtol=1e-8, atol=1e-10)


def test_rank_truncation_also_applies_the_rtol_rule(rng):
    """rank=4 on data of rank 3: the fourth direction is noise below rtol and is dropped."""
    X = rng.standard_normal((6, 3)) @ rng.standard_normal((3, 30))
    X[:, :] += 1e-12 * rng.standard_normal((6, 30))
    ref = X[:, 1:] @ np.linalg.pinv(X[:, :-1], rcond=1e-6)
    for op in (KoopmanOperator(rank=4).fit(X),
               KoopmanOperator(rank=6).fit_statistics(SnapshotStatistics.from_snapshots(X))):
        np.testing.assert_allclose(op.operator.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_gram_rule_is_scale_free(rng):
    """Tiny weights (Gram eigenvalues << 1) are truncated relative to their own scale."""
    X = 1e-4 * rng.standard_normal((5, 40))
    X[4] = X[3]
    s = SnapshotStatistics.from_snapshots(X)
    a = KoopmanOperator().fit(X).predict(5)
    b = KoopmanOperator().fit_statistics(s).predict(5)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def test_statistics_without_origin(rng):
    """Hand-built sums with no shift (origin=None) fit and update like shifted ones."""
    X = torch.from_numpy(rng.standard_normal((2, 4, 20)))
    X0, X1 = X[..., :-1], X[..., 1:]
    raw = SnapshotStatistics(xx=X0 @ X0.mT, yx=X1 @ X0.mT, x_sum=X0.sum(-1),
                             y_sum=X1.sum(-1), last=X[..., -1].clone(), count=19)
    for obs in ("identity", "affine"):
        torch.testing.assert_close(KoopmanOperator(observables=obs).fit_statistics(raw).predict(7),
                                   KoopmanOperator(observables=obs).fit(X).predict(7))
    Y = torch.from_numpy(rng.standard_normal((2, 4, 1)))
    raw.update(Y[..., 0])
    full = torch.cat([X, Y], -1)
    torch.testing.assert_close(raw.unshifted()[0], full[..., :-1] @ full[..., :-1].mT)


# ------------------------------------------------- more boundaries (mutation-guided)
def test_predict_defaults_to_one_step_and_names_X_in_messages(rng):
    op = KoopmanOperator().fit(rng.standard_normal((3, 9)))
    torch.testing.assert_close(op.predict(), op.predict(1))
    with pytest.raises(TypeError, match="^X must be a torch.Tensor"):
        KoopmanOperator().fit([[1.0]])
    with pytest.raises(ValueError, match="empty axis"):
        KoopmanOperator().fit(np.ones((0, 3, 5)))


def test_batch_shape_of_three_dimensional_input(rng):
    op = KoopmanOperator().fit(rng.standard_normal((2, 4, 9)))
    assert op.batch_shape_ == (2,) and op.n_blocks_ == 2


def test_statistics_type_errors_name_the_field(rng):
    s = SnapshotStatistics.from_snapshots(rng.standard_normal((3, 10)))
    s.xx = s.xx.to(torch.complex128)
    with pytest.raises(TypeError, match="statistics.xx is complex"):
        KoopmanOperator().fit_statistics(s)
    s = SnapshotStatistics.from_snapshots(rng.standard_normal((3, 10)))
    with pytest.raises(TypeError, match="^x must be a torch.Tensor"):
        s.update([1.0, 2.0, 3.0])


def test_holdout_uses_every_fit_option(rng):
    """Each option changes the held-out forecast on data built for it, and the residual
    always equals the one computed by hand with the same options."""
    t = np.arange(24)
    growing = np.stack([1.1**t, 0.5**t]) + 0.01 * rng.standard_normal((2, 24))
    small = rng.standard_normal((3, 24))
    small[2] = small[1] + 1e-4 * rng.standard_normal(24)   # a direction at ~1e-4 sigma_max
    cases = [(growing, {"stabilize": "clip"}), (small, {"rtol": 1e-3}),
             (small, {"rank": 1}), (growing + 5.0, {"observables": "affine"})]
    for X, opts in cases:
        X = torch.from_numpy(np.stack([X, X[::-1].copy()]))   # two blocks, different scales
        h = 3
        op = KoopmanOperator(holdout=h, **opts).fit(X)
        pred = KoopmanOperator(**opts).fit(X[..., :-h]).trajectory(h)
        err = (pred - X[..., -h:]).norm(dim=(-2, -1))
        scale = (X[..., -h:] - X[..., -h - 1 : -h]).norm(dim=(-2, -1))
        torch.testing.assert_close(op.residual_, err / scale, rtol=1e-9, atol=0)
        plain = KoopmanOperator(holdout=h).fit(X)
        assert (plain.residual_ - op.residual_).abs().max() > 1e-6, opts


def test_fixed_point_check_is_per_block_and_has_factor_two():
    """Block norms differ by 1e4; only the slow big block is stationary. A drift whose
    relative motion is 2.5 tol (between 2 tol and 3 tol) is not a fixed point."""
    t = np.arange(20.0)
    big = np.stack([1e4 + 1e-3 * t, 5e3 + 0 * t])
    small = np.stack([10 + 0.1 * t, 5 + 0 * t])
    op = KoopmanOperator(observables="affine", no_fixed_point="stay").fit(np.stack([big, small]))
    op.predict(math.inf)
    assert op.fixed_point_found_.tolist() == [True, False]
    # a big block drifting by 1 per step (relative 1e-4: stationary at tol 1e-3) must not
    # make a small settled block look like it moves
    settled = np.stack([10 + 0.5**t, 5 + 0 * t])
    drift = np.stack([1e4 + t, 5e3 + 0 * t])
    op = KoopmanOperator(observables="affine", no_fixed_point="stay")
    op.fit(np.stack([drift, settled]))
    op.predict(math.inf)
    assert op.fixed_point_found_.tolist() == [True, True]
    X = np.stack([100 + 0.25 * t])   # |U x - x| / |x| = 0.25 / 100 = 2.5e-3
    op = KoopmanOperator(observables="affine", no_fixed_point="stay").fit(X)
    op.predict(math.inf)
    assert not bool(op.fixed_point_found_)


def test_guard_compares_each_block_with_itself(rng):
    """Two well-conditioned blocks at scales 1e3 and 1e-3: neither needs the fallback."""
    from test_engine_truth import blocks_with_condition

    X = blocks_with_condition(rng, [5.0, 5.0])
    X[0] *= 1e3
    X[1] *= 1e-3
    assert KoopmanOperator().fit(X).fallback_blocks_ == 0


def test_gram_pinv_keeps_small_real_directions_at_small_scale(rng):
    """Scale 1e-4, one exact dependency (Cholesky fails -> eigh) and one real direction
    at 1e-4 sigma_max: the rule is relative to the block's own largest eigenvalue."""
    X = 1e-4 * rng.standard_normal((5, 40))
    X[3] = X[2] + 1e-8 * rng.standard_normal(40)
    X[4] = X[0]
    a = KoopmanOperator().fit(X)
    b = KoopmanOperator().fit_statistics(SnapshotStatistics.from_snapshots(X))
    assert b.fallback_blocks_ == 1
    torch.testing.assert_close(b.operator, a.operator, rtol=1e-4, atol=1e-4)


def test_check_signature_names_a_state_without_one():
    from kooptrain._validation import check_signature

    for bad in ({"a": 1}, [1, 2]):
        with pytest.raises(ValueError, match=r"^not a X state_dict \(no 'signature' entry\)\.$"):
            check_signature("X", {"a": 1}, bad)
