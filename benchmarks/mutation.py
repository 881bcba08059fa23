"""Mutation score of the engine and accelerator layers with mutmut (the modules listed in
pyproject's ``[tool.mutmut] only_mutate``).

    python benchmarks/mutation.py --mutmut /path/to/venv/bin/mutmut
    python benchmarks/mutation.py --classify-only    # re-sort results/mutation-raw.json
    python benchmarks/mutation.py --mutmut VENV/bin/mutmut --rerun-live
                                 # rerun only the live survivors of mutation-raw.json on HEAD
    python benchmarks/mutation.py --mutmut VENV/bin/mutmut --rerun-untested FUNC [FUNC ...]
                                 # run the mutants of functions no test reached in the full
                                 # run (mutmut's "no tests"), now that tests reach them

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


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    """The removed and the added lines of a unified diff (``mutmut show``)."""
    lines = diff.splitlines()
    return ([ln[1:] for ln in lines if ln.startswith("-") and not ln.startswith("---")],
            [ln[1:] for ln in lines if ln.startswith("+") and not ln.startswith("+++")])


def run(cmd, cwd, **kw):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mutmut", default="mutmut", help="mutmut executable (see docstring)")
    ap.add_argument("--out", default=str(ROOT / "results"))
    ap.add_argument("--classify-only", action="store_true",
                    help="re-sort the survivors of the last run (mutation-raw.json) by the "
                    "current rules, without running mutmut")
    ap.add_argument("--rerun-live", action="store_true",
                    help="run mutmut on HEAD for the live survivors of mutation-raw.json "
                    "only (after adding tests) and update the results")
    ap.add_argument("--rerun-untested", nargs="+", metavar="FUNC",
                    help="mangled function names (e.g. kooptrain._predictors.x_split_koopman)"
                    " every mutant of which had no test in the full run: run them on HEAD "
                    "and move them from 'no tests' to killed or survived")
    ap.add_argument("--rerun-changed", nargs="+", metavar="FUNC",
                    help="mangled names of functions changed since the full run: run all "
                    "their mutants on HEAD and record the outcome beside the full run's "
                    "counts (which stay those of the code it ran on)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.rerun_changed:
        return rerun_changed(args.mutmut, out, args.rerun_changed)
    if args.rerun_untested:
        return rerun_untested(args.mutmut, out, args.rerun_untested)
    if args.classify_only:
        raw = json.loads((out / "mutation-raw.json").read_text())
        return report(raw, out)
    if args.rerun_live:
        return rerun_live(args.mutmut, out)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    commit = run(["git", "rev-parse", "HEAD"], ROOT).stdout.strip()
    dirty = bool(run(["git", "status", "--porcelain"], ROOT).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
        # tests that start a real process (the CLI's) import the unmutated source from
        # there; mutmut removes that path from its own workers, so they see only mutants
        env["PYTHONPATH"] = str(work / "src")
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
            removed, added = changed_lines(run([args.mutmut, "show", name], work,
                                               env=env).stdout)
            survivors.append({"name": name, "removed": removed, "added": added})
    modules = re.findall(r'"(src/kooptrain/[\w/]+\.py)"', (ROOT / "pyproject.toml").read_text())
    raw = {"mutmut": run([args.mutmut, "--version"], ROOT).stdout.strip(),
           "git_commit": commit, "git_dirty": dirty, "seconds": round(seconds, 1),
           "date": time.strftime("%Y-%m-%d"), "modules": modules,
           "counts": dict(Counter(v.strip() for v in status.values())),
           "survivors": survivors}
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutation-raw.json").write_text(json.dumps(raw, indent=1) + "\n")
    return report(raw, out)


def rerun_live(mutmut: str, out: Path) -> int:
    """The live survivors of the last full run, run again against HEAD's tests: a killed one
    leaves the survivors and counts as killed; the rerun is recorded in the results."""
    raw = json.loads((out / "mutation-raw.json").read_text())
    changed = [x for c in raw.get("changed_since", []) for x in c["survivors"]]
    live = [s["name"] for s in raw["survivors"] + changed
            if classify(s["name"], s["removed"], s["added"]) is None]
    if not live:
        print("no live survivors to rerun")
        return report(raw, out)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    commit = run(["git", "rev-parse", "HEAD"], ROOT).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
        env["PYTHONPATH"] = str(work / "src")
        r = run([mutmut, "run", *live], work, env=env)
        if r.returncode not in (0, 1):
            print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
            return r.returncode
        listing = run([mutmut, "results", "--all", "true"], work, env=env).stdout
        status = dict(re.findall(r"^\s*(\S+): (.+)$", listing, re.M))
    killed = [n for n in live if status.get(n, "").strip() in ("killed", "timeout")]
    in_changed = set()
    for c in raw.get("changed_since", []):  # those of changed functions count there
        mine = [x["name"] for x in c["survivors"] if x["name"] in killed]
        c["survivors"] = [x for x in c["survivors"] if x["name"] not in mine]
        c["killed"] += len(mine)
        in_changed.update(mine)
    main = [n for n in killed if n not in in_changed]
    raw["survivors"] = [s for s in raw["survivors"] if s["name"] not in main]
    raw["counts"]["survived"] = raw["counts"].get("survived", 0) - len(main)
    raw["counts"]["killed"] = raw["counts"].get("killed", 0) + len(main)
    raw.setdefault("reruns", []).append({"git_commit": commit, "date": time.strftime(
        "%Y-%m-%d"), "mutants": live, "killed": killed})
    (out / "mutation-raw.json").write_text(json.dumps(raw, indent=1) + "\n")
    print(f"reran {len(live)} live survivors at {commit[:10]}: {len(killed)} killed")
    return report(raw, out)


def _run_functions(mutmut: str, functions: list[str]) -> tuple[str, dict, list] | None:
    """Every mutant of ``functions`` run on a clone of HEAD: the commit, each mutant's
    status, and the survivors' changed lines; None (after printing why) if mutmut failed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    commit = run(["git", "rev-parse", "HEAD"], ROOT).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
        env["PYTHONPATH"] = str(work / "src")
        r = run([mutmut, "run", *[f + "__mutmut_*" for f in functions]], work, env=env)
        if r.returncode not in (0, 1):
            print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
            return None
        listing = run([mutmut, "results", "--all", "true"], work, env=env).stdout
        status = {n: st.strip() for n, st in re.findall(r"^\s*(\S+): (.+)$", listing, re.M)
                  if any(n.startswith(f + "__mutmut_") for f in functions)}
        survivors = []
        for name in sorted(n for n, st in status.items() if st == "survived"):
            removed, added = changed_lines(run([mutmut, "show", name], work, env=env).stdout)
            survivors.append({"name": name, "removed": removed, "added": added})
    return commit, status, survivors


