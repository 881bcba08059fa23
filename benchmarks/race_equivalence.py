"""Do two versions of the code race alike? Each source tree races the same tasks (every
method, one seed, a short budget) in a fresh process; the results must agree in every
count, decision, curve and history (wall, CPU and seconds aside).

    python benchmarks/race_equivalence.py --old /path/to/old/src --tasks hnn mnist1d tune

``--old``: the ``src`` folder of the other version (a clone at another commit); the new
one is this checkout's. ``tune`` compares ``race.tune("hnn", steps=60)``. Writes
``results/race-equivalence.json``. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"hnn": 300, "mnist1d": 300, "pinn": 250, "mnist1d-cnn": 200, "lm": 200}
CHILD = """
import json, sys
from kooptrain.experiments.harness.jsonio import json_safe
from kooptrain.experiments.race import experiment as race
task, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
res = race.tune("hnn", steps=steps, progress=False) if task == "tune" else \\
    race.run(task, seeds=1, steps=steps, full=True, progress=False)
json.dump(json_safe(res), open(out, "w"))
"""


def timeless(res: dict) -> dict:
    """The results without what a clock measures (and without provenance)."""
    res = dict(res)
    for k in ("provenance", "costs", "summary"):
        res.pop(k, None)
    if "settings" in res:
        res["settings"] = {k: v for k, v in res["settings"].items()
                           if k not in ("threads", "device")}
        res["results"] = [{k: v for k, v in r.items() if "wall" not in k and "cpu" not in k}
                          for r in res["results"]]
        res["curves"] = {k: [[p[2:] for p in c] for c in v] for k, v in res["curves"].items()}
        res["totals"] = {k: [{a: b for a, b in t.items() if a not in ("wall", "cpu")}
                             for t in v] for k, v in res["totals"].items()}
        res["histories"] = {k: [{a: b for a, b in e.items() if "seconds" not in a} for e in v]
                            for k, v in res["histories"].items()}
    return res


def race_with(src: str, task: str, tmp: Path) -> dict:
    out = tmp / f"{Path(src).parent.name}-{task}.json"
    env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS="1")
    steps = 60 if task == "tune" else STEPS[task]
    subprocess.run([sys.executable, "-c", CHILD, task, str(steps), str(out)], env=env,
                   check=True)
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the src folder of the other version")
    ap.add_argument("--tasks", nargs="+", default=[*STEPS, "tune"])
    ap.add_argument("--out", default=str(ROOT / "results" / "race-equivalence.json"))
    args = ap.parse_args()
    new = str(ROOT / "src")
    commit = {s: subprocess.run(["git", "rev-parse", "HEAD"], cwd=s, capture_output=True,
                                text=True).stdout.strip() for s in (args.old, new)}
    report = {"command": "python benchmarks/race_equivalence.py --old OLD/src --tasks "
                         + " ".join(args.tasks),
              "old_commit": commit[args.old], "new_commit": commit[new], "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            a, b = (timeless(race_with(s, task, Path(tmp))) for s in (args.old, new))
            differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            report["tasks"][task] = {"steps": 60 if task == "tune" else STEPS[task],
                                     "identical": not differ, "differing": differ}
            print(f"{task}: {'identical' if not differ else 'DIFFERENT in ' + str(differ)}",
                  flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all(t["identical"] for t in report["tasks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
