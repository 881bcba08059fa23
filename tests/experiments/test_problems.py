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


class ExactLinearOscillator(torch.nn.Module):
    """Raw outputs that make x, p the exact solution of the linear oscillator (lam = 0):
    x = x0 cos t + p0 sin t, p = p0 cos t - x0 sin t, undoing the (1 - e^-t) factor."""

    def __init__(self, x0, p0, err=0.0):
        super().__init__()
        self.x0, self.p0, self.err = x0, p0, err

    def forward(self, t):
        t = t.double()
        x = self.x0 * torch.cos(t) + self.p0 * torch.sin(t) + self.err * t**2
        p = self.p0 * torch.cos(t) - self.x0 * torch.sin(t)
        f = 1 - torch.exp(-t)
        return torch.cat([(x - self.x0) / f, (p - self.p0) / f], 1)


def test_hnn_residual_is_zero_on_an_exact_solution_and_catches_each_term():
    lin = OscillatorProblem(lam=0.0)
    t = torch.linspace(0.5, 12.0, 100, dtype=torch.float64).reshape(-1, 1)  # avoid 0/0 at t=0
    exact = ExactLinearOscillator(lin.x0, lin.p0)
    assert float(lin.loss(exact, t).detach()) < 1e-20
    # a wrong x (by t^2) leaves dx/dt - p = 2t and dp/dt + x = t^2
    wrong = ExactLinearOscillator(lin.x0, lin.p0, err=1e-3)
    expect = ((2e-3 * t) ** 2 + (1e-3 * t**2) ** 2).mean()
    assert float(lin.loss(wrong, t).detach()) == pytest.approx(float(expect), rel=1e-6)
    # the cubic term: the linear solution misses exactly lam * x^3 in dp/dt
    cubic = OscillatorProblem(lam=1.0)
    x = lin.x0 * torch.cos(t) + lin.p0 * torch.sin(t)
    assert float(cubic.loss(exact, t).detach()) == pytest.approx(float((x**6).mean()), rel=1e-9)


def test_hnn_reference_conserves_energy_and_parametrisation_holds_initial_condition():
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
    # the ODE metric is zero at the reference itself and grows with the error
    assert prob.metrics(model)["solution_rmse"] > 0.1


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
    assert len(task.x_test) > 0 and set(task.y_train.tolist()) == set(range(10))


def test_accuracy_metric_counts_correct_predictions():
    from kooptrain.problems.classifiers import ClassifierProblem

    x = torch.eye(4).repeat(3, 1)
    y = torch.arange(4).repeat(3)
    task = ClassifierProblem("toy", x, y, x, y)
    right = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        right.weight.copy_(torch.eye(4))
    assert task.metrics(right)["test_accuracy"] == 1.0
    with torch.no_grad():  # rotate the classes: every prediction wrong ...
        right.weight.copy_(torch.eye(4).roll(1, 0))
    assert task.metrics(right)["test_accuracy"] == 0.0
    with torch.no_grad():  # ... or half of them
        right.weight.copy_(torch.eye(4)[[0, 1, 0, 1]].T)
    assert task.metrics(right)["test_accuracy"] == 0.5
