"""compare / spectral_distance / kooptrain compare: known answers on synthetic systems, a
network against its permuted copy, and two optimizers against two seeds."""

import json

import pytest
import torch
from _systems import monitored, rotation_trajectory
from torch import nn

from kooptrain import KoopmanMonitor, compare
from kooptrain.diagnostics import spectral_distance
from kooptrain.experiments.cli import main

pytest.importorskip("scipy")

RADII, ANGLES = [0.99, 0.97], [0.3, 1.1]  # eigenvalues 0.99 e^(+-0.3i), 0.97 e^(+-1.1i)
SETTINGS = {"every": 1, "window": 10}


def record_of(radii=RADII, *, seed=0, conjugate=None, steps=60):
    X = rotation_trajectory(radii, ANGLES, steps, seed=seed)
    return monitored(X if conjugate is None else conjugate @ X, **SETTINGS).record


def test_spectral_distance_is_the_optimal_matching_or_transport():
    assert spectral_distance([1 + 0j, 0.5j], [0.5j, 1 + 0j]) == pytest.approx(0.0)
    # matched one to one: |1 - 0.9| and |0.5j - 0.3j| -> mean 0.15
    assert spectral_distance([1, 0.5j], [0.3j, 0.9]) == pytest.approx(0.15)
    # unequal sizes: each of the two points sends mass 1/2 to the single one
    assert spectral_distance([[0.0, 0.0], [1.0, 0.0]], [[0.5, 0.0]]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-empty"):
        spectral_distance([], [1.0])


def test_conjugate_linear_systems_are_at_distance_zero():
    g = torch.Generator().manual_seed(7)
    S = torch.randn(4, 4, generator=g, dtype=torch.float64) + 2 * torch.eye(4, dtype=torch.float64)
    a, b = record_of(), record_of(seed=3, conjugate=S)
    res = compare(a, b)
    assert res["distance"] < 1e-6 and res["fits"] == 6
    assert res["pairing"] == "by name" and len(res["phases"]) == 3


def test_the_distance_grows_with_the_difference_in_spectra():
    base = record_of()
    shifts = [0.0, 0.02, 0.05, 0.1, 0.2]
    d = [compare(base, record_of([r - s for r in RADII]))["distance"] for s in shifts]
    assert d[0] < 1e-6
    assert all(lo < hi for lo, hi in zip(d, d[1:], strict=False))
    # every eigenvalue moved inwards by s, matched to its own shifted copy: the distance is s
    assert d[1:] == pytest.approx(shifts[1:], rel=1e-4)


def mlp(width=16, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, 1)).double()


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 5, generator=g, dtype=torch.float64)
    return x, torch.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]


