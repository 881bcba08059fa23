"""Record a window of training and turn it into a Koopman jump.

``SnapshotRecorder`` captures the parameters after each ``optimizer.step()``
into preallocated buffers on the parameters' device -- a ring buffer of the
last ``window`` snapshots per block group ("window" storage), or only the running
sums ``X0 X0^T``, ``X1 X0^T`` ("streaming"). ``fit()`` fits every group in one
batched call and returns a ``Forecast``, whose ``predict(T)`` gives ``{name: tensor}``
with the model's own shapes and dtypes, for ``model.load_state_dict(pred, strict=False)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn

from ._settings import Settings, check_state, deprecated, settings_properties
from ._validation import check_floating_dtype, check_horizons, check_int, check_signature
from .koopman import KoopmanOperator
from .partition import GRANULARITIES, BlockGroup, Partition
from .statistics import SnapshotStatistics

__all__ = ["SNAPSHOTS", "Forecast", "RecorderSettings", "SnapshotRecorder", "predict_blocks",
           "warp"]

STATE_KIND, STATE_VERSION = "kooptrain.SnapshotRecorder", 2

_STORAGE = ("window", "streaming", "auto")
SNAPSHOTS = ("last", "mean")
_COMPILED_PREFIX = "_orig_mod."


class _Window:
    """Ring buffer ``(capacity, B, d)`` of one group's snapshots (``capacity``: the
    recorder's ``window``) on ``device``.

    ``exact_dtype``: the buffer is narrower than the parameters (e.g. bfloat16 for
    float32 weights), so it holds each snapshot's increment from the one before, and
    ``last``, the newest snapshot, is kept exactly in ``exact_dtype`` on ``source`` (the
    parameters' device). Each increment is then rounded relative to itself, and the
    newest snapshot, from which a jump starts, is not rounded at all."""

    kind = "window"

    def __init__(self, group: BlockGroup, capacity: int, dtype, device, *,
                 exact_dtype=None, source=None):
        pin = torch.device(device).type == "cpu" and source is not None \
            and torch.device(source).type == "cuda"
        self.buf = torch.empty((capacity, group.n_blocks, group.size), dtype=dtype,
                               device=device, pin_memory=pin)
        self.async_ = pin  # device-to-host copies into pinned memory need no wait
        self.last = None if exact_dtype is None else torch.empty(
            (group.n_blocks, group.size), dtype=exact_dtype, device=source)
        self.capacity, self.count, self.ptr = capacity, 0, 0

    def clear(self) -> None:
        self.count = self.ptr = 0

    def add(self, x: torch.Tensor) -> None:
        if self.last is not None:
            step = x.to(self.last.dtype) - self.last if self.count else \
                torch.zeros_like(self.last)
            self.last.copy_(x)
            x = step
        self.next_slot().copy_(x, non_blocking=self.async_)

    def next_slot(self) -> torch.Tensor:
        """The ring's next row ``(B, d)``, counted as written."""
        slot = self.buf[self.ptr]
        self.ptr = (self.ptr + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)
        return slot

    def snapshots(self) -> torch.Tensor:
        """``(B, d, m)`` in chronological order: the buffer's dtype, or float64 rebuilt
        backwards from ``last`` when it holds increments."""
        if self.count < self.capacity:
            X = self.buf[: self.count]
        else:
            X = torch.roll(self.buf, -self.ptr, dims=0)
        if self.last is None:
            return X.permute(1, 2, 0)
        steps = X[1:].to(torch.float64).permute(1, 2, 0)  # steps[..., i]: snapshot i to i + 1
        return _rebuild(self.last.to(X.device, torch.float64), steps)

    def add_from(self, flat: torch.Tensor, index: torch.Tensor) -> None:
        """``add(flat[index])``, gathered straight into the ring's next slot where it can
        be (same device and dtype, no increments): no temporary as large as the group."""
        if self.last is not None or self.buf.device != flat.device \
                or self.buf.dtype != flat.dtype:
            self.add(flat[index])
            return
        torch.index_select(flat, 0, index.reshape(-1), out=self.next_slot().view(-1))

    def float64_snapshots(self) -> torch.Tensor:
        """``snapshots()`` in float64, always a fresh array (a fit may factor it in place),
        built slot by slot into one allocation: no copy of the ring beside it."""
        m, (B, d) = self.count, self.buf.shape[1:]
        slot = [(self.ptr - m + j) % self.capacity for j in range(m)]  # oldest first
        if self.last is None:  # laid out as the ring is, like snapshots().to(float64)
            out = self.buf.new_empty((m, B, d), dtype=torch.float64).permute(1, 2, 0)
            for j, s in enumerate(slot):
                out[..., j] = self.buf[s]
            return out
        # as _rebuild, number for number and in its layout: the last snapshot exactly,
        # then back by the summed increments
        last = self.last.to(self.buf.device, torch.float64)
        out = last.new_empty((B, d, m))
        out[..., m - 1] = last
        behind = torch.zeros_like(last)
        for j in range(m - 2, -1, -1):
            behind += self.buf[slot[j + 1]]
            torch.sub(last, behind, out=out[..., j])
        return out

    def nbytes(self) -> int:
        extra = 0 if self.last is None else self.last.numel() * self.last.element_size()
        return self.buf.numel() * self.buf.element_size() + extra


class _Streaming:
    """Float64 running sums of one group (``SnapshotStatistics``, shifted by the
    group's first snapshot so that small motions around large weights keep
    their precision)."""

    kind = "streaming"

    def __init__(self, group: BlockGroup, device):
        self.shape, self.device = (group.n_blocks, group.size), device
        self.stats: SnapshotStatistics | None = None

    @property
    def count(self) -> int:
        return 0 if self.stats is None else self.stats.count + 1

    def add(self, x: torch.Tensor) -> None:
        if self.stats is None:
            self.stats = SnapshotStatistics.from_snapshots(x.unsqueeze(-1))
        else:
            self.stats.update(x)

    def statistics(self) -> SnapshotStatistics:
        return self.stats

    def nbytes(self) -> int:
        B, d = self.shape
        return 8 * (2 * B * d * d + 4 * B * d)  # xx, yx; x_sum, y_sum, last, origin


@dataclasses.dataclass(frozen=True)
class RecorderSettings(Settings):
    """The validated, frozen settings of a ``SnapshotRecorder`` (see its parameters)."""

    ADDED: ClassVar[dict] = {"snapshot": "last"}  # after 0.2.0's state version 2

    granularity: str = "node"
    chunk: int | None = None
    window: int = 64
    every: int = 1
    storage: str | dict = "window"
    dtype: torch.dtype | None = None
    snapshot: str = "last"

    def __post_init__(self):
        if self.snapshot not in SNAPSHOTS:
            raise ValueError(f"snapshot={self.snapshot!r} is not one of {SNAPSHOTS}: 'last' "
                             "stores the weights at the recorded step, 'mean' their mean "
                             "over the `every` steps a snapshot stands for.")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r} is not one of "
                             f"{GRANULARITIES}.")
        object.__setattr__(self, "window", check_int(self.window, "window", 2))
        object.__setattr__(self, "every", check_int(self.every, "every", 1))
        choices = self.storage.values() if isinstance(self.storage, dict) else [self.storage]
        if not all(isinstance(c, str) and c in _STORAGE for c in choices):
            raise ValueError(f"storage={self.storage!r} is not one of {_STORAGE} or a dict "
                             "{block_size: 'window' | 'streaming'}.")
        check_floating_dtype(self.dtype, "dtype")


