"""Property test: data from an exact linear map are recovered and rolled forward exactly."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kooptrain import KoopmanOperator


@st.composite
def linear_systems(draw):
    d = draw(st.integers(1, 8))
    m = draw(st.integers(2, 14))  # includes d >= m (wide blocks)
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["contracting", "unit-circle", "rank-deficient"]))
    rng = np.random.default_rng(seed)
    if kind == "unit-circle":  # rotations/reflections: |lambda| = 1 exactly
        A, _ = np.linalg.qr(rng.standard_normal((d, d)))
    else:
        A = rng.standard_normal((d, d))
        A *= rng.uniform(0.3, 0.99) / max(np.abs(np.linalg.eigvals(A)).max(), 1e-12)
    if kind == "rank-deficient":  # trajectory confined to a k-dim invariant subspace
        k = draw(st.integers(1, d))
        Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        lam = rng.uniform(-0.95, 0.95, size=d)
        A = Q @ np.diag(lam) @ Q.T
        x0 = Q[:, :k] @ rng.standard_normal(k)
    else:
        x0 = rng.standard_normal(d)
    T = draw(st.integers(0, 40))
    return A, x0, m, T


@settings(max_examples=150, deadline=None, derandomize=True)
@given(linear_systems())
def test_prediction_matches_rolling_the_map(system):
    A, x0, m, T = system
    xs = [x0]
    for _ in range(m - 1 + T):
        xs.append(A @ xs[-1])
    X = np.stack(xs[:m], -1)
    op = KoopmanOperator().fit(X)
    truth = xs[m - 1 + T]
    scale = max(np.abs(np.stack(xs)).max(), 1e-300)
    if np.abs(X).max() < 1e-8 * scale:
        return  # trajectory collapsed to round-off; nothing to learn
    got = op.predict(T).numpy()
    # The snapshots determine U on span(X0); the future stays in that span when X0 is
    # invariant (x_m in span), which holds for exact data once the Krylov space saturates.
    x_m = X[:, -1]
    P = X[:, :-1] @ np.linalg.pinv(X[:, :-1], rcond=1e-6)  # the engine's DEFAULT_RTOL
    if np.linalg.norm(P @ x_m - x_m) <= 1e-9 * max(np.linalg.norm(x_m), 1e-300) or T == 0:
        np.testing.assert_allclose(got, truth, rtol=1e-5, atol=1e-7 * scale)
    # whatever the case, predict equals the definition U^T x_m
    U = X[:, 1:] @ np.linalg.pinv(X[:, :-1], rcond=1e-6)
    ref = np.linalg.matrix_power(U, T) @ x_m
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * max(np.abs(ref).max(), scale))
    assert torch.isfinite(torch.as_tensor(got)).all()
