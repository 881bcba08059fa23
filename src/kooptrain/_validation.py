"""Input checks shared by every layer: the same argument gets the same check and the same
message everywhere (in the spirit of ``sklearn.utils.validation``).

Each ``check_*`` returns the value in its canonical form or raises ``ValueError`` /
``TypeError`` with a message that names the argument, the value and what is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

# The longest horizon a prediction accepts: beyond it int64 step arithmetic overflows.
MAX_HORIZON = 2**62


def check_int(value, name: str, low: int = 1) -> int:
    """An int ``>= low`` (bools refused: ``True`` is not a window length)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) \
            or value < low:
        raise ValueError(f"{name}={value!r} must be an int >= {low}.")
    return int(value)


def check_optional_int(value, name: str, low: int = 1) -> int | None:
    """``None`` or an int ``>= low``."""
    if value is None:
        return None
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) \
            or value < low:
        raise ValueError(f"{name}={value!r} must be an int >= {low} or None.")
    return int(value)


def check_fraction(value, name: str) -> float:
    """A real number in ``[0, 1)``."""
    if not _is_real(value) or not 0 <= value < 1:
        raise ValueError(f"{name}={value!r} must lie in [0, 1).")
    return float(value)


def check_positive(value, name: str, optional: bool = False) -> float | None:
    """A real number ``> 0`` (or ``None`` when ``optional``)."""
    if value is None and optional:
        return None
    if not _is_real(value) or not value > 0:
        tail = " or None" if optional else ""
        raise ValueError(f"{name}={value!r} must be a positive number{tail}.")
    return float(value)


def check_bool(value, name: str) -> bool:
    """A bool (``0``/``1`` and other truthy values refused: say what you mean)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}={value!r} must be True or False.")
    return bool(value)


def check_choice(value, name: str, choices: Sequence) -> object:
    """One of ``choices``; the message lists them."""
    if isinstance(value, (list, dict, set)) or value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {tuple(choices)}.")
    return value


def check_floating_dtype(value, name: str) -> torch.dtype | None:
    """``None`` or a floating torch dtype."""
    if value is not None and not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise ValueError(f"{name}={value!r} must be a floating torch.dtype or None.")
    return value


def check_horizon_list(value, name: str, every: int) -> list[int]:
    """A non-empty sequence of positive int horizons, multiples of ``every``; sorted and
    without repeats."""
    hs = list(value) if isinstance(value, Sequence) else None  # a str fails the int check
    if not hs or any(not isinstance(h, (int, np.integer)) or isinstance(h, (bool, np.bool_))
                     or h < 1 or h % every for h in hs):
        raise ValueError(f"{name}={value!r} must be a non-empty sequence of positive ints, "
                         f"multiples of every={every}.")
    return sorted({int(h) for h in hs})


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) \
        and not isinstance(value, (bool, np.bool_))


# ------------------------------------------------------------------- arrays
def check_array(X, name: str = "X") -> torch.Tensor:
    """A real numeric torch tensor or NumPy array -> float64 tensor on its device."""
    if isinstance(X, np.ndarray):
        if X.dtype.kind in "USOV":
            raise TypeError(
                f"{name} has dtype {X.dtype}; pass numbers (a float array of snapshots)."
            )
        if X.dtype.kind == "c":
            raise TypeError(
                f"{name} is complex; Koopman fitting here takes real snapshots. "
                "Split real and imaginary parts into separate observables."
            )
        X = torch.from_numpy(np.ascontiguousarray(X))
    elif not isinstance(X, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray of shape (..., d, m), "
            f"got {type(X).__name__}. Convert lists with torch.as_tensor(...)."
        )
    if X.is_complex():
        raise TypeError(
            f"{name} is complex ({X.dtype}); pass real snapshots, with real and "
            "imaginary parts as separate observables."
        )
    if X.dtype == torch.bool:
        raise TypeError(f"{name} is boolean; pass float snapshots.")
    if X.device.type == "mps":
        raise TypeError(
            f"{name} is on an MPS device, which has no float64; the engine solves in float64 "
            "(see the README's 'API decisions'). Move the snapshots with .cpu() first."
        )
    return X.detach().to(torch.float64)


def check_finite(X: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` counting the NaN/Inf entries of ``X``, if any."""
    # NaN/Inf always propagate into the sum (a one-pass check, ~10x cheaper than
    # isfinite); only a failed sum pays for the exact count.
    if bool(torch.isfinite(X.sum())):  # the one host sync validation needs
        return
    bad = ~torch.isfinite(X)
    if bool(bad.any()):
        n = int(bad.sum())
        raise ValueError(
            f"{name} contains {n} NaN/Inf value(s). Koopman fits need finite data: "
            "drop the diverged snapshots or blocks, or record fewer steps after a NaN loss."
        )


