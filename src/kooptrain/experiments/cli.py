"""``kooptrain`` command line: ``reproduce`` the paper, ``race`` to a target loss, rebuild a
``report`` from JSON, ``compare`` the Koopman spectra of two monitored runs.

Long runs keep every finished network under ``OUT/.kooptrain-partial``; after Ctrl-C or a
crash, the same command with ``--resume`` continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from .. import __version__
from .harness.jsonio import json_safe, write_json
from .harness.optimizers import OPTIMIZERS
from .harness.store import PARTIAL, RunStore
from .harness.tasks import TASKS
from .race.methods import METHODS
from .race.workloads import BUDGETS as RACE_BUDGET
from .race.workloads import TASKS as RACE_TASKS

RACE_METHODS = tuple(sorted(METHODS))

EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``kooptrain reproduce: error: ... (see --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v
    return parse


def _method_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in RACE_METHODS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown) or repr(text)}; choose from "
            f"{', '.join(RACE_METHODS)}")
    return names


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="kooptrain", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"kooptrain {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("reproduce", help="run the paper's prediction-window experiment")
    r.add_argument("task", nargs="?", default="hnn", choices=TASKS,
                   help="hnn: the paper's Hamiltonian network (no data); mnist1d, digits: "
                   "offline classifiers; mnist: IDX files from --mnist-dir (default hnn)")
    r.add_argument("--optimizers", default="adam,adadelta,adagrad",
                   help=f"comma-separated, from {','.join(OPTIMIZERS)}")
    r.add_argument("--seeds", type=_int_at_least(1), default=None,
                   help="report networks per optimizer (default 2; 25 with --full)")
    r.add_argument("--select-seeds", type=_int_at_least(0), default=1,
                   help="extra networks used only to choose the 'selected' configuration")
    r.add_argument("--full", action="store_true",
                   help="paper scale (HNN: record steps 35,001..45,000, T=2,500, 25 networks)")
    r.add_argument("--t1", type=_int_at_least(1), default=None,
                   help="first recorded training step (the window's start; HNN default "
                   "2,001, --full 35,001)")
    r.add_argument("--t2", type=_int_at_least(2), default=None,
                   help="last recorded training step; the jump starts here (HNN default "
                   "3,000, --full 45,000)")
    r.add_argument("--T", type=_int_at_least(1), default=None,
                   help="main horizon: steps predicted past t2 (HNN default 500, --full 2,500)")
    r.add_argument("--jobs", type=_int_at_least(1), default=1,
                   help="networks trained at once, each in its own process with "
                   "threads/jobs torch threads (default 1)")
    _common(r, "kooptrain-report")
    r.add_argument("--mnist-dir", default=None, help="folder with MNIST IDX files")
    ra = sub.add_parser("race", help="time and compute to a held-out target: Koopman jumps "
                        "against the optimizers and the alternatives, in lockstep")
    ra.add_argument("task", nargs="?", default="hnn",
                    help="task to race on: a built-in task (" + ", ".join(RACE_TASKS) +
                    "; default hnn) or "
                    "your own: path/to/task.py[:factory], a file whose factory (default "
                    "task) returns a kooptrain.experiments.Task (docs/race.md)")
    ra.add_argument("--methods", type=_method_list, default=None,
                    help="race only these methods, comma-separated (the reference optimizer "
                    "and its copy always run), e.g. ema,swa,schedulefree,koopman; choose "
                    "from " + ", ".join(RACE_METHODS))
    ra.add_argument("--device", default="cpu",
                    help="where the models train: cpu (default), cuda, cuda:1, mps (task "
                    "files only)")
    ra.add_argument("--full", action="store_true",
                    help="every method and 3 seeds (the committed reports); without it: the "
                    "reference optimizer, its copy, Koopman jumps, RNA and Schedule-Free on "
                    "1 seed")
    ra.add_argument("--seeds", type=_int_at_least(1), default=None,
                    help="seeds per method (default 1, --full 3)")
    ra.add_argument("--steps", type=_int_at_least(10), default=None,
                    help="budget in optimizer steps (default per task: " + ", ".join(
                        f"{t} {n}" for t, n in RACE_BUDGET.items()) + ")")
    ra.add_argument("--tune", action="store_true",
                    help="first rerun the lr grid and RNA's settings on the tuning seed and "
                    "race with that choice (else the committed one)")
    _common(ra, "kooptrain-race")
    pr = sub.add_parser("profile", help="performance profile across tasks from several race "
                        "results")
    pr.add_argument("json", nargs="+", help="results.json files written by kooptrain race")
    pr.add_argument("--out", default="kooptrain-profile",
                    help="report folder (default kooptrain-profile)")
    cmp = sub.add_parser("compare", help="distance between the Koopman spectra of two runs "
                         "(records written by KoopmanMonitor.save)")
    cmp.add_argument("a", help="the first run's monitor record (JSON)")
    cmp.add_argument("b", help="the second run's monitor record (JSON)")
    cmp.add_argument("--phases", type=_int_at_least(1), default=3,
                     help="consecutive phases of training to compare (default 3)")
    cmp.add_argument("--top", type=_int_at_least(1), default=None,
                     help="compare only each layer's TOP eigenvalues that carry the most "
                     "motion (default all)")
    cmp.add_argument("--json", default=None, help="also write the distances to this file")
    rep = sub.add_parser("report", help="rebuild report.md and figures from a results JSON")
    rep.add_argument("json", help="a results.json written by reproduce or race")
    rep.add_argument("--out", default=None, help="report folder (default: next to the JSON)")
    return ap


def _common(p, default_out: str) -> None:
    p.add_argument("--out", default=default_out, help=f"report folder (default {default_out})")
    p.add_argument("--json", default=None, help="results JSON (default OUT/results.json)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the networks saved in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_outputs(out: Path, jpath: Path) -> str | None:
    """Why the outputs cannot be written, or None: checked before any training."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is an existing file; give a folder (it is created if missing)."
    if jpath.is_dir():
        return f"--json {jpath} is a folder; give a file name such as {jpath / 'results.json'}."
    for d in dict.fromkeys((out, jpath.parent)):
        try:
            d.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=d):
                pass
        except OSError as e:
            return f"cannot write to folder {d}: {e.strerror or e}."
    return None


