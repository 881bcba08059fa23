"""Tasks: IDX loading on files the test writes, HNN physics, classifier plumbing."""

import gzip
import struct

import numpy as np
import pytest
import torch

from kooptrain.problems.classifiers import load_task
from kooptrain.problems.hnn import OscillatorProblem
from kooptrain.problems.idx import load_mnist, read_idx


def write_idx(path, arr, gz=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = struct.pack(">BBBB", 0, 0, codes[arr.dtype.type], arr.ndim)
    header += b"".join(struct.pack(">I", n) for n in arr.shape)
    data = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("x.idx" + (".gz" if gz else ""))
    write_idx(p, arr, gz)
    np.testing.assert_array_equal(read_idx(p), arr)
    ints = np.array([-5, 7, 100000], dtype=np.int32)
    write_idx(tmp_path / "i.idx", ints)
    np.testing.assert_array_equal(read_idx(tmp_path / "i.idx"), ints)


def test_read_idx_rejects_corrupt_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "t", np.zeros((4, 4), np.uint8))
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "t")


def make_mnist(dir_, n_train=64, n_test=16, gz=True):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for stem, n in (("train", n_train), ("t10k", n_test)):
        write_idx(dir_ / f"{stem}-images-idx3-ubyte{sfx}",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), gz)
        write_idx(dir_ / f"{stem}-labels-idx1-ubyte{sfx}",
                  rng.integers(0, 10, n).astype(np.uint8), gz)


def test_mnist_task_from_small_idx_files(tmp_path, monkeypatch):
    make_mnist(tmp_path)
    (xtr, ytr), (xte, yte) = load_mnist(tmp_path)
    assert xtr.shape == (64, 28, 28) and yte.shape == (16,)
    monkeypatch.setenv("KOOPTRAIN_MNIST_DIR", str(tmp_path))
    task = load_task("mnist")
    model = task.make_model(0)
    assert model[0].in_features == 784 and task.steps_per_epoch == 1
    loss = task.loss(model, task.batch(torch.Generator().manual_seed(0)))
    assert torch.isfinite(loss)


def test_missing_mnist_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.delenv("KOOPTRAIN_MNIST_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="KOOPTRAIN_MNIST_DIR.*mnist1d"):
        load_mnist(None)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)


def test_hnn_exact_solution_has_zero_residual_and_reference_conserves_energy():
    prob = OscillatorProblem()
    ref = prob.reference()
    e = prob.energy(ref[:, 0], ref[:, 1])
    assert np.abs(e - e[0]).max() < 1e-8  # tight solve_ivp reference
    assert ref[0].tolist() == pytest.approx([1.3, 1.0])
    model = prob.make_model(0)
    assert sum(p.numel() for p in model.parameters()) == 152  # PAPER.md
    x, p, _, _ = prob.solution(model, prob.eval_batch())
    # the parametrisation enforces the initial condition exactly
    assert float(x[0].detach()) == pytest.approx(1.3) and float(p[0].detach()) == pytest.approx(1.0)
    t = prob.batch(torch.Generator().manual_seed(0))
    assert t.shape == (200, 1) and t.min() >= 0 and t.max() <= prob.t_max and t[0] == 0


def test_hnn_loss_decreases_under_training():
    prob = OscillatorProblem()
    model = prob.make_model(0)
    opt = torch.optim.Adam(model.parameters(), lr=8e-3)
    g = torch.Generator().manual_seed(0)
    l0 = prob.eval_loss(model)
    for _ in range(150):
        opt.zero_grad()
        prob.loss(model, prob.batch(g)).backward()
        opt.step()
    assert prob.eval_loss(model) < 0.5 * l0


def test_embedded_classification_tasks_load_offline():
    task = load_task("digits")
    assert task.x_train.shape[1] == 64 and task.n_classes == 10
    assert 0 <= task.metrics(task.make_model(0))["test_accuracy"] <= 1
