"""How a jump's cost grows with the model: fit, prediction, snapshot and peak memory from
10^5 to 10^8 weights, at network, layer and node granularity, for MLPs and transformers.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py             # writes results/scaling.json
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --report    # the figure from the JSON
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --sizes 1e5,1e6 --out /tmp/s.json
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --routes    # tall vs direct route, 10^7

Every point runs in a fresh process (so that its peak memory is its own): build the model
(``torch.manual_seed(0)``, float32), record ``2 window`` snapshots (``SnapshotRecorder``,
``every=1``, window storage) of a random walk of its weights (steps of 1e-3 times each
weight's scale: no training is needed to time a fit, and 10^8 weights could not be trained
here), fit (``rec.fit(stabilize="clip")``), then ``predict(steps=1000)``. Times are medians of
``--repeats`` in that process. The snapshot's is the median over a second pass round the
ring, whose slots were written once before (training's steady state); the first pass, whose
writes fault fresh pages in, is ``first_snapshot_seconds``. Peak memory is the
process's resident set, its high-water mark reset (``/proc/self/clear_refs``) before the
fit, read from ``/proc/self/status`` after it: what the fit held at its worst, model and
window included (``fit_peak_bytes``), and above what was resident before it
(``fit_extra_bytes``).

Each measured fit is set against ``docs/complexity.md``'s model
(``kooptrain.experiments.window.complexity.koopman_cost``: FLOPs, and float64 bytes), at
this machine's float64 matmul rate; each series gets a power law ``t = a p^b`` by least
squares in log-log. Not a test: nothing here asserts a speed. The one assertion: the
memory is measured (a high-water mark that moved), not assumed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kooptrain import SnapshotRecorder
from kooptrain.experiments.harness.jsonio import json_safe
from kooptrain.experiments.harness.provenance import provenance
from kooptrain.experiments.window.complexity import koopman_cost

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "scaling.json"
SIZES = (1e5, 1e6, 1e7, 1e8)
# a series is a granularity, fitted as below; "+affine": with affine observables too, as the
# accelerator fits by default
GRANULARITIES = ("network", "layer", "node", "network+affine")
KINDS = ("mlp", "transformer")
WINDOW, HORIZON = 6, 1000  # the accelerator's window; a jump of 1000 steps
# clipped: a random walk's small blocks have modes outside the unit circle that a
# 1000-step jump would overflow
FIT = {"stabilize": "clip"}


def mlp(p: float) -> nn.Module:
    """Four hidden layers of equal width ``w``, ``p ~ 3 w^2``: 784 in, 10 out."""
    w = max(8, round((-(784 + 10 + 4) + math.sqrt((784 + 14) ** 2 + 12 * p)) / 6))
    return nn.Sequential(nn.Linear(784, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                         nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                         nn.Linear(w, 10))


def transformer(p: float) -> nn.Module:
    """Four pre-norm encoder blocks of width ``D`` (feed-forward ``4 D``, ``D / 64``
    heads), ``p ~ 48 D^2``: the race's ``lm`` shape, grown."""
    D = max(64, 64 * round(math.sqrt(p / 48) / 64))
    layer = nn.TransformerEncoderLayer(D, max(1, D // 64), 4 * D, dropout=0.0,
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)


def status(key: str) -> int:
    """``VmHWM`` or ``VmRSS`` of this process, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def median(f, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def one_point(kind: str, p: float, granularity: str, repeats: int) -> dict:
    """One (model, size, granularity) point, in this process."""
    series, granularity = granularity, granularity.partition("+")[0]
    fit_options = FIT | ({"observables": "affine"} if series.endswith("+affine") else {})
    torch.manual_seed(0)
    model = (mlp if kind == "mlp" else transformer)(p)
    params = [q for q in model.parameters() if q.requires_grad]
    weights = sum(q.numel() for q in params)
    scale = [float(q.detach().abs().mean()) or 1.0 for q in params]
    rec = SnapshotRecorder(model, granularity=granularity, window=WINDOW, every=1)
    g = torch.Generator().manual_seed(1)
    seconds = []
    for _ in range(2 * WINDOW):  # twice round the ring: first writes, then the steady state
        with torch.no_grad():  # one random-walk step, a parameter at a time
            for q, s in zip(params, scale, strict=True):
                q.add_(torch.randn(q.shape, generator=g), alpha=1e-3 * s)
        t0 = time.perf_counter()
        rec.record()
        seconds.append(time.perf_counter() - t0)
    rss_before = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    reset_to = status("VmHWM")
    t0 = time.perf_counter()
    rec.fit(**fit_options)
    first_fit = time.perf_counter() - t0
    peak = status("VmHWM")

    def refit():  # the last forecast goes first: two at once would not fit at 10^8
        rec.forecast_ = None
        rec.fit(**fit_options)
    fit = min(first_fit, median(refit, repeats - 1)) if repeats > 1 else first_fit
    fc = rec.forecast_
    predict = median(lambda: fc.predict(steps=HORIZON), repeats)
    cost = koopman_cost(rec.partition, WINDOW, HORIZON)
    return {"kind": kind, "target": p, "weights": weights, "granularity": series,
            "fit_options": fit_options,
            "groups": [{"blocks": c["blocks"], "d": c["d"]} for c in cost["groups"]],
            "window": WINDOW, "horizon": HORIZON,
            "snapshot_seconds": float(np.median(seconds[WINDOW:])),
            "first_snapshot_seconds": float(np.median(seconds[1:WINDOW])), "fit_seconds": fit,
            "first_fit_seconds": first_fit, "predict_seconds": predict,
            "model_bytes": sum(q.numel() * q.element_size() for q in params),
            "window_bytes": rec.memory_bytes, "rss_before_fit": rss_before,
            "hwm_after_reset": reset_to, "fit_peak_bytes": peak,
            "fit_extra_bytes": peak - rss_before,
            "fit_extra_float64_per_weight": (peak - rss_before) / (8 * weights),
            "predicted_flops": cost["flops"], "predicted_bytes": cost["bytes"]}


def breakdown(p: int) -> dict:
    """Seconds of a network fit's large steps on a ``(1, p, WINDOW)`` window (its float64
    copy, its thin QR in place, the fit on the ``m x m`` factor), then of a first and a
    second write of ``(WINDOW - 1) p`` float64 numbers (fresh memory: page faults; the
    same memory again)."""
    from kooptrain import KoopmanOperator
    from kooptrain._linalg import tall_qr_

    X = torch.randn(1, p, WINDOW)
    out = {}
    t = time.perf_counter()
    X64 = X.to(torch.float64)
    out["float64 copy of the window"] = time.perf_counter() - t
    t = time.perf_counter()
    R = tall_qr_(X64)
    out["thin QR in place (TSQR)"] = time.perf_counter() - t
    t = time.perf_counter()
    KoopmanOperator(**FIT).fit(R)
    out["the fit on R (m x m)"] = time.perf_counter() - t
    a = torch.empty((WINDOW - 1) * p, dtype=torch.float64)
    t = time.perf_counter()
    a.fill_(1.0)
    out["first write, (m - 1) p float64"] = time.perf_counter() - t
    t = time.perf_counter()
    a.fill_(2.0)
    out["second write, the same memory"] = time.perf_counter() - t
    return out


def routes(p: int, rounds: int) -> dict:
    """Seconds of a whole-network fit and of a 1000-step prediction on one ``(1, p, WINDOW)``
    random-walk window, by the tall route (the window factored in place, the fit on ``R``)
    and by the direct one (thin SVD of ``X0``, factors ``B`` and ``W``), interleaved in
    this process for ``rounds`` rounds; identity and affine observables, clipped; and how
    far apart the two jumps land, relative to the jump's length."""
    from kooptrain import KoopmanOperator, _linalg

    g = torch.Generator().manual_seed(0)
    X = torch.randn(1, p, 1, generator=g) + torch.cumsum(
        1e-3 * torch.randn(1, p, WINDOW, generator=g), -1)
    tall_rows = _linalg.TSQR_MIN_ROWS
    out = {}
    for obs in ("identity", "affine"):
        opts = FIT | {"observables": obs}
        rows = {"tall": [], "direct": []}
        jumps = {}
        for _ in range(rounds):
            for route in ("tall", "direct"):
                _linalg.TSQR_MIN_ROWS = tall_rows if route == "tall" else 10 * p
                try:
                    t0 = time.perf_counter()
                    op = KoopmanOperator(**opts).fit(X)
                    t1 = time.perf_counter()
                    jump = op.predict(HORIZON)
                    t2 = time.perf_counter()
                finally:
                    _linalg.TSQR_MIN_ROWS = tall_rows
                rows[route].append((t1 - t0, t2 - t1))
                jumps[route] = jump
                del op, jump
        move = (jumps["direct"] - X[..., -1].double()).norm()
        out[obs] = {route: {"fit_seconds": [r[0] for r in v], "predict_seconds": [r[1] for r in v]}
                    for route, v in rows.items()}
        out[obs]["jump_difference"] = float((jumps["tall"] - jumps["direct"]).norm() / move)
    return out


