"""Shared pieces of the fault-matrix tests: a small regression problem, a training loop
with the accelerator, and bit-level state comparison (NaN-safe)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def problem(seed: int = 0, hidden: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    y = torch.sin(x[:, :1]) + 0.1 * x[:, 1:2]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    return model, x, y


def loss_fn(model, x, y):
    return nn.functional.mse_loss(model(x), y)


def sgd_step(model, opt, x, y):
    opt.zero_grad()
    loss_fn(model, x, y).backward()
    opt.step()


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits: equality here is bit identity, NaNs included."""
    t = t.detach().contiguous()
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.view(ints[t.element_size()]) if t.is_floating_point() else t


def identical(a, b) -> bool:
    """Bit-identical nested state (model or optimizer state dicts)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(bits(a), bits(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and \
            all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(identical(u, v) for u, v in zip(a, b, strict=True))
    return a == b


def snapshot(model, opt) -> tuple[dict, dict]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
