"""Which ``KoopmanAverage`` design makes the best evaluation copy on a race workload, against
the copies a practitioner would keep instead: EMA, SWA, LAWA and offline RNA, each scored on
its copy, beside the plain reference (scored on its training weights).

    OMP_NUM_THREADS=1 python benchmarks/average_design.py hnn
    OMP_NUM_THREADS=1 python benchmarks/average_design.py mnist1d --designs "weights;ema"
    python benchmarks/average_design.py --table     # docs/average.md's table, from results/

Every seed runs, in lockstep through the race's harness (``kooptrain.experiments.race``:
the same workload, tuned lr, batches, meters and FLOP counts as ``kooptrain race``), the
reference optimizer plain, its identical copy (the noise band), ``ema``, ``swa``, ``lawa``,
``rna-offline`` and one ``koopman-average`` run per design (a design on Schedule-Free's
``x`` also runs Schedule-Free itself). All but LAWA (verified jumps of
the training weights to their window's average) train the same weights; only the scored copy
differs. It reports the medians over seeds of wall time,
compute and steps to the 50% held-out target as ratios to plain (above 1 is faster), and
the final held-out loss. Writes ``results/average-design/TASK.json``, losers included. The
default seeds are 0, 1, 2 (the race's); ``--first-seed 100`` tunes on seeds the race does
not report. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from accelerator_design import ratios

from kooptrain.experiments.harness.jsonio import json_safe
from kooptrain.experiments.harness.plan import progress_bar
from kooptrain.experiments.harness.provenance import provenance
from kooptrain.experiments.race import summary
from kooptrain.experiments.race.experiment import lockstep
from kooptrain.experiments.race.methods import Costs, make_run
from kooptrain.experiments.race.workloads import TASKS, TUNED_EXTRAPOLATION, workload

ROOT = Path(__file__).resolve().parents[1]

# KoopmanAverage settings on top of its defaults (every 10, window 8, network, the EMA,
# lam 1e-3: "ema, every 10, window 8, lam 1e-3", chosen on seeds 100-102); the rest were
# its designs on the way there
DESIGNS = {
    "defaults": {},
    "defaults, weights": {"source": "weights"},
    "weights": {"source": "weights", "every": 25, "window": 6, "lam": 1e-5},
    "ema": {"every": 25, "window": 6, "lam": 1e-5},
    "weights, layer": {"source": "weights", "every": 25, "window": 6, "lam": 1e-5,
                       "granularity": "layer"},
    "ema, layer": {"every": 25, "window": 6, "lam": 1e-5, "granularity": "layer"},
    "weights, every 10, window 8": {"source": "weights", "lam": 1e-5},
    "ema, every 10, window 8": {"lam": 1e-5},
    "weights, lam 1e-3": {"source": "weights", "every": 25, "window": 6},
    "ema, lam 1e-3": {"every": 25, "window": 6},
    "weights, every 50, window 6": {"source": "weights", "every": 50, "window": 6,
                                    "lam": 1e-5},
    "ema, every 50, window 6": {"every": 50, "window": 6, "lam": 1e-5},
    "ema, every 10, window 8, lam 1e-3": {},
    "ema, every 10, window 8, lam 1e-2": {"lam": 1e-2},
    "ema, every 5, window 10": {"every": 5, "window": 10, "lam": 1e-5},
    "ema, every 5, window 10, lam 1e-3": {"every": 5, "window": 10},
    # Koopman on top of Schedule-Free (issue #26): the copy fits Schedule-Free's own average
    # x (raced beside Schedule-Free itself, scored at x), or an EMA of x
    "schedulefree x": {"base": "schedulefree"},
    "schedulefree x, ema": {"base": "schedulefree", "source": "ema"},
}
RIVALS = ("ema", "swa", "rna-offline", "lawa")


def race_designs(task: str, designs: dict, seeds: list[int], steps: int | None,
                 progress: bool, rivals: tuple[str, ...] = RIVALS):
    w = workload(task, budget=steps)
    costs = Costs.measure(w)
    ref = w.best
    bar = progress_bar(progress, total=len(seeds) * w.budget, unit="step",
                       desc=f"{task}: {len(designs)} designs + {len(rivals) + 2} in lockstep")
    per_seed = []
    for seed in seeds:
        runs = {f"{m}:{ref}": make_run(w, m, ref, seed, costs,
                                       extrapolation=TUNED_EXTRAPOLATION[task])
                for m in ("plain", "plain-copy") + tuple(rivals)}
        if any(kw.get("base") == "schedulefree" for kw in designs.values()):
            runs["schedulefree:schedulefree"] = make_run(w, "schedulefree", "schedulefree",
                                                         seed, costs)
        for name, kw in designs.items():
            kw = dict(kw)
            if kw.pop("base", None) == "schedulefree":
                runs[f"KA {name}:schedulefree"] = make_run(
                    w, "schedulefree-koopman-average", "schedulefree", seed, costs, average=kw)
            else:
                runs[f"KA {name}:{ref}"] = make_run(w, "koopman-average", ref, seed, costs,
                                                    average=kw)
        per_seed.append(lockstep(w, seed, runs, bar))
    if bar is not None:
        bar.close()
    return w, costs, per_seed


def markdown(tasks) -> str:
    """The docs' table from the committed ``results/average-design/TASK.json``: compute
    (and wall) to the 50% target per copy and task, and the median final held-out loss."""
    rows = {"ema": "EMA", "swa": "SWA", "lawa": "LAWA", "rna-offline": "offline RNA",
            "KA defaults": "**KoopmanAverage** (defaults: EMA source)",
            "KA defaults, weights": "KoopmanAverage, weights source"}
    have = [t for t in tasks if (ROOT / "results" / "average-design" / f"{t}.json").exists()]
    res = {t: json.loads((ROOT / "results" / "average-design" / f"{t}.json").read_text())
           for t in have}
    out = ["| copy | " + " | ".join(have) + " |", "|---" * (len(have) + 1) + "|"]
    for key, name in rows.items():
        cells = []
        for t in have:
            r = res[t]["ratios_at_50%"].get(key)
            cells.append("-" if r is None else "never" if not r["flops"] else
                         f"{r['flops']:.2f} ({r['wall']:.2f})")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    if sys.argv[1:2] == ["--table"]:
        print(markdown(sys.argv[2:] or TASKS))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task", choices=TASKS)
    ap.add_argument("--designs", default=None, help="design names, separated by ';'")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="budget (default: the race's)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--rivals", default=",".join(RIVALS),
                    help=f"comma-separated copies to race beside (default {','.join(RIVALS)}; "
                         "'' for none)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    rivals = tuple(r for r in args.rivals.split(",") if r)
    if set(rivals) - set(RIVALS):
        ap.error(f"unknown rival(s) {sorted(set(rivals) - set(RIVALS))}; choose from {RIVALS}")
    names = args.designs.split(";") if args.designs else list(DESIGNS)
    unknown = [n for n in names if n not in DESIGNS]
    if unknown:
        ap.error(f"unknown design(s) {unknown}; choose from {list(DESIGNS)}")
    prov = provenance()
    designs = {n: DESIGNS[n] for n in names}
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    w, costs, per_seed = race_designs(args.task, designs, seeds, args.steps,
                                      not args.no_progress, rivals)
    rows, targets = summary.rows_for(per_seed, w.best, w.budget)
    med = {(r["method"], r["optimizer"]): r for r in summary.summarize(rows)
           if r["target_name"] == "50%"}
    table = ratios(med, w.best)
    for name, r in table.items():
        print(f"{args.task:12s} {name:32s} wall x{r['wall']:.2f}  compute x{r['flops']:.2f}  "
              f"steps x{r['steps']:.2f}  reached {r['reached']}/{r['n_seeds']}  "
              f"final {r['final_heldout']:.4g}")
    default = ROOT / "results" / "average-design" / (
        f"{args.task}.json" if args.first_seed == 0 else
        f"{args.task}-seeds{args.first_seed}.json")
    out = Path(args.out or default)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe({
        "command": "python benchmarks/average_design.py " + args.task
                   + (f" --designs '{args.designs}'" if args.designs else "")
                   + (f" --seeds {args.seeds}" if args.seeds != 3 else "")
                   + (f" --first-seed {args.first_seed}" if args.first_seed else "")
                   + (f" --steps {args.steps}" if args.steps else "")
                   + (f" --rivals '{args.rivals}'" if rivals != RIVALS else ""),
        "provenance": prov, "task": args.task, "reference": w.best, "steps": w.budget,
        "seeds": seeds, "designs": designs, "costs": vars(costs), "targets": targets,
        "ratios_at_50%": table, "noise": table.get("plain-copy"),
        "summary": summary.summarize(rows)}), indent=1, default=list))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
