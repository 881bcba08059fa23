"""How good are KoopmanMonitor's readings? Divergence warnings, the convergence flag, a
reproduction of Redman et al. (2024), and the monitor's overhead.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics.py divergence   # lr sweeps, AUROC, lead
    OMP_NUM_THREADS=1 python benchmarks/diagnostics.py redman       # narrow vs wide FCNs
    OMP_NUM_THREADS=1 python benchmarks/diagnostics.py groups       # compare vs a control
    OMP_NUM_THREADS=1 python benchmarks/diagnostics.py overhead     # lm, monitor defaults
    OMP_NUM_THREADS=1 python benchmarks/diagnostics.py figures      # from the JSONs

Writes ``results/diagnostics/{divergence,redman,overhead}.json`` and figures next to them.
Not a test: nothing here asserts a score.

**divergence** trains the race's workloads (``lm``, ``mnist1d-cnn``, ``mnist1d``) with their
reference optimizer and schedule at lrs from 0.3x to 100x the tuned one, several seeds
each. A run *diverges* at the first step where its training loss (a 10-step running mean)
exceeds 10x its running minimum or is not finite. Every run is scored at 20% of its budget
by the monitor's instability (its last fit by then) and by three baselines: the largest loss
spike so far (running mean over running minimum), the gradient norm (mean of the last 10
steps) and the weights' growth (norm over the initial norm). AUROC: how well each score
ranks the runs that diverge after that point above those that never do (runs already
diverged by then are left out). Lead time: steps from the monitor's first warning to the
divergence. The healthy runs also give the **convergence** gap: the step at which the
monitor's flag first held minus the step after which the held-out loss improved by less
than 1%, as a fraction of the budget.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kooptrain import KoopmanMonitor, compare
from kooptrain.experiments.harness.plan import progress_bar
from kooptrain.experiments.harness.provenance import provenance
from kooptrain.experiments.race.workloads import workload

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "diagnostics"

# name: (race task, optimizer (None: the task's reference), workload overrides, budget,
# lr factors over the tuned lr). "lm raw" is the lm workload without its warm-up and
# clipping, where large lrs blow up; "mnist1d sgd" is plain SGD on the MLP.
SWEEP = {
    "lm raw": ("lm", None, {"warmup": 0.0, "clip": None}, 600,
               (1, 10, 30, 50, 70, 100, 150, 300)),
    "lm": ("lm", None, {}, 600, (1, 10, 60)),
    "mnist1d sgd": ("mnist1d", "sgd", {}, 1000, (1, 10, 30, 60, 100, 200)),
    "mnist1d-cnn": ("mnist1d-cnn", None, {}, 600, (1, 3, 10, 30, 60, 100)),
    "mnist1d": ("mnist1d", None, {}, 1000, (1, 10, 30, 45, 60, 80)),
}
DEFAULT_SWEEPS = ("lm raw", "lm", "mnist1d sgd")
SCORE_AT = 0.2      # the fraction of the budget at which every run is scored
BLOWUP = 10.0       # diverged: running-mean loss above BLOWUP x its running minimum
SMOOTH = 10         # steps in the running mean of the training loss


def monitor_settings(budget: int) -> dict:
    """The monitor for a sweep run: a snapshot every budget/200 steps, 10 per fit, a fit
    every 5 snapshots, projecting 10% of the budget ahead (the lead time asked for)."""
    every = max(1, budget // 200)
    return {"every": every, "window": 10, "interval": 5 * every, "horizon": budget // 10}


def auroc(pos: list[float], neg: list[float]) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos, float), np.asarray(neg, float)
    gt = (p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()
    return float(gt / (len(p) * len(n)))


def overridden(w, over: dict):
    """``w`` with the overrides of a sweep: ``warmup=0`` drops every optimizer's lr schedule
    (no warm-up, no decay); any other key is set as the workload's attribute (``clip``)."""
    for key, value in over.items():
        if key == "warmup" and not value:
            w.optimizers = {n: replace(s, schedule=None) for n, s in w.optimizers.items()}
        else:
            setattr(w, key, value)
    return w


