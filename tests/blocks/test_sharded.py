"""The fit shared by ranks (``_sharded.SharedFit``), simulated in one process: the rows of
each block split over ``world`` ranks give the operator of the whole block (predictions,
fixed point, held-out errors), every rank agreeing on the small factor."""

import math

import pytest
import torch

from kooptrain._sharded import SharedFit, qr_factors, row_slice
from kooptrain.koopman import KoopmanOperator

ENGINE = {"observables": "affine", "stabilize": "clip", "no_fixed_point": "stay"}


def windows(n, d, m, seed=0):
    """``(n, d, m)`` noisy affine trajectories settling towards a fixed point."""
    g = torch.Generator().manual_seed(seed)
    A = 0.9 * torch.eye(d, dtype=torch.float64) + 0.02 * torch.randn(d, d, generator=g,
                                                                      dtype=torch.float64)
    x = [torch.randn(n, d, generator=g, dtype=torch.float64) + 3]
    for _ in range(m - 1):
        x.append(x[-1] @ A.T + 0.1)
    X = torch.stack(x, -1)
    return X + 1e-3 * torch.randn(X.shape, generator=g, dtype=torch.float64)


def shared(X, world, engine, **predict):
    """Every rank's rows of the prediction, concatenated; and rank 0's fit."""
    parts = [X[:, row_slice(X.shape[1], world, r), :] for r in range(world)]
    Rs = torch.stack([qr_factors(p)[1] for p in parts])  # what the all-gather returns

    def gather(r):
        def all_gather(R):  # each rank sends exactly its own factor
            assert torch.equal(R, Rs[r])
            return Rs
        return all_gather

    order = [(0, j) for j in range(X.shape[0])]
    fits = [SharedFit([p], order, gather(r), r, engine) for r, p in enumerate(parts)]
    return fits, [f.predict for f in fits]


@pytest.mark.parametrize("d, m, world", [(200, 10, 1), (200, 10, 2), (200, 10, 3),
                                         (6, 12, 2), (3, 8, 4)])
def test_split_rows_give_the_whole_blocks_operator(d, m, world):
    X = windows(2, d, m)
    ref = KoopmanOperator(**ENGINE, holdout=2).fit(X)
    fits, predicts = shared(X, world, {**ENGINE, "holdout": 2})
    horizons = [1, 5, 200]
    got = torch.cat([p(horizons)[0] for p in predicts], 1)
    want = ref.predict(horizons)
    assert got.shape == want.shape == (2, d, 3)
    scale = want.abs().amax(1, keepdim=True)
    assert float(((got - want).abs() / scale).max()) < 1e-8
    fixed = torch.cat([p(math.inf)[0] for p in predicts], 1)
    torch.testing.assert_close(fixed, ref.predict(math.inf), rtol=1e-8, atol=1e-8)
    for f in fits:  # held-out errors: inner products survive the split
        torch.testing.assert_close(f.residual_[0], ref.residual_, rtol=1e-6, atol=1e-12)
    sizes = [p(horizons)[0].shape[1] for p in predicts]
    assert sizes == [len(range(d)[row_slice(d, world, r)]) for r in range(world)]
    assert (d, world) != (3, 4) or sizes[-1] == 0  # a rank with no rows takes part too


def test_blocks_above_max_residual_stay_exactly_where_they_are():
    X = windows(3, 50, 9)
    X[1] = X[1] + torch.randn(X[1].shape, dtype=torch.float64)  # block 1: noise, unforecastable
    fits, predicts = shared(X, 2, {**ENGINE, "holdout": 2})
    res = fits[0].residual_[0]
    cut = float(res[1]) * 0.99
    assert float(res.min()) < cut  # some block forecasts better than block 1
    out = torch.cat([p([4], max_residual=cut)[0] for p in predicts], 1)[..., 0]
    stay = res > cut
    assert torch.equal(out[stay], X[stay][..., -1])  # bit for bit its last state
    assert not torch.equal(out[~stay], X[~stay][..., -1])


def test_row_slices_cover_every_row_once():
    for d in (1, 5, 16, 17):
        for world in (1, 2, 3, 8):
            rows = [list(range(d))[row_slice(d, world, r)] for r in range(world)]
            assert sum(rows, []) == list(range(d))


def test_without_holdout_there_is_no_residual_and_float32_rows_fit_in_float64():
    X = windows(2, 30, 8)
    fits, predicts = shared(X.float(), 2, {**ENGINE, "holdout": 0})
    assert fits[0].residual_ is None
    Q, R = qr_factors(X.float())
    assert Q.dtype == R.dtype == torch.float64
    ref = KoopmanOperator(**ENGINE).fit(X.float())
    got = torch.cat([p([3])[0] for p in predicts], 1)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref.predict([3]), rtol=1e-6, atol=1e-6)


def test_at_the_fixed_point_blocks_without_one_stay_and_so_do_untrusted_ones():
    X = windows(3, 20, 9)
    g = torch.Generator().manual_seed(5)
    X[2] = X[2, :, :1] + torch.cumsum(torch.ones_like(X[2]) * 0.5, -1)  # a drift: no limit
    X[1] = X[1] + torch.randn(X[1].shape, generator=g, dtype=torch.float64)  # noise
    fits, predicts = shared(X, 2, {**ENGINE, "holdout": 2})
    found = fits[0].operator.predict(math.inf) is not None and \
        fits[0].operator.fixed_point_found_
    assert not bool(found[2]) and bool(found[0])
    fixed = torch.cat([p(math.inf)[0] for p in predicts], 1)
    assert torch.equal(fixed[2], X[2, :, -1])  # no fixed point: it stays
    assert not torch.equal(fixed[0], X[0, :, -1])
    res = fits[0].residual_[0]
    cut = float(res[1]) * 0.99
    both = torch.cat([p(math.inf, max_residual=cut)[0] for p in predicts], 1)
    stay = (res > cut) | ~found
    assert torch.equal(both[stay], X[stay][..., -1])
    assert torch.equal(both[~stay], fixed[~stay])
