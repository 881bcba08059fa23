"""Results as JSON: safe values (no inf/NaN), rounding for compact files, atomic writes,
and loading with errors that say what is wrong with the file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def json_safe(x):
    """JSON has no inf/NaN: non-finite numbers become null (rows carry ``diverged``)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def round_floats(x, digits: int):
    """Every float in a nested structure to ``digits`` significant digits."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}")
    if isinstance(x, dict):
        return {k: round_floats(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [round_floats(v, digits) for v in x]
    return x


def roundtrip(x):
    """``x`` as it reads back from JSON (tuples become lists, keys strings): a result has
    the same types whether it was just computed or resumed from disk."""
    return json.loads(json.dumps(x))


def write_atomic(path: str | Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: a reader never sees half a
    file, and an interrupted write leaves the old one intact."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, obj, **dumps_options) -> None:
    """``obj`` as strict JSON (``allow_nan=False``), written atomically."""
    options = {"separators": (",", ":")} | dumps_options
    write_atomic(path, json.dumps(obj, allow_nan=False, **options))


def load_results(path: str | Path) -> dict:
    """A results JSON written by ``reproduce`` or ``race``; ``ValueError`` naming the file if
    it is missing, unreadable, not JSON, or not a kooptrain results file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}.") from e
    try:
        res = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); give the results.json that "
                         f"'kooptrain reproduce' or 'kooptrain race' wrote.") from e
    if not isinstance(res, dict):
        raise ValueError(f"{path} is not a kooptrain results file (top level is not an "
                         f"object).")
    for key in ("schema_version", "provenance", "settings", "results", "summary"):
        if key not in res:
            raise ValueError(f"{path} is not a kooptrain results file (missing {key!r}).")
    return res
