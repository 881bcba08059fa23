"""What recording costs: time per optimizer step and memory, on a model of >= 1M parameters.

    OMP_NUM_THREADS=2 python benchmarks/overhead.py     # writes results/overhead.json

An MLP 784 -> 1024 -> 512 -> 10 (1.33M parameters), batch 256, Adam. Times the plain
step and the step followed by ``KoopmanAccelerator.step()`` without a closure (so only
recording runs) for ``every`` in 1, 5, 20 (window 10, the default), interleaved
and repeated 7 times (medians), and reports the accelerator's buffer memory
next to the parameters' memory. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from kooptrain import KoopmanAccelerator
from kooptrain.experiments.harness.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(),
                          nn.Linear(512, 10))
    p = sum(q.numel() for q in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    accs = {every: KoopmanAccelerator(model, opt, window=10, every=every,
                                      horizons=tuple(every * 2**k for k in range(1, 8)))
            for every in (1, 5, 20)}
    extras = {"plain": lambda: None, **{e: a.step for e, a in accs.items()}}
    for extra in extras.values():  # warm-up
        for _ in range(20):
            step()
            extra()
    # interleave the variants, repeat, take medians: the machine's speed drifts over time
    times = {k: [] for k in extras}
    for _ in range(7):
        for k, extra in extras.items():
            t0 = time.perf_counter()
            for _ in range(50):
                step()
                extra()
            times[k].append((time.perf_counter() - t0) / 50)
    base = statistics.median(times["plain"])
    rows = []
    for every, acc in accs.items():
        t = statistics.median(times[every])
        rows.append({"every": every, "window": 10, "step_seconds": t,
                     "overhead_fraction": t / base - 1,
                     "buffer_bytes": acc.recorder.memory_bytes, "param_bytes": 4 * p,
                     "memory_ratio": acc.recorder.memory_bytes / (4 * p)})
        print(f"every={every:2d}: step {t * 1e3:.2f} ms vs plain {base * 1e3:.2f} ms "
              f"({100 * (t / base - 1):+.1f}%), buffers {acc.recorder.memory_bytes / 2**20:.0f} "
              f"MiB = {acc.recorder.memory_bytes / (4 * p):.1f}x the parameters")
    out = {"command": "OMP_NUM_THREADS=2 python benchmarks/overhead.py",
           "provenance": provenance(), "params": p, "plain_step_seconds": base, "rows": rows}
    (ROOT / "results" / "overhead.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
