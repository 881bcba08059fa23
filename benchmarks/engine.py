"""Engine speed: batched node operators against PyDMD and against the arithmetic floor.

Cases: 1024 blocks, d = 65, m = 129, fit then predict T = 1000, on two kinds of window:

* ``well-conditioned``: trajectories of stable linear maps plus noise (issue #2);
* ``ill-conditioned``: random walks, whose consecutive snapshots are nearly collinear as in
  real training (cond(X0) ~ 3e4, past the plain Cholesky guard; issue #13).

    OMP_NUM_THREADS=2 python benchmarks/engine.py            # writes results/engine.json
    OMP_NUM_THREADS=2 python benchmarks/engine.py --quick    # smaller scaling table

The headline runs both cases at 1 and at 2 threads (torch's, and numpy's BLAS for PyDMD
through ``threadpoolctl``), ``--rounds`` times, interleaved: each round times, at each
thread count, the float64 matmul rate behind the floor, kooptrain (median of 3), the
floor's own operations batched (median of 3: what those FLOPs cost at this block size, not
at a 2048^2 product's rate) and the PyDMD loop (once). It reports the median over rounds
and the band (smallest to largest).
The scaling table then runs at 2 threads. Prints a table and writes JSON. Not a test:
nothing here asserts a speed.
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
from threadpoolctl import threadpool_limits

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


def floor_ops(X: torch.Tensor, T: int) -> None:
    """The floor's operations themselves, batched: the two Gram products and
    ``ceil(log2 T)`` squarings of a ``(B, d, d)`` batch (kept at norm 1, so nothing
    overflows)."""
    X0, X1 = X[..., :-1], X[..., 1:]
    G, _ = X0 @ X0.mT, X1 @ X0.mT
    P = G / torch.linalg.matrix_norm(G, keepdim=True)
    for _ in range(math.ceil(math.log2(T))):
        P = P @ P


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


def band(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(min(values)),
            "max": float(max(values)), "rounds": [float(v) for v in values]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller scaling table")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--out", default="results/engine.json")
    args = ap.parse_args()

    B, d, m, T = 1024, 65, 129, 1000
    windows = {"well-conditioned": snapshots(B, d, m), "ill-conditioned": random_walks(B, d, m)}
    cases, raw = {}, {}
    for name, X in windows.items():  # the blocks' conditioning, and agreement with PyDMD
        op = KoopmanOperator().fit(X)
        S = torch.linalg.svdvals(X[..., :-1])
        cond = S[..., 0] / S[..., -1]
        ref = pydmd_loop(X.numpy(), T)
        got = ours(X, T).numpy()
        rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
        assert rel.max() < 1e-6, f"PyDMD and kooptrain disagree: max rel {rel.max():.2e}"
        cases[name] = {
            "median_cond_X0": float(cond.median()), "max_cond_X0": float(cond.max()),
            "plain_cholesky_blocks": B - op.refined_blocks_ - op.fallback_blocks_,
            "refined_blocks": op.refined_blocks_, "svd_fallback_blocks": op.fallback_blocks_,
            "max_relative_difference_vs_pydmd": float(rel.max()), "threads": {}}
    for r in range(args.rounds):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with threadpool_limits(threads):
                rate = fp64_rate()
                for name, X in windows.items():
                    t_ours = median_seconds(lambda X=X: ours(X, T))
                    t_ops = median_seconds(lambda X=X: floor_ops(X, T))
                    t0 = time.perf_counter()
                    pydmd_loop(X.numpy(), T)
                    t_pydmd = time.perf_counter() - t0
                    row = raw.setdefault((name, threads), {k: [] for k in (
                        "kooptrain_seconds", "pydmd_loop_seconds", "floor_seconds",
                        "fp64_gflops_2048", "speedup_vs_pydmd", "ratio_to_floor",
                        "floor_ops_seconds", "ratio_to_floor_ops")})
                    floor_s = floor_flops(B, d, m, T) / rate
                    for k, v in (("kooptrain_seconds", t_ours), ("pydmd_loop_seconds", t_pydmd),
                                 ("floor_seconds", floor_s), ("fp64_gflops_2048", rate / 1e9),
                                 ("speedup_vs_pydmd", t_pydmd / t_ours),
                                 ("ratio_to_floor", t_ours / floor_s),
                                 ("floor_ops_seconds", t_ops),
                                 ("ratio_to_floor_ops", t_ours / t_ops)):
                        row[k].append(v)
                    print(f"round {r + 1}, {threads} thread(s), {name}: kooptrain {t_ours:.3f} s,"
                          f" PyDMD {t_pydmd:.2f} s ({t_pydmd / t_ours:.1f}x, goal 30x), "
                          f"{t_ours / floor_s:.2f}x the floor (goal <= 2x), "
                          f"{t_ours / t_ops:.2f}x its operations batched", flush=True)
    torch.set_num_threads(2)
    for (name, threads), row in raw.items():
        cases[name]["threads"][str(threads)] = {k: band(v) for k, v in row.items()}
    for name, c in cases.items():
        for threads, row in c["threads"].items():
            sp, fl, ops = row["speedup_vs_pydmd"], row["ratio_to_floor"], \
                row["ratio_to_floor_ops"]
            print(f"{name}, {threads} thread(s): {sp['median']:.1f}x PyDMD "
                  f"({sp['min']:.1f}-{sp['max']:.1f}), {fl['median']:.2f}x the floor "
                  f"({fl['min']:.2f}-{fl['max']:.2f}), {ops['median']:.2f}x its operations "
                  f"batched ({ops['min']:.2f}-{ops['max']:.2f})")
    head = {
        "case": {"blocks": B, "d": d, "m": m, "T": T},
        "rounds": args.rounds,
        "cases": cases,
        "goals": {"speedup_vs_pydmd": 30, "ratio_to_floor": 2},
    }
    rate = fp64_rate()

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
