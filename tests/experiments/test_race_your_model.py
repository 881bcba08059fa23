"""`kooptrain race path/to/task.py`: the examples race end to end at a small budget, a bad
task file or option is one line and exit code 2, and a device run (CUDA, where there is
one) times each run with the device synchronised."""

import json
import re
from pathlib import Path

import pytest
import torch

from kooptrain.experiments.cli import main
from kooptrain.experiments.harness.meter import Meter

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FIELD = "ema,swa,schedulefree,koopman,koopman-average"


def race(tmp_path, *args) -> tuple[int, Path]:
    out = tmp_path / "race"
    return main(["race", *args, "--no-progress", "--out", str(out)]), out


@pytest.mark.slow
@pytest.mark.parametrize("example, steps", [("race_gru.py", 40), ("race_resnet_digits.py", 30)])
def test_the_examples_race_end_to_end(tmp_path, example, steps):
    rc, out = race(tmp_path, str(EXAMPLES / example), "--steps", str(steps), "--methods", FIELD)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    file = res["provenance"]["task_file"]
    assert file["path"].endswith(example) and len(file["sha256"]) == 64
    methods = {m for m, _ in res["settings"]["plan"]}
    assert set(FIELD.split(",")) | {"plain", "plain-copy"} == methods
    report = (out / "report.md").read_text()
    assert res["settings"]["task"] in report and "## Verdict" in report
    # its learning rates are the task file's own: nothing claims a tuning that never ran
    assert res["tuning"]["given"] and "seed" not in res["tuning"]
    assert "Learning rates (the task's own, not tuned" in report and "tuning-" not in report
    # the command as it was given
    assert f"kooptrain race {file['path']} --methods {FIELD}`" in report
    for fig in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / fig).stat().st_size > 5000
    if "resnet" in example:  # BatchNorm: the refresh applies; accuracy is reported
        assert res["curves"]["plain:sgd"][0][-1][6] is not None


def test_a_bad_task_file_is_one_line_and_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n"
                   "from kooptrain.experiments import PlainOptimizer, Task\n"
                   "def task():\n"
                   "    return Task('bad', model=lambda s: torch.nn.Linear(2, 1),\n"
                   "                batches=lambda s: iter([]), loss=None,\n"
                   "                heldout=lambda m: 0.0, budget=20,\n"
                   "                optimizers={'adam': PlainOptimizer(torch.optim.Adam)})\n")
    for args, match in [((str(bad),), "task 'bad': loss must be a function"),
                        ((str(tmp_path / "none.py"),), "is not a Python file"),
                        ((f"{bad}:nothing",), "defines no function 'nothing'"),
                        (("hnnn",), "unknown race task 'hnnn'"),
                        (("hnn", "--device", "gpu7"), "is not a device")]:
        rc, _ = race(tmp_path, *args)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and match in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit):
        race(tmp_path, "hnn", "--methods", "ema,emma")
    assert "unknown method(s) emma" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_is_refused_in_one_line_where_there_is_none(tmp_path, capsys):
    rc, _ = race(tmp_path, str(EXAMPLES / "race_gru.py"), "--device", "cuda")
    err = capsys.readouterr().err
    assert rc == 2 and "sees no CUDA device" in err


def test_the_meter_waits_for_the_device_around_each_timed_block():
    calls = []
    meter = Meter(sync=lambda: calls.append("sync"))
    with meter.timing():
        calls.append("work")
    assert calls == ["sync", "work", "sync"] and meter.wall > 0
    assert Meter.for_device(torch.device("cpu")).sync is None


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_gru_example_races_on_cuda(tmp_path):
    rc, out = race(tmp_path, str(EXAMPLES / "race_gru.py"), "--steps", "40", "--methods",
                   "ema,koopman", "--device", "cuda")
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["device"].startswith("cuda")
    assert all(t[0]["wall"] > 0 for t in res["totals"].values())
    assert Meter.for_device(torch.device("cuda")).sync is not None


def test_resume_continues_a_task_file_and_refuses_one_that_changed(tmp_path, monkeypatch,
                                                                 capsys):
    """A user task interrupted after its first seed resumes from the saved seed and ends
    where an uninterrupted race ends; an edited task file is not mixed with the seeds of
    the old one."""
    from kooptrain.experiments.race import experiment

    task = tmp_path / "gru.py"
    task.write_text((EXAMPLES / "race_gru.py").read_text())
    args = ["race", str(task), "--steps", "12", "--seeds", "2", "--methods", "ema",
            "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())

    real = experiment.race_seed

    def interrupted(w, seed, *a, **kw):
        if seed == 1:
            raise KeyboardInterrupt
        return real(w, seed, *a, **kw)

    out = str(tmp_path / "cut")
    monkeypatch.setattr(experiment, "race_seed", interrupted)
    assert main([*args, "--out", out]) == 130
    task.write_text(task.read_text() + "# edited\n")
    monkeypatch.setattr(experiment, "race_seed", real)
    assert main([*args, "--out", out, "--resume"]) == 2
    assert "other settings (differing: task_file)" in capsys.readouterr().err
    task.write_text((EXAMPLES / "race_gru.py").read_text())
    assert main([*args, "--out", out, "--resume"]) == 0
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert resumed["provenance"]["resumed_runs"] == 1
    for k, totals in whole["totals"].items():
        for a, b in zip(totals, resumed["totals"][k], strict=True):
            assert {x: a[x] for x in a if x not in ("wall", "cpu")} == \
                {x: b[x] for x in b if x not in ("wall", "cpu")}
