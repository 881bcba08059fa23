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
    cap = rep["same_cpu_capability"]
    rep["runs"] = [{"json": j, "date": r["provenance"]["date"],
                    "commit": r["provenance"]["git_commit"]}
                   for j, r in ((args.first, a), (args.rerun, b))]
    Path(args.out).write_text(json.dumps(json_safe(rep), indent=1))
    print(f"identical steps {rep['identical_steps']}, identical compute "
          f"{rep['identical_flops']}; worst change of a wall ratio x{rep['worst_ratio_change']:.3f}"
          f" against the band x{rep['band']:.3f}: "
          f"{'within' if rep['within_band'] else 'OUTSIDE'} the band; the verdict's ratio "
          f"(Koopman on the reference) moved x{rep['verdict_ratio_change'] or float('nan'):.3f}:"
          f" {'within' if rep['verdict_within_band'] else 'OUTSIDE'} the band; the CPU "
          f"kernels torch chose: "
          f"{ {None: 'not recorded by both', True: 'the same', False: 'differ'}[cap] }")


if __name__ == "__main__":
    main()