def _save(prog: str, out: Path, jpath: Path, res: dict, write) -> Path | None:
    """Write the results JSON and the report (``write(res, out)``); the saved runs are
    removed only once both are written, so a failed write loses nothing."""
    try:
        write_json(jpath, res)
        path = write(res, out)
    except OSError as e:
        print(f"{prog}: could not write the results ({e}); every finished run is still "
              f"saved in {out}: fix the problem and rerun with --resume.", file=sys.stderr)
        return None
    RunStore(out, {}).clear()
    return path


def _prepare(prog: str, args) -> tuple[Path, Path] | None:
    out = Path(args.out)
    jpath = Path(args.json) if args.json else out / "results.json"
    why = _check_outputs(out, jpath)
    if why:
        print(f"{prog}: {why}", file=sys.stderr)
        return None
    saved = RunStore(out, {}).files()
    if saved and not args.resume:
        print(f"{prog}: {out} holds {len(saved)} finished run(s) of an interrupted run; add "
              f"--resume to continue it, or remove {out / PARTIAL} to start over.",
              file=sys.stderr)
        return None
    return out, jpath


def _interrupted(prog: str, out: Path) -> int:
    n = len(RunStore(out, {}).files())
    print(f"\n{prog}: interrupted; {n} finished run(s) are saved in {out}. Run the same "
          f"command with --resume to continue.", file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":
        return _report(args)
    if args.command == "race":
        return _race(args)
    if args.command == "profile":
        return _profile(args)
    if args.command == "compare":
        return _compare(args)
    return _reproduce(args)


def _compare(args) -> int:
    from ..diagnostics.compare import compare

    try:
        res = compare(args.a, args.b, phases=args.phases, top=args.top)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"kooptrain compare: {e}", file=sys.stderr)
        return 2

    def fmt(v):
        return "-" if v is None else f"{v:.4g}"

    heads = ["layer", "all fits"] + [f"phase {k + 1}" for k in range(args.phases)]
    rows = [[name, fmt(v["distance"])] + [fmt(x) for x in v["phases"]]
            for name, v in res["layers"].items()]
    rows.append(["(mean)", fmt(res["distance"])] + [fmt(x) for x in res["phases"]])
    width = [max(len(r[i]) for r in [heads] + rows) for i in range(len(heads))]
    print(f"Wasserstein distance between the Koopman eigenvalues of {args.a} and {args.b}, "
          f"over {res['fits']} aligned fits (layers paired {res['pairing']}):")
    for r in [heads] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)))
    if args.json:
        try:
            write_json(Path(args.json), res)
        except OSError as e:
            print(f"kooptrain compare: cannot write {args.json}: {e}", file=sys.stderr)
            return 2
    return 0


def _guarded(prog: str, incomplete: str, write):
    """``write()``'s result, or ``None`` after a one-line message: bad input
    (``ValueError``), an incomplete results file, or an output that cannot be written."""
    try:
        return write()
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
    except (KeyError, TypeError, IndexError) as e:
        print(f"{prog}: {incomplete} ({type(e).__name__}: {e}).", file=sys.stderr)
    except OSError as e:
        print(f"{prog}: cannot write the report: {e}", file=sys.stderr)
    return None


def _profile(args) -> int:
    from .harness.jsonio import load_results
    from .race.report import write_profile

    def write():
        results = [load_results(j) for j in args.json]
        bad = [j for j, r in zip(args.json, results, strict=True) if r.get("kind") != "race"]
        if bad:
            raise ValueError(f"{bad[0]} is not a race results file (kooptrain race writes "
                             "them).")
        if len({r["settings"]["task"] for r in results}) != len(results):
            raise ValueError("give each task once: the profile compares tasks.")
        return write_profile(results, args.out)

    path = _guarded("kooptrain profile", "not complete race results", write)
    if path is None:
        return 2
    print(f"wrote {path}")
    return 0


