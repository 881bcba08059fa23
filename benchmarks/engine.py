"""Engine speed: batched node operators against PyDMD and against the arithmetic floor.

Cases: 1024 blocks, d = 65, m = 129, fit then predict T = 1000, on two kinds of window:

* ``well-conditioned``: trajectories of stable linear maps plus noise (issue #2);
* ``ill-conditioned``: random walks, whose consecutive snapshots are nearly collinear as in
  real training (cond(X0) ~ 3e4, past the plain Cholesky guard; issue #13).

    python benchmarks/engine.py            # writes results/engine.json
    python benchmarks/engine.py --quick    # smaller scaling table

Prints a table and writes JSON. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from kooptrain import KoopmanOperator
from kooptrain.experiments.harness.provenance import provenance
from kooptrain.experiments.harness.timing import median_seconds


def fp64_rate() -> float:
    """FLOP/s of one 2048^2 float64 matmul on this machine."""
    a = torch.randn(2048, 2048, dtype=torch.float64)
    out = torch.empty_like(a)
    t = median_seconds(lambda: torch.matmul(a, a, out=out), repeats=5)
    return 2 * 2048**3 / t


def snapshots(B: int, d: int, m: int, seed: int = 0) -> torch.Tensor:
    """(B, d, m) trajectories of stable linear maps (spectral radius 0.999) plus noise."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(B, d, d, generator=g, dtype=torch.float64))
    A = 0.999 * Q
    x = torch.randn(B, d, 1, generator=g, dtype=torch.float64)
    cols = [x]
    for _ in range(m - 1):
        x = A @ x + 1e-3 * torch.randn(B, d, 1, generator=g, dtype=torch.float64)
        cols.append(x)
    return torch.cat(cols, -1)


def random_walks(B: int, d: int, m: int, seed: int = 0) -> torch.Tensor:
    """(B, d, m) random walks with steps of 1e-3 from a unit-scale start: the slow drift of
    weights under training, where snapshots are nearly collinear."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(B, d, 1, generator=g, dtype=torch.float64)
    steps = 1e-3 * torch.randn(B, d, m, generator=g, dtype=torch.float64)
    return start + steps.cumsum(-1)


def floor_flops(B: int, d: int, m: int, T: int) -> float:
    """Two batched Gram products plus ceil(log2 T) batched squarings (issue #2)."""
    return 2 * 2 * B * d * d * (m - 1) + math.ceil(math.log2(T)) * 2 * B * d**3


def ours(X: torch.Tensor, T: int) -> torch.Tensor:
    return KoopmanOperator().fit(X).predict(T)


def pydmd_loop(X: np.ndarray, T: int) -> np.ndarray:
    """PyDMD, one block at a time, forecast to the single state U^T x_m."""
    from pydmd import DMD

    out = np.empty(X.shape[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in range(X.shape[0]):
            dmd = DMD(svd_rank=-1, exact=True).fit(X[b])
            amp = np.linalg.lstsq(dmd.modes, X[b, :, -1].astype(complex), rcond=None)[0]
            out[b] = (dmd.modes @ (dmd.eigs**T * amp)).real
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller scaling table")
    ap.add_argument("--out", default="results/engine.json")
    args = ap.parse_args()

    B, d, m, T = 1024, 65, 129, 1000
    rate = fp64_rate()
    floor_s = floor_flops(B, d, m, T) / rate
    print(f"fp64 rate (2048^2 matmul): {rate / 1e9:.1f} GFLOP/s; floor {floor_s:.3f} s")
    cases = {}
    for name, X in (("well-conditioned", snapshots(B, d, m)),
                    ("ill-conditioned", random_walks(B, d, m))):
        op = KoopmanOperator().fit(X)
        S = torch.linalg.svdvals(X[..., :-1])
        cond = S[..., 0] / S[..., -1]
        t_ours = median_seconds(lambda X=X: ours(X, T))
        t0 = time.perf_counter()
        ref = pydmd_loop(X.numpy(), T)
        t_pydmd = time.perf_counter() - t0
        got = ours(X, T).numpy()
        rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
        assert rel.max() < 1e-6, f"PyDMD and kooptrain disagree: max rel {rel.max():.2e}"
        cases[name] = {
            "median_cond_X0": float(cond.median()), "max_cond_X0": float(cond.max()),
            "plain_cholesky_blocks": B - op.refined_blocks_ - op.fallback_blocks_,
            "refined_blocks": op.refined_blocks_, "svd_fallback_blocks": op.fallback_blocks_,
            "kooptrain_seconds": t_ours, "pydmd_loop_seconds": t_pydmd,
            "speedup_vs_pydmd": t_pydmd / t_ours, "ratio_to_floor": t_ours / floor_s,
            "max_relative_difference_vs_pydmd": float(rel.max()),
        }
        print(f"{name}: cond(X0) median {cond.median():.3g}; blocks plain/refined/SVD "
              f"{cases[name]['plain_cholesky_blocks']}/{op.refined_blocks_}/"
              f"{op.fallback_blocks_}")
        print(f"  kooptrain {t_ours:.3f} s; PyDMD loop {t_pydmd:.3f} s -> "
              f"{t_pydmd / t_ours:.1f}x faster (goal 30x); {t_ours / floor_s:.2f}x the floor "
              f"(goal <= 4x); max rel diff {rel.max():.1e}")
    head = {
        "case": {"blocks": B, "d": d, "m": m, "T": T},
        "fp64_gflops_2048": rate / 1e9,
        "floor_seconds": floor_s,
        "cases": cases,
        "goals": {"speedup_vs_pydmd": 30, "ratio_to_floor": 4},
    }

    # scaling: time against blocks, d, m and T, next to the floor's FLOP model
    base = dict(B=256, d=65, m=129, T=1000)
    axes = {
        "B": [64, 256, 1024] if args.quick else [64, 256, 1024, 4096],
        "d": [17, 33, 65] if args.quick else [9, 17, 33, 65, 97],
        "m": [129, 257] if args.quick else [129, 257, 513, 1025],
        "T": [10, 100, 1000, 10000],  # 1e5 overflows on noise-fitted |lambda| > 1
    }
    rows = []
    print(f"\n{'vary':>5s} {'B':>5s} {'d':>4s} {'m':>4s} {'T':>7s} {'seconds':>9s} "
          f"{'GFLOP':>7s} {'x floor':>8s}")
    for axis, values in axes.items():
        for v in values:
            cfg = dict(base, **{axis: v})
            Xc = snapshots(cfg["B"], cfg["d"], cfg["m"], seed=1)
            t = median_seconds(lambda Xc=Xc, cfg=cfg: ours(Xc, cfg["T"]), repeats=3)
            fl = floor_flops(cfg["B"], cfg["d"], cfg["m"], cfg["T"])
            rows.append(dict(vary=axis, **cfg, seconds=t, floor_gflop=fl / 1e9,
                             ratio_to_floor=t / (fl / rate)))
            print(f"{axis:>5s} {cfg['B']:5d} {cfg['d']:4d} {cfg['m']:4d} {cfg['T']:7d} "
                  f"{t:9.4f} {fl / 1e9:7.2f} {t / (fl / rate):8.2f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"provenance": provenance(), "headline": head, "scaling": rows},
                              indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
