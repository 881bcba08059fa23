"""Which accelerator design wins: a sweep of KoopmanAccelerator settings, timed to target.

    OMP_NUM_THREADS=2 python benchmarks/accelerator_design.py            # hnn + mnist1d
    python benchmarks/accelerator_design.py --tasks hnn --seeds 1 --quick

For each task, optimizer and design, trains with the race's harness
(``kooptrain.experiments.race.train``: same budget, lrs, timing rules) and records the
wall time and steps to the optimizer's own 50% target (its median plain loss at
half the budget), next to the plain optimizer. Writes
``results/accelerator-design.json`` and prints a table. Winners become the
``KoopmanAccelerator`` defaults; every design tried is reported, losers included.
Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from kooptrain.experiments import race
from kooptrain.experiments.harness.jsonio import json_safe
from kooptrain.experiments.harness.provenance import provenance
from kooptrain.experiments.race import summary

ROOT = Path(__file__).resolve().parents[1]
BASE = {"granularity": "network", "observables": "affine", "stabilize": "clip",
        "window": 20, "every": 1, "optimizer_state": "momentum",
        "horizons": (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)}
DESIGNS = {
    "base (network affine clip, m=20, every 1)": {},
    "every 5": {"every": 5, "horizons": (5, 10, 20, 40, 80, 160, 320, 640, 1280)},
    "every 20": {"every": 20, "horizons": (20, 40, 80, 160, 320, 640, 1280)},
    "window 10": {"window": 10},
    "window 40": {"window": 40},
    "layer": {"granularity": "layer"},
    "node": {"granularity": "node"},
    "state keep": {"optimizer_state": "keep"},
    "state reset": {"optimizer_state": "reset"},
    "short horizons (2..64)": {"horizons": (2, 4, 8, 16, 32, 64)},
    "with fixed point": {"fixed_point": True},
    "identity, no clip (paper)": {"observables": "identity", "stabilize": None},
    "margin 1%": {"margin": 0.01},
    "window 10, short horizons": {"window": 10, "horizons": (2, 4, 8, 16, 32, 64)},
    "window 10, reset": {"window": 10, "optimizer_state": "reset"},
    "window 10, margin 1%": {"window": 10, "margin": 0.01},
    "window 10, reset, short, margin 1%": {"window": 10, "optimizer_state": "reset",
                                           "margin": 0.01, "horizons": (2, 4, 8, 16, 32, 64)},
    "window 10, layer": {"window": 10, "granularity": "layer"},
    "reset, short, margin 1%": {"optimizer_state": "reset", "margin": 0.01,
                                "horizons": (2, 4, 8, 16, 32, 64)},
    "window 6": {"window": 6},
    "window 10, margin 1%, backoff 64": {"window": 10, "margin": 0.01, "max_backoff": 64},
    "window 10, margin 1%, node, residual-scored": {"window": 10, "margin": 0.01,
                                                    "granularity": "node", "max_residual": 0.5},
    "window 10, margin 1%, layer, residual-scored": {"window": 10, "margin": 0.01,
                                                     "granularity": "layer",
                                                     "max_residual": 0.5},
    "linear predictor (ablation)": {"predictor": "linear"},
    "average predictor (LAWA)": {"predictor": "average"},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="hnn,mnist1d")
    ap.add_argument("--optimizers", default="adam,adadelta")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="only the first 4 designs")
    ap.add_argument("--only", default=None, help="design names to run, separated by ;")
    ap.add_argument("--append", action="store_true",
                    help="add the rows to the existing JSON (replacing same task/opt/design)")
    ap.add_argument("--out", default=str(ROOT / "results" / "accelerator-design.json"))
    args = ap.parse_args()
    designs = dict(list(DESIGNS.items())[:4]) if args.quick else DESIGNS
    if args.only:
        designs = {k: DESIGNS[k] for k in args.only.split(";")}
    rows = []
    for task in args.tasks.split(","):
        tuning = json.loads((ROOT / "results" / "race" / f"tuning-{task}.json").read_text())
        problem = race.make_problem(task)
        steps, every = race.BUDGET[task], race.EVAL_EVERY[task]
        for opt in args.optimizers.split(","):
            lr = tuning["choice"][opt]
            plain = [race.train(task, problem, "plain", opt, lr, seed, steps, every)["curve"]
                     for seed in range(args.seeds)]
            # this optimizer's own 50% target: its median loss at half the budget
            target = summary.fix_targets({opt: plain}, steps)["targets"]["50%"]
            runs = [("plain", None)] + [(name, {**BASE, **d}) for name, d in designs.items()]
            for name, kw in runs:
                secs, stps, acc, tried = [], [], 0, 0
                for seed in range(args.seeds):
                    method = "plain" if kw is None else "koopman"
                    r = {"curve": plain[seed], "jumps_accepted": 0, "jumps_tried": 0} \
                        if kw is None else race.train(task, problem, method, opt, lr, seed,
                                                      steps, every, kw)
                    s, st = summary.first_reach(r["curve"], target)
                    secs.append(math.inf if s is None else s)
                    stps.append(math.inf if st is None else st)
                    acc, tried = acc + r["jumps_accepted"], tried + r["jumps_tried"]
                row = {"task": task, "optimizer": opt, "design": name, "settings": kw,
                       "target": target, "median_seconds": statistics.median(secs),
                       "median_steps": statistics.median(stps), "seconds": secs,
                       "jumps_accepted": acc, "jumps_tried": tried}
                rows.append(row)
                plain = next(r for r in rows if r["task"] == task and r["optimizer"] == opt
                             and r["design"] == "plain")
                ratio = plain["median_seconds"] / row["median_seconds"] \
                    if row["median_seconds"] > 0 else math.inf
                # the ratio against this invocation's own plain run (--append mixes runs)
                row["plain_seconds"], row["speedup_vs_plain"] = plain["median_seconds"], ratio
                print(f"{task:8s} {opt:9s} {name:42s} {row['median_seconds']:8.2f} s "
                      f"{row['median_steps']:7.0f} steps  x{ratio:5.2f} vs plain  "
                      f"jumps {acc}/{tried}", flush=True)
    if args.append and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())["rows"]
        mine = {(r["task"], r["optimizer"], r["design"]) for r in rows}
        rows = [r for r in old if (r["task"], r["optimizer"], r["design"]) not in mine] + rows
    out = {"command": "python benchmarks/accelerator_design.py", "provenance": provenance(),
           "base": {k: list(v) if isinstance(v, tuple) else v for k, v in BASE.items()},
           "seeds": args.seeds, "rows": rows}
    Path(args.out).write_text(json.dumps(json_safe(out), indent=1, default=list))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