def check_snapshots(X) -> torch.Tensor:
    """Snapshots ``(..., d, m)``, ``m >= 2``, finite -> float64 tensor."""
    X = check_array(X)
    if X.ndim < 2:
        raise ValueError(
            f"X must have shape (..., d, m) with time on the last axis; got {X.ndim}-D shape "
            f"{tuple(X.shape)}. For a single scalar series use X.reshape(1, -1)."
        )
    d, m = X.shape[-2], X.shape[-1]
    if m < 2:
        raise ValueError(
            f"X has {m} snapshot(s) on its last axis; a Koopman fit needs at least 2 "
            "(time is the last axis: shape (..., d, m))."
        )
    if d < 1 or X.numel() == 0:
        raise ValueError(f"X has an empty axis: shape {tuple(X.shape)}.")
    check_finite(X, "X")
    return X


def check_horizons(T) -> tuple[torch.Tensor | None, bool]:
    """Horizons for ``predict``: ``(int64 1-D CPU tensor, or None for the fixed point;
    whether T was a scalar)``."""
    bad_type = f"T must be an int, a sequence of ints or math.inf, got {T!r}."
    if isinstance(T, (str, bytes)):
        raise TypeError(bad_type)
    if isinstance(T, bool):
        raise TypeError("T must be an integer horizon, got a bool.")
    if isinstance(T, (float, np.floating)) and math.isinf(T) and T > 0:
        return None, True
    if isinstance(T, torch.Tensor):
        T = T.detach().cpu()  # horizons may live on any device; they are host-side ints
        arr, scalar = T.reshape(-1).tolist(), T.ndim == 0
    elif isinstance(T, (int, np.integer, float, np.floating)):
        arr, scalar = [T], True
    elif isinstance(T, (Sequence, np.ndarray)):
        arr, scalar = np.asarray(T, dtype=object).reshape(-1).tolist(), False
    else:
        raise TypeError(bad_type)
    if not arr:
        raise ValueError("T is an empty sequence; give at least one horizon.")
    for t in arr:
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)):
            raise TypeError(f"horizons must be whole numbers of steps, got {t!r}.")
        if not math.isfinite(t) or not float(t).is_integer():
            raise TypeError(f"horizons must be whole numbers of steps, got {t}; "
                            "use math.inf alone for the fixed point.")
        if t < 0:
            raise ValueError(f"horizon T={t} is negative; predictions run forward (T >= 0).")
        if t > MAX_HORIZON:
            raise ValueError(f"horizon T={t} exceeds 2**62 steps; use math.inf for the "
                             "fixed point.")
    return torch.tensor([int(t) for t in arr], dtype=torch.int64, device="cpu"), scalar


# ------------------------------------------------------------- checkpoints
def check_signature(kind: str, mine: dict, state) -> None:
    """Refuse a ``state_dict`` saved with other settings (``state["signature"]``), naming
    each setting that differs."""
    if not isinstance(state, dict) or "signature" not in state:
        raise ValueError(f"not a {kind} state_dict (no 'signature' entry).")
    theirs = state["signature"]
    diff = sorted(k for k in mine if mine[k] != theirs.get(k))
    if diff:
        raise ValueError(f"this {kind} state was saved with different {diff}: saved "
                         f"{[theirs.get(k) for k in diff]}, here {[mine[k] for k in diff]}. "
                         "Resume with the same model and settings, or start afresh.")
