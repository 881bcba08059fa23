"""Model parameters <-> Koopman blocks, at every granularity.

A ``Partition`` flattens a model's trainable parameters into one vector of
length ``p`` (in ``named_parameters()`` order) and assigns every scalar to
exactly one block. Blocks of equal size ``d`` form a ``BlockGroup`` whose
``index`` is a ``(B, d)`` int64 tensor into that vector, so a whole group is
gathered or scattered with one indexing op and fitted in one batched call.

Knows modules, not optimizers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from ._validation import check_choice
from .errors import ModelChangedError

__all__ = ["Partition", "BlockGroup", "GRANULARITIES"]

GRANULARITIES = ("weight", "quasi-node", "node", "layer", "network")


_SURGERY_HINT = (". Snapshots of the old layout cannot continue into the new one: build a "
                 "new SnapshotRecorder / KoopmanAccelerator (or Partition) for the changed "
                 "model.")


@dataclass(frozen=True)
class BlockGroup:
    """All blocks of one size.

    size : ``d``, observables per block.
    index : ``(B, d)`` int64 positions in the flat parameter vector.
    layers : ``B`` module names, the layer each block belongs to.
    """

    size: int
    index: torch.Tensor
    layers: tuple[str, ...]

    @property
    def n_blocks(self) -> int:
        return self.index.shape[0]


def local_shard(p: torch.Tensor) -> torch.Tensor:
    """What this rank holds of ``p``: the local shard of a DTensor (FSDP2), else ``p``. It
    shares the parameter's storage, so writing into it writes the parameter."""
    return p.to_local() if _DTensor is not None and isinstance(p, _DTensor) else p


try:
    from torch.distributed.fsdp import FSDPModule as _FSDPModule
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # pragma: no cover - a torch built without distributed
    _DTensor = _FSDPModule = None


