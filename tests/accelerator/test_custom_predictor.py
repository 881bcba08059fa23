"""A callable predictor goes through the accelerator's verification like the built-in ones:
it sees each block group's window, its one candidate is judged and kept or undone, a wrong
shape is a clear error that changes nothing, and RNA through it finds the fixed point of an
affine iteration."""

import pytest
import torch
from torch import nn

from kooptrain import KoopmanAccelerator
from kooptrain.experiments.race.extrapolation import rna


def quadratic(seed=0):
    """Least squares on a linear model: gradient descent on it is an affine iteration whose
    fixed point is the least-squares solution."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.5], [-2.0]], dtype=torch.float64) + 0.3
    torch.manual_seed(seed)
    model = nn.Linear(2, 1).double()
    loss = lambda: nn.functional.mse_loss(model(x), y)  # noqa: E731
    A = torch.cat([x, torch.ones(64, 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(A, y).solution[:, 0]  # (w1, w2, b)
    return model, loss, solution


def flat(model):
    return torch.cat([model.weight.detach().ravel(), model.bias.detach()])


def run(model, loss, acc, steps):
    opt = acc.optimizer
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
        entry = acc.step(lambda: loss().detach())
        if entry is not None:
            return entry
    return None


def test_rna_through_the_accelerator_lands_on_the_fixed_point_of_an_affine_iteration():
    model, loss, solution = quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []

    def predictor(X):
        seen.append(tuple(X.shape))
        return torch.stack([rna(x, lam=0.0) for x in X])

    acc = KoopmanAccelerator(model, opt, window=6, predictor=predictor, every=1)
    entry = run(model, loss, acc, 6)
    assert seen == [(1, 3, 6)]  # one network block of 3 weights, 6 snapshots, time last
    assert entry["accepted"] and entry["horizon"] is None and entry["evaluations"] == 2
    torch.testing.assert_close(flat(model), solution, atol=1e-6, rtol=0)
    plain, loss2, _ = quadratic()  # six plain steps from the same start are far from it
    sgd = torch.optim.SGD(plain.parameters(), lr=0.05)
    for _ in range(6):
        sgd.zero_grad()
        loss2().backward()
        sgd.step()
    assert (flat(plain) - solution).norm() > 0.5


def test_a_candidate_that_does_not_help_is_undone():
    model, loss, _ = quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = None

    def keep(X):
        nonlocal before
        before = flat(model).clone()
        return X[..., 0] * 10  # far off: the loss goes up

    acc = KoopmanAccelerator(model, opt, window=4, predictor=keep, every=1)
    entry = run(model, loss, acc, 4)
    assert not entry["accepted"] and entry["reason"] == "no candidate improved the loss"
    assert torch.equal(flat(model), before)


def test_a_wrong_shape_is_a_clear_error_and_changes_nothing():
    model, loss, _ = quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    acc = KoopmanAccelerator(model, opt, window=4, predictor=lambda X: X, every=1)  # (B, d, m)
    for _ in range(3):
        run(model, loss, acc, 1)
    opt.zero_grad()
    loss().backward()
    opt.step()
    weights = flat(model).clone()
    momentum = [s["momentum_buffer"].clone() for s in opt.state.values()]
    with pytest.raises(TypeError, match=r"shape \(1, 3\) \(B, d\).*got \(1, 3, 4\)"):
        acc.step(lambda: loss().detach())
    assert torch.equal(flat(model), weights)
    assert all(torch.equal(a, s["momentum_buffer"])
               for a, s in zip(momentum, opt.state.values(), strict=True))


def test_state_dict_names_the_callable_and_refuses_another_predictor():
    model, _, _ = quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def mine(X):
        return X[..., -1]

    acc = KoopmanAccelerator(model, opt, window=4, predictor=mine, every=1)
    state = acc.state_dict()
    assert "mine" in state["settings"]["predictor"]
    KoopmanAccelerator(model, opt, window=4, predictor=mine, every=1).load_state_dict(state)
    with pytest.raises(ValueError, match="predictor"):
        KoopmanAccelerator(model, opt, window=4, predictor="linear", every=1).load_state_dict(state)
    with pytest.raises(ValueError, match="predictor"):
        KoopmanAccelerator(model, opt, window=4, predictor="nonsense", every=1)


def test_a_predictor_that_returns_no_tensor_is_named_with_what_it_returned():
    model, loss, _ = quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def listed(X):
        return X[..., -1].tolist()

    acc = KoopmanAccelerator(model, opt, window=4, predictor=listed, every=1)
    for _ in range(3):
        run(model, loss, acc, 1)
    opt.zero_grad()
    loss().backward()
    opt.step()
    with pytest.raises(TypeError, match=r"predictor 'listed' must return a tensor of shape "
                                        r"\(1, 3\) \(B, d\) .* got list\.$"):
        acc.step(lambda: loss().detach())
