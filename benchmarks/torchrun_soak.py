"""Does the torchrun example exit every time? Runs ``examples/ddp_cpu.py`` (or ``--example``)
under ``torch.distributed.run`` again and again, each run with a watchdog, and counts the runs
that exit cleanly, fail, or hang.

    OMP_NUM_THREADS=1 python benchmarks/torchrun_soak.py --runs 60
    git show 92adeba:examples/ddp_cpu.py > /tmp/old.py   # the example before the exit fix
    OMP_NUM_THREADS=1 python benchmarks/torchrun_soak.py --example /tmp/old.py --out /tmp/old.json

A hang is a run still alive after ``--timeout`` seconds; its ranks are killed and the next
run starts. Writes ``results/torchrun-soak.json``. Not a test: a hang that comes once in ten
runs needs dozens of runs to show, more than the suite can afford.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kooptrain.experiments.harness.plan import progress_bar
from kooptrain.experiments.harness.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux ``/proc``). torchrun starts each rank in a
    session of its own, so killing the launcher's process group misses them."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        pid = todo.pop()
        kids = [c for c, pp in parent.items() if pp == pid]
        out += kids
        todo += kids
    return out


def one_run(example: Path, flags: list[str], timeout: float) -> dict:
    """One ``torchrun --standalone --nproc-per-node 2`` run: its outcome and seconds."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:  # a pipe would block on a surviving rank
        p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc-per-node", "2", str(example), *flags],
                             stdout=log, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [*descendants(p.pid), p.pid]:  # the ranks, then the launcher
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait()
            return {"outcome": "hang", "seconds": timeout}
        log.seek(0)
        out = log.read()
    ok = p.returncode == 0 and "replicas identical: True" in out
    return {"outcome": "exit" if ok else "fail", "seconds": round(time.perf_counter() - t0, 2),
            **({} if ok else {"tail": out[-500:]})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--timeout", type=float, default=100.0, help="seconds before a hang")
    ap.add_argument("--example", default=str(ROOT / "examples" / "ddp_cpu.py"))
    ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "results" / "torchrun-soak.json"))
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    prov = provenance()
    flags = ["--fsdp"] if args.fsdp else []
    bar = progress_bar(True, total=args.runs, unit="run", desc="torchrun example")
    runs = []
    for _ in range(args.runs):
        runs.append(one_run(Path(args.example), flags, args.timeout))
        if bar is not None:
            bar.update()
            bar.set_postfix(hangs=sum(r["outcome"] == "hang" for r in runs))
    if bar is not None:
        bar.close()
    counts = {k: sum(r["outcome"] == k for r in runs) for k in ("exit", "fail", "hang")}
    secs = sorted(r["seconds"] for r in runs if r["outcome"] == "exit")
    print(f"{args.runs} runs: {counts['exit']} exited, {counts['fail']} failed, "
          f"{counts['hang']} hung" + (f"; clean runs {secs[0]}-{secs[-1]} s" if secs else ""))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "command": "python benchmarks/torchrun_soak.py " + " ".join(sys.argv[1:]),
        "provenance": prov, "example": os.path.relpath(args.example, ROOT),
        "flags": flags, "timeout_s": args.timeout, "counts": counts, "runs": runs}, indent=1))
    return 0 if counts["exit"] == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
