"""Mutation score of the engine layer (koopman.py, partition.py, recorder.py) with mutmut.

    python benchmarks/mutation.py --mutmut /path/to/venv/bin/mutmut

Runs mutmut 3 over a fresh clone of HEAD (settings in pyproject's ``[tool.mutmut]``),
then sorts every surviving mutant into "equivalent" (with the rule that says why, from
``benchmarks/mutation_equivalents.py``) or "live". Writes ``results/mutation.json`` and
the list of survivors, each with its diff and verdict, to ``results/mutation-survivors.md``.

Needs a virtual environment where kooptrain is **not** installed in editable mode (its
import hook would shadow the mutated copy) but mutmut and everything the test extras
install are (torch, numpy, pytest, hypothesis, pydmd, scipy, jsonschema, matplotlib, tqdm,
scikit-learn, mnist1d, schedulefree, lightning); pass its ``mutmut``. Torch runs one
thread per worker: forked workers deadlock in OpenMP otherwise. Takes ~10 minutes on 2
cores. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutation_equivalents import classify  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, cwd, **kw):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mutmut", default="mutmut", help="mutmut executable (see docstring)")
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    commit = run(["git", "rev-parse", "HEAD"], ROOT).stdout.strip()
    dirty = bool(run(["git", "status", "--porcelain"], ROOT).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
        t0 = time.perf_counter()
        r = run([args.mutmut, "run"], work, env=env)
        seconds = time.perf_counter() - t0
        if r.returncode not in (0, 1):
            print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
            return r.returncode
        listing = run([args.mutmut, "results", "--all", "true"], work, env=env).stdout
        status = dict(re.findall(r"^\s*(\S+): (.+)$", listing, re.M))
        if not any(v.strip() == "killed" for v in status.values()):
            print("mutmut killed nothing; its run probably failed:\n", r.stdout[-3000:],
                  r.stderr[-3000:], file=sys.stderr)
            return 1
        survivors = []
        for name, st in sorted(status.items()):
            if st.strip() != "survived":
                continue
            diff = run([args.mutmut, "show", name], work, env=env).stdout
            removed = [ln[1:] for ln in diff.splitlines()
                       if ln.startswith("-") and not ln.startswith("---")]
            added = [ln[1:] for ln in diff.splitlines()
                     if ln.startswith("+") and not ln.startswith("+++")]
            rule = classify(name, removed, added)
            survivors.append({"name": name, "removed": removed, "added": added,
                              "equivalent": rule is not None, "why": rule or "live"})
    counts = Counter(s.strip() for s in status.values())
    killed = counts["killed"] + counts["timeout"]
    equivalent = sum(s["equivalent"] for s in survivors)
    live = [s for s in survivors if not s["equivalent"]]
    total = sum(counts.values())
    non_equivalent = total - equivalent - counts["no tests"] - counts["skipped"]
    result = {
        "command": "python benchmarks/mutation.py --mutmut VENV/bin/mutmut",
        "mutmut": run([args.mutmut, "--version"], ROOT).stdout.strip(),
        "git_commit": commit, "git_dirty": dirty, "seconds": round(seconds, 1),
        "threads": "2 workers x 1 torch thread", "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "modules": ["src/kooptrain/koopman.py", "src/kooptrain/partition.py",
                    "src/kooptrain/recorder.py"],
        "counts": dict(counts), "total": total, "killed_or_timeout": killed,
        "survived": len(survivors), "equivalent": equivalent, "live": len(live),
        "score_raw": round(killed / total, 4),
        "score_non_equivalent": round(killed / max(non_equivalent, 1), 4),
        "equivalent_by_rule": dict(Counter(s["why"] for s in survivors if s["equivalent"])),
        "live_by_function": dict(Counter(re.sub(r"__mutmut_\d+$", "", s["name"])
                                         for s in live)),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutation.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Surviving mutants of the engine layer", "",
             f"`{result['command']}` at {commit[:10]}, {result['date']}: "
             f"{killed} of {total} killed ({result['score_raw']:.1%}); "
             f"{equivalent} survivors are equivalent, so {killed} of {non_equivalent} "
             f"non-equivalent mutants are killed ({result['score_non_equivalent']:.1%}).", "",
             "Each survivor: the changed lines and the verdict. 'live' means a test is "
             "missing; anything else names the rule (mutation_equivalents.py) that makes "
             "the mutant behave like the original.", ""]
    for s in sorted(survivors, key=lambda s: (s["equivalent"], s["name"])):
        lines.append(f"## `{s['name']}` -- {s['why']}")
        lines += ["```diff"] + [f"-{x}" for x in s["removed"]] + \
            [f"+{x}" for x in s["added"]] + ["```", ""]
    (out / "mutation-survivors.md").write_text("\n".join(lines))
    print(f"{total} mutants: {killed} killed, {len(survivors)} survived "
          f"({equivalent} equivalent, {len(live)} live), {counts['no tests']} without tests")
    print(f"score: {result['score_raw']:.1%} raw, {result['score_non_equivalent']:.1%} of "
          f"non-equivalent; {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
