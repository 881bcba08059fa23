"""The reproduction's arithmetic on hand-built inputs: baselines, Fig. 1e ratio, goal, selection."""

import math
import statistics

import pytest
import torch

from kooptrain.experiments.harness.jsonio import json_safe as _json_safe
from kooptrain.experiments.window.experiment import (
    PAPER,
    baselines,
    default_settings,
    make_problem,
)
from kooptrain.experiments.window.experiment import error_to_growth as _error_to_growth
from kooptrain.experiments.window.summary import summarize_windows as summarize


def test_linear_baseline_continues_the_last_step():
    w_prev, w_t2 = torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0])
    b = baselines(w_t2, w_prev, 4)
    torch.testing.assert_close(b["do-nothing"], w_t2)
    torch.testing.assert_close(b["linear"], torch.tensor([3.5, -3.0]))  # + 4 * (0.5, -1)


def test_error_to_growth_is_error_over_evolution():
    w_t2 = torch.zeros(3)
    true = torch.tensor([2.0, 2.0, 2.0])     # evolution 2 everywhere
    pred = torch.tensor([2.5, 1.5, 2.5])     # error 0.5 everywhere
    assert _error_to_growth(pred, true, w_t2) == pytest.approx(0.25)
    assert _error_to_growth(w_t2, true, w_t2) == pytest.approx(1.0)  # do-nothing
    assert _error_to_growth(pred, w_t2, w_t2) == math.inf           # nothing moved


def test_json_safe_turns_non_finite_into_null():
    assert _json_safe({"a": [1.0, math.inf, -math.inf, math.nan], "b": (2, "x")}) == \
        {"a": [1.0, None, None, None], "b": [2, "x"]}


def row(config, seed, split, speedup, loss_k, loss_opt=1.0, loss_t2=2.0, T=10):
    return {"optimizer": "adam", "config": config, "split": split, "seed": seed, "T": T,
            "method": "koopman", "speedup": speedup, "loss_koopman": loss_k,
            "loss_optimizer": loss_opt, "loss_t2": loss_t2, "error_to_growth": 0.5}


def test_goal_clauses_and_thresholds():
    rows = [row(PAPER.name, 0, "report", 100.0, 1.0),     # exactly at every threshold
            row("slow", 0, "report", 99.0, 0.5),
            row("worse", 0, "report", 200.0, 1.01),
            row("still", 0, "report", 200.0, 0.5, loss_opt=1.0, loss_t2=1.24)]
    (s,) = summarize(rows, {"T": 10, "task": "hnn"})
    by = {d["config"]: d for d in s["all"]}
    assert by[PAPER.name]["goal_met"]          # 100x, ratio 1, 1.0 <= 0.8 * 2.0
    assert not by["slow"]["goal_speedup"] and by["slow"]["goal_loss"]
    assert by["worse"]["goal_speedup"] and not by["worse"]["goal_loss"]
    assert not by["still"]["goal_moving"]        # 1.0 > 0.8 * 1.24
    assert by["worse"]["loss_ratio"] == pytest.approx(1.01)


def test_selection_prefers_100x_then_the_lowest_ratio_on_selection_seeds():
    rows = []
    for split, seed in (("select", 1000), ("report", 0)):
        rows += [row("fast-bad", seed, split, 150.0, 3.0),
                 row("fast-good", seed, split, 120.0, 2.0 if split == "select" else 0.9),
                 row("slow-best", seed, split, 50.0, 0.1)]
    (s,) = summarize(rows, {"T": 10, "task": "hnn"})
    assert s["selected"]["config"] == "fast-good"   # reaches 100x; lowest ratio among those
    assert s["closest"]["config"] == "slow-best"    # lowest ratio on the report seeds
    # a diverged jump counts as an infinite loss, not as a missing value
    rows.append(row("fast-good", 1, "report", 120.0, None))
    rows.append(row("fast-good", 2, "report", 120.0, None))
    (s,) = summarize(rows, {"T": 10, "task": "hnn"})
    assert s["selected"]["loss_ratio"] == math.inf


def test_full_preset_is_the_papers_window():
    prob = make_problem("hnn")
    s = default_settings("hnn", prob, full=True)
    assert (s.t1, s.t2, s.T, s.seeds) == (35001, 45000, 2500, 25)  # 25 networks, as published
    assert max(s.horizons) == 2500  # no 2T horizon at paper scale
    quick = default_settings("hnn", prob)
    assert quick.T in quick.horizons and 2 * quick.T in quick.horizons


def test_top_networks_are_the_smallest_mean_abs_error_on_hand_built_rows():
    """The authors' n_top selection: the k networks whose paper-config prediction at T has
    the smallest mean |error|; other configs, horizons and splits do not count."""
    from kooptrain.experiments.window.summary import (
        PUBLISHED_TOP,
        selection_summary,
        top_networks,
    )

    errors = {sd: 0.1 * ((7 * sd) % 25 + 1) for sd in range(25)}  # a shuffled 0.1..2.5
    errors[3] = None  # a diverged prediction ranks last
    errors[4] = errors[5] = 0.05  # a tie: the lower seed first

    def row(sd, err, config="node (paper)", T=100, split="report", ratio=None):
        return {"optimizer": "adadelta", "config": config, "split": split, "T": T,
                "seed": sd, "mean_abs_error": err, "error_to_growth": sd / 10,
                "loss_koopman": None if err is None else (ratio or 2.0) * (1 + sd),
                "loss_optimizer": 1.0 + sd}

    rows = [row(sd, e) for sd, e in errors.items()]
    rows += [row(sd, 0.0, config="network") for sd in range(25)]  # other config: ignored
    rows += [row(sd, 0.0, T=50) for sd in range(25)]  # other horizon: ignored
    rows += [row(1000, 0.0, split="select")]  # selection network: ignored
    top = top_networks(rows, "adadelta", T=100)
    ranked = sorted((e, sd) for sd, e in errors.items() if e is not None)
    assert PUBLISHED_TOP == 11 and len(top) == 11
    assert top == [sd for _, sd in ranked[:11]]
    assert top[:2] == [4, 5] and 3 not in top
    assert top_networks(rows, "adadelta", T=100, k=25)[-1] == 3  # diverged: last
    (sm,) = selection_summary(rows, {"T": 100})
    assert sm["published"]["seeds"] == top and sm["all"]["n"] == 25
    assert sm["published"]["error_to_growth"] == statistics.median(sd / 10 for sd in top)
    assert sm["published"]["loss_ratio"] == 2.0  # every finite network sits at 2x
    assert sm["all"]["loss_ratio"] == 2.0 and max(sm["all"]["seeds"]) == 24