class SnapshotRecorder:
    """Record parameters during training; fit operators that say where they go next.

    Parameters
    ----------
    model : nn.Module
    granularity, chunk : see ``Partition``. Default ``"node"``, the paper's.
    window : int >= 2
        Window length ``m`` (snapshots kept). Window storage keeps the last
        ``window`` snapshots (a sliding window). Streaming groups cannot forget,
        so a recorder holding any raises once more than ``window`` snapshots
        arrive without a ``reset()``. Default 64: the engine on its own fits long windows
        (the paper's 10,000 steps); the accelerator and the monitor keep short ones, to
        fit often.
    every : int >= 1
        Optimizer steps between snapshots (``k`` in the paper's subsampling): ``record()``
        is called after every optimizer step and stores the 1st, the ``(1 + every)``-th,
        ... call, as the accelerator and the monitor do; the fitted operator then advances
        ``every`` steps. Default 1, the paper's: every step is a snapshot.
    storage : {"window", "streaming", "auto"} or dict
        ``"auto"`` streams a group when its sums are smaller than its window
        (``2 d^2 < d m``, i.e. ``d < m/2``); wide groups (layers, the network)
        stay windows. A dict ``{d: "window" | "streaming"}`` overrides the
        choice for the groups of block size ``d`` ("auto" for the rest).
        ``storage_`` reports the choice per group.
    dtype : torch.dtype, optional
        Window buffer dtype; default the parameters' dtype. Fits run in float64. A dtype
        narrower than the parameters' (``torch.bfloat16`` or ``torch.float16`` for float32
        weights) stores each snapshot's increment from the one before, and the newest
        snapshot exactly, at the parameters' precision (one more copy of the model, on
        its device): each increment is rounded relative to itself (``2^-9`` in bfloat16),
        not to the weights, whose small steps bfloat16 could not hold, and a jump starts
        from the unrounded weights. About half the window's memory, for that error; fits
        that amplify small changes (node blocks wider than the window) feel it most.
    device : torch.device or str, optional
        Where the window buffers live; default the parameters' device. ``"cpu"`` for a
        model on a GPU keeps the window in pinned host memory, filled by asynchronous
        copies that the recorder waits for before it reads the window (``fit``,
        ``snapshots``, ``state_dict``); the fit then runs on the CPU, and predictions
        come back on the model's device. Streaming sums and the working copies stay on
        the parameters' device.
    snapshot : {"last", "mean"}
        What a snapshot holds. ``"last"`` (default): the weights at the recorded step.
        ``"mean"``: their mean over the ``every`` steps it stands for (steps
        ``1..every``, ``every+1..2 every``, ..., each stored at the block's last step), a
        denoised sequence: minibatch noise shrinks by about ``sqrt(every)``, while an
        affine iteration's block means follow the same operator ``K^every`` exactly, so a
        fit to them estimates the same dynamics. It reads the model at every step and
        holds two more flat copies of the parameters; a mean is centred
        ``(every - 1) / 2`` steps before the step that stores it.
    params : iterable of parameters, optional
        Record only these (e.g. ``optimizer``'s); default every trainable one.
    capacity : deprecated alias of ``window``.

    Attributes
    ----------
    settings : ``RecorderSettings``. ``window``, ``every``, ``storage``: its values.
    step_count : ``record()`` calls (optimizer steps) since construction; ``reset()`` does not
        clear it.
    n_snapshots : snapshots stored since the last ``reset()``.

    The ``record()`` that takes the next snapshot raises ``ModelChangedError`` once the
    model's parameters were added, removed, replaced, reshaped, cast or moved since the
    recorder was built (model surgery): snapshots of two layouts cannot form one window.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> rec = SnapshotRecorder(model, window=20)
    >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
    >>> for _ in range(20):
    ...     opt.zero_grad(); nn.functional.mse_loss(model(x), y).backward(); opt.step()
    ...     _ = rec.record()
    >>> forecast = rec.fit()                             # one fit ...
    >>> jumped = forecast.predict(steps=50)              # ... {'weight': (1, 3), 'bias': (1,)}
    >>> forecast.predict(steps=[10, 50])["weight"].shape  # ... many horizons, last axis
    torch.Size([1, 3, 2])
    >>> _ = model.load_state_dict(jumped, strict=False)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        granularity: str = "node",
        chunk: int | None = None,
        window: int = 64,
        every: int = 1,
        storage: str | dict = "window",
        dtype: torch.dtype | None = None,
        snapshot: str = "last",
        params=None,
        capacity: int | None = None,
        device: torch.device | str | None = None,
    ):
        if capacity is not None:
            deprecated("SnapshotRecorder(capacity=...)", "window=...")
            window = capacity
        self.settings = RecorderSettings(granularity=granularity, chunk=chunk, window=window,
                                         every=every, storage=storage, dtype=dtype,
                                         snapshot=snapshot)
        window, every = self.settings.window, self.settings.every
        self.partition = Partition(model, granularity=granularity, chunk=chunk, params=params)
        if self.partition.device.type == "meta":  # a Partition of it is fine (shapes only)
            raise ValueError(
                "the model's parameters are on the meta device, which holds shapes but no "
                "values, so there is nothing to record. Materialize them first, e.g. "
                "model.to_empty(device='cpu') and then load_state_dict(...), or build the "
                "model on a real device.")
        self.dtype = dtype or self.partition.dtype
        self.device = self.partition.device if device is None else _storage_device(device)
        # narrower than the weights: windows hold increments and the newest snapshot exactly
        self._narrow = torch.finfo(self.dtype).eps > torch.finfo(self.partition.dtype).eps
        groups = self.partition.groups
        # network granularity in window storage: the group's index is 0..p-1 in order, so a
        # snapshot is the flat vector itself and needs no gather (measured in overhead.py)
        self._identity = (not self._narrow and len(groups) == 1
                          and self._choose(groups[0]) == "window" and groups[0].n_blocks == 1
                          and bool(torch.equal(
                              groups[0].index.reshape(-1).cpu(),
                              torch.arange(self.partition.n_params, device="cpu"))))
        self.step_count = 0
        self.reset()

    def __repr__(self) -> str:
        return f"SnapshotRecorder({self.settings.describe()})"

    @property
    def capacity(self) -> int:
        deprecated("SnapshotRecorder.capacity", "SnapshotRecorder.window")
        return self.window

    def _choose(self, group: BlockGroup) -> str:
        kind = self.storage.get(group.size, "auto") if isinstance(self.storage, dict) \
            else self.storage
        if kind != "auto":
            return kind
        return "streaming" if 2 * group.size < self.window else "window"

    def reset(self) -> None:
        """Forget every snapshot (e.g. after a jump). Window buffers are kept and reused."""
        dev = self.partition.device
        if getattr(self, "_stores", None) is None:
            work = self.partition.dtype if self._narrow else self.dtype  # working copies
            exact = work if self._narrow else None
            self._stores = [
                _Window(g, self.window, self.dtype, self.device, exact_dtype=exact,
                        source=dev) if self._choose(g) == "window"
                else _Streaming(g, dev)
                for g in self.partition.groups
            ]
            self._flat = torch.empty(0 if self._identity else self.partition.n_params,
                                     dtype=work, device=dev)
            n = self.partition.n_params if self.snapshot == "mean" else 0
            self._sum = torch.zeros(n, dtype=work, device=dev)  # the block's sum
            self._read = torch.empty(n, dtype=work, device=dev)
        for i, (g, st) in enumerate(zip(self.partition.groups, self._stores, strict=True)):
            if st.kind == "window":
                st.clear()
            else:
                self._stores[i] = _Streaming(g, dev)
        self._sum.zero_()
        self._calls = 0
        self.n_snapshots = 0

    @property
    def storage_(self) -> list[str]:
        """Storage chosen per group, aligned with ``partition.groups``."""
        return [s.kind for s in self._stores]

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the buffers (windows and running sums)."""
        return sum(s.nbytes() for s in self._stores) + sum(
            t.numel() * t.element_size() for t in (self._flat, self._sum, self._read))

    def record(self) -> bool:
        """Capture the current parameters (call after ``optimizer.step()``).

        Returns whether this call stored a snapshot (see ``every`` and ``snapshot``). Only
        a call that reads the model (with ``snapshot="last"``: one that stores a snapshot;
        with ``"mean"``: every call) checks it first (``ModelChangedError``).
        """
        if self.snapshot == "mean":
            return self._record_mean()
        if self._calls % self.every:  # between snapshots: a count, no read of the model
            self._calls += 1
            self.step_count += 1
            return False
        self.partition.verify()
        self._calls += 1
        self.step_count += 1
        self._check_room()
        with torch.no_grad():
            if self._identity:  # one window group in parameter order: copy straight in
                self.partition.flatten_into(self._next_slot(),
                                            non_blocking=self._stores[0].async_)
            else:
                self._store(self.partition.flatten_into(self._flat))
        return True

    def _record_mean(self) -> bool:
        """``snapshot="mean"``: add this step's weights to the block's sum; the block's
        last step stores the mean."""
        self.partition.verify()
        last = (self._calls + 1) % self.every == 0
        if last:
            self._check_room()
        self._calls += 1
        self.step_count += 1
        with torch.no_grad():
            self._sum.add_(self.partition.flatten_into(self._read))
            if not last:
                return False
            mean = self._sum.div_(self.every)
            if self._identity:
                self._next_slot().copy_(mean, non_blocking=self._stores[0].async_)
            else:
                self._store(mean)
            self._sum.zero_()
        return True

    def _check_room(self) -> None:
        streaming = any(s.kind == "streaming" for s in self._stores)
        if streaming and self.n_snapshots >= self.window:
            raise RuntimeError(
                f"the recorder already holds window={self.window} snapshots and has "
                "streaming groups, which cannot drop old snapshots. Call reset() to start a "
                "new window (e.g. after each jump), raise window, or use storage='window'."
            )

    def _next_slot(self) -> torch.Tensor:
        """The identity layout's next ring-buffer row, as a flat view (counted as stored)."""
        self.n_snapshots += 1
        return self._stores[0].next_slot().view(-1)

    def _store(self, flat: torch.Tensor) -> None:
        for g, store in zip(self.partition.groups, self._stores, strict=True):
            if store.kind == "window":
                store.add_from(flat, g.index)
            else:
                store.add(flat[g.index])
        self.n_snapshots += 1

    def _wait(self) -> None:
        """Let the asynchronous copies into host memory land before the window is read."""
        if any(getattr(s, "async_", False) for s in self._stores):
            torch.cuda.current_stream(self.partition.device).synchronize()

    # ------------------------------------------------------------ resume
    def _layout(self) -> dict:
        p = self.partition
        # torch.compile wraps the model: its parameters are named "_orig_mod.<name>"; a
        # checkpoint of the compiled model loads into the plain one and back
        return {"names": [n.replace(_COMPILED_PREFIX, "") for n in p.names],
                "shapes": [list(s) for s in p.shapes], "storage_": self.storage_,
                "dtype": str(self.dtype)}

    def state_dict(self) -> dict:
        """Everything needed to resume recording bit-identically: the settings and the
        model's layout that must match, the counters, and the buffers (window) or sums
        (streaming). Versioned (``version``); ``load_state_dict`` also reads version 1."""
        self._wait()
        stores = []
        for st in self._stores:
            if st.kind == "window":
                stores.append({"buf": st.buf.clone(), "count": st.count, "ptr": st.ptr,
                               **({} if st.last is None else {"last": st.last.clone()})})
            elif st.stats is None:
                stores.append({"stats": None})
            else:
                stores.append({"stats": {k: getattr(st.stats, k).clone() for k in
                                         ("xx", "yx", "x_sum", "y_sum", "last", "origin")},
                               "count": st.stats.count})
        return {"kind": STATE_KIND, "version": STATE_VERSION,
                "settings": self.settings.signature(), "layout": self._layout(),
                "calls": self._calls, "step_count": self.step_count,
                "n_snapshots": self.n_snapshots, "stores": stores,
                **({"block_sum": self._sum.clone()} if self.snapshot == "mean" else {})}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; raises ``ValueError`` if it comes from a recorder
        with another model, granularity, window, cadence, storage or dtype (nothing is
        loaded then)."""
        if isinstance(state, dict) and "signature" in state and "version" not in state:
            self._check_version_1(state)
        else:
            check_state(STATE_KIND, STATE_VERSION, self.settings, state, self._layout())
        stores = state.get("stores")
        if not isinstance(stores, list) or len(stores) != len(self._stores) or any(
                st.kind == "window" and (not isinstance(sv, dict) or not isinstance(
                    sv.get("buf"), torch.Tensor) or sv["buf"].shape != st.buf.shape)
                for st, sv in zip(self._stores, stores, strict=False)):
            raise ValueError("this SnapshotRecorder state has the right signature but "
                             "corrupt buffers (wrong count or shapes); nothing was loaded.")
        block = state.get("block_sum")
        if self.snapshot == "mean" and (not isinstance(block, torch.Tensor)
                                        or block.shape != self._sum.shape):
            raise ValueError("this SnapshotRecorder state (snapshot='mean') lacks the sum of "
                             "its unfinished block, or it has the wrong shape; nothing was "
                             "loaded.")
        self.reset()
        if self.snapshot == "mean":
            self._sum.copy_(block)
        for st, saved in zip(self._stores, state["stores"], strict=True):
            if st.kind == "window":
                st.buf.copy_(saved["buf"])
                st.count, st.ptr = int(saved["count"]), int(saved["ptr"])
                if st.last is not None:
                    _load_increments(st, saved)
            elif saved["stats"] is not None:
                t = {k: v.to(device=self.partition.device).clone()
                     for k, v in saved["stats"].items()}
                st.stats = SnapshotStatistics(**t, count=int(saved["count"]))
        self._calls, self.n_snapshots = int(state["calls"]), int(state["n_snapshots"])
        self.step_count = int(state.get("step_count", self._calls))  # version 1: calls

    def _check_version_1(self, state: dict) -> None:
        """A kooptrain 0.1 state: its signature held the layout and the resolved settings."""
        layout = self._layout()
        check_signature("SnapshotRecorder", {
            "granularity": self.partition.granularity, "chunk": self.partition.chunk,
            "names": layout["names"], "shapes": layout["shapes"], "window": self.window,
            "every": self.every, "storage_": self.storage_, "dtype": layout["dtype"]}, state)

    def snapshots(self, spacing=None) -> list[torch.Tensor]:
        """Stored windows, ``(B, d, m)`` per group (window groups only); with ``spacing``
        (the ``m - 1`` intervals' lengths in some clock), resampled to even steps of the
        last interval's length (``warp``)."""
        self._wait()
        return [(s.snapshots() if spacing is None else warp(s.snapshots(), spacing))
                if s.kind == "window" else None for s in self._stores]

    def fit(self, spacing=None, **engine_options) -> Forecast:
        """Fit one batched ``KoopmanOperator`` per group (``engine_options``: its
        parameters) and return the ``Forecast`` (also kept as ``forecast_``); nothing is
        refitted after this. ``spacing``: fit the ``warp``-ed windows instead (window
        storage only): a recorded step then lasts as long as the last interval."""
        if self.n_snapshots < 2:
            raise RuntimeError(
                f"only {self.n_snapshots} snapshot(s) recorded; call record() after at least "
                "2 optimizer steps before fitting."
            )
        self._wait()
        ops = []
        for store in self._stores:
            op = KoopmanOperator(**engine_options)
            if store.kind == "window":  # a fresh float64 window: the fit may use it in place
                X = store.float64_snapshots()
                op.fit(X if spacing is None else warp(X, spacing), copy=False)
                del X
            elif spacing is not None:
                raise ValueError("spacing needs window storage: streaming sums cannot be "
                                 "resampled.")
            else:
                op.fit_statistics(store.statistics())
            ops.append(op)
        self.forecast_ = Forecast(self.partition, ops, every=self.every)
        return self.forecast_

    # ------------------------------------------------------- deprecated (0.1)
    def predict(self, T, **engine_options) -> dict[str, torch.Tensor]:
        """Deprecated: ``fit(**engine_options).predict(snapshots=T)`` (it refits per call)."""
        deprecated("SnapshotRecorder.predict(T, **options)",
                   "rec.fit(**options).predict(steps=...) (one fit, many horizons)")
        return self.fit(**engine_options).predict(snapshots=T)

    def predict_from(self, operators: list[KoopmanOperator], T) -> dict[str, torch.Tensor]:
        """Deprecated: ``Forecast(rec.partition, operators, every=rec.every).predict(
        snapshots=T)``."""
        deprecated("SnapshotRecorder.predict_from(operators, T)",
                   "rec.fit(**options).predict(steps=...)")
        return Forecast(self.partition, operators, every=self.every).predict(snapshots=T)

    @property
    def operators_(self) -> list[KoopmanOperator]:
        deprecated("SnapshotRecorder.operators_", "rec.forecast_.operators")
        return self.forecast_.operators


settings_properties(SnapshotRecorder, RecorderSettings, skip=("dtype",))  # dtype: resolved


def _load_increments(store: _Window, saved: dict) -> None:
    """A narrow window's ``last``; a state saved before increments (no ``last``) held the
    snapshots themselves, which are turned into increments here."""
    if saved.get("last") is not None:
        store.last.copy_(saved["last"])
        return
    X = saved["buf"].to(store.buf.device, torch.float64)
    X = X if store.count < store.capacity else torch.roll(X, -store.ptr, dims=0)
    X = X[: store.count]
    if store.count:
        store.last.copy_(X[-1])
    steps = torch.cat([torch.zeros_like(X[:1]), X[1:] - X[:-1]])
    if store.count == store.capacity:
        steps = torch.roll(steps, store.ptr, dims=0)
    store.buf[: store.count].copy_(steps)


def _storage_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device; use e.g. 'cpu' or "
                         "'cuda:0'.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but CUDA is not available here; leave device "
                         "unset to keep the window with the parameters.")
    return dev


