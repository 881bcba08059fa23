"""Settings as data: one frozen dataclass per class that rides a training loop, from which
its checkpoint signature, its resume check, its cross-rank check and its ``repr`` are all
derived, so no hand-written list of settings can drift from another.

A ``state_dict`` is versioned: ``{"kind", "version", "settings", ...}``. ``check_state``
refuses a state of another kind or a newer version, and a state saved under other settings,
naming each differing field (the fields a class lists as ``RESUMABLE`` may change on resume;
that is warned about, never silent).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import ClassVar

import torch

__all__ = ["Settings", "check_state", "deprecated", "deprecated_aliases", "plain",
           "settings_properties"]


def plain(value):
    """``value`` as JSON-ready data that compares equal across save and load: tuples become
    lists, dtypes and devices strings, a callable ``"callable <qualname>"``."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if callable(value):
        return f"callable {getattr(value, '__qualname__', type(value).__name__)}"
    return value


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of the frozen settings classes. Subclasses validate in ``__post_init__`` (and
    store canonical values with ``object.__setattr__``); ``DERIVED`` maps a field whose
    default depends on others to the function that computes it, so ``changed()`` reports
    it only when it was set to something else."""

    RESUMABLE: ClassVar[frozenset[str]] = frozenset()
    DERIVED: ClassVar[dict] = {}
    ADDED: ClassVar[dict] = {}  # {field: the value a state saved before the field had}

    def signature(self) -> dict:
        """``{field: plain value}`` for every field, in declaration order."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def changed(self) -> dict:
        """The fields that differ from their defaults (the ``repr`` of the owner)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = self.DERIVED[f.name](self) if f.name in self.DERIVED else f.default
            if plain(value) != plain(default):
                out[f.name] = value
        return out

    def describe(self) -> str:
        """``name=value, ...`` of ``changed()``."""
        return ", ".join(f"{k}={v!r}" if not callable(v) else
                         f"{k}={getattr(v, '__qualname__', type(v).__name__)}"
                         for k, v in self.changed().items())


def check_state(kind: str, version: int, settings: Settings, state, layout: dict | None = None,
                required: tuple[str, ...] = ()) -> None:
    """Refuse ``state`` unless it is a ``kind`` state of this ``version`` saved under the same
    ``settings`` (and ``layout``: the model's parameter names and shapes). Every differing
    field is named; a differing ``RESUMABLE`` field is warned about instead. ``layout``
    entries override settings of the same name (a setting as resolved for this model);
    ``required``: the entries the state must hold besides."""
    name = kind.rsplit(".", 1)[-1]
    if not isinstance(state, dict) or state.get("kind") != kind:
        got = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not a {name} state_dict: its 'kind' is {got!r}, and it has no "
                         "version-1 'signature' either.")
    saved_version = state.get("version")
    if saved_version != version:
        raise ValueError(f"this {name} state has version {saved_version!r}; this kooptrain "
                         f"reads version {version} (and the previous one). Save it again "
                         "with a kooptrain that reads it, or start afresh.")
    missing = sorted(set(required) - set(state))
    if missing:
        raise ValueError(f"this {name} state lacks {missing}; nothing was loaded.")
    mine = {**settings.signature(), **(layout or {})}
    theirs = {**state.get("settings", {}), **state.get("layout", {})}
    # a setting added within this state version: a state saved before it had it at ADDED's
    added = {k: plain(v) for k, v in settings.ADDED.items()}
    diff = [k for k in mine if plain(mine[k]) != theirs.get(k, added.get(k, _MISSING))]
    diff += [k for k in theirs if k not in mine]
    refused = [k for k in diff if k not in settings.RESUMABLE]
    if refused:
        raise ValueError(
            f"this {name} state was saved with different settings; differing: "
            + "; ".join(f"{k} (saved {theirs.get(k, 'nothing')!r}, here "
                        f"{mine.get(k, 'nothing')!r})" for k in refused)
            + ". Resume with the same model and settings, or start afresh; nothing was "
              "loaded.")
    for k in diff:
        warnings.warn(f"{name}: {k} was {theirs.get(k)!r} when this state was saved and is "
                      f"{mine[k]!r} now; resuming with {mine[k]!r}.", UserWarning,
                      stacklevel=3)


_MISSING = object()


def deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (removed in kooptrain 0.3)."""
    warnings.warn(f"{old} is deprecated since kooptrain 0.2 and will be removed in 0.3; "
                  f"use {new}.", DeprecationWarning, stacklevel=stacklevel)


def settings_properties(cls, settings_cls, lists=(), skip=()) -> None:
    """Give ``cls`` a read-only attribute per field of ``settings_cls`` but ``skip``, read
    from ``self.settings`` (those in ``lists`` as lists, as kooptrain 0.1 had them)."""
    for f in dataclasses.fields(settings_cls):
        if f.name in skip:
            continue
        def get(self, name=f.name):
            value = getattr(self.settings, name)
            return list(value) if name in lists else value
        setattr(cls, f.name, property(get, doc=f"``settings.{f.name}`` (read-only: build a "
                                               "new object to change it)."))


def deprecated_aliases(cls, aliases: dict) -> None:
    """Give ``cls`` read-only attributes under old names, ``{old: (new, getter)}``, each
    warning that ``old`` is deprecated in favour of ``new``."""
    for old, (new, getter) in aliases.items():
        def get(self, old=old, new=new, getter=getter):
            deprecated(f"{cls.__name__}.{old}", new)
            return getter(self)
        setattr(cls, old, property(get, doc=f"Deprecated: use ``{new}``."))
