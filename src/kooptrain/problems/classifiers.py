"""Fully connected classifiers trained with mini-batches: MNIST, MNIST-1D, 8x8 digits.

The paper's second experiment: an MLP (in -> 20 -> 20 -> 20 -> 10, ReLU) trained
with stochastic Adadelta (lr 1.0, batch 64). ``digits`` (scikit-learn) and
``mnist1d`` (generated offline by the ``mnist1d`` package) are the embedded
defaults; real MNIST is read from IDX files the user provides. No Koopman
knowledge here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .idx import load_mnist

__all__ = ["ClassifierProblem", "ResCNN1d", "mlp", "load_task"]


def mlp(n_in: int, hidden=(20, 20, 20), n_out: int = 10) -> nn.Sequential:
    layers, prev = [], n_in
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, n_out))
    return nn.Sequential(*layers)


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(c, c, 3, padding=1, bias=False), nn.BatchNorm1d(c),
                                  nn.ReLU(), nn.Conv1d(c, c, 3, padding=1, bias=False),
                                  nn.BatchNorm1d(c))

    def forward(self, x):
        return nn.functional.relu(x + self.body(x))


class ResCNN1d(nn.Module):
    """A residual 1-D CNN with BatchNorm: ``(N, L)`` signals -> ``(N, n_out)`` logits.

    A strided stem (``L -> L / 2``, ``width // 2`` channels), a strided widening conv
    (``-> L / 4``, ``width`` channels), ``blocks`` residual blocks of two 3-tap convs, global
    average pooling and a linear head. ~116k parameters at the defaults."""

    def __init__(self, n_out: int = 10, width: int = 96, blocks: int = 2):
        super().__init__()
        half = width // 2
        self.stem = nn.Sequential(
            nn.Conv1d(1, half, 5, stride=2, padding=2, bias=False), nn.BatchNorm1d(half),
            nn.ReLU(), nn.Conv1d(half, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm1d(width), nn.ReLU())
        self.blocks = nn.Sequential(*(_ResBlock(width) for _ in range(blocks)))
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x.unsqueeze(1))).mean(-1))


class ClassifierProblem:
    """Task = MLP + cross-entropy + data.

    x_train ``(N, F)``, y_train ``(N,)`` int; likewise the test split. Batches are
    drawn by reshuffling every epoch (``batch_size`` 64 as in the paper).
    """

    def __init__(self, name, x_train, y_train, x_test, y_test, hidden=(20, 20, 20),
                 batch_size: int = 64, model: str = "mlp"):
        if model not in ("mlp", "rescnn"):
            raise ValueError(f"model={model!r}: use 'mlp' or 'rescnn'.")
        self.model = model
        self.name = name
        self.x_train = torch.as_tensor(x_train, dtype=torch.float32)
        self.y_train = torch.as_tensor(y_train, dtype=torch.int64)
        self.x_test = torch.as_tensor(x_test, dtype=torch.float32)
        self.y_test = torch.as_tensor(y_test, dtype=torch.int64)
        self.hidden, self.batch_size = tuple(hidden), batch_size
        self.n_classes = int(max(self.y_train.max(), self.y_test.max())) + 1
        self._perm, self._pos = None, 0

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.y_train) // self.batch_size)

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        self._perm, self._pos = None, 0
        if self.model == "rescnn":
            return ResCNN1d(self.n_classes)
        return mlp(self.x_train.shape[1], self.hidden, self.n_classes)

    def batch(self, generator: torch.Generator):
        n = len(self.y_train)
        if self._perm is None or self._pos >= n:
            self._perm, self._pos = torch.randperm(n, generator=generator), 0
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return self.x_train[idx], self.y_train[idx]

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    @torch.no_grad()
    def eval_loss(self, model: nn.Module) -> float:
        """Cross-entropy on the whole training set (the fixed evaluation set)."""
        return float(nn.functional.cross_entropy(model(self.x_train), self.y_train))

    @torch.no_grad()
    def metrics(self, model: nn.Module) -> dict[str, float]:
        pred = model(self.x_test).argmax(1)
        return {"test_accuracy": float((pred == self.y_test).float().mean())}


def _standardize(x_train, x_test):
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    return (x_train - mu) / sd, (x_test - mu) / sd


def load_task(name: str, mnist_dir: str | None = None) -> ClassifierProblem:
    """``"digits"``, ``"mnist1d"`` (offline, embedded) or ``"mnist"`` (IDX files)."""
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.25, random_state=0,
                                              stratify=y)
        return ClassifierProblem("digits", xtr, ytr, xte, yte)
    if name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        data = make_dataset(get_dataset_args())  # generated offline, seed 42
        xtr, xte = _standardize(np.asarray(data["x"]), np.asarray(data["x_test"]))
        return ClassifierProblem("mnist1d", xtr, data["y"], xte, data["y_test"])
    if name == "mnist":
        (xtr, ytr), (xte, yte) = load_mnist(mnist_dir)
        xtr = xtr.reshape(len(xtr), -1) / 255.0
        xte = xte.reshape(len(xte), -1) / 255.0
        return ClassifierProblem("mnist", xtr, ytr, xte, yte)
    raise ValueError(f"unknown classification task {name!r}; use digits, mnist1d or mnist.")
