"""Is KoopmanMonitor's warning calibrated? False alarms on healthy runs, warnings of late
divergences, and the same for four baselines, on four workloads.

    OMP_NUM_THREADS=1 python benchmarks/monitor_calibration.py              # seeds 0-4
    OMP_NUM_THREADS=1 python benchmarks/monitor_calibration.py --report     # from the JSON
    OMP_NUM_THREADS=1 python benchmarks/monitor_calibration.py --convergence --seeds 2-4

Writes ``results/diagnostics/calibration.json`` (every run's series) and
``results/diagnostics/calibration-summary.json``. Not a test: nothing here asserts a score.

**Workloads** (the race's, with their tuned learning rate and clipping): ``mnist1d`` (the
paper's MLP, Adadelta), ``mnist1d sgd`` (the MLP with SGD), ``mnist1d-cnn`` (a residual
1-D CNN with BatchNorm, SGD) and ``lm`` (a 4-block byte-level transformer, AdamW).

**Scenarios.** Healthy: a constant lr, a cosine decay to 10%, a warm-up over 10% of the
budget then cosine, a step decay (x0.1 at half the budget, x0.01 at three quarters), a
warm-up then constant. Late divergences, all from 40% of the budget on: the lr jumps to
``J`` times its value (``jump``), or grows geometrically to ``J`` times over 30% of the budget
(``ramp``, a warm-up to a too-high peak), each at two ``J`` per workload; the batch drops
to ``1/J`` of its size (``batch-drop``). And from the start, no gradient clipping and a
network ``J`` times as wide (``wide``; its readings count from 20% of the budget). A run *diverges*
at the first step where its training loss (a 10-step running mean) exceeds 10x its
running minimum, or is not finite.

**Readings**, each fit or step of every run:
- the monitor's null test (``KoopmanMonitor`` at ``null_rank=1`` and ``null_rank=None`` in
  lr time, and at ``null_rank=1`` in step time, each also on mean snapshots (increments
  averaged over ``every`` steps); ``alarm_rate=0.01``): ``-log10 p`` when the
  flagged layer grows by more than the margin (and, with a ``forecast`` level, at most that
  share of the surrogates forecast its held-out increment as well), else 0; its warning
  needs ``persist`` consecutive flagged fits. The margins (``min_growth``), ``persist`` and
  the forecast levels are applied to the recorded p-values, growths and forecast shares,
  so one monitor serves every rule;
- the deprecated rule (``threshold=1``, kooptrain 0.2's instability score);
- baselines: the loss over its running minimum (loss spike); the gradient norm's z-score
  against its running mean and spread (as ZClip); the update-to-weight ratio; for Adam,
  the RMS of ``g / sqrt(v)`` (Wortsman et al. 2023).

**Scores.** False alarms: healthy runs warned. Detection: diverging runs warned after the
schedule changed and before they diverged, and the lead (steps from the warning to the
divergence, as a fraction of the budget). AUROC at a matched point: for each pair of a run
that diverged and a healthy run, the larger of their readings' maxima from 20% of the
budget to 10% of the budget before the divergence ranks them. A baseline's warning is its
first crossing of the threshold that gives at most 5% false alarms on the tuning seeds.
Rules are chosen on seeds 0-1 (``--tune-seeds``) and reported on the others.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from diagnostics import overridden, plateau_step

from kooptrain import KoopmanMonitor
from kooptrain.experiments.harness.jsonio import json_safe
from kooptrain.experiments.harness.provenance import provenance
from kooptrain.experiments.race.workloads import workload

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "diagnostics"

# name: (race task, optimizer or None for the reference, budget, {kind: its two J}). The J
# of the lr changes were chosen on seed 0 so that each run diverges after the change (a
# jump by less did not diverge at all; lm's clipping and AdamW survive every jump tried).
# The batch drops (to 1/8 and 1/64 of the batch, at least one sample) and the widths of
# the unclipped runs were tried on seed 0 (batch drops of 1/8, 1/32, 1/64; widths 2, 4, 8
# times, lm and the CNN 2 and 4): at the tuned lr, only the CNN's and one SGD batch drop
# diverged (at once), no widening did; they are run as they are, not tuned to diverge.
DROPS, WIDTHS = (8.0, 64.0), (2.0, 4.0)
WORKLOADS = {
    "mnist1d": ("mnist1d", None, 1000, {"jump": (25.0, 100.0), "ramp": (2000.0, 10000.0),
                                        "batch-drop": DROPS, "wide": WIDTHS}),
    "mnist1d sgd": ("mnist1d", "sgd", 1000, {"jump": (50.0, 100.0),
                                             "ramp": (1000.0, 10000.0),
                                             "batch-drop": DROPS, "wide": WIDTHS}),
    "mnist1d-cnn": ("mnist1d-cnn", None, 600, {"jump": (30.0, 100.0),
                                               "ramp": (300.0, 3000.0),
                                               "batch-drop": DROPS, "wide": (2.0,)}),
    "lm": ("lm", None, 600, {"jump": (300.0, 1000.0), "ramp": (300.0, 3000.0),
                             "batch-drop": DROPS, "wide": (2.0,)}),
}
HEALTHY = ("constant", "cosine", "warmup-cosine", "step", "warmup-constant")
# the divergences' kinds, and their summaries' names
CHANGES = {"jump": "jumps only", "ramp": "ramps only", "batch-drop": "batch drops only",
           "wide": "wide, unclipped only"}
CHANGE_AT, RAMP = 0.4, 0.3   # divergences start at 40% of the budget; ramps last 30%
SCORE_FROM, LEAD = 0.2, 0.1  # readings count from 20% of the budget; matched 10% ahead
BLOWUP, SMOOTH = 10.0, 10
MARGINS = (0.0, 0.001, 0.003, 0.01)  # min_growth, log growth per optimizer step
PERSIST = (1, 2, 3)
# (monitor options, lr time?)
# forecast=1.0 records every fit's held-out forecast test and never blocks a flag: the
# levels in FORECASTS are applied to the recorded shares, as the margins are
DESIGNS = {"null rank 1": ({"null_rank": 1}, True), "null all modes": ({"null_rank": None}, True),
           "null rank 1, step time": ({"null_rank": 1}, False),
           # the increments of block means: every step's weights averaged over `every`
           "null rank 1, mean snapshots": ({"null_rank": 1, "snapshot": "mean"}, True),
           "null rank 1, step time, mean snapshots": ({"null_rank": 1, "snapshot": "mean"},
                                                      False)}
DESIGNS = {k: ({**kw, "forecast": 1.0}, lr) for k, (kw, lr) in DESIGNS.items()}
FORECASTS = (None, 0.5, 0.2)  # None: no forecast condition
BASELINES = ("loss_spike", "grad_z", "update_ratio", "adam_rms")


def schedule(kind: str, budget: int, jump: float | None):
    """``f(step) -> lr factor`` of a scenario."""
    t0 = round(CHANGE_AT * budget)

    def f(t):
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            return 0.1 + 0.45 * (1 + math.cos(math.pi * t / budget))
        if kind == "warmup-cosine":
            w = 0.1 * budget
            return (t + 1) / w if t < w else \
                0.1 + 0.45 * (1 + math.cos(math.pi * (t - w) / (budget - w)))
        if kind == "warmup-constant":
            return min(1.0, (t + 1) / (0.1 * budget))
        if kind == "step":  # x0.1 at half the budget, x0.01 at three quarters
            return 1.0 if t < budget / 2 else 0.1 if t < 0.75 * budget else 0.01
        if kind in ("batch-drop", "wide"):  # the lr stays; the batch or the model changes
            return 1.0
        if kind == "jump":
            return jump if t >= t0 else 1.0
        if kind == "ramp":
            return jump ** min(1.0, max(0.0, (t - t0) / (RAMP * budget)))
        raise ValueError(kind)
    return f


def monitor_options(budget: int) -> dict:
    """A snapshot every budget/150 steps, 10 per fit, non-overlapping fits."""
    return {"every": max(1, budget // 150), "window": 10}


def adam_rms(opt) -> float | None:
    """RMS over every trained weight of ``g / sqrt(v_hat)`` (Adam-type optimizers only)."""
    num, count = 0.0, 0
    for group in opt.param_groups:
        b2 = group.get("betas", (None, None))[1]
        if b2 is None:
            return None
        for p in group["params"]:
            st = opt.state.get(p, {})
            if p.grad is None or "exp_avg_sq" not in st:
                continue
            v = st["exp_avg_sq"] / (1 - b2 ** float(st["step"]))
            num += float(((p.grad / (v.sqrt() + 1e-8)) ** 2).sum())
            count += p.numel()
    return math.sqrt(num / count) if count else None


def widened(task: str, k: int):
    """``model(seed)`` of ``task``'s network ``k`` times as wide (every hidden width, the
    transformer's embedding)."""
    from kooptrain.problems.classifiers import ResCNN1d, mlp
    from kooptrain.problems.lm import TinyGPT

    def model(seed: int):
        torch.manual_seed(seed)
        if task == "lm":
            return TinyGPT(256, 48 * k, 4, 4, 64)
        if task == "mnist1d-cnn":
            return ResCNN1d(10, width=96 * k)
        return mlp(40, (20 * k,) * 3, 10)
    return model


