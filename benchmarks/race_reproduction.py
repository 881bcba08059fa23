"""Does a rerun of a race reproduce it? Steps and compute to every target exactly, and each
method's wall-time ratio to the reference within the noise band.

    python benchmarks/race_reproduction.py results/race/hnn/results.json \
        results/race/rerun/hnn/results.json --out results/race/rerun/hnn/reproduction.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kooptrain.experiments.harness.jsonio import json_safe, load_results
from kooptrain.experiments.race.summary import reproduction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first")
    ap.add_argument("rerun")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    a, b = load_results(args.first), load_results(args.rerun)
    rep = reproduction(a, b)
    rep["runs"] = [{"json": j, "date": r["provenance"]["date"],
                    "commit": r["provenance"]["git_commit"], "cpu": r["provenance"]["cpu"],
                    "cpu_capability": r["provenance"].get("cpu_capability")}
                   for j, r in ((args.first, a), (args.rerun, b))]
    Path(args.out).write_text(json.dumps(json_safe(rep), indent=1))
    words = {None: "too little recorded to tell", True: "the same", False: "differ"}
    print(f"identical steps {rep['identical_steps']}, identical compute "
          f"{rep['identical_flops']}; float32 arithmetic (CPU model, kernels, torch): "
          f"{words[rep['same_arithmetic']]}")
    for measure, p in (("wall", ""), ("thread-CPU", "cpu_")):
        v, worst = rep[f"{p}verdict_ratio_change"], rep[f"{p}worst_ratio_change"]
        print(f"{measure}: median change of a ratio to the reference "
              f"x{rep[p + 'median_ratio_change']:.3f}, worst x{worst:.3f}"
              f" against the two runs' bands x{rep[p + 'band']:.3f}: "
              f"{'within' if rep[p + 'within_band'] else 'OUTSIDE'}; the verdict's ratio "
              f"(Koopman on the reference) moved x{v if v is not None else float('nan'):.3f}: "
              f"{'within' if rep[p + 'verdict_within_band'] else 'OUTSIDE'}")


if __name__ == "__main__":
    main()