def warp(X: torch.Tensor, spacing) -> torch.Tensor:
    """A window ``X`` ``(B, d, m)`` whose ``m - 1`` intervals lasted ``spacing`` (e.g. the
    summed learning rate over each), as if every interval had lasted as long as the last
    one: each increment is scaled by ``spacing[-1] / spacing[i]`` and the path is rebuilt
    backwards from the last snapshot, which stays where it is. Evenly spaced windows come
    back unchanged (the same tensor); others in float64.

    >>> X = torch.tensor([[[0., 1., 5.]]])        # moved 1 in 1 unit, then 4 in 2 units
    >>> warp(X, (1.0, 2.0))                      # at 2 units per interval: 2, then 4
    tensor([[[-1.,  1.,  5.]]], dtype=torch.float64)
    """
    s = [float(v) for v in spacing]
    if len(s) != X.shape[-1] - 1 or not all(v > 0 and v < float("inf") for v in s):
        raise ValueError(f"spacing must hold {X.shape[-1] - 1} positive, finite interval "
                         f"lengths for a window of {X.shape[-1]} snapshots; got {spacing}.")
    if all(v == s[-1] for v in s):
        return X
    r = torch.tensor([s[-1] / v for v in s], dtype=torch.float64, device=X.device)
    X = X.to(torch.float64)
    steps = (X[..., 1:] - X[..., :-1]) * r
    return _rebuild(X[..., -1], steps)


