"""The README's example runs as written and does what it says."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_example_runs_and_the_accelerator_helps():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2, "README lost its examples"
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)  # noqa: S102
    plain, fast, acc = ns["plain"], ns["fast"], ns["acc"]
    assert acc.jumps_accepted >= 1
    assert fast < 0.5 * plain  # the case shown is one where it helps
    # every kept jump lowered the closure's loss by the margin
    for h in acc.history:
        if h["accepted"]:
            assert h["loss_after"] < (1 - acc.margin) * h["loss_before"]


def test_readme_engine_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    code = blocks[1].replace("# ... call rec.record() after each optimizer.step() ...",
                             "for _ in range(50):\n"
                             "    opt.zero_grad(); torch.nn.functional.mse_loss(model(x), y)"
                             ".backward(); opt.step(); rec.record()")
    ns = {"model": model, "opt": opt, "x": x, "y": y, "torch": torch}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102
    jumps = ns["jumps"]
    for name, p in model.named_parameters():
        assert jumps[name].shape == (*p.shape, 3)
    one = ns["rec"].fit(observables="affine", stabilize="clip").predict(100)
    for name in one:
        torch.testing.assert_close(jumps[name][..., 1], one[name])


def test_readme_lm_example_runs_with_adamw_a_schedule_and_the_accelerator():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (code,) = [b for b in blocks if "LanguageModelProblem" in b]
    assert "steps, warmup = 3000, 150" in code
    code = code.replace("steps, warmup = 3000, 150", "steps, warmup = 200, 10")
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102
    acc, opt = ns["acc"], ns["opt"]
    assert acc.every == 25 and acc.window == 6  # the defaults
    assert acc.jumps_tried >= 1  # the first attempt comes after 6 snapshots, at step 150
    # the schedule ran to its end: 10% of the peak lr
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3, rel=1e-6)


def test_readme_diagnostics_example_runs_and_tells_the_optimizers_apart(tmp_path, monkeypatch):
    pytest.importorskip("scipy")
    pytest.importorskip("matplotlib")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (code,) = [b for b in blocks if "KoopmanMonitor(model" in b and "heavy_ball" in b]
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102
    compare, gd, hb, run = ns["compare"], ns["gd"], ns["heavy_ball"], ns["run"]
    assert compare(gd, hb)["distance"] > 2 * compare(gd, run(0.0, seed=1))["distance"]
    assert gd.warning is None and hb.warning is None  # healthy runs: no warning
    assert (tmp_path / "gd.json").exists() and (tmp_path / "gd-spectra.png").exists()


def test_quickstart_is_two_commands():
    text = README.read_text()
    quick = text.split("## Quickstart", 1)[1].split("##", 1)[0]
    (bash,) = re.findall(r"```bash\n(.*?)```", quick, re.S)
    lines = [ln for ln in bash.strip().splitlines() if ln.strip()]
    assert len(lines) == 2
    assert "kooptrain race" in lines[0] and "pytest" in lines[1] and ".[test]" in lines[1]
    prose = " ".join(quick.split())
    assert "from the repository root" in prose and "fresh virtual environment" in prose


def test_guarantees_name_tests_that_exist():
    """Every test the README's Guarantees section names exists, so no promise points at
    nothing."""
    text = README.read_text().split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    root = README.parent / "tests"
    named = re.findall(r"`((?:tests/)?(?:test_)?[\w/]+\.py)(?:::(\w+\*?))?`", text)
    assert len(named) >= 12
    for path, test in named:
        files = list(root.rglob(path.split("/")[-1]))
        assert files, path
        if test:
            pattern = test.rstrip("*")
            assert any(f"def {pattern}" in f.read_text() for f in files), (path, test)


def test_the_accelerator_docs_say_how_to_use_it_in_a_loop():
    """docs/accelerator.md: where step() goes, what the closure should measure, and the
    loops that need care."""
    doc = (README.parent / "docs" / "accelerator.md").read_text()
    section = doc.split("## Using it in your loop", 1)[1].split("\n## ", 1)[0]
    for words in ("optimizer.step()", "closure", "held-out", "overfit", "BatchNorm",
                  "bn_loader", "Gradient accumulation", "accumulate_grad_batches",
                  "torch.compile", "_orig_mod.", "autocast", "steps_jumped"):
        assert words in section, words


def test_every_rename_in_the_upgrade_note_is_in_the_changelog():
    readme = README.read_text()
    changelog = (README.parent / "CHANGELOG.md").read_text()
    note = readme[readme.index("### Upgrading from 0.1"):readme.index("## Guarantees")]
    rows = [line for line in note.splitlines() if line.startswith("| `")]
    assert len(rows) >= 8
    deprecated = changelog[changelog.index("### Deprecated"):changelog.index("## [0.1.0]")]
    for row in rows:
        for name in re.findall(r"`([^`]+)`", row.split("|")[1]):
            assert name in deprecated, name
    assert "## [0.2.0]" in changelog and "Keep a Changelog" in changelog


def test_the_task_file_in_docs_race_is_the_gru_example_and_fits_in_40_lines():
    """docs/race.md shows a complete task file: it is examples/race_gru.py (raced end to end
    in test_race_your_model.py) without its docstring, and at most 40 lines, as promised."""
    docs = (README.parent / "docs" / "race.md").read_text()
    shown = re.search(r"A complete task file,\n.*?```python\n(.*?)```", docs, re.S).group(1)
    example = (README.parent / "examples" / "race_gru.py").read_text()
    assert shown == example.split('"""', 2)[2].lstrip("\n")
    assert len(shown.splitlines()) <= 40
    assert f"{len(shown.splitlines())} lines" in docs