def shrunk(batch, factor: float):
    """The first ``1/factor`` of every tensor's rows in ``batch`` (at least one)."""
    if isinstance(batch, torch.Tensor):
        return batch[:max(1, round(len(batch) / factor))]
    return type(batch)(shrunk(b, factor) for b in batch)


def one_run(name: str, kind: str, jump: float | None, seed: int, designs: dict | None = None,
            heldout_every: int | None = None) -> dict:
    """One run of a scenario, watched by a monitor per design (default ``DESIGNS`` and the
    deprecated rule); ``heldout_every``: also the held-out score every so many steps."""
    designs = DESIGNS if designs is None else designs
    task, optimizer, budget, _ = WORKLOADS[name]
    w = overridden(workload(task, budget=budget), {"warmup": 0.0})  # our schedules
    ref = optimizer or w.best
    if kind == "wide":  # no clipping, the model `jump` times as wide, from the start
        w.clip = None
    model = widened(task, int(jump))(seed) if kind == "wide" else w.make_model(seed)
    opt, _ = w.make_optimizer(ref, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(kind, budget, jump))
    params = [p for p in model.parameters() if p.requires_grad]
    mons = {k: KoopmanMonitor(model, **monitor_options(budget), **kw,
                              optimizer=opt if lr_time else None)
            for k, (kw, lr_time) in designs.items()}
    if designs is DESIGNS:
        with warnings.catch_warnings():  # the 0.2 rule, for comparison
            warnings.simplefilter("ignore", DeprecationWarning)
            mons["deprecated threshold"] = KoopmanMonitor(model, **monitor_options(budget),
                                                          threshold=1.0, optimizer=opt)
    heldout = []
    batches = w.sampler(seed)
    losses, series = [], {k: [] for k in BASELINES}
    gmean = gvar = None
    smooth_min, diverged = math.inf, None
    seconds = dict.fromkeys(mons, 0.0)
    for t in range(1, budget + 1):
        before = [p.detach().clone() for p in params]
        opt.zero_grad(set_to_none=True)
        batch = next(batches)
        if kind == "batch-drop" and t > CHANGE_AT * budget:  # `jump` times smaller
            batch = shrunk(batch, jump)
        loss = w.loss(model, batch)
        loss.backward()
        g = float(torch.nn.utils.clip_grad_norm_(params, w.clip if w.clip else math.inf))
        opt.step()
        rms = adam_rms(opt)
        sched.step()
        lv = float(loss.detach())
        losses.append(lv)
        for k, m in mons.items():
            t0 = time.perf_counter()
            m.step(loss=lv)
            seconds[k] += time.perf_counter() - t0
        run = float(np.mean(losses[-SMOOTH:]))
        if math.isfinite(run):
            smooth_min = min(smooth_min, run)
        if not math.isfinite(run) or run > BLOWUP * smooth_min:
            diverged = t
        # baselines: the loss spike, the gradient norm's z-score (EMA over ~50 steps), the
        # update-to-weight ratio, Adam's g / sqrt(v)
        z = 0.0
        if gmean is not None and math.isfinite(g):
            z = (g - gmean) / math.sqrt(max(gvar, 1e-30))
        if math.isfinite(g):
            gmean = g if gmean is None else 0.98 * gmean + 0.02 * g
            gvar = (0.1 * g) ** 2 if gvar is None else 0.98 * gvar + 0.02 * (g - gmean) ** 2
        num = sum(float(((p.detach() - q) ** 2).sum()) for p, q in zip(params, before,
                                                                        strict=True))
        den = sum(float((q ** 2).sum()) for q in before)
        for k, v in (("loss_spike", run / smooth_min if math.isfinite(run) else math.inf),
                     ("grad_z", z if math.isfinite(g) else math.inf),
                     ("update_ratio", math.sqrt(num / max(den, 1e-30))),
                     ("adam_rms", rms)):
            series[k].append(v)
        if heldout_every and t % heldout_every == 0 and diverged is None:
            h = w.heldout(model)["heldout"]
            heldout.append([t, h if math.isfinite(h) else None])
        if diverged is not None:
            break
    fits = {k: [{"step": e["step"], "p": e["null"]["p_value"] if e["null"] else None,
                 "growth": e["null"]["growth"] if e["null"] else None,
                 "forecast": e["null"].get("forecast") if e["null"] else None,
                 "instability": e["instability"]} for e in m.record["entries"]]
            for k, m in mons.items()}
    return {"workload": name, "kind": kind, "jump": jump, "seed": seed, "budget": budget,
            "optimizer": ref, "every": next(iter(mons.values())).every,
            "change_at": None if kind in HEALTHY else round(
                (SCORE_FROM if kind == "wide" else CHANGE_AT) * budget),
            "diverged_at": diverged, "steps": len(losses), "fits": fits,
            "warnings": {k: m.warning for k, m in mons.items()}, "baselines": series,
            "converged_at": {k: m.converged_at for k, m in mons.items()},
            "heldout": heldout,
            "monitor_seconds": seconds}