def rerun_changed(mutmut: str, out: Path, functions: list[str]) -> int:
    """All mutants of ``functions`` (changed since the full run) on HEAD, recorded under
    ``changed_since``: their survivors are sorted like any other, and a live one is live."""
    raw = json.loads((out / "mutation-raw.json").read_text())
    ran = _run_functions(mutmut, functions)
    if ran is None:
        return 1
    commit, status, survivors = ran
    odd = sorted(n for n, st in status.items() if st not in ("killed", "timeout", "survived"))
    raw.setdefault("changed_since", []).append({
        "git_commit": commit, "date": time.strftime("%Y-%m-%d"), "functions": functions,
        "mutants": len(status), "killed": sum(st in ("killed", "timeout")
                                              for st in status.values()),
        "other": {n: status[n] for n in odd}, "survivors": survivors})
    (out / "mutation-raw.json").write_text(json.dumps(raw, indent=1) + "\n")
    print(f"ran the {len(status)} mutants of {len(functions)} changed function(s) at "
          f"{commit[:10]}: {raw['changed_since'][-1]['killed']} killed, {len(survivors)} "
          f"survived, {len(odd)} other")
    return report(raw, out)


def rerun_untested(mutmut: str, out: Path, functions: list[str]) -> int:
    """The mutants of ``functions``, which the full run left without tests, run on HEAD:
    each leaves 'no tests' for killed or for the survivors (sorted like any survivor)."""
    raw = json.loads((out / "mutation-raw.json").read_text())
    ran = _run_functions(mutmut, functions)
    if ran is None:
        return 1
    commit, status, survivors = ran
    if len(status) > raw["counts"].get("no tests", 0):
        print(f"{len(status)} mutants, more than the {raw['counts'].get('no tests', 0)} "
              "without tests in the full run: not all of them were untested", file=sys.stderr)
        return 1
    # a mutant whose tests died by a signal (mutmut's "segfault": SIGSEGV, or SIGKILL at its
    # wall limit, e.g. a rank left waiting in a collective) failed the suite: killed, but
    # listed by name so that a reader can check it was not the machine
    left = sorted(n for n, st in status.items() if st not in ("killed", "timeout",
                                                               "survived", "segfault"))
    if left:
        print(f"not run to an end: {left[:5]}", file=sys.stderr)
        return 1
    killed = [n for n, st in status.items() if st in ("killed", "timeout", "segfault")]
    crashed = sorted(n for n, st in status.items() if st in ("timeout", "segfault"))
    raw["counts"]["no tests"] -= len(status)
    raw["counts"]["killed"] = raw["counts"].get("killed", 0) + len(killed)
    raw["counts"]["survived"] = raw["counts"].get("survived", 0) + len(survivors)
    raw["survivors"] += survivors
    raw.setdefault("reruns", []).append({"git_commit": commit, "date": time.strftime(
        "%Y-%m-%d"), "untested_functions": functions, "mutants": len(status),
        "killed": len(killed), "survived": [s["name"] for s in survivors],
        "killed_by_timeout_or_signal": crashed})
    (out / "mutation-raw.json").write_text(json.dumps(raw, indent=1) + "\n")
    print(f"ran {len(status)} formerly untested mutants at {commit[:10]}: {len(killed)} "
          f"killed, {len(survivors)} survived")
    return report(raw, out)


