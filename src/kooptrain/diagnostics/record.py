"""The monitor's record: one JSON document per run (no weights), written by
``KoopmanMonitor`` and read by ``compare``, ``plot_spectra`` and ``kooptrain compare``.

    {"kind": RECORD_KIND, "schema_version": SCHEMA_VERSION, "settings": {...},
     "layers": [names], "layer_types": [classes], "entries": [one per fit],
     "warning": ..., "converged_at": ...}

This module holds the kind, the version, loading and saving, and the builders of an entry's
parts; the modules that write or read records import it, and it imports none of them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["RECORD_KIND", "SCHEMA_VERSION", "layer_entry", "load_record", "new_record",
           "number", "save_record"]

RECORD_KIND = "kooptrain.monitor"
SCHEMA_VERSION = 1


def new_record(settings: dict, layers: list[str], types: list[str] | None = None) -> dict:
    """An empty record for a monitor with ``settings`` watching ``layers`` (module names),
    of module classes ``types`` (``"Linear"``, ...; records before 0.3 have none)."""
    return {"kind": RECORD_KIND, "schema_version": SCHEMA_VERSION, "settings": settings,
            "layers": list(layers), "layer_types": list(types or []), "entries": [],
            "warning": None, "converged_at": None}


def number(v) -> float | None:
    """A float for JSON, ``None`` for a non-finite one (JSON has no inf: None means
    unbounded)."""
    v = float(v)
    return v if math.isfinite(v) else None


def layer_entry(s, b: int, every: int) -> dict:
    """Block ``b`` of a ``BlockSpectra`` ``s`` (snapshots ``every`` optimizer steps apart) as
    a record's layer entry: eigenvalues as ``[re, im]`` pairs, their shares, the spectral
    radius, the unstable modes with their growth rate per optimizer step, and the summary
    numbers."""
    lam, sh = s.eigenvalues[b], s.shares[b]
    keep = lam.abs() > 1e-9  # the directions the fit truncated come back as ~1e-16
    unstable = [{"eigenvalue": [float(v.real), float(v.imag)],
                 "growth_rate": math.log(abs(v)) / every, "share": float(w)}
                for v, w in zip(lam[keep], sh[keep], strict=True) if abs(v) > 1]
    return {"eigenvalues": [[float(v.real), float(v.imag)] for v in lam[keep]],
            "shares": sh[keep].tolist(), "spectral_radius": float(s.radius[b]),
            "unstable": unstable, "gap_to_one": float(s.gap[b]),
            "unit_share": float(s.unit_share[b]), "amplification": number(s.amplification[b]),
            "remaining": number(s.remaining[b]), "motion": float(s.motion[b]),
            "at_rest": bool(s.at_rest[b])}


def save_record(record: dict, path) -> Path:
    """Write ``record`` as strict JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, allow_nan=False))
    return path


def load_record(record) -> dict:
    """A monitor record from a dict, a ``KoopmanMonitor`` (its ``.record``) or a JSON file's
    path; anything else raises ``ValueError`` saying what was expected."""
    if hasattr(record, "record") and isinstance(record.record, dict):
        record = record.record
    if isinstance(record, (str, Path)):
        path = Path(record)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no monitor record at {path}.") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not JSON ({e}); pass a file written by "
                             "KoopmanMonitor.save().") from None
    if not isinstance(record, dict) or record.get("kind") != RECORD_KIND:
        raise ValueError("not a KoopmanMonitor record (expected a dict with kind "
                         f"{RECORD_KIND!r}, as KoopmanMonitor.record or .save() writes).")
    return record
