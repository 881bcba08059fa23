"""The optimizers of every experiment, built from a name and hyper-parameters."""

from __future__ import annotations

import torch

OPTIMIZERS = ("adam", "adadelta", "adagrad", "sgd")


def _schedulefree(params, **hyper):
    import schedulefree

    return schedulefree.AdamWScheduleFree(params, **hyper)


# name -> (constructor, settings that hold unless overridden)
_CONSTRUCTORS = {
    "adam": (torch.optim.Adam, {}),
    "adadelta": (torch.optim.Adadelta, {}),
    "adagrad": (torch.optim.Adagrad, {}),
    "sgd": (torch.optim.SGD, {"momentum": 0.9}),
    "schedulefree": (_schedulefree, {"warmup_steps": 50}),
}


def make_optimizer(name: str, params, **hyper) -> torch.optim.Optimizer:
    """``name`` over ``params`` with ``hyper`` (e.g. ``lr``) on top of its base settings
    (SGD: momentum 0.9; Schedule-Free AdamW: 50 warm-up steps)."""
    if name not in _CONSTRUCTORS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {tuple(_CONSTRUCTORS)}.")
    make, base = _CONSTRUCTORS[name]
    return make(list(params), **(base | hyper))