def sweep_run(name: str, factor: float, seed: int, budget: int, lr_time: bool) -> dict:
    task, optimizer, over, _, _ = SWEEP[name]
    w = overridden(workload(task, budget=budget), over)
    ref = optimizer or w.best
    model = w.make_model(seed)
    opt, sched = w.make_optimizer(ref, model, lr=w.lr[ref] * factor)
    batches = w.sampler(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    w0 = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in params)))
    mon = KoopmanMonitor(model, **monitor_settings(budget), optimizer=opt if lr_time else None)
    t0 = round(SCORE_AT * budget)
    eval_every = max(1, budget // 20)
    losses, gnorms, heldout = [], [], []
    smooth_min, diverged, scores = math.inf, None, None
    for t in range(1, budget + 1):
        opt.zero_grad(set_to_none=True)
        loss = w.loss(model, next(batches))
        loss.backward()
        g = torch.nn.utils.clip_grad_norm_(params, w.clip if w.clip else math.inf)
        opt.step()
        if sched is not None:
            sched.step()
        lv = float(loss.detach())
        losses.append(lv)
        gnorms.append(float(g))
        mon.step(loss=lv)
        run = float(np.mean(losses[-SMOOTH:]))
        if not math.isfinite(run) or run > BLOWUP * smooth_min:
            diverged = t
        smooth_min = min(smooth_min, run) if math.isfinite(run) else smooth_min
        if t % eval_every == 0 and diverged is None:
            h = w.heldout(model)["heldout"]
            heldout.append([t, h if math.isfinite(h) else None])
        if t == t0:
            fits = [e for e in mon.record["entries"] if e["step"] <= t0]
            inst = fits[-1]["instability"] if fits else 0.0
            rm = [float(np.mean(losses[max(0, i - SMOOTH + 1):i + 1])) for i in range(t)]
            spike = max(r / min(rm[: i + 1]) for i, r in enumerate(rm)) if all(
                math.isfinite(r) for r in rm) else math.inf
            wn = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in params)))
            scores = {"koopman": math.inf if inst is None else inst, "loss_spike": spike,
                      "grad_norm": float(np.mean(gnorms[-10:])),
                      "weight_growth": wn / w0 if math.isfinite(wn) else math.inf}
        if diverged is not None:
            break
    return {"task": name, "optimizer": ref, "lr": w.lr[ref] * factor, "factor": factor,
            "seed": seed, "budget": budget, "score_at": t0, "diverged_at": diverged,
            "scores": scores, "warning": mon.warning, "converged_at": mon.converged_at,
            "heldout": heldout, "monitor": monitor_settings(budget),
            "instability": [[e["step"], e["instability"]] for e in mon.record["entries"]]}


def plateau_step(heldout: list) -> int | None:
    """The first evaluated step after which the held-out loss improves by less than 1%."""
    pts = [(t, h) for t, h in heldout if h is not None]
    for i, (t, h) in enumerate(pts):
        later = [x for _, x in pts[i + 1:]]
        if not later or min(later) >= 0.99 * h:
            return t
    return None


def summarize(runs: list[dict]) -> dict:
    out = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        rs = [r for r in runs if r["task"] == task]
        budget = rs[0]["budget"]
        scored = [r for r in rs if r["scores"] is not None]  # not diverged by the score point
        pos = [r for r in scored if r["diverged_at"] is not None]
        neg = [r for r in scored if r["diverged_at"] is None]
        au = {k: auroc([r["scores"][k] for r in pos], [r["scores"][k] for r in neg])
              for k in ("koopman", "loss_spike", "grad_norm", "weight_growth")}
        leads = []
        for r in pos:
            wstep = r["warning"]["step"] if r["warning"] else None
            leads.append(r["diverged_at"] - wstep if wstep is not None and
                         wstep < r["diverged_at"] else 0)
        gaps, never = [], 0
        for r in neg:
            s = plateau_step(r["heldout"])
            if r["converged_at"] is None or s is None:
                never += 1
            else:
                gaps.append((r["converged_at"] - s) / budget)
        out[task] = {
            "runs": len(rs), "diverged_before_scoring": len(rs) - len(scored),
            "diverged_after_scoring": len(pos), "healthy": len(neg), "auroc": au,
            "lead_steps": leads,
            "median_lead_fraction": float(np.median(leads)) / budget if leads else None,
            "warned_before_divergence": sum(x > 0 for x in leads),
            "false_alarms": sum(r["warning"] is not None for r in neg),
            "convergence_gap_fractions": gaps,
            "median_convergence_gap": float(np.median(gaps)) if gaps else None,
            "flag_never_held": never}
    return out