def trained(model, optimizer="sgd", steps=300):
    """Full-batch training watched every 2 steps; "sgd" is plain gradient descent, "heavy
    ball" adds momentum 0.9 (oscillating, complex modes)."""
    x, y = data()
    opt = (torch.optim.SGD(model.parameters(), lr=0.1) if optimizer == "sgd"
           else torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    mon = KoopmanMonitor(model, every=2, window=16)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        mon.step()
    return mon.record


def test_a_network_and_its_permuted_copy_are_at_distance_zero():
    a = mlp()
    b = mlp()
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # the same function, hidden units relabelled
        b[0].weight.copy_(a[0].weight[perm])
        b[0].bias.copy_(a[0].bias[perm])
        b[2].weight.copy_(a[2].weight[:, perm])
    ra, rb, other = trained(a), trained(b), trained(mlp(seed=1))
    same = compare(ra, rb)["distance"]
    seeds = compare(ra, other)["distance"]
    assert same < 1e-6 and seeds > 1e3 * same


def test_two_optimizers_are_further_apart_than_two_seeds_of_one():
    """Gradient descent and the heavy ball (momentum) on the same network: measured with
    these settings, seeds of one optimizer are 0.03-0.22 apart, the two optimizers 0.69."""
    runs = {(o, s): trained(mlp(seed=s), o) for o in ("sgd", "heavy ball") for s in (0, 1)}
    seeds = max(compare(runs[(o, 0)], runs[(o, 1)])["distance"] for o in ("sgd", "heavy ball"))
    optimizers = min(compare(runs[("sgd", s)], runs[("heavy ball", s)])["distance"]
                     for s in (0, 1))
    assert optimizers > 2 * seeds


def test_top_keeps_the_modes_that_carry_the_motion():
    a = record_of()
    b = json.loads(json.dumps(a))
    for e in b["entries"]:  # a spurious extra mode carrying almost nothing
        lay = e["layers"][""]
        lay["eigenvalues"].append([-0.9, 0.0])
        lay["shares"].append(1e-9)
    assert compare(a, b)["distance"] > 0.1
    assert compare(a, b, top=4)["distance"] < 1e-6


def test_records_that_cannot_be_compared_are_refused(tmp_path):
    a = record_of()
    with pytest.raises(ValueError, match="fewer than phases"):
        compare(a, a, phases=7)
    with pytest.raises(ValueError, match="top must be a positive int"):
        compare(a, a, top=0)
    other = dict(a, settings=dict(a["settings"], every=2))
    with pytest.raises(ValueError, match="same every"):
        compare(a, other)
    for key, value in (("window", 16), ("interval", 20)):
        other = dict(a, settings=dict(a["settings"], **{key: value}))
        with pytest.raises(ValueError, match=f"recorded with {key} .* Record both with the "
                                             f"same {key}"):
            compare(a, other)
    most = a["settings"]["window"] - 2
    with pytest.warns(UserWarning, match=f"top={most} keeps every eigenvalue"):
        compare(a, a, top=most)
    with pytest.raises(ValueError, match="not a KoopmanMonitor record"):
        compare({"kind": "race"}, a)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        compare(tmp_path / "bad.json", a)


def test_the_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(record_of()))
    pb.write_text(json.dumps(record_of([r - 0.1 for r in RADII])))
    assert main(["compare", str(pa), str(pb), "--phases", "2", "--json",
                 str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "phase 2" in out and "(mean)" in out
    res = json.loads((tmp_path / "d.json").read_text())
    assert res["distance"] == pytest.approx(0.1, rel=1e-4) and len(res["phases"]) == 2
    assert main(["compare", str(pa), str(tmp_path / "missing.json")]) == 2
    assert "no monitor record" in capsys.readouterr().err


# ---------------------------------------------------------------- compare_groups
def noisy_record(radii, seed, steps=60, noise=1e-3):
    """A rotation system with given moduli, each seed its own start and noise."""
    X = rotation_trajectory(radii, ANGLES, steps, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    X = X + noise * torch.randn(X.shape, generator=g, dtype=X.dtype)
    return monitored(X, **SETTINGS).record


def test_groups_of_different_dynamics_are_apart_beyond_every_relabelling():
    """Four seeds each of two systems (moduli 0.99/0.97 against 0.8/0.7): the observed split
    and its mirror are the two largest of the C(8, 4) = 70 relabellings."""
    from kooptrain import compare_groups

    a = [noisy_record(RADII, s) for s in range(4)]
    b = [noisy_record([0.8, 0.7], s) for s in range(4, 8)]
    out = compare_groups(a, b)
    assert out["exact"] and out["splits"] == 70
    assert out["p_value"] == pytest.approx(2 / 70)
    assert out["between"] > out["within"] and out["effect_size"] > out["control"][2]


def test_groups_of_one_system_are_not_apart_at_the_stated_rate():
    """Ten trials of 3 + 3 seeds of one system: the exact p-value (20 splits, in steps of
    0.1) is at most 0.1 about a tenth of the time; it never is in every trial."""
    from kooptrain import compare_groups

    small = 0
    for trial in range(10):
        runs = [noisy_record(RADII, 6 * trial + s) for s in range(6)]
        out = compare_groups(runs[:3], runs[3:])
        assert out["exact"] and out["splits"] == 20
        small += out["p_value"] <= 0.1 + 1e-9
    assert small <= 4  # binomial(10, 0.1): P(>= 5) < 2e-4


def test_compare_groups_refuses_groups_of_one():
    from kooptrain import compare_groups

    r = record_of()
    with pytest.raises(ValueError, match="each group needs at least 2 runs"):
        compare_groups([r], [r, r])
