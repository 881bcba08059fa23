"""Soak: 20,000 accelerated steps on the HNN task; memory flat, nothing non-finite, every
buffer and the history bounded.

    OMP_NUM_THREADS=2 python benchmarks/soak.py          # writes results/soak.{json,png}

Adam (the race's tuned lr) with ``KoopmanAccelerator`` at its defaults except
``max_history=200``, so that the history bound is reached and seen to hold. Every
``--every`` steps it samples the resident set size (``VmRSS`` from /proc, the current
value, not the peak), the accelerator's buffer bytes, the history length, the jump
counters and whether any parameter or optimizer-state value is non-finite. Memory
growth is measured from the first sample after the first window (allocator warm-up
before it is reported separately). Not a test: nothing here asserts; the JSON and the
figure are the record. Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from kooptrain import KoopmanAccelerator
from kooptrain.experiments import race
from kooptrain.experiments.harness.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def finite(model, opt) -> bool:
    ts = [p.detach() for p in model.parameters()]
    ts += [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)
           and v.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--every", type=int, default=250, help="sampling period in steps")
    ap.add_argument("--max-history", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "results" / "soak.json"))
    args = ap.parse_args(argv)
    problem = race.make_problem("hnn")
    model = problem.make_model(0)
    opt = race.make_optimizer("adam", model.parameters(), race.TUNED["hnn"]["adam"])
    acc = KoopmanAccelerator(model, opt, max_history=args.max_history)
    judge = race.judge_closure("hnn", problem, model)
    gen = torch.Generator().manual_seed(10_000)
    samples, t_start = [], time.perf_counter()
    nonfinite_steps = 0
    for step in range(1, args.steps + 1):
        batch = problem.batch(gen)
        opt.zero_grad(set_to_none=True)
        problem.loss(model, batch).backward()
        opt.step()
        acc.step(judge)
        if step % args.every == 0 or step == acc.window:
            ok = finite(model, opt)
            nonfinite_steps += not ok
            samples.append({"step": step, "rss": rss_bytes(), "finite": ok,
                            "buffer_bytes": acc.recorder.memory_bytes,
                            "history": len(acc.history), "jumps_tried": acc.jumps_tried,
                            "jumps_accepted": acc.jumps_accepted,
                            "loss": problem.eval_loss(model),
                            "seconds": time.perf_counter() - t_start})
    base = next(s for s in samples if s["step"] >= acc.window)
    late = [s for s in samples if s["step"] >= args.steps // 2]
    summary = {
        "steps": args.steps,
        "rss_first_window_bytes": base["rss"],
        "rss_end_bytes": samples[-1]["rss"],
        "rss_growth_bytes": samples[-1]["rss"] - base["rss"],
        "rss_max_bytes": max(s["rss"] for s in samples),
        "rss_growth_second_half_bytes": late[-1]["rss"] - late[0]["rss"],
        "buffer_bytes": sorted({s["buffer_bytes"] for s in samples}),
        "history_max": max(s["history"] for s in samples),
        "max_history": args.max_history,
        "nonfinite_samples": nonfinite_steps,
        "jumps_tried": acc.jumps_tried, "jumps_accepted": acc.jumps_accepted,
        "final_loss": samples[-1]["loss"],
        "wall_seconds": samples[-1]["seconds"],
    }
    res = {"schema_version": 1, "kind": "soak", "provenance": provenance(),
           "settings": {"task": "hnn", "optimizer": "adam", "lr": race.TUNED["hnn"]["adam"],
                        "accelerator": {"max_history": args.max_history,
                                        "window": acc.window}, "every": args.every},
           "summary": summary, "samples": samples}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, allow_nan=False))
    figure(res, out.with_suffix(".png"))
    mb = 1 / 2**20
    print(f"{args.steps} steps in {summary['wall_seconds']:.0f} s: RSS {base['rss'] * mb:.1f} "
          f"-> {samples[-1]['rss'] * mb:.1f} MiB (growth {summary['rss_growth_bytes'] * mb:+.2f} "
          f"MiB), buffers {summary['buffer_bytes']} B, history <= {summary['history_max']}, "
          f"non-finite samples {nonfinite_steps}, jumps {acc.jumps_accepted}/{acc.jumps_tried}"
          f", final loss {summary['final_loss']:.3g}")
    return 0


def figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["samples"]
    steps = [x["step"] for x in s]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=150)
    axes[0].plot(steps, [x["rss"] / 2**20 for x in s], color="tab:blue")
    axes[0].set_ylabel("resident memory (MiB)")
    lo = min(x["rss"] for x in s) / 2**20
    axes[0].set_ylim(lo - 5, lo + 25)  # a flat line should look flat, not zoomed noise
    axes[1].plot(steps, [x["history"] for x in s], color="tab:orange", label="history length")
    axes[1].axhline(res["summary"]["max_history"], color="0.4", ls=":", label="max_history")
    axes[1].set_ylabel("entries")
    axes[1].legend(fontsize=8, loc="lower right")
    losses = [x["loss"] if x["loss"] and math.isfinite(x["loss"]) else None for x in s]
    axes[2].semilogy(steps, losses, color="tab:green")
    axes[2].set_ylabel("evaluation loss")
    for ax, title in zip(axes, ("memory", "history (bounded)", "loss"), strict=True):
        ax.set_xlabel("optimizer step")
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"Soak: {res['summary']['steps']} accelerated Adam steps on HNN "
                 f"({res['summary']['jumps_accepted']}/{res['summary']['jumps_tried']} jumps "
                 "kept)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