def divergence(args) -> dict:
    tasks = args.tasks.split(";") if args.tasks else list(DEFAULT_SWEEPS)
    unknown = [t for t in tasks if t not in SWEEP]
    if unknown:
        raise SystemExit(f"unknown sweep(s) {unknown}; choose from {list(SWEEP)}")
    jobs = [(t, f, s) for t in tasks for f in SWEEP[t][4] for s in range(args.seeds)]
    bar = progress_bar(not args.no_progress, total=len(jobs), unit="run", desc="lr sweeps")
    runs = []
    for task, f, s in jobs:
        runs.append(sweep_run(task, f, s, args.steps or SWEEP[task][3], not args.step_time))
        print(f"{task} x{f} seed {s}: diverged at {runs[-1]['diverged_at']}, warning "
              f"{runs[-1]['warning']}", flush=True)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return {"runs": runs, "summary": summarize(runs),
            "settings": {"score_at": SCORE_AT, "blowup": BLOWUP, "smooth": SMOOTH,
                         "sweep": {t: SWEEP[t] for t in tasks}, "seeds": args.seeds,
                         "lr_time": not args.step_time}}


# ------------------------------------------------------------------- Redman et al.
def redman(args) -> dict:
    """Narrow vs wide fully connected networks (Redman et al. 2024, Fig. 3), on scikit-
    learn's 8x8 digits instead of MNIST: 64-h-10, ReLU, no biases, SGD lr 0.1, batch 64,
    1000 steps, for h = 5, 10, 40. As in the authors' code, the runs compared share their
    minibatch sequence (one per seed), and the control is the same width from an
    initialisation perturbed by 0.1% (their "initializations"). The monitor watches every
    step (window 40: up to 38 eigenvalues per fit, a fit every 100 steps); the 10 modes
    carrying the most motion are compared, as the authors keep 10 modes."""
    widths, seeds, steps = (5, 10, 40), range(args.seeds), args.steps or 1000
    records = {(h, s, perturbed): digits_record("sgd", h, s, steps, perturbed)
               for h in widths for s in seeds for perturbed in (False, True)}
    out = {"widths": widths, "seeds": len(seeds), "steps": steps, "pairs": {}}
    for layer in ("0", "2"):
        rows = {}

        def dist(a, b, layer=layer):
            return compare(records[a], records[b], top=10)["layers"][layer]["distance"]

        for a, b in ((5, 10), (5, 40), (10, 40)):
            rows[f"h={a} vs h={b}"] = [dist((a, s, False), (b, s, False)) for s in seeds]
        for h in widths:
            rows[f"h={h} vs h={h} (perturbed init)"] = [dist((h, s, False), (h, s, True))
                                                        for s in seeds]
        out["pairs"]["fc1" if layer == "0" else "fc2"] = {
            k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
            for k, v in rows.items()}
    return out


