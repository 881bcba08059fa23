"""How much of Koopman's compute goes to verification, and how many closure calls an attempt
makes, read from the committed race results (``results/race/TASK/results.json``): the bound
on what a cheaper verification (a screen, a bracket on log h) could give back.

    python benchmarks/verification_share.py

Per task, for the reference optimizer's Koopman run: the judge calls and BatchNorm refresh
batches times their FLOPs, as a share of the run's FLOPs (each seed), and the mean closure
calls per attempt in seed 0's history (the one the results keep). Writes
``results/accelerator-design/verification-share.json``. Reads JSON only; trains nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("hnn", "mnist1d", "pinn", "mnist1d-cnn", "lm")


def task_share(task: str) -> dict:
    d = json.loads((ROOT / "results" / "race" / task / "results.json").read_text())
    c, key = d["costs"], f"koopman:{d['settings']['best_plain']}"
    totals = d["totals"][key]
    totals = totals if isinstance(totals, list) else [totals]
    shares = [(t["closure_calls"] * c["closure"] + t["bn_batches"] * c["bn_batch"])
              / t["flops"] for t in totals]
    hist = d["histories"][key]
    kept = sorted({h["horizon"] for h in hist if h["accepted"]})
    return {"method": key, "verification_share_per_seed": shares,
            "seed0_attempts": len(hist),
            "seed0_mean_closure_calls_per_attempt": sum(h["evaluations"] for h in hist)
            / max(1, len(hist)), "seed0_kept_horizons": kept,
            "commit": d["provenance"].get("git_commit")}


def main() -> int:
    out = {t: task_share(t) for t in TASKS}
    for t, r in out.items():
        s = r["verification_share_per_seed"]
        print(f"{t:12s} verification {100 * min(s):.1f}-{100 * max(s):.1f}% of compute, "
              f"{r['seed0_mean_closure_calls_per_attempt']:.2f} closure calls per attempt "
              f"(seed 0, {r['seed0_attempts']} attempts), kept horizons {r['seed0_kept_horizons']}")
    path = ROOT / "results" / "accelerator-design" / "verification-share.json"
    path.write_text(json.dumps({"command": "python benchmarks/verification_share.py",
                                "tasks": out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