def _report(args) -> int:
    from .harness.jsonio import load_results
    from .race.report import RACE_FIGURES, write_race_report
    from .window.report import FIGURES, write_report

    figures = []

    def write():
        res = load_results(args.json)
        writer, names = (write_race_report, RACE_FIGURES) if res.get("kind") == "race" \
            else (write_report, FIGURES)
        figures.extend(names)
        return writer(res, args.out or Path(args.json).parent)

    path = _guarded("kooptrain report", f"{args.json} is not a complete kooptrain results "
                    "file", write)
    if path is None:
        return 2
    print(f"wrote {path} and {', '.join(figures)}")
    return 0


def _run_and_save(prog: str, args, compute, write, errors=(ValueError,)):
    """Check the outputs, run ``compute(out)``, save its results and report; returns the
    exit code and the results (``None`` unless all went well)."""
    paths = _prepare(prog, args)
    if paths is None:
        return 2, None
    out, jpath = paths
    try:
        res = compute(out)
    except errors as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2, None
    except KeyboardInterrupt:
        return _interrupted(prog, out), None
    path = _save(prog, out, jpath, res, write)
    if path is None:
        return 1, None
    print(f"wrote {path} and {jpath}")
    return 0, res


def _reproduce(args) -> int:
    from .window import experiment as window
    from .window.report import fmt, write_report

    prog = "kooptrain reproduce"
    opts = tuple(o.strip() for o in args.optimizers.split(",") if o.strip())
    bad = [o for o in opts if o not in OPTIMIZERS]
    if bad or not opts:
        print(f"{prog}: unknown optimizer(s) {bad}; choose from "
              f"{', '.join(OPTIMIZERS)}.", file=sys.stderr)
        return 2

    def compute(out):
        return window.run(args.task, opts, seeds=args.seeds, full=args.full,
                          mnist_dir=args.mnist_dir, progress=not args.no_progress,
                          select_seeds=args.select_seeds, t1=args.t1, t2=args.t2, T=args.T,
                          store_dir=out, jobs=args.jobs)

    code, res = _run_and_save(prog, args, compute, write_report,
                              (FileNotFoundError, ValueError))
    if res is None:
        return code
    print()
    for sm in res["summary"]:
        p, sel = sm["paper"] or {}, sm["selected"] or {}
        print(f"{sm['optimizer']:>9s}: paper node operator Koopman/optimizer loss "
              f"{fmt(p.get('loss_ratio'))}x, speedup {fmt(p.get('speedup'))}x; selected "
              f"'{sel.get('config')}' {fmt(sel.get('loss_ratio'))}x -> goal "
              f"{'MET' if sel.get('goal_met') else 'not met'}")
    return 0


def _race(args) -> int:
    from .harness.provenance import provenance
    from .race import experiment as race
    from .race.report import write_race_report

    prov = provenance()  # the code as this process imported it, before a long --tune

    def compute(out):
        task, name = _race_task(args.task, args.device)
        if not isinstance(task, str):
            prov["task_file"] = task_file_provenance(args.task)
        tuning = None
        if args.tune:
            tpath = out / f"tuning-{name}.json"
            if args.resume and tpath.exists():
                tuning = json.loads(tpath.read_text())
            else:
                tuning = race.tune(task, steps=args.steps, progress=not args.no_progress,
                                   device=args.device)
                write_json(tpath, json_safe(tuning), indent=1, separators=None)
            print(f"tuned on seed {tuning['seed']}: lr {tuning['choice']}, reference "
                  f"{tuning['best']}, RNA {tuning['extrapolation']}")
        return race.run(task, seeds=args.seeds, steps=args.steps, full=args.full,
                        methods=args.methods, progress=not args.no_progress, tuning=tuning,
                        store_dir=out, prov=prov, device=args.device)

    return _run_and_save("kooptrain race", args, compute, write_race_report,
                         (FileNotFoundError, ValueError))[0]


def _race_task(arg: str, device: str):
    """``(task, name)``: a built-in task's name, or the ``Task`` of a task file; a
    ``ValueError`` (one line) for a name that is neither or a device that is not here."""
    import torch

    from .race.task import load_task

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or "
                         "mps.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA "
                         "device; run on cpu, or install a CUDA build of torch.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine.")
    if arg in RACE_TASKS:
        if dev.type != "cpu":
            raise ValueError(f"the built-in tasks run on the CPU (their data lives there); "
                             f"--device {device} is for task files (path/to/task.py).")
        return arg, arg
    if ".py" not in arg:
        raise ValueError(f"unknown race task {arg!r}: give one of {', '.join(RACE_TASKS)}, "
                         "or a task file path/to/task.py[:factory].")
    task = load_task(arg)
    return task, task.name


def task_file_provenance(spec: str) -> dict:
    """The task file's path and SHA-256, so that a report says which task it raced."""
    import hashlib

    from .race.task import split_spec

    path, factory = split_spec(spec)
    return {"path": str(path), "factory": factory,
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


if __name__ == "__main__":
    sys.exit(main())