def _rerun_line(r: dict) -> str:
    if "untested_functions" in r:
        return (f"Run at {r['git_commit'][:10]} ({r['date']}) of the {r['mutants']} mutants "
                f"that had no test in the full run ({', '.join(r['untested_functions'])}), "
                f"now reached by the distributed tests as threads: {r['killed']} killed, "
                f"{len(r['survived'])} survived. ")
    return (f"Rerun at {r['git_commit'][:10]} ({r['date']}) of the {len(r['mutants'])} "
            f"survivors then live, against the tests added for them: {len(r['killed'])} "
            "killed. ")


def report(raw: dict, out: Path) -> int:
    """Sort the survivors into equivalent (by rule) and live; write the JSON and the list."""
    survivors = []
    for s in raw["survivors"]:
        rule = classify(s["name"], s["removed"], s["added"])
        survivors.append(dict(s, equivalent=rule is not None, why=rule or "live"))
    counts = Counter(raw["counts"])
    commit, seconds = raw["git_commit"], raw["seconds"]
    killed = counts["killed"] + counts["timeout"]
    equivalent = sum(s["equivalent"] for s in survivors)
    live = [s for s in survivors if not s["equivalent"]]
    total = sum(counts.values())
    non_equivalent = total - equivalent - counts["no tests"] - counts["skipped"]
    result = {
        "command": "python benchmarks/mutation.py --mutmut VENV/bin/mutmut",
        "mutmut": raw["mutmut"],
        "git_commit": commit, "git_dirty": raw["git_dirty"], "seconds": seconds,
        "threads": "2 workers x 1 torch thread", "cpu_count": os.cpu_count(),
        "date": raw["date"], "modules": raw["modules"], "reruns": raw.get("reruns", []),
        "counts": dict(counts), "total": total, "killed_or_timeout": killed,
        "survived": len(survivors), "equivalent": equivalent, "live": len(live),
        "score_raw": round(killed / total, 4),
        "score_non_equivalent": round(killed / max(non_equivalent, 1), 4),
        "equivalent_by_rule": dict(Counter(s["why"] for s in survivors if s["equivalent"])),
        "live_by_function": dict(Counter(re.sub(r"__mutmut_\d+$", "", s["name"])
                                         for s in live)),
    }
    changed = []
    for c in raw.get("changed_since", []):
        sv = [dict(x, why=classify(x["name"], x["removed"], x["added"]) or "live")
              for x in c["survivors"]]
        changed.append({k: v for k, v in c.items() if k != "survivors"} |
                       {"survived": len(sv), "live": [x["name"] for x in sv
                                                      if x["why"] == "live"]})
        survivors += [dict(x, equivalent=x["why"] != "live", changed_since=c["git_commit"])
                      for x in sv]
        live += [x for x in sv if x["why"] == "live"]
    result["changed_since"] = changed
    result["live"] = len(live)
    (out / "mutation.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Surviving mutants of the engine and accelerator layers", "",
             f"`{result['command']}` at {commit[:10]}, {result['date']}: "
             f"{killed} of {total} killed ({result['score_raw']:.1%}); "
             f"{equivalent} survivors are equivalent, so {killed} of {non_equivalent} "
             f"non-equivalent mutants are killed ({result['score_non_equivalent']:.1%}).", "",
             *[_rerun_line(r) for r in raw.get("reruns", [])],
             *[f"Functions changed since the full run ({', '.join(c['functions'])}), all "
               f"their mutants run at {c['git_commit'][:10]} ({c['date']}): {c['mutants']} "
               f"mutants, {c['killed']} killed, {c['survived']} survived, "
               f"{len(c['live'])} of them live. " for c in changed],
             "Each survivor: the changed lines and the verdict. 'live' means a test is "
             "missing; anything else names the rule (mutation_equivalents.py) that makes "
             "the mutant behave like the original.", ""]
    for s in sorted(survivors, key=lambda s: (s["equivalent"], s["name"])):
        at = f" (its function changed; run at {s['changed_since'][:10]})" \
            if "changed_since" in s else ""
        lines.append(f"## `{s['name']}`{at} -- {s['why']}")
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
