"""Can the race's clock be trusted on your machine, and what does the harness cost?

    OMP_NUM_THREADS=1 python benchmarks/race_harness.py            # examples/race_gru.py
    OMP_NUM_THREADS=1 python benchmarks/race_harness.py --task my_task.py --steps 500

**Noise band.** The reference optimizer and its identical copy race alone
(``--methods plain``): the two make the same steps, so any difference in their wall time to
the targets is the clock's noise (``summary.noise_band``). Measured ``--repeats`` times in
two conditions: *quiet* (nothing else of ours running) and *busy* (a second process racing
the same task beside it, started first and still running when the measured race ends).

**Harness overhead.** In one process, interleaved: the task's training loop run bare (draw a
batch, zero_grad, loss, backward, clip, step, schedule) and the same loop as the race runs it
(``race.run`` with the reference and its copy). The overhead is the race's wall time less
its scoring (the evaluations, untimed in the race too) less twice the bare loop, over twice
the bare loop: what lockstep, meters, FLOP tallies, setup and summary add per run.

Writes ``results/race-harness.json``. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from kooptrain.experiments.harness.jsonio import json_safe
from kooptrain.experiments.harness.provenance import provenance
from kooptrain.experiments.race import experiment as race
from kooptrain.experiments.race import methods
from kooptrain.experiments.race.summary import noise_band
from kooptrain.experiments.race.task import load_task

ROOT = Path(__file__).resolve().parents[1]


def band(task, steps: int) -> float:
    res = race.run(task, seeds=1, steps=steps, methods=["plain"], progress=False)
    return noise_band(res)["wall"]["factor"]


def bare_loop(task, steps: int) -> float:
    """Seconds of the task's training loop for ``steps`` steps, nothing else."""
    ref = task.optimizers[task.reference]
    model = task.model(0)
    opt = ref.make([p for p in model.parameters() if p.requires_grad], lr=ref.lr)
    sched = ref.schedule(opt, steps) if ref.schedule else None
    batches = task.batches(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        opt.zero_grad(set_to_none=True)
        task.loss(model, batch).backward()
        if task.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), task.clip)
        opt.step()
        if sched is not None:
            sched.step()
    return time.perf_counter() - t0


@contextlib.contextmanager
def scoring_clock():
    """Times every ``Run.score`` call (the race's untimed evaluations)."""
    spent = [0.0]
    original = methods.Run.score

    def timed(self):
        t0 = time.perf_counter()
        try:
            return original(self)
        finally:
            spent[0] += time.perf_counter() - t0

    methods.Run.score = timed
    try:
        yield spent
    finally:
        methods.Run.score = original


def raced(task, steps: int) -> dict:
    with scoring_clock() as spent:
        t0 = time.perf_counter()
        res = race.run(task, seeds=1, steps=steps, methods=["plain"], progress=False)
        total = time.perf_counter() - t0
    meter = sum(t[0]["wall"] for t in res["totals"].values())
    return {"total": total, "scoring": spent[0], "meters": meter,
            "runs": len(res["totals"])}


def beside(spec: str, steps: int) -> subprocess.Popen:
    """A second process of the same size: the same race, in a loop, until killed."""
    code = ("import sys\nfrom kooptrain.experiments.race import experiment as race\n"
            "from kooptrain.experiments.race.task import load_task\n"
            f"t = load_task({spec!r})\n"
            f"while True:\n    race.run(t, seeds=1, steps={steps}, methods=['plain'], "
            "progress=False)\n")
    return subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default=str(ROOT / "examples" / "race_gru.py"))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "race-harness.json"))
    args = ap.parse_args()
    prov = provenance()
    task = load_task(args.task)
    quiet, busy = [], []
    for r in range(args.repeats):  # the conditions alternate, so a slow phase hits both
        quiet.append(band(task, args.steps))
        other = beside(args.task, args.steps)
        try:
            time.sleep(5.0)  # the other process is past its imports and training
            busy.append(band(task, args.steps))
        finally:
            other.kill()
            other.wait()
        print(f"repeat {r + 1}: band quiet x{quiet[-1]:.3f}, busy x{busy[-1]:.3f}", flush=True)
    bare, runs = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(task, args.steps))
        runs.append(raced(task, args.steps))
    overhead = [(r["total"] - r["scoring"] - r["runs"] * b) / (r["runs"] * b)
                for r, b in zip(runs, bare, strict=True)]
    meter = [r["meters"] / (r["runs"] * b) for r, b in zip(runs, bare, strict=True)]
    out = {"command": "OMP_NUM_THREADS=1 python benchmarks/race_harness.py"
                      + ("" if args.task.endswith("examples/race_gru.py") else
                         f" --task {args.task}") + f" --steps {args.steps}",
           "provenance": prov, "task": task.name, "steps": args.steps,
           "repeats": args.repeats,
           "noise_band": {"quiet": quiet, "busy": busy, "worst_quiet": max(quiet),
                          "worst_busy": max(busy), "goal_quiet": 1.03, "goal_busy": 1.10,
                          "quiet_met": max(quiet) <= 1.03, "busy_met": max(busy) <= 1.10},
           "overhead": {"bare_seconds": bare, "race": runs, "fraction": overhead,
                        "median": statistics.median(overhead), "goal": 0.03,
                        "met": statistics.median(overhead) <= 0.03,
                        "meter_over_bare": meter}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(json_safe(out), indent=1) + "\n")
    nb, ov = out["noise_band"], out["overhead"]
    print(f"{task.name}, {args.steps} steps, {prov.get('threads')} thread(s): noise band "
          f"worst x{nb['worst_quiet']:.3f} quiet (goal 1.03), x{nb['worst_busy']:.3f} busy "
          f"(goal 1.10); harness overhead {100 * ov['median']:.1f}% of a run (goal 3%), "
          f"meters {statistics.median(meter):.3f} of the bare loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
