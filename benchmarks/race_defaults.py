"""How long `kooptrain race TASK` takes with its defaults (no --full), per task: the budget
promise is within 10 minutes on 2 cores. Each task runs alone, one after the other, in a
fresh process. Writes results/race/defaults.json.

    OMP_NUM_THREADS=2 python benchmarks/race_defaults.py [--tasks hnn,lm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kooptrain.experiments.harness.provenance import provenance
from kooptrain.experiments.race.workloads import TASKS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--out", default="results/race/defaults.json")
    args = ap.parse_args()
    rows = []
    for task in args.tasks.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "kooptrain.experiments.cli", "race", task,
                                "--out", tmp, "--no-progress"], capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            res = json.loads(Path(tmp, "results.json").read_text()) if p.returncode == 0 \
                else {}
        rows.append({"task": task, "returncode": p.returncode, "seconds": round(seconds, 1),
                     "runs": len(res.get("settings", {}).get("plan", [])),
                     "seeds": res.get("settings", {}).get("seeds"),
                     "within_10_minutes": p.returncode == 0 and seconds <= 600})
        print(rows[-1], flush=True)
    Path(args.out).write_text(json.dumps({
        "provenance": {**provenance(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