# ------------------------------------------------------------------ scoring
def null_reading(fits: list, every: int, margin: float, persist: int,
                 forecast: float | None = None) -> list:
    """``[(step, reading)]``: ``-log10 p`` of a fit flagged under ``margin`` (and, with a
    ``forecast`` level, whose held-out increment at most that share of the surrogates
    forecast as well), the smallest over the last ``persist`` fits (0 where any of them was
    not flagged)."""
    raw = [(f["step"], -math.log10(f["p"]) if f["p"] is not None and f["growth"] is not None
            and f["growth"] > margin * every and (
                forecast is None or f.get("forecast") is not None
                and f["forecast"] <= forecast) else 0.0) for f in fits]
    return [(s, min(v for _, v in raw[max(0, i - persist + 1):i + 1]) if i + 1 >= persist
             else 0.0) for i, (s, _) in enumerate(raw)]


def readings(run: dict, rule: str) -> list:
    """``[(step, value)]`` of one rule on one run."""
    if rule.startswith("null"):
        design, margin, persist, forecast = RULES[rule]
        return null_reading(run["fits"][design], run["every"], margin, persist, forecast)
    if rule == "deprecated threshold":
        return [(f["step"], math.inf if f["instability"] is None else f["instability"])
                for f in run["fits"][rule]]
    return [(i + 1, math.inf if v is None and rule != "adam_rms" else v)
            for i, v in enumerate(run["baselines"][rule]) if v is not None]