# ------------------------------------------------------------------------ groups
def digits_record(optimizer: str, width: int, seed: int, steps: int,
                  perturbed: bool = False) -> dict:
    """A 64-width-10 ReLU network on scikit-learn's digits (no biases, batch 64; SGD at lr
    0.1 or Adam at 3e-3), watched every step (window 40, a fit every 100 steps), in step
    time. The seed sets the initialisation and the minibatch sequence; ``perturbed``
    multiplies every initial weight by 1 + U(-0.1%, 0.1%) (Redman et al.'s control)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, width, bias=False), torch.nn.ReLU(),
                                torch.nn.Linear(width, 10, bias=False))
    if perturbed:
        g = torch.Generator().manual_seed(500 + seed)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 0.001 * (2 * torch.rand(p.shape, generator=g) - 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if optimizer == "sgd" else \
        torch.optim.Adam(model.parameters(), lr=3e-3)
    mon = KoopmanMonitor(model, every=1, window=40, interval=100)
    g = torch.Generator().manual_seed(1000 + seed)  # the seed's minibatch sequence
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
        mon.step()
    return mon.record


def groups(args) -> dict:
    """``compare_groups`` on runs that differ by optimizer (SGD against Adam), by width
    (h = 10 against 40, Redman et al.'s finding) and by seed only (two groups of SGD at
    h = 10), ``args.seeds`` runs a group (5 by default: 252 splits, an exact test), every
    layer's top 10 modes."""
    from kooptrain import compare_groups

    n, steps = args.seeds if args.seeds != 3 else 5, args.steps or 1000
    runs = {"sgd h=10": [digits_record("sgd", 10, s, steps) for s in range(n)],
            "sgd h=10, other seeds": [digits_record("sgd", 10, s, steps)
                                      for s in range(n, 2 * n)],
            "adam h=10": [digits_record("adam", 10, s, steps) for s in range(n)],
            "sgd h=40": [digits_record("sgd", 40, s, steps) for s in range(n)]}
    out = {"runs_per_group": n, "steps": steps, "tests": {}}
    for name, (a, b) in {"optimizer: SGD vs Adam": ("sgd h=10", "adam h=10"),
                         "width: h=10 vs h=40": ("sgd h=10", "sgd h=40"),
                         "seed only: SGD h=10": ("sgd h=10", "sgd h=10, other seeds")}.items():
        r = compare_groups(runs[a], runs[b], top=10)
        out["tests"][name] = {k: v for k, v in r.items() if k != "distances"} | {
            "distances": r["distances"]}
        print(f"{name:28s} between {r['between']:.3f} within {r['within']:.3f} effect "
              f"{r['effect_size']:.2f} (control 95% {r['control'][2]:.2f}) p {r['p_value']:.4f}",
              flush=True)
    return out


# ------------------------------------------------------------------------ overhead
def overhead(args) -> dict:
    """The monitor at its defaults on a race workload (``--tasks``, default lm; e.g.
    mnist1d-cnn, the small CNN): two identical models trained
    in lockstep on the same batches, one watched; each step's time and each monitor call's
    time are measured separately, so the overhead is the monitor's time over the step time
    of the same run."""
    task = args.tasks or "lm"
    w = workload(task, budget=args.steps or 1000)
    ref = w.best
    model = w.make_model(0)
    twin = copy.deepcopy(model)
    opts = [w.make_optimizer(ref, m) for m in (model, twin)]
    mon = KoopmanMonitor(model, optimizer=opts[0][0])  # the defaults, in lr time (schedule)
    batches = w.sampler(0)
    step_s, twin_s, mon_s, fit_s = 0.0, 0.0, 0.0, []
    for _ in range(w.budget):
        batch = next(batches)
        for k, (m, (opt, sched)) in enumerate(zip((model, twin), opts, strict=True)):
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            w.loss(m, batch).backward()
            if w.clip:
                torch.nn.utils.clip_grad_norm_(m.parameters(), w.clip)
            opt.step()
            if sched is not None:
                sched.step()
            dt = time.perf_counter() - t
            if k == 0:
                step_s += dt
                t = time.perf_counter()
                entry = mon.step()
                dm = time.perf_counter() - t
                mon_s += dm
                if entry is not None:
                    fit_s.append(dm)
            else:
                twin_s += dt
    s = mon.record["settings"]
    OUT.mkdir(parents=True, exist_ok=True)
    if task == "lm":
        mon.save(OUT / "lm-record.json")  # the monitor's own record of this run, its figure
    return {"task": task, "steps": w.budget, "settings": s, "layers": len(mon.names),
            "weights": sum(p.numel() for p in model.parameters()),
            "step_seconds": step_s, "twin_step_seconds": twin_s, "monitor_seconds": mon_s,
            "overhead": mon_s / step_s, "fits": len(fit_s),
            "median_fit_seconds": float(np.median(fit_s)) if fit_s else None,
            "snapshot_bytes": mon.recorder.memory_bytes}


