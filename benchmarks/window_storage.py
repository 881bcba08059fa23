"""What a bfloat16 window costs in accuracy: the accelerator with ``window_dtype=
torch.bfloat16`` against its float32 window, on the README's examples and the race's
workloads.

    OMP_NUM_THREADS=1 python benchmarks/window_storage.py            # everything, seeds 0-1
    OMP_NUM_THREADS=1 python benchmarks/window_storage.py --tasks hnn --seeds 0 --out /tmp/w.json

Two measurements, each on the same machine and thread count:

* **Decisions, end to end.** Each README example (the first, as written; the ``lm``
  example, as written: 3000 steps) and each race workload (``kooptrain.experiments.race``'s
  ``koopman`` method on the task's reference optimizer and budget, seeds ``--seeds``) runs
  twice, with a float32 and a bfloat16 window. Reported: every attempt's (step, kept?,
  horizon), the first step where the two runs decide differently (``None``: never), jumps
  kept, and the final loss or held-out score of each.
* **The jump itself, on the same window.** Along the float32 run, two shadow recorders
  with the accelerator's settings (float32 and bfloat16) record the same weights and reset
  with it; at every fitted attempt each fits with the accelerator's engine options and
  predicts its horizons. Reported: the bfloat16 jump's distance from the float32 one,
  relative to the float32 jump's length (median and max over attempts and horizons).

Writes ``results/window_storage.json``. Not a test: nothing here asserts a result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from kooptrain import KoopmanAccelerator, SnapshotRecorder
from kooptrain.experiments.harness.jsonio import json_safe
from kooptrain.experiments.harness.provenance import provenance
from kooptrain.experiments.race.methods import Costs, make_run
from kooptrain.experiments.race.workloads import TASKS, workload

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "window_storage.json"
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def decisions(history) -> list:
    return [(h["step"], bool(h["accepted"]), h["horizon"]) for h in history]


def first_difference(a: list, b: list):
    for x, y in zip(a, b, strict=False):
        if x != y:
            return min(x[0], y[0])
    if len(a) != len(b):
        return (a if len(a) > len(b) else b)[min(len(a), len(b))][0]
    return None


class Shadows:
    """Float32 and bfloat16 recorders beside ``acc``'s: the same settings, the same
    weights, reset when it resets; ``compare()`` at each fitted attempt."""

    def __init__(self, acc: KoopmanAccelerator):
        s = acc.settings
        params = acc.recorder.partition.params
        self.acc, self.errors = acc, []
        self.recs = [SnapshotRecorder(acc.model, granularity=s.granularity, chunk=s.chunk,
                                      window=s.window, every=s.every, snapshot=s.snapshot,
                                      dtype=dt, params=params)
                     for dt in (torch.float32, torch.bfloat16)]

    def record(self) -> None:  # before acc.step: what its recorder sees
        for r in self.recs:
            r.record()

    def after(self, entry) -> None:
        if entry is not None and entry["fitted"]:
            self.compare()
        if self.acc.recorder.n_snapshots == 0:
            for r in self.recs:
                r.reset()

    def compare(self) -> None:
        hs = list(self.acc.horizons)
        opts = self.acc.settings.engine_options()
        now = self.recs[0].partition.flatten().double()
        jumps = []
        for r in self.recs:
            pred = r.fit(**opts).predict(steps=hs)  # {name: (*shape, k)}
            flat = torch.cat([pred[n].double().reshape(-1, len(hs))
                              for n in r.partition.names])
            jumps.append(flat - now[:, None])
        for k in range(len(hs)):
            size = float(jumps[0][:, k].norm())
            if size > 0:
                self.errors.append(float((jumps[1][:, k] - jumps[0][:, k]).norm()) / size)


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def readme_example(index: int, dtype) -> dict:
    """README block ``index`` as written, its accelerator given ``window_dtype``."""
    code = readme_blocks()[index]
    line = "KoopmanAccelerator(model, opt)"
    if line not in code:
        raise RuntimeError(f"README block {index} no longer builds {line}")
    code = code.replace(line, "KoopmanAccelerator(model, opt, window_dtype=WINDOW_DTYPE)")
    ns = {"WINDOW_DTYPE": dtype, "__name__": "readme"}
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(None):
        exec(compile(code, "README.md", "exec"), ns)  # noqa: S102
    acc = ns["acc"]
    out = {"decisions": decisions(acc.history), "jumps_kept": acc.jumps_accepted,
           "jumps_tried": acc.jumps_tried, "seconds": time.perf_counter() - t0}
    if "fast" in ns:
        out["loss"] = ns["fast"]
    else:
        out["loss"] = ns["task"].eval_loss(ns["model"])
    return out


def race_run(task: str, seed: int, dtype, shadows: bool) -> dict:
    w = workload(task)
    run = make_run(w, "koopman", w.best, seed, Costs.measure(w),
                   accelerator={} if dtype is None else {"window_dtype": dtype})
    shadow = Shadows(run.acc) if shadows else None
    if shadow is not None:  # record beside the accelerator, before its step
        step = run.acc.step

        def watched(*a, **k):
            shadow.record()
            entry = step(*a, **k)
            shadow.after(entry)
            return entry
        run.acc.step = watched
    t0 = time.perf_counter()
    for _ in range(w.budget):
        run.step()
    out = {"decisions": decisions(run.history()), **run.jumps(),
           "heldout": run.score()["heldout"], "seconds": time.perf_counter() - t0}
    if shadow is not None:
        out["jump_errors"] = shadow.errors
    return out


def pair(a: dict, b: dict) -> dict:
    return {"first_difference": first_difference(a["decisions"], b["decisions"]),
            "same_decisions": a["decisions"] == b["decisions"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--readme", default="0,2", help="README python blocks to run ('' none)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    data = {"command": "OMP_NUM_THREADS=1 python benchmarks/window_storage.py",
            "provenance": provenance(), "torch_threads": torch.get_num_threads(),
            "readme": {}, "race": {}}
    for i in (int(s) for s in args.readme.split(",") if s):
        runs = {name: readme_example(i, dt) for name, dt in DTYPES.items()}
        data["readme"][f"block {i}"] = {**runs, **pair(runs["float32"], runs["bfloat16"])}
        print(f"README block {i}: loss {runs['float32']['loss']:.4g} (float32) vs "
              f"{runs['bfloat16']['loss']:.4g} (bfloat16); kept "
              f"{runs['float32']['jumps_kept']} vs {runs['bfloat16']['jumps_kept']}; first "
              f"difference {data['readme'][f'block {i}']['first_difference']}", flush=True)
    for task in (t for t in args.tasks.split(",") if t):
        data["race"][task] = {}
        for seed in (int(s) for s in args.seeds.split(",")):
            runs = {"float32": race_run(task, seed, None, shadows=True),
                    "bfloat16": race_run(task, seed, torch.bfloat16, shadows=False)}
            errs = runs["float32"]["jump_errors"]
            summary = {"jump_error_median": float(np.median(errs)) if errs else None,
                       "jump_error_max": float(np.max(errs)) if errs else None,
                       "jumps_compared": len(errs)}
            data["race"][task][str(seed)] = {**runs, **pair(*runs.values()), **summary}
            print(f"{task:12s} seed {seed}: held-out {runs['float32']['heldout']:.4g} vs "
                  f"{runs['bfloat16']['heldout']:.4g}; kept {runs['float32']['jumps_accepted']}"
                  f" vs {runs['bfloat16']['jumps_accepted']}; first difference "
                  f"{data['race'][task][str(seed)]['first_difference']}; jump error median "
                  f"{summary['jump_error_median']} max {summary['jump_error_max']} "
                  f"({len(errs)} horizons)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(json_safe(data), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