RULES = {f"{d}, margin {m}, persist {k}" + ("" if q is None else f", forecast {q}"):
         (d, m, k, q) for d in DESIGNS for m in MARGINS for k in PERSIST for q in FORECASTS}


def peak(series: list, lo: int, hi: int) -> float:
    vals = [v for s, v in series if lo <= s <= hi]
    return max(vals) if vals else -math.inf


def threshold_for(rule: str, healthy: list, rate: float = 0.05) -> float:
    """The smallest threshold at which at most ``rate`` of the healthy runs cross it after
    20% of their budget (the null rules' own: their alarm at p <= 0.01)."""
    if rule.startswith("null"):
        return 2.0
    if rule == "deprecated threshold":
        return 1.0
    peaks = sorted(peak(readings(r, rule), SCORE_FROM * r["budget"], r["budget"])
                   for r in healthy)
    if not peaks:
        return math.inf
    k = math.floor(rate * len(peaks))  # runs allowed above
    return peaks[len(peaks) - 1 - k] if k < len(peaks) else -math.inf


def warned_at(series: list, thr: float, start: int, rule: str) -> int | None:
    """The first step from ``start`` on at which ``rule``'s reading warns: at or above 2
    (p <= 0.01 in every fit of the persistence) for the null's rules, above ``thr`` for the
    others."""
    null = rule.startswith("null")
    return next((s for s, v in series if s >= start and v is not None
                 and (v >= thr if null else v > thr)), None)


