"""The README's example runs as written and does what it says."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README lost its example"
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)  # noqa: S102
    rec = ns["rec"]
    # the example's jump is the engine's prediction from the recorded window, and it moved
    # the weights away from the last snapshot
    from kooptrain import KoopmanOperator

    blocks = rec.partition.gather(rec.partition.flatten())
    for X, got in zip(rec.snapshots(), blocks, strict=True):
        ref = KoopmanOperator(observables="affine", stabilize="clip").fit(X).predict(200)
        torch.testing.assert_close(got, ref.to(got.dtype))
        assert (got - X[..., -1].to(got.dtype)).abs().max() > 1e-4


def test_quickstart_is_two_commands():
    text = README.read_text()
    quick = text.split("## Quickstart", 1)[1].split("##", 1)[0]
    (bash,) = re.findall(r"```bash\n(.*?)```", quick, re.S)
    lines = [ln for ln in bash.strip().splitlines() if ln.strip()]
    assert len(lines) == 2
    assert "kooptrain reproduce" in lines[0] and "pytest" in lines[1] and ".[test]" in lines[1]
