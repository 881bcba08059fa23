"""Predicted cost of a Koopman fit + jump (docs/complexity.md), per block group."""

from __future__ import annotations

import math

from ..._linalg import is_tall
from ...partition import Partition


def group_cost(B: int, d: int, m: int, T: int) -> dict:
    """FLOPs and bytes for ``B`` blocks of ``d`` observables, ``m`` snapshots, horizon ``T``.

    Square blocks (d <= m-1): two Gram products 4 B d^2 (m-1), Cholesky B d^3/3,
    the solve 2 B d^3, floor(log2 T) squarings 2 B d^3 each. Wide blocks
    (d > m-1, n = m-1): thin SVD ~ 4 B d n^2 + 8 B n^3, factors 2 B d n^2, and
    squarings of the n x n reduced matrix. Tall blocks (``is_tall``): the thin QR of the
    window in place, ~4 B d m^2 (two passes over it), the wide fit of the m x m factor,
    and 4 B d m to carry the state into its basis and the jump back out; memory, the
    window's float64 copy (which becomes the basis) and the last snapshot.
    """
    n = m - 1
    sq = max(int(T).bit_length() - 1, 0) if T else 0
    if d <= n:
        flops = 4 * B * d * d * n + B * d**3 / 3 + 2 * B * d**3 + sq * 2 * B * d**3
        mem = 8 * B * (d * m + 3 * d * d)
    elif is_tall(d, m):
        small = group_cost(B, m, m, T)
        flops = 4 * B * d * m * m + small["flops"] + 4 * B * d * m
        mem = 8 * B * d * (m + 1) + small["bytes"]
    else:
        flops = 4 * B * d * n * n + 8 * B * n**3 + 2 * B * d * n * n + sq * 2 * B * n**3
        mem = 8 * B * (3 * d * m + n * n)
    return {"flops": flops, "bytes": mem}


def koopman_cost(partition: Partition, m: int, T: int, affine: bool = False) -> dict:
    """Total predicted FLOPs/bytes of fit + jump for a partition."""
    total = {"flops": 0.0, "bytes": 0.0, "groups": []}
    for g in partition.groups:
        d = g.size + int(affine)
        c = group_cost(g.n_blocks, d, m, T)
        total["flops"] += c["flops"]
        total["bytes"] += c["bytes"]
        total["groups"].append({"blocks": g.n_blocks, "d": d, **c})
    total["log2_T"] = math.log2(T) if T else 0.0
    return total