def score(runs: list, rule: str, thr: float) -> dict:
    healthy = [r for r in runs if r["kind"] in HEALTHY]
    late = [r for r in runs if r["kind"] not in HEALTHY and r["diverged_at"] is not None
            and r["diverged_at"] > SCORE_FROM * r["budget"]]
    false = [r for r in healthy if warned_at(readings(r, rule), thr,
                                             SCORE_FROM * r["budget"], rule) is not None]
    leads, warned = [], 0
    for r in late:
        s = warned_at(readings(r, rule), thr, r["change_at"], rule)
        ok = s is not None and s < r["diverged_at"]
        warned += ok
        leads.append((r["diverged_at"] - s) / r["budget"] if ok else 0.0)
    pos, neg = [], []
    for r in late:  # matched point: LEAD of the budget before this run's divergence
        hi = r["diverged_at"] - LEAD * r["budget"]
        lo = SCORE_FROM * r["budget"]
        if hi <= lo:
            continue
        for h in healthy:
            if h["workload"] != r["workload"]:
                continue
            pos.append(peak(readings(r, rule), lo, hi))
            neg.append(peak(readings(h, rule), lo, hi))
    # AUROC over matched pairs: P(diverging run's reading > the healthy one's)
    au = None
    if pos:
        p, n = np.asarray(pos), np.asarray(neg)
        au = float(((p > n) + 0.5 * (p == n)).mean())
    hit = [v for v in leads if v > 0]
    return {"threshold": thr, "healthy": len(healthy), "false_alarms": len(false),
            "false_alarm_rate": len(false) / len(healthy) if healthy else None,
            "late_divergences": len(late), "warned_before": warned,
            "median_lead": float(np.median(leads)) if leads else None,
            "median_lead_when_warned": float(np.median(hit)) if hit else None,
            "auroc_matched": au, "matched_pairs": len(pos)}


def summarize(runs: list, tune: set) -> dict:
    out = {"tuning_seeds": sorted(tune), "rules": {}}
    for rule in list(RULES) + ["deprecated threshold", *BASELINES]:
        row = {}
        tuning = [r for r in runs if r["seed"] in tune]
        thr = threshold_for(rule, [r for r in tuning if r["kind"] in HEALTHY])
        for split, rs in (("tuning", tuning),
                          ("reported", [r for r in runs if r["seed"] not in tune])):
            healthy = [r for r in rs if r["kind"] in HEALTHY]
            row[split] = {"all": score(rs, rule, thr)} | {
                label: score(healthy + [r for r in rs if r["kind"] == kind], rule, thr)
                for kind, label in CHANGES.items()} | {
                wl: score([r for r in rs if r["workload"] == wl], rule, thr)
                for wl in dict.fromkeys(r["workload"] for r in rs)}
        out["rules"][rule] = row
    return out


FIGURE_RULES = {  # label: rule
    "the null (defaults)": "null rank 1, margin 0.01, persist 2",
    "the null, no margin": "null rank 1, margin 0.0, persist 2",
    "the null, step time": "null rank 1, step time, margin 0.01, persist 2",
    "the null, step time, mean snapshots, forecast 0.2, persist 1":
        "null rank 1, step time, mean snapshots, margin 0.01, persist 1, forecast 0.2",
    "0.2 threshold": "deprecated threshold", "loss spike": "loss_spike",
    "gradient z-score": "grad_z", "update ratio": "update_ratio"}


