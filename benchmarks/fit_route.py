"""One network-granularity fit and its ten candidates, two ways, on the race's lm window:
the engine's SVD path (``KoopmanOperator`` on the whole 141k x 10 window, what one process
runs) and the QR route of ``_sharded.SharedFit`` (what each rank runs on its rows), on all
rows and on half of them (one of 2 ranks). Interleaved in one process, ``--repeats`` rounds;
the spread of each route's own times is its noise. Writes results/fit_route.json.

    OMP_NUM_THREADS=1 python benchmarks/fit_route.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from kooptrain import KoopmanAccelerator
from kooptrain._consensus import Consensus
from kooptrain._predictors import PREDICTORS, shared_koopman
from kooptrain._sharded import SharedFit
from kooptrain.experiments.harness.provenance import provenance
from kooptrain.experiments.race.workloads import workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default="results/fit_route.json")
    args = ap.parse_args()
    prov = provenance()
    w = workload("lm", budget=100)
    model = w.make_model(0)
    opt, _ = w.make_optimizer("adamw", model)
    acc = KoopmanAccelerator(model, opt)
    batches = w.sampler(0)
    for _ in range(acc.window):
        opt.zero_grad()
        w.loss(model, next(batches)).backward()
        opt.step()
        acc.recorder.record()
    spec, rec = acc.settings.predictor_spec(), acc.recorder
    X = rec.snapshots()[0]
    half = X[:, : X.shape[1] // 2]
    engine = {**spec.engine, "holdout": 0}
    qr = shared_koopman(Consensus(None), replicated=True)

    def svd_route():
        PREDICTORS["koopman"](rec, spec)

    def qr_route():  # every candidate assembled, as the SVD path builds them all
        for _, values in qr(rec, spec):
            values()

    def qr_half():  # one of two ranks: its rows' predictions (the gather not included); the
        # other rank's factor is stood in by its own
        SharedFit([half], [(0, 0)], lambda R: torch.stack([R, R]), 0, engine).predict(
            spec.steps)

    routes = {"svd, all rows (one process)": svd_route, "qr, all rows": qr_route,
              "qr, half the rows (one of 2 ranks)": qr_half}
    times = {k: [] for k in routes}
    for _ in range(args.repeats):
        for k, f in routes.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    svd = statistics.median(times["svd, all rows (one process)"])
    rows = {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v),
                "max_ms": 1e3 * max(v), "svd_over_this": svd / statistics.median(v)}
            for k, v in times.items()}
    for k, r in rows.items():
        print(f"{k:36s} median {r['median_ms']:7.1f} ms  [{r['min_ms']:.1f}, "
              f"{r['max_ms']:.1f}]  svd/this {r['svd_over_this']:.2f}")
    Path(args.out).write_text(json.dumps({
        "command": "OMP_NUM_THREADS=1 python benchmarks/fit_route.py", "provenance": prov,
        "window": list(X.shape), "horizons": list(spec.horizons), "repeats": args.repeats,
        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
