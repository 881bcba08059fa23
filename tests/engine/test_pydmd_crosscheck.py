"""Eigenvalues and forecasts cross-checked against PyDMD (exact DMD, no truncation)."""

import warnings

import numpy as np
import pytest

from kooptrain import KoopmanOperator

pydmd = pytest.importorskip("pydmd")


@pytest.mark.parametrize("d,m", [(6, 40), (30, 12)])
def test_eigenvalues_and_state_match_pydmd(d, m):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((d, d))
    A *= 0.98 / np.abs(np.linalg.eigvals(A)).max()
    xs = [rng.standard_normal(d)]
    for _ in range(m - 1):
        xs.append(A @ xs[-1] + 1e-3 * rng.standard_normal(d))
    X = np.stack(xs, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dmd = pydmd.DMD(svd_rank=-1, exact=True).fit(X)
    ours = KoopmanOperator().fit(X)
    theirs = np.sort_complex(dmd.eigs)
    mine = np.sort_complex(ours.eigenvalues.numpy())
    mine = mine[np.abs(mine) > 1e-10]  # PyDMD reports only the r = rank(X0) nonzero ones
    np.testing.assert_allclose(np.sort_complex(mine), theirs, rtol=1e-6, atol=1e-8)
    # the forecast T steps ahead from amplitudes fitted at x_m
    T = 25
    b = np.linalg.lstsq(dmd.modes, X[:, -1].astype(complex), rcond=None)[0]
    state = (dmd.modes @ (dmd.eigs**T * b)).real
    if d <= m - 1:  # square case: DMD modes span the space, both are U^T x_m
        np.testing.assert_allclose(ours.predict(T).numpy(), state, rtol=1e-6, atol=1e-9)
