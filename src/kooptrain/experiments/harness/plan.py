"""A run plan: the keys of the runs an experiment needs, which of them are already finished
on disk (resume), and a progress bar."""

from __future__ import annotations

from .jsonio import roundtrip
from .store import RunStore


class RunPlan:
    """``keys``: one tuple per run, in order. With ``store_dir``, each finished run is kept
    under ``store_dir/.kooptrain-partial`` (see ``RunStore``) and reused on the next call
    with the same ``fingerprint``.

    ``done[key]`` holds the results so far; ``todo`` the keys still to run; ``finish(key,
    result)`` records one; ``get(key, compute)`` returns a stored result or computes it.
    """

    def __init__(self, keys, store_dir=None, fingerprint: dict | None = None):
        self.keys = list(keys)
        self.store = RunStore(store_dir, fingerprint or {}) if store_dir else None
        self.done: dict = {}
        if self.store is not None:
            for key in self.keys:
                r = self.store.load(key)
                if r is not None:
                    self.done[key] = r
        self.resumed = len(self.done)

    @property
    def todo(self) -> list:
        return [k for k in self.keys if k not in self.done]

    def finish(self, key, result: dict) -> dict:
        result = roundtrip(result)  # the same types whether fresh or resumed
        if self.store is not None:
            self.store.save(key, result)
        self.done[key] = result
        return result

    def get(self, key, compute) -> dict:
        """The finished result of ``key`` (from memory or the store), else ``compute()``'s,
        recorded; keys need not be known in advance."""
        if key not in self.done and self.store is not None:
            r = self.store.load(key)
            if r is not None:
                self.done[key] = r
        if key in self.done:
            return self.done[key]
        return self.finish(key, compute())


def progress_bar(enabled: bool, **tqdm_options):
    """A ``tqdm`` bar (``total``, ``initial``, ``desc``, ``unit``, ...), or ``None``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(**tqdm_options)
