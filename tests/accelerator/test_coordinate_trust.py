"""CoordinateTrust (PDT's per-coordinate rule) against known answers: the rule's table,
its invariants on random moves, exact geometric decays, and its place in the accelerator."""

import numpy as np
import pytest
import torch
from torch import nn

from kooptrain import CoordinateTrust, KoopmanAccelerator
from kooptrain.trust import trusted_move


def test_the_rule_keeps_exactly_the_coordinates_it_admits():
    last = torch.zeros(8)
    previous = torch.tensor([-1.0, -1, -1, 1, 0, -1, -1, 2])
    predicted = torch.tensor([2.0, 0.5, 3, 2, 1, -2, 3.0001, -4])
    got = trusted_move(last, previous, predicted, tau=2)
    # admitted: same sign as the last move and 1x..3x its size (both ends included)
    want = torch.tensor([2.0, 0, 3, 0, 0, 0, 0, -4])
    assert torch.equal(got, want)


def test_on_random_moves_every_coordinate_is_its_prediction_iff_the_rule_says_so():
    g = np.random.default_rng(0)
    last, prev, pred = (torch.from_numpy(g.standard_normal((50, 7))) for _ in range(3))
    pred[::3] = last[::3] + 2 * (last[::3] - prev[::3])  # plenty that pass
    for tau in (1, 3, 10):
        got = trusted_move(last, prev, pred, tau)
        move, step = (pred - last).numpy(), (last - prev).numpy()
        rule = (np.sign(move) == np.sign(step)) & (step != 0) \
            & (np.abs(move) >= np.abs(step)) & (np.abs(move) <= (tau + 1) * np.abs(step))
        assert torch.equal(got, torch.where(torch.from_numpy(rule), pred, last))
        assert 0 < rule.sum() < rule.size


def test_on_exact_geometric_decays_slow_coordinates_jump_exactly_and_fast_ones_stay():
    """x_t = c + a r^t per coordinate: tau = 5 snapshots ahead moves r + ... + r^5 times the
    last move: 3.69 for r = 0.9 (trusted: the exact prediction), 0.43 for r = 0.3 (too short
    a move: it stays)."""
    t = torch.arange(8, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    a = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    r = torch.tensor([0.9, 0.3, 0.9], dtype=torch.float64)
    X = (c[:, None] + a[:, None] * r[:, None] ** t)[None]  # (1, 3, 8)
    out = CoordinateTrust(tau=5)(X)[0]
    exact = c + a * r ** 12
    torch.testing.assert_close(out[[0, 2]], exact[[0, 2]], rtol=1e-8, atol=1e-10)
    assert out[1] == X[0, 1, -1]


def test_it_rides_the_accelerator_and_its_settings_are_checked_on_resume():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    acc = KoopmanAccelerator(model, opt, every=2, window=6, predictor=CoordinateTrust(3))

    def closure():
        with torch.no_grad():
            return float(nn.functional.mse_loss(model(x), y))

    for _ in range(60):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        acc.step(closure)
    assert acc.jumps_tried >= 1
    state = acc.state_dict()
    other = KoopmanAccelerator(model, opt, every=2, window=6, predictor=CoordinateTrust(5))
    with pytest.raises(ValueError, match=r'predictor \(saved "callable CoordinateTrust\(tau=3'):
        other.load_state_dict(state)
    same = KoopmanAccelerator(model, opt, every=2, window=6, predictor=CoordinateTrust(3))
    same.load_state_dict(state)


def test_bad_tau_is_refused():
    with pytest.raises(ValueError, match="tau=0 must be an int >= 1"):
        CoordinateTrust(0)
    with pytest.raises(ValueError, match="observables"):
        CoordinateTrust(3, observables="cubic")
