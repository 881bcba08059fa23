"""``kooptrain`` command line: ``reproduce`` the paper, rebuild a ``report`` from JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .experiments.window import OPTIMIZERS, TASKS


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kooptrain", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reproduce", help="run the paper's prediction-window experiment")
    r.add_argument("task", nargs="?", default="hnn", choices=TASKS)
    r.add_argument("--optimizers", default="adam,adadelta,adagrad",
                   help=f"comma-separated, from {','.join(OPTIMIZERS['hnn'])}")
    r.add_argument("--seeds", type=int, default=None, help="report seeds (default 2; 5 --full)")
    r.add_argument("--select-seeds", type=int, default=1,
                   help="extra seeds used only to choose the 'selected' configuration")
    r.add_argument("--full", action="store_true",
                   help="paper scale (HNN: record 35,001..45,000, T=2,500)")
    r.add_argument("--t1", type=int, default=None)
    r.add_argument("--t2", type=int, default=None)
    r.add_argument("--T", type=int, default=None, help="main horizon")
    r.add_argument("--out", default="kooptrain-report", help="report folder")
    r.add_argument("--json", default=None, help="results JSON (default OUT/results.json)")
    r.add_argument("--mnist-dir", default=None, help="folder with MNIST IDX files")
    r.add_argument("--no-progress", action="store_true")
    ra = sub.add_parser("race", help="wall time to a target loss: Koopman jumps against "
                        "the optimizers and the alternatives")
    ra.add_argument("task", nargs="?", default="hnn", choices=("hnn", "mnist1d", "digits"),
                    help="task to race on (default hnn)")
    ra.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    ra.add_argument("--steps", type=int, default=None, help="budget in optimizer steps")
    ra.add_argument("--tune", action="store_true",
                    help="rerun the lr grid on the tuning seed first (else use the committed "
                    "choice)")
    ra.add_argument("--out", default="kooptrain-race", help="report folder")
    ra.add_argument("--json", default=None, help="results JSON (default OUT/results.json)")
    ra.add_argument("--no-progress", action="store_true")
    rep = sub.add_parser("report", help="rebuild report.md and figures from a results JSON")
    rep.add_argument("json")
    rep.add_argument("--out", default=None, help="report folder (default: next to the JSON)")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .report import _fmt, load, write_report

    if args.command == "report":
        try:
            res = load(args.json)
        except (OSError, ValueError) as e:
            print(f"kooptrain report: {e}", file=sys.stderr)
            return 2
        if res.get("kind") == "race":
            from .race_report import write_race_report

            path = write_race_report(res, args.out or Path(args.json).parent)
        else:
            path = write_report(res, args.out or Path(args.json).parent)
        print(f"wrote {path}")
        return 0

    if args.command == "race":
        return _race(args)
    from .experiments import window

    opts = tuple(o.strip() for o in args.optimizers.split(",") if o.strip())
    bad = [o for o in opts if o not in OPTIMIZERS["hnn"]]
    if bad or not opts:
        print(f"kooptrain reproduce: unknown optimizer(s) {bad}; choose from "
              f"{', '.join(OPTIMIZERS['hnn'])}.", file=sys.stderr)
        return 2
    if args.seeds is not None and args.seeds < 1:
        print("kooptrain reproduce: --seeds must be >= 1.", file=sys.stderr)
        return 2
    try:
        res = window.run(args.task, opts, seeds=args.seeds, full=args.full,
                         mnist_dir=args.mnist_dir, progress=not args.no_progress,
                         select_seeds=args.select_seeds, t1=args.t1, t2=args.t2, T=args.T)
    except (FileNotFoundError, ValueError) as e:
        print(f"kooptrain reproduce: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jpath = Path(args.json) if args.json else out / "results.json"
    jpath.parent.mkdir(parents=True, exist_ok=True)
    jpath.write_text(json.dumps(res, separators=(",", ":"), allow_nan=False))
    path = write_report(res, out)
    print(f"wrote {path} and {jpath}\n")
    for sm in res["summary"]:
        p, sel = sm["paper"] or {}, sm["selected"] or {}
        print(f"{sm['optimizer']:>9s}: paper node operator Koopman/optimizer loss "
              f"{_fmt(p.get('loss_ratio'))}x, speedup {_fmt(p.get('speedup'))}x; selected "
              f"'{sel.get('config')}' {_fmt(sel.get('loss_ratio'))}x -> goal "
              f"{'MET' if sel.get('goal_met') else 'not met'}")
    return 0


def _race(args) -> int:
    from .experiments import race
    from .experiments.window import _json_safe
    from .race_report import write_race_report

    if args.seeds < 1:
        print("kooptrain race: --seeds must be >= 1.", file=sys.stderr)
        return 2
    if args.steps is not None and args.steps < 10:
        print("kooptrain race: --steps must be >= 10.", file=sys.stderr)
        return 2
    out = Path(args.out)
    jpath = Path(args.json) if args.json else out / "results.json"
    try:
        for d in (out, jpath.parent):
            d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"kooptrain race: cannot write there: {e}", file=sys.stderr)
        return 2
    tuning = None
    if args.tune:
        tuning = race.tune(args.task)
        (out / f"tuning-{args.task}.json").write_text(
            json.dumps(_json_safe(tuning), indent=1, allow_nan=False))
        print(f"lr choice on seed {tuning['seed']}: {tuning['choice']}")
    res = race.run(args.task, seeds=args.seeds, steps=args.steps,
                   progress=not args.no_progress, tuning=tuning)
    jpath.write_text(json.dumps(res, separators=(",", ":"), allow_nan=False))
    path = write_race_report(res, out)
    print(f"wrote {path} and {jpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