class Partition:
    """Map a model's trainable parameters to blocks and back (exactly).

    Parameters
    ----------
    model : nn.Module
    granularity : {"weight", "quasi-node", "node", "layer", "network"}
        * ``"weight"``: every scalar is its own 1x1 block.
        * ``"node"`` (the paper's): one block per output unit -- row ``o`` of a
          module's ``weight`` (``nn.Linear``: ``weight[o, :]``; convolutions:
          output channel ``weight[o]`` flattened) followed by ``bias[o]``.
        * ``"quasi-node"``: each node vector split into chunks of ``chunk``
          (the authors' ``q``); the remainder forms a final, shorter chunk.
          ``chunk=1`` is ``"weight"``; ``chunk >= fan_in + 1`` is ``"node"``.
        * ``"layer"``: one block per module (all its direct parameters).
        * ``"network"``: one block of all ``p`` parameters. The engine keeps it
          in low-rank form (memory ``O(p m)``), never ``p x p``.
    chunk : int, required for ``"quasi-node"`` only.
    params : iterable of parameters, optional
        The subset of ``model``'s parameters to partition (e.g. an optimizer's);
        default every parameter with ``requires_grad``. Tied (shared) parameters
        count once, under their first name.

    Sharded parameters (FSDP2's ``fully_shard``: DTensors sharded along dim 0) are
    partitioned by their local shard: ``shapes``, ``n_params`` and the blocks describe what
    this rank holds, ``global_shapes`` the full parameters. A node's weight row and bias
    element share a rank under dim-0 sharding, so node blocks stay whole.

    A partition describes the model as it was when built. ``verify()`` raises
    ``ModelChangedError`` once parameters have been added, removed, replaced,
    reshaped, cast or moved (model surgery); build a new partition (and
    recorder, accelerator) after such a change. The recorder checks this at
    every snapshot.

    Fallback for parameters without node structure: a module's ``weight`` pairs
    with its ``bias`` when ``bias.shape == (weight.shape[0],)`` -- this covers
    norm layers, whose channel ``o`` becomes the 2-observable node
    ``(weight[o], bias[o])``. Any other parameter (free tensors, embeddings,
    unpaired biases) with ``ndim >= 2`` is split along dim 0; with ``ndim <= 1``
    it forms one block of its own.

    Example
    -------
    >>> from torch import nn
    >>> part = Partition(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> [(g.size, g.n_blocks) for g in part.groups]
    [(4, 4), (5, 2)]
    >>> vec = part.flatten()                       # (p,) = (26,)
    >>> blocks = part.gather(vec)                  # [(4, 4), (2, 5)]
    >>> bool((part.scatter(blocks) == vec).all())
    True
    """

    def __init__(self, model: nn.Module, *, granularity: str = "node",
                 chunk: int | None = None, params=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        check_choice(granularity, "granularity", GRANULARITIES)
        if granularity == "quasi-node":
            if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
                raise ValueError(f"granularity='quasi-node' needs chunk=q, a positive int "
                                 f"(got {chunk!r}).")
        elif chunk is not None:
            raise ValueError(
                f"chunk is only used with granularity='quasi-node', not {granularity!r}."
            )
        self.model = model
        self.granularity = granularity
        self.chunk = chunk

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._ids = None  # the subset's ids; None: every trainable parameter
        if params is not None:
            if isinstance(params, torch.Tensor):
                raise TypeError("params must be an iterable of parameters, not one tensor.")
            wanted = {id(p) for p in params}
            known = {id(p) for _, p in model.named_parameters()}
            if wanted - known:
                raise ValueError(f"{len(wanted - known)} of the given params are not "
                                 "parameters of the model.")
            named = [(n, p) for n, p in named if id(p) in wanted]
            self._ids = {id(p) for _, p in named}
        if not named:
            raise ValueError("the model has no trainable parameters (requires_grad=True)"
                             + (" among the given params." if params is not None else "."))
        local = [(n, local_shard(p)) for n, p in named]
        self.names = [n for n, _ in named]
        self.shapes = [tuple(t.shape) for _, t in local]
        self.global_shapes = [tuple(p.shape) for _, p in named]
        self.sharded = any(a is not b for (_, a), (_, b) in zip(local, named, strict=True))
        self.numels = [t.numel() for _, t in local]
        self.dtypes = [p.dtype for _, p in named]
        self.offsets = {}
        off = 0
        for n, t in local:
            self.offsets[n] = off
            off += t.numel()
        self.n_params = off
        devices = sorted({str(p.device) for _, p in named})
        if len(devices) > 1:
            raise ValueError(
                f"the model's trainable parameters live on several devices {devices}; a "
                "Partition gathers them into one vector on one device. Move the model with "
                ".to(device) first, or partition each device's submodule separately."
            )
        self.device = named[0][1].device
        dtype = named[0][1].dtype
        for _, p in named[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        self.dtype = dtype
        self._params = [p for _, p in named]
        self._layout = [(id(p), p.shape, p.dtype, p.device) for p in self._params]
        # parameters that form one block of their own at node granularity (the ``ndim <= 1``
        # fallback): under dim-0 sharding such a block would be split across ranks
        self.unsplit: list[str] = []
        self._local_of = {id(p): t for (_, p), (_, t) in zip(named, local, strict=True)}
        with torch.device("cpu"):  # index arithmetic on the host, whatever the default
            groups = self._build_groups(model, {id(p): n for n, p in named})
        del self._local_of  # shards are looked up afresh when used (see ``params``)
        self.groups = [BlockGroup(g.size, g.index.to(self.device), g.layers) for g in groups]

    def verify(self) -> None:
        """Raise ``ModelChangedError`` if the model's parameters are no longer the ones
        partitioned: added (when partitioning every trainable parameter), removed,
        replaced, frozen, reshaped, cast to another dtype or moved to another device."""
        ids = self._ids
        now = [p for p in self.model.parameters() if p.requires_grad
               and (ids is None or id(p) in ids)]
        if [id(p) for p in now] != [t[0] for t in self._layout]:
            have, current = {id(p) for p in self._params}, {id(p) for p in now}
            named = {id(p): n for n, p in self.model.named_parameters()}
            added = [named[id(p)] for p in now if id(p) not in have]
            gone = [n for n, p in zip(self.names, self._params, strict=True)
                    if id(p) not in current]
            raise ModelChangedError(
                f"the model's trainable parameters changed since it was partitioned "
                f"(new: {added or 'none'}; gone or frozen: {gone or 'none'})"
                + _SURGERY_HINT)
        for n, p, (_, shape, dtype, device) in zip(self.names, self._params, self._layout,
                                                   strict=True):
            if (p.shape, p.dtype, p.device) != (shape, dtype, device):
                raise ModelChangedError(
                    f"parameter {n!r} changed from {tuple(shape)} {dtype} on {device} to "
                    f"{tuple(p.shape)} {p.dtype} on {p.device}" + _SURGERY_HINT)

    # ---------------------------------------------------------- structure
    def _nodes(self, model: nn.Module, name_of: dict[int, str]):
        """Yield (layer_name, (n_nodes, d) index) for every node-like unit."""
        seen: set[int] = set()
        for mod_name, module in model.named_modules():
            own = [(k, p) for k, p in module.named_parameters(recurse=False)
                   if id(p) in name_of and id(p) not in seen]
            if not own:
                continue
            seen.update(id(p) for _, p in own)
            names = {k: name_of[id(p)] for k, p in own}
            direct = {k: self._local_of[id(p)] for k, p in own}  # shapes of what is held
            w, b = direct.get("weight"), direct.get("bias")
            if w is not None and b is not None and w.ndim >= 1 and b.ndim == 1 \
                    and b.shape[0] == w.shape[0]:
                out, row = w.shape[0], math.prod(w.shape[1:])
                w_off, b_off = self.offsets[names["weight"]], self.offsets[names["bias"]]
                w_idx = w_off + torch.arange(out)[:, None] * row + torch.arange(row)[None, :]
                yield mod_name, torch.cat([w_idx, b_off + torch.arange(out)[:, None]], 1)
                direct.pop("weight")
                direct.pop("bias")
            for k, p in direct.items():
                off = self.offsets[names[k]]
                if p.ndim >= 2:
                    rows, row = p.shape[0], math.prod(p.shape[1:])
                    yield mod_name, off + torch.arange(rows * row).reshape(rows, row)
                else:
                    self.unsplit.append(names[k])
                    yield mod_name, off + torch.arange(p.numel()).reshape(1, -1)

    def _build_groups(self, model, name_of) -> list[BlockGroup]:
        p = self.n_params
        if self.granularity == "weight":
            return [BlockGroup(1, torch.arange(p).reshape(p, 1), ("",) * p)]
        if self.granularity == "network":
            return [BlockGroup(p, torch.arange(p).reshape(1, p), ("",))]
        by_size: dict[int, list[torch.Tensor]] = defaultdict(list)
        layers: dict[int, list[str]] = defaultdict(list)

        def add(layer: str, idx: torch.Tensor) -> None:
            if idx.shape[0] == 0 and self.granularity != "layer":
                return  # no rows of this parameter on this rank (a sharded, short dim 0)
            by_size[idx.shape[1]].append(idx)
            layers[idx.shape[1]].extend([layer] * idx.shape[0])

        if self.granularity == "layer":
            per_layer: dict[str, list[torch.Tensor]] = defaultdict(list)
            for layer, idx in self._nodes(model, name_of):
                per_layer[layer].append(idx.reshape(-1))
            for layer, parts in per_layer.items():
                add(layer, torch.cat(parts).reshape(1, -1))
        else:
            for layer, idx in self._nodes(model, name_of):
                if self.granularity == "quasi-node":
                    q, D = self.chunk, idx.shape[1]
                    full = (D // q) * q
                    if full:
                        add(layer, idx[:, :full].reshape(-1, q))
                    if D - full:
                        add(layer, idx[:, full:])
                else:
                    add(layer, idx)
        return [BlockGroup(d, torch.cat(by_size[d]), tuple(layers[d])) for d in sorted(by_size)]

    @property
    def n_blocks(self) -> int:
        return sum(g.n_blocks for g in self.groups)

    @property
    def params(self) -> list[torch.Tensor]:
        """The partitioned parameters themselves (their local shards when sharded), in
        ``names`` order."""
        return [local_shard(p) for p in self._params]

    def assign(self, values: dict[str, torch.Tensor]) -> None:
        """Copy ``{name: tensor}`` (every name in ``names``; e.g. ``unflatten``'s output or
        a prediction) into the parameters in place, without autograd. Tensors keep their
        identity, so optimizers and tied weights still refer to them."""
        missing = [n for n in self.names if n not in values]
        if missing:
            raise KeyError(f"values lacks {missing[:3]}{'...' if len(missing) > 3 else ''}.")
        with torch.no_grad():
            for name, p in zip(self.names, self.params, strict=True):
                p.copy_(values[name])
        self.refresh()

    def refresh(self) -> None:
        """After writing into sharded parameters: FSDP2 modules drop the full copies they
        gathered (a root module keeps them after a forward without backward), so the next
        forward gathers the new shards. A no-op for unsharded models."""
        if self.sharded:
            for m in self.model.modules():
                if _FSDPModule is not None and isinstance(m, _FSDPModule):
                    m.reshard()

    # -------------------------------------------------------------- moves
    def flatten(self, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The flat parameter vector ``(p,)`` in ``self.dtype`` (a copy).

        params : optional ``{name: tensor}`` (e.g. a state dict) instead of the
        model's current parameters.
        """
        if params is None:
            tensors = [p.detach() for p in self.params]
        else:
            missing = [n for n in self.names if n not in params]
            if missing:
                raise KeyError(f"params lacks {missing[:3]}{'...' if len(missing) > 3 else ''}.")
            tensors = [params[n].detach() for n in self.names]
        return torch.cat([t.reshape(-1).to(self.dtype) for t in tensors])

    def flatten_into(self, out: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
        """Copy the current parameters into ``out`` ``(p,)`` without allocating
        (``non_blocking``: as in ``Tensor.copy_``, e.g. into pinned host memory)."""
        for p, n in zip(self.params, self.names, strict=True):
            off = self.offsets[n]
            out[off : off + p.numel()].copy_(p.detach().reshape(-1), non_blocking=non_blocking)
        return out

    def gather(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """Blocks of a flat vector ``(..., p)``: one ``(..., B, d)`` tensor per group."""
        if vec.shape[-1] != self.n_params:
            raise ValueError(f"expected a last axis of {self.n_params} parameters, got "
                             f"{tuple(vec.shape)}.")
        return [vec[..., g.index.to(vec.device)] for g in self.groups]

    def scatter(self, blocks: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
        """Inverse of ``gather``: ``(..., B, d)`` per group -> flat ``(..., p)``."""
        if len(blocks) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} block tensors, got {len(blocks)}.")
        lead = blocks[0].shape[:-2]
        if out is None:
            out = blocks[0].new_empty(lead + (self.n_params,))
        for g, b in zip(self.groups, blocks, strict=True):
            if b.shape[-2:] != g.index.shape:
                raise ValueError(f"block tensor of shape {tuple(b.shape)} does not match group "
                                 f"(B={g.n_blocks}, d={g.size}).")
            out[..., g.index.to(out.device)] = b.to(out.dtype)
        return out

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat ``(..., p)`` -> ``{name: (..., *shape)}`` in each parameter's own
        dtype and device, ready for ``model.load_state_dict(d, strict=False)``."""
        lead = vec.shape[:-1]
        out = {}
        for n, shape, numel, dt, p in zip(self.names, self.shapes, self.numels, self.dtypes,
                                          self.params, strict=True):
            off = self.offsets[n]
            out[n] = vec[..., off : off + numel].reshape(lead + shape).to(dtype=dt,
                                                                           device=p.device)
        return out

    def __repr__(self) -> str:
        sizes = ", ".join(f"{g.n_blocks}x{g.size}" for g in self.groups)
        return (f"Partition(granularity={self.granularity!r}, params={self.n_params}, "
                f"blocks=[{sizes}])")