# ------------------------------------------------------------------------- figures
def figures(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = OUT / "divergence.json"
    if path.exists():
        res = json.loads(path.read_text())
        tasks = list(res["summary"])
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6),
                                 squeeze=False, constrained_layout=True)
        for ax, task in zip(axes[0], tasks, strict=True):
            rs = [r for r in res["runs"] if r["task"] == task]
            for r in rs:
                pts = [(t, v if v is not None else 12.0) for t, v in r["instability"]]
                if not pts:
                    continue
                color = ("tab:red" if r["diverged_at"] is not None else "tab:blue")
                t, v = zip(*pts, strict=True)
                ax.plot(t, np.clip(v, -12, 12), color=color, alpha=0.5, lw=1)
                if r["diverged_at"] is not None:
                    ax.axvline(r["diverged_at"], color="tab:red", alpha=0.4, lw=0.8, ls="-.")
            ax.axhline(1.0, color="k", ls="--", lw=0.8)
            ax.axvline(res["settings"]["score_at"] * rs[0]["budget"], color="0.5", ls=":")
            au = res["summary"][task]["auroc"]["koopman"]
            ax.set_title(f"{task}: AUROC {au:.2f}" if au is not None else task, fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("instability (log10 projected growth)")
        fig.suptitle("Monitor instability over training: red runs diverge (vertical lines: "
                     "when), blue do not; dashed: the warning threshold; dotted: the scoring "
                     "point; unbounded scores drawn at 12", fontsize=9)
        fig.savefig(OUT / "divergence.png", dpi=150)
        plt.close(fig)
    path = OUT / "lm-record.json"
    if path.exists():
        from kooptrain.diagnostics import plot_spectra

        fig = plot_spectra(path, OUT / "spectra-lm.png", max_layers=8, title=(
            "KoopmanMonitor on the race's lm transformer (AdamW, warm-up, cosine decay), "
            "defaults: eigenvalues of the weight increments per fit, the first 8 layers"))
        plt.close(fig)
    path = OUT / "redman.json"
    if path.exists():
        res = json.loads(path.read_text())
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
        for ax, (layer, rows) in zip(axes, res["pairs"].items(), strict=True):
            names = list(rows)
            ax.bar(range(len(names)), [rows[n]["mean"] for n in names],
                   yerr=[rows[n]["std"] for n in names], color=[
                       "tab:orange" if "perturbed" not in n else "0.6" for n in names])
            ax.set_xticks(range(len(names)), [n.replace(" (perturbed init)", "\n(perturbed)")
                                              for n in names], fontsize=7, rotation=30)
            ax.set_title(f"{layer}: Wasserstein distance of the top-10 eigenvalues",
                         fontsize=9)
            ax.set_ylabel("distance (mean ± sd over seeds)", fontsize=8)
        fig.suptitle("Narrow vs wide FCNs on 8x8 digits (after Redman et al. 2024): orange, "
                     "two widths on the same batches; grey, one width from an init perturbed "
                     "by 0.1%", fontsize=9)
        fig.savefig(OUT / "redman.png", dpi=150)
        plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("divergence", "redman", "groups", "overhead", "figures"))
    ap.add_argument("--tasks", default=None,
                    help=f"divergence: sweeps separated by ';' (of {list(SWEEP)}; default "
                    f"{';'.join(DEFAULT_SWEEPS)})")
    ap.add_argument("--step-time", action="store_true",
                    help="divergence: the monitor without lr time (no optimizer given)")
    ap.add_argument("--out", default=None, help="the JSON (default results/diagnostics/WHAT.json)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="budget (default per part)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if args.what == "figures":
        figures(args)
        return 0
    res = {"divergence": divergence, "redman": redman, "groups": groups,
           "overhead": overhead}[args.what](args)
    res = {"command": f"OMP_NUM_THREADS=1 python benchmarks/diagnostics.py {args.what}"
                      + (f" --tasks '{args.tasks}'" if args.tasks else "")
                      + (" --step-time" if getattr(args, "step_time", False) else "")
                      + (f" --seeds {args.seeds}" if args.seeds != 3 else "")
                      + (f" --steps {args.steps}" if args.steps else "")
                      + (f" --out {args.out}" if args.out else ""),
           "provenance": provenance(), **res}
    OUT.mkdir(parents=True, exist_ok=True)
    path = Path(args.out) if args.out else OUT / f"{args.what}.json"
    path.write_text(json.dumps(res, indent=1, default=float, allow_nan=True))
    print(json.dumps(res.get("summary", {k: v for k, v in res.items() if k != "runs"}),
                     indent=1, default=float)[:4000])
    figures(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