def figure(data: dict, summary: dict, path: Path) -> None:
    """Left: each rule's false alarms against the gradual divergences it warned of, on the
    reported seeds. Right: one ramp (of lm if there is one: the first reported seed that
    diverged), the null's -log10 p and the loss spike over its steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    for label, rule in FIGURE_RULES.items():
        r = summary["rules"][rule]["reported"]
        x = r["all"]["false_alarm_rate"]
        y = r["ramps only"]["warned_before"] / max(1, r["ramps only"]["late_divergences"])
        a.scatter([x], [y], s=40, color="tab:blue" if label.startswith("the null") else
                  "tab:red" if label == "0.2 threshold" else "0.3")
        a.annotate(label, (x, y), xytext=(5, -10 if label == "the null (defaults)" else 4),
                   textcoords="offset points", fontsize=8)
    a.axvline(0.05, color="k", lw=0.6, ls="--")
    a.text(0.055, 0.6, "goal: at most 5%", fontsize=7)
    a.set_xlabel("false alarms: share of healthy runs warned (seeds 2-4)")
    a.set_ylabel("lr ramps warned before they diverged")
    a.set_xlim(-0.03, 0.85)
    a.set_ylim(-0.05, 1.05)
    a.set_title("every rule, on the reported seeds", fontsize=10)
    tune = set(summary["tuning_seeds"])
    ramps = [r for r in data["runs"] if r["kind"] == "ramp" and r["seed"] not in tune
             and r["diverged_at"]]
    run = next((r for r in ramps if r["workload"] == "lm"), ramps[0] if ramps else None)
    if run is None:  # nothing to show on the right
        fig.savefig(path, dpi=130)
        plt.close(fig)
        return
    fits = run["fits"]["null rank 1"]
    b.plot([f["step"] for f in fits], [-math.log10(f["p"]) if f["p"] else 0 for f in fits],
           "o-", color="tab:blue", ms=3, label="the null: -log10 p per fit (lr time)")
    b.axhline(2, color="tab:blue", lw=0.6, ls=":")  # p = alarm_rate
    spike = readings(run, "loss_spike")
    b.plot([t for t, _ in spike], [v for _, v in spike], color="0.3", lw=1,
           label="loss spike")
    b.axhline(summary["rules"]["loss_spike"]["reported"]["all"]["threshold"], color="0.3",
              lw=0.6, ls=":")
    b.axvline(run["change_at"], color="tab:orange", lw=0.8, label="the ramp starts")
    b.axvline(run["diverged_at"], color="tab:red", lw=0.8, label="diverged")
    b.set_yscale("symlog", linthresh=1)
    b.set_ylabel("reading (dotted: its alarm level)")
    b.set_xlabel("optimizer step")
    b.set_title(f"{run['workload']}, lr ramp to x{run['jump']:g}, seed {run['seed']}",
                fontsize=10)
    b.legend(fontsize=7, frameon=False, loc="upper left")
    fig.suptitle("KoopmanMonitor's warning against a null, and the baselines "
                 "(benchmarks/monitor_calibration.py)", fontsize=10)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def span(seeds: str) -> set[int]:
    """``"2-4"`` -> ``{2, 3, 4}`` (``"3"`` -> ``{3}``)."""
    return set(range(int(seeds.split("-")[0]), int(seeds.split("-")[-1]) + 1))


CONVERGENCE_KINDS = ("constant", "cosine", "step")  # a constant lr, two decayed schedules
CLOCKS = {"lr time": ({}, True), "step time": ({}, False)}  # the monitor's defaults


def convergence(args) -> dict:
    """The convergence flag against the held-out plateau (the first evaluated step after
    which the held-out score improves by less than 1%; evaluated every budget/50 steps),
    on healthy runs of every workload, in lr time and in step time."""
    runs = []
    for name in args.workloads.split(";"):
        for seed in sorted(span(args.seeds)):
            for kind in CONVERGENCE_KINDS:
                r = one_run(name, kind, None, seed, designs=CLOCKS,
                            heldout_every=WORKLOADS[name][2] // 50)
                r.pop("baselines")
                r["plateau_at"] = plateau_step(r["heldout"])
                runs.append(r)
                print(f"{name:12s} {kind:9s} seed {seed}: plateau {r['plateau_at']}, flag "
                      f"{r['converged_at']}", flush=True)
    summary = {}
    for name in dict.fromkeys(r["workload"] for r in runs):
        for kind in CONVERGENCE_KINDS:
            rs = [r for r in runs if r["workload"] == name and r["kind"] == kind]
            for clock in CLOCKS:
                gaps = [(r["converged_at"][clock] - r["plateau_at"]) / r["budget"]
                        for r in rs if r["converged_at"][clock] is not None
                        and r["plateau_at"] is not None]
                summary[f"{name}, {kind}, {clock}"] = {
                    "runs": len(rs), "flag_held": sum(r["converged_at"][clock] is not None
                                                      for r in rs),
                    "gaps": gaps, "median_gap": float(np.median(gaps)) if gaps else None}
    return {"command": "OMP_NUM_THREADS=1 python benchmarks/monitor_calibration.py "
                       f"--convergence --workloads '{args.workloads}' --seeds {args.seeds}",
            "provenance": provenance(), "torch_threads": torch.get_num_threads(),
            "monitor": "KoopmanMonitor(every=budget//150, window=10), defaults otherwise; "
                       "lr time: optimizer=opt",
            "gap": "(converged_at - plateau_at) / budget: above 0, the flag came late",
            "summary": summary, "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default=";".join(WORKLOADS))
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--tune-seeds", default="0-1")
    ap.add_argument("--out", default=None)
    ap.add_argument("--kinds", default=None,
                    help="','-separated scenarios to run (default: all), e.g. to add new "
                         "ones to a committed run with --merge")
    ap.add_argument("--convergence", action="store_true",
                    help="the convergence flag against the held-out plateau instead, "
                         "written to --out (default results/diagnostics/convergence.json)")
    ap.add_argument("--report", action="store_true", help="summarize the JSON only")
    ap.add_argument("--merge", default=None,
                    help="';'-separated JSONs of this benchmark (e.g. one per workload) to "
                         "combine into --out, then summarize")
    args = ap.parse_args()
    if args.convergence:
        out = convergence(args)
        path = Path(args.out or OUT / "convergence.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(json_safe(out), indent=1))
        for k, v in out["summary"].items():
            print(f"{k:40s} flag held {v['flag_held']}/{v['runs']}, median gap "
                  f"{v['median_gap']}")
        return 0
    path = Path(args.out or OUT / "calibration.json")
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge.split(";")]
        data = {**parts[0], "runs": [r for p in parts for r in p["runs"]],
                # a merged JSON brings its own parts
                "parts": [q for p in parts for q in p.get("parts") or [
                    {"command": p["command"], "provenance": p["provenance"],
                     "workloads": list(p["settings"]["workloads"]),
                     "kinds": sorted({r["kind"] for r in p["runs"]})}]]}
        data["settings"]["workloads"] = {k: v for p in parts
                                         for k, v in p["settings"]["workloads"].items()}
        path.write_text(json.dumps(json_safe(data)))
    elif args.report:
        data = json.loads(path.read_text())
    else:
        names = args.workloads.split(";")
        kinds = None if args.kinds is None else set(args.kinds.split(","))
        runs = []
        for name in names:
            for seed in sorted(span(args.seeds)):
                jobs = [(k, None) for k in HEALTHY] + [
                    (k, j) for k, js in WORKLOADS[name][3].items() for j in js]
                jobs = [(k, j) for k, j in jobs if kinds is None or k in kinds]
                for kind, jump in jobs:
                    t0 = time.perf_counter()
                    runs.append(one_run(name, kind, jump, seed))
                    r = runs[-1]
                    print(f"{name:12s} {kind:14s} x{jump} seed {seed}: diverged at "
                          f"{r['diverged_at']}, warnings "
                          f"{ {k: v and v['step'] for k, v in r['warnings'].items()} } "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
        data = {"command": "OMP_NUM_THREADS=1 python benchmarks/monitor_calibration.py "
                           f"--workloads '{args.workloads}' --seeds {args.seeds}"
                           + (f" --kinds {args.kinds}" if args.kinds else ""),
                "provenance": provenance(), "torch_threads": torch.get_num_threads(),
                "settings": {"workloads": {n: WORKLOADS[n] for n in names},
                             "monitor": "KoopmanMonitor(every=budget//150, window=10, "
                                        "optimizer=opt (lr time))", "designs": DESIGNS,
                             "margins": MARGINS, "persist": PERSIST,
                             "forecasts": FORECASTS},
                "runs": runs}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(json_safe(data)))
    summary = summarize(data["runs"], span(args.tune_seeds))
    summary |= {"command": data["command"], "provenance": data["provenance"]}
    (path.parent / "calibration-summary.json").write_text(
        json.dumps(json_safe(summary), indent=1))
    figure(data, summary, path.parent / "calibration.png")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for rule, row in summary["rules"].items():
        a, g = row["reported"]["all"], row["reported"]["ramps only"]
        print(f"{rule:48s} false {a['false_alarms']:2d}/{a['healthy']}  warned "
              f"{a['warned_before']:2d}/{a['late_divergences']} (ramps "
              f"{g['warned_before']:2d}/{g['late_divergences']}, lead when warned "
              f"{g['median_lead_when_warned']})  AUROC {fmt(a['auroc_matched'])} (ramps "
              f"{fmt(g['auroc_matched'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
