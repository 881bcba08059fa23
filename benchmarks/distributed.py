"""KoopmanAccelerator under DDP and FSDP2: attempt time, fit time, bytes communicated per
attempt and snapshot memory per rank, at world sizes 1 and 2 on this machine (gloo, CPU, one
torch thread per rank).

The model is the race's `lm` transformer (141k weights) under DDP or `fully_shard`, AdamW
with its schedule, each rank on its own batches; the closure is the rank's own fixed
evaluation batch; the accelerator at its defaults (network granularity: the shared fit).
Writes results/distributed.json.

    python benchmarks/distributed.py [--steps 300] [--out results/distributed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, world: int, kind: str, init: str, steps: int, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from kooptrain import KoopmanAccelerator
    from kooptrain.experiments.race.workloads import workload

    w = workload("lm", budget=steps)
    model = w.make_model(0)
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        model = fully_shard(model)
    else:
        model = DDP(model)
    opt, sched = w.make_optimizer("adamw", model)
    acc = KoopmanAccelerator(model, opt)
    judge = w.judge(model)
    batches = w.sampler(rank)
    step_times = []
    for _ in range(steps):
        batch = next(batches)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        w.loss(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), w.clip)
        opt.step()
        sched.step()
        step_times.append(time.perf_counter() - t0)
        acc.step(judge)
    hist = list(acc.history)
    # seconds in the predictor: the fit and this rank's rows of every candidate
    fits = [h["fit_seconds"] for h in hist if h["fitted"]]
    flat = torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().ravel()
                      for p in model.parameters()])
    copies = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(copies, flat)
    res = {"kind": kind, "rank": rank, "world": world, "attempts": len(hist),
           "accepted": acc.jumps_accepted,
           "median_attempt_seconds": statistics.median(h["seconds"] for h in hist),
           "median_step_seconds": statistics.median(step_times),
           "median_fit_seconds": statistics.median(fits) if fits else None,
           "snapshot_bytes": acc.recorder.memory_bytes,
           "closure_calls": sum(h["evaluations"] for h in hist),
           "bytes_per_attempt": acc.bytes_sent / max(1, len(hist)),
           "replicas_identical": all(torch.equal(c, flat) for c in copies),
           "parameters": flat.numel()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    dist.destroy_process_group()


def measure(world: int, kind: str, steps: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank, args=(world, kind, f"file://{tmp}/init", steps, tmp),
                           nprocs=world, start_method="spawn")
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="results/distributed.json")
    args = ap.parse_args()
    from kooptrain.experiments.harness.provenance import provenance

    prov = provenance()
    rows = [r for world, kind in ((1, "ddp"), (2, "ddp"), (2, "fsdp"))
            for r in measure(world, kind, args.steps)]
    for r in rows:
        print(r)
    Path(args.out).write_text(json.dumps({
        "provenance": {**prov, "threads_per_rank": 1}, "steps": args.steps,
        "model": "race lm transformer under DDP or fully_shard (per block + root), AdamW + "
                 "schedule, default accelerator (network granularity)",
        "note": "world 2 shares the fit: each rank factors its rows, one all-gather of m x m "
                "factors; bytes count the accelerator's own collectives (losses, flags, "
                "factors, candidate rows under DDP), not the training's gradients",
        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
