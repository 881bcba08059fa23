"""End to end: `kooptrain reproduce` on a tiny configuration, JSON schema, figures."""

import json
import re

import jsonschema
import PIL.Image
import pytest

from kooptrain.experiments.cli import main
from kooptrain.experiments.window.report import FIGURES

ROW_KEYS = ["task", "optimizer", "method", "granularity", "observables", "options", "seed",
            "t1", "t2", "T", "koopman_seconds", "optimizer_seconds", "speedup", "loss_t2",
            "loss_optimizer", "loss_koopman", "error_to_growth"]
NUM = {"type": ["number", "null"]}
SCHEMA = {
    "type": "object",
    "required": ["schema_version", "provenance", "settings", "results", "summary"],
    "properties": {
        "schema_version": {"const": 1},
        "provenance": {"type": "object",
                       "required": ["torch", "threads", "cpu", "git_commit", "date",
                                    "schema_version"]},
        "results": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "required": ROW_KEYS,
                "properties": {
                    "method": {"enum": ["koopman", "do-nothing", "linear"]},
                    "options": {"type": "object"}, "T": {"type": ["integer", "null"]},
                    "seed": {"type": "integer"}, "koopman_seconds": NUM,
                    "optimizer_seconds": {"type": "number"}, "speedup": NUM,
                    "loss_t2": {"type": "number"}, "loss_optimizer": {"type": "number"},
                    "loss_koopman": NUM, "error_to_growth": NUM,
                },
            },
        },
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["hnn", "digits", "mnist1d"])
def test_reproduce_end_to_end(tmp_path, task, capsys):
    out = tmp_path / "rep"
    args = ["reproduce", task, "--optimizers", "adadelta", "--seeds", "1",
            "--select-seeds", "1", "--t1", "11", "--t2", "40", "--T", "8", "--out", str(out),
            "--no-progress"]
    if task == "mnist1d":  # --json puts the results elsewhere
        args += ["--json", str(tmp_path / "elsewhere" / "r.json")]
    assert main(args) == 0
    jpath = tmp_path / "elsewhere" / "r.json" if task == "mnist1d" else out / "results.json"
    assert not (task == "mnist1d" and (out / "results.json").exists())
    res = json.loads(jpath.read_text())
    jsonschema.validate(res, SCHEMA)
    assert res["settings"]["task"] == task
    for r in res["results"]:
        # rows are internally consistent: speedup is the ratio of the two timings
        if r["speedup"] is not None:
            assert r["speedup"] == pytest.approx(r["optimizer_seconds"] / r["koopman_seconds"],
                                                 rel=1e-4)
        # a diverged jump is null *and* flagged; a finite loss is never flagged
        assert r["diverged"] == (r["loss_koopman"] is None)
        if r["method"] == "do-nothing":  # staying at w_t2: error equals evolution
            assert r["error_to_growth"] == pytest.approx(1.0)
    methods = {r["method"] for r in res["results"]}
    assert methods == {"koopman", "do-nothing", "linear"}
    # the paper's plain node operator is always reported, for every optimizer and horizon
    paper = [r for r in res["results"] if r["config"] == "node (paper)"]
    assert {r["optimizer"] for r in paper} == {"adadelta"}
    assert {r["T"] for r in paper} == set(res["settings"]["horizons"])
    report = (out / "report.md").read_text()
    for fig in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / fig).stat().st_size > 1000, fig
        with PIL.Image.open(out / fig) as im:  # readable: saved at >= 150 dpi
            assert min(im.info["dpi"]) >= 149.9 and im.size[0] >= 500, (fig, im.size)
    assert set(FIGURES) <= set(re.findall(r"\(([^)]+\.png)\)", report))
    assert "goal" in report.lower() and "node (paper)" in report
    assert "issue #" not in report  # goals are stated in words
    # the scatter keeps every report network (Fig. 1e pools them)
    sc = res["scatter"]["adadelta"]["node (paper)"]
    assert sc["seeds"] == [0] and len(sc["error"]) == 1
    assert all(r["mean_abs_error"] is not None for r in res["results"]
               if r["method"] == "koopman" and not r["diverged"])
    # `kooptrain report` rebuilds the same report from the JSON alone
    (out / "report.md").unlink()
    assert main(["report", str(jpath), "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == report


def test_cli_errors_are_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KOOPTRAIN_MNIST_DIR", raising=False)
    assert main(["reproduce", "mnist", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "KOOPTRAIN_MNIST_DIR" in capsys.readouterr().err
    assert main(["reproduce", "--optimizers", "lbfgs", "--no-progress"]) == 2
    assert "unknown optimizer" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{}")
    assert main(["report", str(tmp_path / "x.json")]) == 2
