"""Finished runs of a long experiment, kept on disk so that an interruption loses at most
the run in progress.

Each finished run (one network trained with one optimizer and seed) is one JSON file,
written to a temporary name and renamed into place, so a file that exists is complete.
Every file carries the *fingerprint* of the settings that produced it; a store refuses
files made with other settings instead of mixing them into a result.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .jsonio import roundtrip, write_atomic

PARTIAL = ".kooptrain-partial"


class RunStore:
    """Finished runs under ``folder / ".kooptrain-partial"``.

    ``fingerprint``: a JSON-ready dict of every setting a single run depends on. Keys are
    tuples of strings and ints, e.g. ``("adam", 3, "report")``.
    """

    def __init__(self, folder: str | Path, fingerprint: dict):
        self.path = Path(folder) / PARTIAL
        self.fingerprint = roundtrip(fingerprint)  # normalise tuples -> lists

    def _file(self, key: tuple) -> Path:
        return self.path / ("-".join(str(k) for k in key).replace(os.sep, "_") + ".json")

    def files(self) -> list[Path]:
        return sorted(self.path.glob("*.json")) if self.path.is_dir() else []

    def load(self, key: tuple) -> dict | None:
        """The stored result for ``key``, or None if that run has not finished."""
        f = self._file(key)
        if not f.is_file():
            return None
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{f} is unreadable ({e}); delete it to rerun that run.") from e
        if d.get("fingerprint") != self.fingerprint:
            diff = sorted(k for k in set(self.fingerprint) | set(d.get("fingerprint") or {})
                          if (d.get("fingerprint") or {}).get(k) != self.fingerprint.get(k))
            raise ValueError(f"{f} was made with other settings (differing: "
                             f"{', '.join(diff)}); resume with the original settings, or "
                             f"remove {self.path} to start over.")
        return d["result"]

    def save(self, key: tuple, result: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self._file(key), json.dumps({"fingerprint": self.fingerprint,
                                                  "key": list(key), "result": result}))
        # (inf/NaN round-trip exactly in Python's JSON)

    def clear(self) -> None:
        """Remove the stored runs (after the final results are safely written)."""
        shutil.rmtree(self.path, ignore_errors=True)
