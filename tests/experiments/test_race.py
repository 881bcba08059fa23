"""The race: baselines against their definitions, target arithmetic, the verdict, and
`kooptrain race` end to end at a tiny budget."""

import json
import math
import re

import pytest
import torch

from kooptrain.experiments import race
from kooptrain.experiments.cli import main
from kooptrain.experiments.race import summary
from kooptrain.experiments.race.baselines import Lookahead
from kooptrain.experiments.race.figures import RACE_FIGURES
from kooptrain.experiments.race.summary import verdict


def test_lookahead_matches_its_definition():
    torch.manual_seed(0)
    A = torch.randn(4, 4)
    A = A @ A.T + torch.eye(4)
    p = torch.nn.Parameter(torch.randn(4))
    q = p.detach().clone()
    opt = Lookahead(torch.optim.SGD([p], lr=0.05), k=3, alpha=0.4)
    slow = q.clone()
    for step in range(1, 10):
        opt.zero_grad()
        (0.5 * p @ A @ p).backward()
        opt.step()
        q = q - 0.05 * (A @ q)           # the fast weights: plain SGD
        if step % 3 == 0:                # every k steps: pull slow towards fast, reset fast
            slow = slow + 0.4 * (q - slow)
            q = slow.clone()
        torch.testing.assert_close(p.detach(), q)
    with pytest.raises(ValueError, match="k="):
        Lookahead(torch.optim.SGD([p], lr=0.1), k=0)
    with pytest.raises(ValueError, match="alpha"):
        Lookahead(torch.optim.SGD([p], lr=0.1), alpha=0)


def test_first_reach_and_targets():
    curve = [(0.0, 0, 5.0), (1.0, 10, 3.0), (2.0, 20, None), (3.0, 30, 1.0)]
    assert summary.first_reach(curve, 3.0) == (1.0, 10)
    assert summary.first_reach(curve, 0.5) == (None, None)
    curves = {"a": [[(0, 0, 4.0), (1, 50, 2.0), (2, 100, 1.0)],
                    [(0, 0, 4.0), (1, 50, 2.4), (2, 100, 1.2)],
                    [(0, 0, 4.0), (1, 50, 1.0), (2, 100, 0.9)]],
              "b": [[(0, 0, 4.0), (1, 50, 3.0), (2, 100, 0.5)]] * 3}
    t = summary.fix_targets(curves, 100)
    assert t["best_plain"] == "a"  # lowest median loss at 50% of the budget
    assert t["targets"] == {"25%": 4.0, "50%": 2.0, "100%": 1.0}  # medians over seeds


def summary_row(method, opt, secs, name="50%"):
    return {"method": method, "optimizer": opt, "target_name": name, "median_seconds": secs}


def test_verdict_clauses():
    res = {"summary": [summary_row("plain", "adam", 10.0), summary_row("plain", "sgd", 20.0),
                       summary_row("koopman", "adam", 4.0), summary_row("koopman", "sgd", 21.5),
                       summary_row("lawa", "adam", 4.5), summary_row("ema", "adam", None)]}
    v = verdict(res)
    assert v["speedup"] == pytest.approx(2.5) and v["clause1"]
    assert v["never_slower"] == {"adam": True, "sgd": False} and not v["clause2"]
    assert v["best_other"] == (4.5, ("lawa", "adam")) and v["clause3"]
    res["summary"][2] = summary_row("koopman", "adam", None)  # never reached
    v = verdict(res)
    assert v["best_koopman"] == (21.5, "sgd") and not v["clause1"] and not v["clause3"]


def test_summary_counts_unreached_targets_as_infinitely_slow():
    rows = [{"method": "plain", "optimizer": "adam", "target_name": "50%", "target": 1.0,
             "seconds_to_target": s, "steps_to_target": None if s is None else 10,
             "jumps_accepted": 0, "jumps_tried": 0} for s in (1.0, None, None)]
    (d,) = summary.medians_to_target(rows)
    assert d["median_seconds"] == math.inf and d["reached"] == 1 and d["n_seeds"] == 3


@pytest.mark.parametrize("method", ["plain", "koopman", "lawa", "ema", "swa", "lookahead",
                                    "schedulefree", "linear-extrapolation"])
def test_every_method_trains_and_reports(method):
    problem = race.make_problem("digits")
    r = race.train("digits", problem, method, "adam", 3e-3, 0, 60, 10,
                   {"window": 5, "horizons": (2, 4, 8)})
    secs = [s for s, _, _ in r["curve"]]
    assert [st for _, st, _ in r["curve"]] == [0, 10, 20, 30, 40, 50, 60]
    assert secs == sorted(secs) and secs[-1] > 0
    assert r["curve"][-1][2] < r["curve"][0][2]  # it trained
    if method in ("koopman", "lawa", "linear-extrapolation"):
        assert r["jumps_tried"] >= 1 and len(r["history"]) == r["jumps_tried"]
    else:
        assert r["jumps_tried"] == 0


@pytest.mark.slow
def test_race_cli_end_to_end(tmp_path):
    out = tmp_path / "race"
    assert main(["race", "digits", "--seeds", "1", "--steps", "40", "--out", str(out),
                 "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    need = {"task", "method", "optimizer", "seed", "target", "seconds_to_target",
            "steps_to_target", "jumps_accepted", "jumps_tried"}
    assert all(need <= set(r) for r in res["results"])
    methods = {r["method"] for r in res["results"]}
    assert {"plain", "koopman", "linear-extrapolation", "lawa", "ema", "swa", "lookahead",
            "schedulefree"} <= methods
    report = (out / "report.md").read_text()
    assert "Goal, in words" in report and "## Verdict" in report
    for fig in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / fig).stat().st_size > 5000
    assert set(RACE_FIGURES) <= set(re.findall(r"\(([^)]+\.png)\)", report))
    with pytest.raises(SystemExit) as e:  # argparse: one-line usage error, exit 2
        main(["race", "--seeds", "0"])
    assert e.value.code == 2


def test_the_committed_race_reports_name_runs_in_words_and_every_run_is_drawn(tmp_path, capsys):
    """Regenerated from a committed JSON: no raw Python tuple in the report, every run in
    one of the figure's panels, and `kooptrain report` names the figures it wrote."""
    from pathlib import Path

    from kooptrain.experiments.race.figures import PANELS, in_panel

    src = Path(__file__).resolve().parents[2] / "results" / "race" / "mnist1d" / "results.json"
    (tmp_path / "results.json").write_text(src.read_text())
    assert main(["report", str(tmp_path / "results.json")]) == 0
    said = capsys.readouterr().out
    assert all(f in said for f in RACE_FIGURES)
    report = (tmp_path / "report.md").read_text()
    assert "('" not in report and "Best non-Koopman alternative: schedulefree (schedulefree)" \
        in report
    res = json.loads(src.read_text())
    best = res["tuning"]["best_plain"]
    for key in res["curves"]:
        method, opt = key.split(":")
        assert any(in_panel(method, opt, wanted, best) for _, wanted in PANELS), key


def test_race_help_gives_the_default_budgets(capsys):
    with pytest.raises(SystemExit):
        main(["race", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for task, steps in race.BUDGET.items():
        assert f"{task} {steps}" in text
