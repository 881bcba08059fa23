"""KoopmanAverage against known answers: the limit of affine iterations (exact, and with
noise), the untouched training run, its checkpoints, its refusals and BatchNorm."""

import copy
import math
import statistics

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from kooptrain import KoopmanAverage
from kooptrain._fixed_point import regularised_fixed_point


def affine_run(avg_kw, steps, noise=0.0, seed=0, rho=0.9):
    """A Linear(3, 1) whose 4 parameters follow x <- x* + A (x - x*) + noise; the
    KoopmanAverage of that trajectory and the fixed point x*."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(3, 1).double()
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.tensor([rho, 0.8, 0.6, 0.3], dtype=torch.float64)) @ Q.T
    x_star = torch.randn(4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        x0 = torch.randn(4, generator=g, dtype=torch.float64)
        model.weight.copy_(x0[:3].view(1, 3))
        model.bias.copy_(x0[3:])
    avg = KoopmanAverage(model, **avg_kw)
    for _ in range(steps):
        with torch.no_grad():
            x = torch.cat([model.weight.view(-1), model.bias])
            x = x_star + A @ (x - x_star) + noise * torch.randn(4, generator=g,
                                                               dtype=torch.float64)
            model.weight.copy_(x[:3].view(1, 3))
            model.bias.copy_(x[3:])
        avg.update_parameters(model)
    return model, avg, x_star


def flat(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def test_without_noise_and_regulariser_the_copy_is_the_limit_of_an_affine_iteration():
    model, avg, x_star = affine_run({"every": 1, "window": 8, "lam": 0.0,
                                     "source": "weights"}, 8)
    assert avg.estimating
    far = float((flat(model) - x_star).norm())
    torch.testing.assert_close(flat(avg.module), x_star, rtol=1e-8, atol=1e-8 * far)


@pytest.mark.parametrize("source", ["weights", "ema"])
def test_with_noise_the_copy_recovers_the_fixed_point_far_better_than_the_iterate(source):
    """Noise 1e-4 per step on an iteration whose slowest mode decays like 0.97^t, started
    ~2 from x*: after 41 steps the iterate is still 0.003-0.7 away. The copy (fitted every 5
    steps, window 8) is closer than the iterate on each of 10 seeds, and the medians hold
    the stated tolerance: within 0.01 of x* (0.5% of the start), 10x closer than the
    iterate."""
    errs, ratios = [], []
    for seed in range(10):
        model, avg, x_star = affine_run({"every": 5, "window": 8, "source": source,
                                         "decay": 0.5, "lam": 1e-5}, 41, noise=1e-4,
                                        seed=seed, rho=0.97)
        errs.append(float((flat(avg.module) - x_star).norm()))
        ratios.append(errs[-1] / float((flat(model) - x_star).norm()))
    assert statistics.median(errs) < 0.01 and statistics.median(ratios) < 0.1
    assert sum(r < 1 for r in ratios) >= 9  # seed 1 starts 0.003 away: noise-level there


def test_the_copy_follows_the_source_until_the_window_is_full_and_counts_steps():
    # snapshots at 1, 4, 7 (and the 4th at 10)
    model, avg, _ = affine_run({"every": 3, "window": 4, "source": "weights"}, 9)
    assert avg.step_count == 9 and avg.n_snapshots == 3 and not avg.estimating
    before = flat(avg.module).clone()
    model2, avg2, _ = affine_run({"every": 3, "window": 4, "source": "weights"}, 7)
    torch.testing.assert_close(before, flat(model2), rtol=0, atol=0)  # step 7's weights
    model3, avg3, _ = affine_run({"every": 3, "window": 4, "source": "weights"}, 10)
    assert avg3.estimating and not torch.equal(flat(avg3.module), flat(model3))


def test_ema_source_fits_the_moving_average():
    model = nn.Linear(2, 1)
    avg = KoopmanAverage(model, every=1, window=5, source="ema", decay=0.5)
    seen = []
    for t in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(t))
        avg.update_parameters(model)
        seen.append(flat(avg.module).clone())
    # EMA of 0, 1, 2 with decay 0.5: 0, 0.5, 1.25
    for s, v in zip(seen, (0.0, 0.5, 1.25), strict=True):
        torch.testing.assert_close(s, torch.full((3,), v))


def train(model, opt, steps, avg=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 3, generator=g)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        if avg is not None:
            avg.update_parameters(model)


def test_training_is_untouched_bit_for_bit():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    b = copy.deepcopy(a)
    oa, ob = (torch.optim.Adam(m.parameters(), lr=1e-2) for m in (a, b))
    avg = KoopmanAverage(b, every=2, window=4, granularity="layer")
    train(a, oa, 30)
    train(b, ob, 30, avg)
    assert avg.estimating
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q) and q.requires_grad
    for sa, sb in zip(oa.state.values(), ob.state.values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(p.requires_grad for p in avg.parameters())


@pytest.mark.parametrize("granularity", ["layer", "node"])
def test_each_block_gets_the_fixed_point_of_its_own_window(granularity):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    avg = KoopmanAverage(model, every=1, window=5, granularity=granularity,
                         source="weights", lam=1e-5)
    hist = []
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(8, 3, generator=g)).pow(2).mean().backward()
        opt.step()
        avg.update_parameters(model)
        hist.append({n: p.detach().clone() for n, p in model.named_parameters()})
    if granularity == "layer":
        for i in ("0", "2"):
            X = torch.stack([torch.cat([h[f"{i}.weight"].reshape(-1), h[f"{i}.bias"]])
                             for h in hist], -1)
            want = regularised_fixed_point(X, lam=1e-5).float()
            got = torch.cat([avg.module.get_parameter(f"{i}.weight").reshape(-1),
                             avg.module.get_parameter(f"{i}.bias")])
            torch.testing.assert_close(got, want)
    else:  # node 1 of the first layer: its weight row and its bias
        X = torch.stack([torch.cat([h["0.weight"][1], h["0.bias"][1:2]]) for h in hist], -1)
        want = regularised_fixed_point(X, lam=1e-5).float()
        got = torch.cat([avg.module.get_parameter("0.weight")[1],
                         avg.module.get_parameter("0.bias")[1:2]])
        torch.testing.assert_close(got, want)


def test_state_dict_round_trip_resumes_bit_for_bit_and_other_settings_are_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    avg = KoopmanAverage(model, every=2, window=4, source="ema")
    train(model, opt, 11, avg)
    saved = {k: v.clone() if torch.is_tensor(v) else v for k, v in avg.state_dict().items()}
    m2 = copy.deepcopy(model)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    o2.load_state_dict(opt.state_dict())
    fresh = KoopmanAverage(m2, every=2, window=4, source="ema")
    fresh.load_state_dict(saved)
    assert fresh.step_count == 11
    train(model, opt, 9, avg, seed=5)
    train(m2, o2, 9, fresh, seed=5)
    for (n, a), (_, b) in zip(avg.state_dict().items(), fresh.state_dict().items(),
                              strict=True):
        if torch.is_tensor(a):
            assert torch.equal(a, b), n
    other = KoopmanAverage(model, every=2, window=4, source="ema", lam=1e-5)
    with pytest.raises(ValueError, match=r"differing: lam \(saved 0.001, here 1e-05\)"):
        other.load_state_dict(saved)


def test_a_window_with_no_limit_and_no_regulariser_keeps_the_last_snapshot():
    """A straight drift (eigenvalue exactly 1) has no fixed point; with lam = 0 the system
    is singular and the copy keeps the source (it went to ~3e15 when I - K was formed by
    subtraction); with lam > 0 the estimate does not move. Nothing non-finite is written."""
    model = nn.Linear(1, 1, bias=False).double()
    avg = KoopmanAverage(model, every=1, window=4, lam=0.0, source="weights")
    for t in range(6):
        with torch.no_grad():
            model.weight.fill_(1.0 + t)
        avg.update_parameters(model)
    assert avg.estimating and float(avg.module.weight) == 6.0
    X = torch.arange(6.0, dtype=torch.float64)[None]
    assert torch.isnan(regularised_fixed_point(X, lam=0.0)).all()
    assert float(regularised_fixed_point(X, lam=1e-5)) == 5.0


def test_non_finite_training_weights_are_skipped_with_a_warning():
    model = nn.Linear(2, 1)
    avg = KoopmanAverage(model, every=1, window=3)
    avg.update_parameters(model)
    kept = flat(avg.module).clone()
    with torch.no_grad():
        model.bias.fill_(math.nan)
    with pytest.warns(RuntimeWarning, match="not finite; KoopmanAverage skipped them"):
        avg.update_parameters(model)
    assert torch.equal(flat(avg.module), kept) and avg.step_count == 2
    assert avg.n_snapshots == 1


def test_with_update_bn_it_works_on_a_batchnorm_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    avg = KoopmanAverage(model, every=2, window=4)
    train(model, opt, 11, avg)  # snapshots at 1, 3, ..., 11
    mean_before = model[1].running_mean.clone()
    torch.testing.assert_close(avg.module[1].running_mean, mean_before)  # copied
    loader = [torch.randn(32, 3) for _ in range(4)]
    update_bn(loader, avg)
    assert torch.equal(model[1].running_mean, mean_before)  # the model's are its own
    assert not torch.equal(avg.module[1].running_mean, mean_before)
    # the refreshed statistics are those of the copy's own first layer on the data
    h = torch.cat([avg.module[0](x) for x in loader]).detach()
    torch.testing.assert_close(avg.module[1].running_mean, h.mean(0), rtol=1e-4, atol=1e-5)
    avg.eval()
    assert torch.isfinite(avg(torch.randn(5, 3))).all()


@pytest.mark.parametrize("kw, match", [
    ({"window": 2}, r"window=2 must be an int >= 3"),
    ({"every": 0}, r"every=0 must be an int >= 1"),
    ({"source": "swa"}, r"source"),
    ({"decay": 0.0}, r"decay=0 is no average"),
    ({"decay": 1.0}, r"decay"),
    ({"lam": 1.0}, r"lam"),
    ({"granularity": "quasi-node"}, r"granularity"),
])
def test_bad_settings_are_refused_by_name(kw, match):
    with pytest.raises(ValueError, match=match):
        KoopmanAverage(nn.Linear(2, 1), **kw)


def test_another_model_is_refused_and_so_is_one_without_trainable_parameters():
    avg = KoopmanAverage(nn.Linear(2, 1))
    with pytest.raises(ValueError, match=r"does not match the averaged copy.*'weight'"):
        avg.update_parameters(nn.Linear(3, 1))
    with pytest.raises(ValueError, match="no trainable parameters"):
        KoopmanAverage(nn.Linear(2, 1).requires_grad_(False))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        KoopmanAverage(torch.zeros(3))


def test_repr_names_the_settings_that_differ_from_the_defaults():
    avg = KoopmanAverage(nn.Linear(2, 1), every=5, source="weights")
    assert "every=5, source='weights'" in repr(avg)
    assert "window" not in repr(avg).split("(")[1]
    assert avg.every == 5 and avg.source == "weights" and avg.window == 8
    with pytest.raises(AttributeError):
        avg.every = 3
