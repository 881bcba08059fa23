"""The PINN hand-off: Adam, one verified Koopman jump at the switch, then L-BFGS
(``adam-koopman-lbfgs``), against Adam then L-BFGS at the same switch step, L-BFGS alone
and Adam alone, on the race's ``pinn`` workload.

    OMP_NUM_THREADS=1 python benchmarks/pinn_handoff.py [--seeds 3] [--first-seed 0]

All runs of a seed advance in lockstep through the race's harness (tuned lr, meters, FLOP
counts; the targets are plain Adam's held-out losses at 25/50/100% of its budget, as in
``kooptrain race pinn``). It reports, per method, the medians over seeds of compute, wall
time and steps to each target as ratios to the **best of L-BFGS and Adam then L-BFGS**
(above 1 is faster), the final held-out loss, and what each hand-off kept. Writes
``results/pinn-handoff.json``. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from kooptrain.experiments.harness.jsonio import json_safe
from kooptrain.experiments.harness.plan import progress_bar
from kooptrain.experiments.harness.provenance import provenance
from kooptrain.experiments.race import summary
from kooptrain.experiments.race.experiment import lockstep
from kooptrain.experiments.race.methods import HANDOFF, Costs, make_run
from kooptrain.experiments.race.workloads import workload

ROOT = Path(__file__).resolve().parents[1]
PLAN = [("plain", "adam"), ("plain-copy", "adam"), ("plain", "lbfgs"), ("plain", "adam-lbfgs"),
        ("adam-koopman-lbfgs", "adam-lbfgs")]
ANCHORS = (("plain", "lbfgs"), ("plain", "adam-lbfgs"))
# Koopman jumps along L-BFGS's own iterates (issue #26): the accelerator on L-BFGS alone,
# verified by the race's judge; ``--lbfgs-designs`` adds them to the plan
LBFGS_DESIGNS = {
    "defaults": {},
    "every 5": {"every": 5},
    "every 5, state reset": {"every": 5, "optimizer_state": "reset"},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "results" / "pinn-handoff.json"))
    ap.add_argument("--lbfgs-designs", default="",
                    help="';'-separated LBFGS_DESIGNS to add: Koopman jumps on L-BFGS")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    lbfgs = [n for n in args.lbfgs_designs.split(";") if n]
    if set(lbfgs) - set(LBFGS_DESIGNS):
        ap.error(f"unknown L-BFGS design(s) {sorted(set(lbfgs) - set(LBFGS_DESIGNS))}; "
                 f"choose from {list(LBFGS_DESIGNS)}")
    prov = provenance()
    w = workload("pinn", budget=args.steps)
    costs = Costs.measure(w)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    bar = progress_bar(not args.no_progress, total=len(seeds) * w.budget, unit="step",
                       desc=f"pinn: {len(PLAN)} runs in lockstep")
    per_seed, handoffs = [], []
    for seed in seeds:
        runs = {f"{m}:{o}": make_run(w, m, o, seed, costs) for m, o in PLAN}
        for name in lbfgs:
            runs[f"koopman-lbfgs {name}:lbfgs"] = make_run(
                w, "koopman", "lbfgs", seed, costs, accelerator=dict(LBFGS_DESIGNS[name]))
        per_seed.append(lockstep(w, seed, runs, bar))
        handoffs.append(runs["adam-koopman-lbfgs:adam-lbfgs"].handoff)
    if bar is not None:
        bar.close()
    rows, targets = summary.rows_for(per_seed, "adam", w.budget)
    med = summary.summarize(rows)
    table = {}
    for name in targets["heldout"]:
        at = {(r["method"], r["optimizer"]): r for r in med if r["target_name"] == name}
        for m in summary.MEASURES:
            anchor = min(at[a][f"median_{m}"] for a in ANCHORS)
            for key, r in at.items():
                v = r[f"median_{m}"]
                table.setdefault(name, {}).setdefault(":".join(key), {})[m] = \
                    anchor / v if math.isfinite(v) and math.isfinite(anchor) else None
        for key, r in at.items():
            table[name][":".join(key)] |= {"reached": r["reached"],
                                           "final_heldout": r["final_heldout"]}
    for name, t in table.items():
        for key, r in t.items():
            fmt = {m: "-" if r[m] is None else f"x{r[m]:.2f}" for m in summary.MEASURES}
            print(f"{name:5s} {key:32s} compute {fmt['flops']:>6s}  wall {fmt['wall']:>6s}  "
                  f"steps {fmt['steps']:>6s}  reached {r['reached']}/{len(seeds)}  "
                  f"final {r['final_heldout']:.4g}")
    print("kept at the switch:", [h["kept"] for h in handoffs])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(json_safe({
        "command": "python benchmarks/pinn_handoff.py"
                   + (f" --seeds {args.seeds}" if args.seeds != 3 else "")
                   + (f" --first-seed {args.first_seed}" if args.first_seed else "")
                   + (f" --steps {args.steps}" if args.steps else "")
                   + (f" --lbfgs-designs '{args.lbfgs_designs}'" if lbfgs else ""),
        "provenance": prov, "steps": w.budget, "lbfgs_designs": {
            n: LBFGS_DESIGNS[n] for n in lbfgs}, "seeds": seeds, "handoff": HANDOFF,
        "costs": vars(costs), "targets": targets, "anchor": "best of " + ", ".join(
            ":".join(a) for a in ANCHORS), "ratios_to_anchor": table, "handoffs": handoffs,
        "summary": med}), indent=1, default=list))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