def _rebuild(last: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The path ``(..., m)`` that ends at ``last`` ``(...)`` after the increments ``steps``
    ``(..., m - 1)``, rebuilt backwards (the last snapshot stays exactly where it is)."""
    behind = steps.flip(-1).cumsum(-1).flip(-1)  # what lies between snapshot i and the last
    return torch.cat([last.unsqueeze(-1) - behind, last.unsqueeze(-1)], dim=-1)


def predict_blocks(op: KoopmanOperator, T, max_residual: float | None = None) -> torch.Tensor:
    """``op.predict(T)``, ``(B, d)`` or ``(B, d, k)``; blocks whose held-out error exceeds
    ``max_residual`` stay at their last state."""
    b = op.predict(T)
    if max_residual is None:
        return b
    if op.residual_ is None:
        raise ValueError("max_residual needs operators fitted with holdout > 0 "
                         "(rec.fit(holdout=h)).")
    stay = (op.residual_ > max_residual).reshape(-1, *([1] * (b.ndim - 1)))
    last = op.predict(0)
    return torch.where(stay, last.reshape(last.shape + (1,) * (b.ndim - 2)), b)


class Forecast:
    """Fitted operators for every block group of a ``SnapshotRecorder``.

    ``operators`` : one fitted ``KoopmanOperator`` per group of ``partition.groups``.
    ``every`` : optimizer steps per recorded step (the recorder's cadence).
    ``predict(steps=...)`` never refits: fit once, try as many horizons as you like.
    """

    def __init__(self, partition: Partition, operators: list[KoopmanOperator], *,
                 every: int = 1):
        if len(operators) != len(partition.groups):
            raise ValueError(f"expected {len(partition.groups)} operators (one per group), "
                             f"got {len(operators)}.")
        self.partition, self.operators = partition, list(operators)
        self.every = check_int(every, "every", 1)

    def predict(self, T=None, *, steps=None, snapshots=None,
                max_residual: float | None = None) -> dict[str, torch.Tensor]:
        """The parameters ``steps`` optimizer steps (or ``snapshots`` recorded steps) after
        the last snapshot. Give exactly one of the two.

        steps : int, multiple of ``every`` -> ``{name: tensor of the parameter's shape}``;
            a sequence of ``k`` horizons -> ``{name: (*shape, k)}`` (horizons last, as in
            the engine); ``math.inf`` -> the fixed point.
        snapshots : the same, counted in recorded steps (``every * snapshots`` optimizer
            steps).
        T : positional, deprecated where it is ambiguous: with ``every == 1`` it is
            ``steps`` (the same thing); with ``every > 1`` it still counts recorded steps,
            as in kooptrain 0.1, and warns (it will mean ``steps`` in 0.3).
        max_residual : blocks whose held-out forecast error (``residual_``, fitted with
            ``holdout > 0``) exceeds it stay at their last recorded state.

        Only trainable parameters are predicted. Buffers -- BatchNorm's
        ``running_mean``/``running_var``/``num_batches_tracked`` among them -- are
        not: ``model.load_state_dict(pred, strict=False)`` reports them as
        ``missing_keys`` and leaves them as they are. Recompute BatchNorm
        statistics for the new weights with
        ``torch.optim.swa_utils.update_bn(loader, model)`` (``KoopmanAccelerator``
        does so when given ``bn_loader``).

        Raises ``FloatingPointError`` if a prediction overflows (in float64, or
        in a parameter's own dtype such as float16), ``ValueError`` for invalid
        horizons, ``NoFixedPointError`` for ``math.inf`` without a fixed point.
        """
        blocks = [predict_blocks(op, self._in_snapshots(T, steps, snapshots), max_residual)
                  for op in self.operators]
        if blocks[0].ndim == 3:
            blocks = [b.permute(2, 0, 1) for b in blocks]  # (k, B, d) for scatter
        out = self.partition.unflatten(self.partition.scatter(blocks))
        if blocks[0].ndim == 3:  # (k, *shape) -> (*shape, k): horizons last
            out = {name: t.movedim(0, -1) for name, t in out.items()}
        for name, t in out.items():  # finite in float64 can still overflow float16
            if not bool(torch.isfinite(t).all()):
                raise FloatingPointError(
                    f"the prediction for {name!r} overflows its dtype {t.dtype} (largest "
                    f"finite value {torch.finfo(t.dtype).max:.4g}). Use a shorter horizon, "
                    "stabilize='clip', or keep that parameter in float32.")
        return out

    def _in_snapshots(self, T, steps, snapshots):
        """The horizon(s) in recorded steps, from exactly one of the three spellings."""
        given = [v is not None for v in (T, steps, snapshots)]
        if sum(given) != 1:
            raise TypeError("give exactly one horizon: predict(steps=...) in optimizer "
                            "steps, or predict(snapshots=...) in recorded steps.")
        if T is not None:
            if self.every == 1:
                return T
            deprecated(f"Forecast.predict(T) with every={self.every} (T counts recorded "
                       "steps)", "predict(snapshots=T) or predict(steps=T * every)",
                       stacklevel=4)
            return T
        if snapshots is not None:
            return snapshots
        if self.every == 1:
            return steps
        hs, scalar = check_horizons(steps)
        if hs is None:
            return math.inf
        if bool((hs % self.every != 0).any()):
            raise ValueError(f"steps={steps!r} must be multiples of every={self.every}: the "
                             "operator advances a recorded step at a time. Round them, or "
                             "pass snapshots=... in recorded steps.")
        out = [int(h) // self.every for h in hs]
        return out[0] if scalar else out
