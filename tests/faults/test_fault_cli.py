"""The command line under bad input and interruption: one-line errors without a
traceback, outputs checked before any work, Ctrl-C keeps what is done and --resume
continues, and each finding of a first-time user."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kooptrain import __version__
from kooptrain.experiments.cli import main
from kooptrain.experiments.race import experiment as race_experiment
from kooptrain.experiments.window import experiment as window

TINY = ["--t1", "41", "--t2", "60", "--T", "8", "--optimizers", "adam,sgd", "--seeds", "2",
        "--no-progress"]
# The child for the Ctrl-C test: the real CLI, with the third network held until the signal
# arrives, so the test never races the clock (a loaded CI machine once finished every network
# before the poll saw two of them).
GATED_CLI = """
import sys, time
import kooptrain.experiments.cli as cli
from kooptrain.experiments.window import experiment
real, calls = experiment.run_one, []
def gated(*args, **kwargs):
    calls.append(1)
    while len(calls) == 3:  # two networks are saved: wait here for the Ctrl-C
        time.sleep(0.05)
    return real(*args, **kwargs)
experiment.run_one = gated
sys.exit(cli.main(sys.argv[1:]))
"""


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def exits(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse
        return e.code


@pytest.mark.parametrize("argv,words", [
    (["reproduce", "--select-seeds", "-3"], ["--select-seeds", "must be >= 0, got -3"]),
    (["reproduce", "--seeds", "0"], ["--seeds", ">= 1"]),
    (["reproduce", "--jobs", "0"], ["--jobs", ">= 1"]),
    (["reproduce", "--T", "-5"], ["--T", ">= 1"]),
    (["reproduce", "--t1", "x"], ["--t1", "expected an integer, got 'x'"]),
    (["reproduce", "nosuchtask"], ["invalid choice: 'nosuchtask'", "hnn"]),
    (["reproduce", "--optimizers", "lbfgs"], ["unknown optimizer", "adam"]),
    (["race", "--seeds", "0"], ["--seeds", ">= 1"]),
    (["race", "--steps", "3"], ["--steps", ">= 10"]),
    (["race", "mnist"], ["unknown race task 'mnist'", "task file"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_arguments_exit_2_with_one_line(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert exits(argv) == 2
    line = one_line_error(capsys)
    for w in words:
        assert w in line, line


def test_no_traceback_in_a_real_process(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for argv in (["reproduce", "--select-seeds", "-3"], ["reproduce", "--out", str(afile)],
                 ["report", str(afile)]):
        p = subprocess.run([sys.executable, "-m", "kooptrain.experiments.cli", *argv],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert afile.read_text() == "keep me"


@pytest.fixture
def no_training(monkeypatch):
    def trained(*a, **k):
        raise AssertionError("trained before checking the outputs")
    monkeypatch.setattr(window, "run", trained)
    monkeypatch.setattr(race_experiment, "run", trained)


@pytest.mark.parametrize("cmd", ["reproduce", "race"])
def test_outputs_are_checked_before_any_work(cmd, tmp_path, capsys, no_training):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["--out", str(afile)], f"--out {afile} is an existing file"),
        (["--out", str(afile / "sub")], f"cannot write to folder {afile / 'sub'}"),
        (["--out", str(tmp_path / "ok"), "--json", str(tmp_path)], "is a folder"),
        (["--out", "/proc/kooptrain-test"], "cannot write to folder /proc/kooptrain-test"),
    ]
    for extra, words in cases:
        assert main([cmd, *extra, "--no-progress"]) == 2
        assert words in one_line_error(capsys)
    assert afile.read_text() == "x"


def test_report_names_the_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("not json at all")
    assert main(["report", str(bad)]) == 2
    line = one_line_error(capsys)
    assert str(bad) in line and "not valid JSON" in line
    assert main(["report", str(tmp_path / "missing.json")]) == 2
    line = one_line_error(capsys)
    assert "missing.json" in line and "No such file" in line
    bad.write_text("[1, 2]")
    assert main(["report", str(bad)]) == 2
    assert str(bad) in one_line_error(capsys)
    bad.write_text(json.dumps({"schema_version": 1, "provenance": {}, "settings": {},
                               "results": [], "summary": [{"nonsense": 1}]}))
    assert main(["report", str(bad), "--out", str(tmp_path / "r")]) == 2
    line = one_line_error(capsys)
    assert str(bad) in line and "not a complete kooptrain results file" in line


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"kooptrain {__version__}"


def test_missing_mnist_folder_is_named(tmp_path, capsys):
    assert main(["reproduce", "mnist", "--mnist-dir", "/nonexistent", "--out",
                 str(tmp_path), "--no-progress"]) == 2
    line = one_line_error(capsys)
    assert "MNIST folder /nonexistent does not exist" in line
    f = tmp_path / "f"
    f.write_text("")
    assert main(["reproduce", "mnist", "--mnist-dir", str(f), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    assert "is a file, not a folder" in one_line_error(capsys)


def test_help_explains_the_task_and_the_window(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for words in ("first recorded training step", "last recorded training step",
                  "steps predicted past t2", "the paper's Hamiltonian network", "--resume",
                  "--jobs"):
        assert words in out, words
    with pytest.raises(SystemExit):
        main(["race", "--help"])
    assert "task to race on" in capsys.readouterr().out


def rows_without_timing(path):
    res = json.loads(path.read_text())
    drop = {"optimizer_seconds", "koopman_seconds", "speedup"}
    return [{k: v for k, v in r.items() if k not in drop} for r in res["results"]]


@pytest.mark.slow
def test_ctrl_c_keeps_finished_networks_and_resume_completes_the_same_result(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    args = ["reproduce", "hnn", *TINY, "--out", str(out)]
    p = subprocess.Popen([sys.executable, "-c", GATED_CLI, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    partial = out / ".kooptrain-partial"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and len(list(partial.glob("*.json"))) < 2:
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()[1]  # still held at the third network
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    done = sorted(f.name for f in partial.glob("*.json"))
    assert len(done) == 2  # of 2 optimizers x (2 report + 1 selection) networks
    for f in partial.glob("*.json"):  # every saved file is complete JSON
        json.loads(f.read_text())
    assert not (out / "results.json").exists()
    # without --resume the saved networks are not silently overwritten
    cmd = [sys.executable, "-m", "kooptrain.experiments.cli", *args]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2 and "add --resume" in again.stderr
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert not partial.exists()  # cleared once results.json is written
    res = json.loads((out / "results.json").read_text())
    assert res["provenance"]["resumed_runs"] == len(done)
    fresh = tmp_path / "fresh"
    assert main(["reproduce", "hnn", *TINY, "--out", str(fresh)]) == 0
    assert rows_without_timing(out / "results.json") == rows_without_timing(
        fresh / "results.json")


def test_a_failed_final_write_loses_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    import kooptrain.experiments.cli as cli

    real = cli.write_json

    def disk_full(path, res):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "write_json", disk_full)
    assert main(["reproduce", "hnn", *TINY, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err
    assert len(list((out / ".kooptrain-partial").glob("*.json"))) == 6
    monkeypatch.setattr(cli, "write_json", real)

    def retrained(*a, **k):
        raise AssertionError("a saved network was trained again")

    monkeypatch.setattr(window, "run_one", retrained)
    assert main(["reproduce", "hnn", *TINY, "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["provenance"]["resumed_runs"] == 6


def test_race_resume_refuses_seeds_made_with_other_settings(tmp_path, capsys, monkeypatch):
    out = tmp_path / "race"
    argv = ["race", "hnn", "--steps", "20", "--out", str(out), "--no-progress"]
    out.mkdir()
    (out / "results.json").write_text('{"previous": "run"}')  # results already written

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(race_experiment, "race_seed", interrupted)
    assert main(argv) == 130
    assert "0 finished run(s) are saved" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text()) == {"previous": "run"}
    from kooptrain.experiments.harness.store import RunStore

    (out / ".kooptrain-partial").mkdir(exist_ok=True)
    RunStore(out, {"task": "hnn", "steps": 999}).save((0,), {})
    assert main(argv + ["--resume"]) == 2
    assert "made with other settings (differing: " in capsys.readouterr().err


@pytest.mark.slow
def test_jobs_give_the_same_rows_as_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["reproduce", "hnn", *TINY, "--out", str(one)]) == 0
    assert main(["reproduce", "hnn", *TINY, "--out", str(two), "--jobs", "2"]) == 0
    assert rows_without_timing(one / "results.json") == rows_without_timing(
        two / "results.json")
    res = json.loads((two / "results.json").read_text())
    assert res["provenance"]["jobs"] == 2
    assert sum(res["provenance"]["network_commits"].values()) == 6


def test_race_lm_without_a_standard_library_says_so(tmp_path, capsys, monkeypatch):
    import kooptrain.problems.lm as lm

    monkeypatch.setattr(lm.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    assert main(["race", "lm", "--steps", "10", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    line = one_line_error(capsys)
    assert "found 0 *.py files" in line and "root=" in line