def fp64_rate() -> float:
    a = torch.randn(1024, 1024, dtype=torch.float64)
    t = median(lambda: a @ a, 5)
    return 2 * 1024 ** 3 / t


def power_law(points: list, key: str) -> dict | None:
    """``key = a * weights^b`` by least squares in log-log."""
    xs = [(q["weights"], q[key]) for q in points if q.get(key) and q[key] > 0]
    if len(xs) < 2:
        return None
    b, loga = np.polyfit(np.log([x for x, _ in xs]), np.log([y for _, y in xs]), 1)
    return {"exponent": float(b), "prefactor": float(math.exp(loga))}


def figure(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2), constrained_layout=True)
    keys = (("fit_seconds", "fit (s)"), ("predict_seconds", "predict 1000 steps (s)"),
            ("snapshot_seconds", "one snapshot, the ring's second pass (s)"),
            ("fit_extra_bytes", "memory the fit added to the process (GB)"))
    colors = dict(zip(GRANULARITIES, ("tab:blue", "tab:orange", "tab:green", "tab:red"),
                      strict=True))
    for ax, (key, label) in zip(axes, keys, strict=True):
        for kind, marker in (("mlp", "o"), ("transformer", "s")):
            for gran in GRANULARITIES:
                pts = sorted((q for q in data["points"] if q["kind"] == kind
                              and q["granularity"] == gran and q.get(key)),
                             key=lambda q: q["weights"])
                if not pts:
                    continue
                x = [q["weights"] for q in pts]
                y = [q[key] / (1e9 if "bytes" in key else 1) for q in pts]
                fit = data["power_laws"].get(f"{kind} {gran} {key}")
                tag = "" if fit is None else f" (p^{fit['exponent']:.2f})"
                ax.loglog(x, y, marker=marker, color=colors[gran], ms=4, lw=1,
                          ls="-" if kind == "mlp" else "--", label=f"{kind} {gran}{tag}")
        if key == "fit_seconds":  # the complexity model, at the measured matmul rate
            pts = sorted((q for q in data["points"] if q["kind"] == "mlp"
                          and q["granularity"] == "network"), key=lambda q: q["weights"])
            ax.loglog([q["weights"] for q in pts],
                      [q["predicted_flops"] / data["fp64_flops_per_second"] for q in pts],
                      ":", color="k", lw=1, label="model: FLOPs / matmul rate (mlp network)")
        if key == "fit_extra_bytes":
            pts = sorted((q for q in data["points"] if q["kind"] == "mlp"
                          and q["granularity"] == "network"), key=lambda q: q["weights"])
            ax.loglog([q["weights"] for q in pts],
                      [(WINDOW + 2) * 8 * q["weights"] / 1e9 for q in pts], ":", color="k",
                      lw=1, label="goal: (m + 2) p 8 bytes")
            ax.loglog([q["weights"] for q in pts], [q["predicted_bytes"] / 1e9 for q in pts],
                      "--", color="0.5", lw=1, label="model: docs/complexity.md (mlp network)")
        ax.set_xlabel("weights p")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="major", lw=0.3)
        ax.legend(fontsize=6, frameon=False)
    prov = data["provenance"]
    fig.suptitle(f"A jump's cost as the model grows (window {WINDOW}, benchmarks/scaling.py; "
                 f"{prov['cpu']}, {data['torch_threads']} thread(s), {prov['date'][:10]})",
                 fontsize=10)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def summarize(data: dict) -> dict:
    laws = {}
    for kind in KINDS:
        for gran in GRANULARITIES:
            pts = [q for q in data["points"] if q["kind"] == kind and q["granularity"] == gran]
            for key in ("fit_seconds", "predict_seconds", "snapshot_seconds",
                        "first_snapshot_seconds",
                        "fit_peak_bytes", "fit_extra_bytes"):
                law = power_law(pts, key)
                if law is not None:
                    laws[f"{kind} {gran} {key}"] = law
    return laws


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(f"{s:g}" for s in SIZES))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--granularities", default=",".join(GRANULARITIES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report", action="store_true", help="the figure from the JSON")
    ap.add_argument("--breakdown", action="store_true",
                    help="time a network fit's steps at 10^7 and 10^8 weights "
                         "(results/scaling-breakdown.json)")
    ap.add_argument("--routes", action="store_true",
                    help="the tall and the direct route of one network fit at 10^7 weights, "
                         "interleaved (results/scaling-routes.json)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # kind,p,granularity: a child process
    args = ap.parse_args()
    if args.routes:
        data = {"command": "OMP_NUM_THREADS=1 python benchmarks/scaling.py --routes",
                "provenance": provenance(), "torch_threads": torch.get_num_threads(),
                "weights": 10**7, "window": WINDOW, "horizon": HORIZON,
                "routes": routes(10**7, max(3, args.repeats))}
        (ROOT / "results" / "scaling-routes.json").write_text(json.dumps(json_safe(data),
                                                                          indent=1))
        for obs, r in data["routes"].items():
            print(obs, {k: (np.median(v["fit_seconds"]), np.median(v["predict_seconds"]))
                        for k, v in r.items() if k != "jump_difference"},
                  "jump difference", r["jump_difference"])
        return 0
    if args.breakdown:
        if args.one:  # a child: one size
            print(json.dumps(breakdown(int(float(args.one)))))
            return 0
        rows = {}
        for p in (10**7, 10**8):
            res = subprocess.run([sys.executable, __file__, "--breakdown", "--one", str(p)],
                                 capture_output=True, text=True, env=os.environ, check=True)
            rows[str(p)] = json.loads(res.stdout.strip().splitlines()[-1])
            print(p, {k: round(v, 3) for k, v in rows[str(p)].items()}, flush=True)
        out = ROOT / "results" / "scaling-breakdown.json"
        out.write_text(json.dumps(json_safe({
            "command": "OMP_NUM_THREADS=1 python benchmarks/scaling.py --breakdown",
            "provenance": provenance(), "torch_threads": torch.get_num_threads(),
            "seconds": rows}), indent=1))
        return 0
    if args.one:
        kind, p, gran = args.one.split(",")
        print(json.dumps(one_point(kind, float(p), gran, args.repeats)))
        return 0
    if not args.report:
        points = []
        for kind in args.kinds.split(","):
            for p in (float(s) for s in args.sizes.split(",")):
                for gran in args.granularities.split(","):
                    t0 = time.perf_counter()
                    res = subprocess.run([sys.executable, __file__, "--one",
                                          f"{kind},{p},{gran}", "--repeats",
                                          str(args.repeats)], capture_output=True, text=True,
                                         env=os.environ)
                    if res.returncode:
                        why = (res.stderr.strip().splitlines() or [""])[-1] or (
                            f"killed by signal {-res.returncode} (out of memory?)"
                            if res.returncode < 0 else f"exit status {res.returncode}")
                        print(f"{kind} {p:g} {gran}: failed: {why}\n{res.stderr[-2000:]}",
                              flush=True)
                        points.append({"kind": kind, "target": p, "granularity": gran,
                                       "error": why})
                        continue
                    q = json.loads(res.stdout.strip().splitlines()[-1])
                    # measured, not assumed: the mark was reset and then moved with the fit
                    assert q["fit_peak_bytes"] >= q["hwm_after_reset"] > 0, q
                    points.append(q)
                    print(f"{kind:11s} p={q['weights']:.3g} {gran:7s} fit "
                          f"{q['fit_seconds']:.3g} s, predict {q['predict_seconds']:.3g} s, "
                          f"snapshot {q['snapshot_seconds']:.3g} s, peak "
                          f"{q['fit_peak_bytes'] / 1e9:.2f} GB (+"
                          f"{q['fit_extra_bytes'] / 1e9:.2f}; window "
                          f"{q['window_bytes'] / 1e9:.2f}) "
                          f"[{time.perf_counter() - t0:.0f} s]", flush=True)
        data = {"command": "OMP_NUM_THREADS=1 python benchmarks/scaling.py"
                           + ("" if args.sizes == ",".join(f"{s:g}" for s in SIZES)
                              else f" --sizes {args.sizes}"),
                "provenance": provenance(), "torch_threads": torch.get_num_threads(),
                "fp64_flops_per_second": fp64_rate(), "points": points}
        data["power_laws"] = summarize(data)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(json_safe(data), indent=1))
    data = json.loads(args.out.read_text())
    figure(data, args.out.with_suffix(".png"))
    for k, v in data["power_laws"].items():
        print(f"{k:45s} exponent {v['exponent']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
