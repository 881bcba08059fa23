"""The paper's prediction-window experiment (Dogra & Redman 2020, Sec. 4).

For each optimizer and seed: train, record the weights from ``t1`` to ``t2``,
fit Koopman operators, predict the weights at ``t2 + T`` for a sweep of ``T``,
and compare with the optimizer's own weights at ``t2 + T`` from the same run,
next to the do-nothing and linear-extrapolation baselines.

Settings sit at the top (``PRESETS``, ``OPTIMIZERS``, ``CONFIGURATIONS``) so a
run can be changed in one place. ``run(...)`` returns the JSON-ready dict that
``kooptrain reproduce`` writes and ``kooptrain report`` rebuilds from.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch

from ...errors import NoFixedPointError
from ...partition import Partition
from ...recorder import SnapshotRecorder
from ..harness.jsonio import json_safe, round_floats
from ..harness.optimizers import OPTIMIZERS, make_optimizer
from ..harness.plan import RunPlan, progress_bar
from ..harness.provenance import SCHEMA_VERSION, provenance
from ..harness.tasks import TASKS
from ..harness.tasks import make_problem as _task_problem
from ..harness.timing import median_seconds, timed_step
from .complexity import koopman_cost
from .summary import PAPER_CONFIG, selection_summary, summarize_windows

__all__ = ["PAPER", "TASKS", "baselines", "default_settings", "error_to_growth", "make_problem",
           "run", "run_one"]

# Hyper-parameters per kind of task (on top of make_optimizer's base settings). HNN Adam
# follows the HNN code (lr 8e-3, betas 0.999/0.9999); classifiers use the paper's Adadelta
# lr 1.0; the rest are common defaults.
HYPER = {
    "hnn": {"adam": {"lr": 8e-3, "betas": (0.999, 0.9999)}, "adadelta": {"lr": 1.0},
            "adagrad": {"lr": 1e-2}, "sgd": {"lr": 1e-3}},
    "classifier": {"adam": {"lr": 1e-3}, "adadelta": {"lr": 1.0}, "adagrad": {"lr": 1e-2},
                   "sgd": {"lr": 0.05}},
}

# Windows. HNN --full is the paper's: record 35,001..45,000, predict 2,500 ahead.
# Classifiers record epochs 3-5 and predict up to 2 epochs ahead (steps per epoch E).
PRESETS = {
    "hnn": {"t1": 2001, "t2": 3000, "T": 500, "seeds": 2},
    "hnn-full": {"t1": 35001, "t2": 45000, "T": 2500, "seeds": 25},
}


@dataclass(frozen=True)
class KoopmanConfig:
    """One way to build the jump: granularity plus engine options."""

    name: str
    granularity: str
    chunk: int | None = None
    observables: str = "identity"
    stabilize: str | None = None
    fixed_point: bool = False

    def engine_options(self) -> dict:
        return {"observables": self.observables, "stabilize": self.stabilize}

    def options(self) -> dict:
        return {"stabilize": self.stabilize, "rank": None, "chunk": self.chunk,
                "fixed_point": self.fixed_point}


PAPER = KoopmanConfig(PAPER_CONFIG, "node")
CONFIGURATIONS = (
    PAPER,
    KoopmanConfig("weight", "weight"),
    KoopmanConfig("quasi-node q=4", "quasi-node", chunk=4),
    KoopmanConfig("layer", "layer"),
    KoopmanConfig("network", "network"),
    KoopmanConfig("node affine", "node", observables="affine"),
    KoopmanConfig("node affine clip", "node", observables="affine", stabilize="clip"),
    KoopmanConfig("node affine fixed-point", "node", observables="affine", fixed_point=True),
    KoopmanConfig("layer affine clip", "layer", observables="affine", stabilize="clip"),
    KoopmanConfig("network affine clip", "network", observables="affine", stabilize="clip"),
)


@dataclass
class Settings:
    task: str = "hnn"
    optimizers: tuple[str, ...] = ("adam", "adadelta", "adagrad")
    seeds: int = 2
    select_seeds: int = 1
    t1: int = 2001
    t2: int = 3000
    T: int = 500
    horizons: tuple[int, ...] = ()
    timing_repeats: int = 3
    curve_points: int = 200
    full: bool = False
    configurations: tuple[KoopmanConfig, ...] = field(default=CONFIGURATIONS)

    def __post_init__(self):
        if not 1 <= self.t1 < self.t2:
            raise ValueError(f"need 1 <= t1 < t2, got t1={self.t1}, t2={self.t2}.")
        if self.T < 1:
            raise ValueError(f"T={self.T} must be >= 1.")
        if not self.horizons:  # the sweep: T/16 .. T, and 2T except at paper scale
            longer = set() if self.full else {2 * self.T}
            self.horizons = tuple(sorted({max(1, self.T // 2**k) for k in range(5)} | longer))
        if self.T not in self.horizons:
            raise ValueError(f"horizons {self.horizons} must include T={self.T}.")

    def as_json(self) -> dict:
        d = asdict(self)
        d["configurations"] = [asdict(c) for c in self.configurations]
        return d


def make_problem(task: str, mnist_dir: str | None = None):
    """The problem of a window task (any of ``TASKS``)."""
    return _task_problem(task, mnist_dir)


def default_settings(task: str, problem, full: bool = False, **overrides) -> Settings:
    if task == "hnn":
        preset = dict(PRESETS["hnn-full" if full else "hnn"])
    else:  # record epochs 3-5, predict up to 2 epochs ahead
        E = problem.steps_per_epoch
        preset = {"t1": 2 * E + 1, "t2": 5 * E, "T": 2 * E, "seeds": 2}
    preset.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(task=task, full=full, **preset)


def baselines(w_t2: torch.Tensor, w_prev: torch.Tensor, h: int) -> dict[str, torch.Tensor]:
    """The non-Koopman jumps ``h`` steps past ``t2``: stay at ``w_t2``, or continue the
    last step linearly, ``w_t2 + h (w_t2 - w_{t2-1})``."""
    return {"do-nothing": w_t2, "linear": w_t2 + h * (w_t2 - w_prev)}


def mean_abs_error(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Mean |prediction - truth| over parameters: the authors' ranking of networks."""
    return float((pred - true).abs().mean())


def error_to_growth(pred: torch.Tensor, true: torch.Tensor, w_t2: torch.Tensor) -> float:
    """Median |prediction - truth| / median |truth - w_t2|, pooled over parameters (Fig. 1e)."""
    err = (pred - true).abs().median()
    growth = (true - w_t2).abs().median()
    return float(err / growth) if growth > 0 else math.inf


def run_one(problem, settings: Settings, optimizer: str, seed: int, split: str,
            progress=None) -> dict:
    """Train one network; return rows, the loss curve, spectra and scatter data."""
    s = settings
    kind = "hnn" if s.task == "hnn" else "classifier"
    model = problem.make_model(seed)
    opt = make_optimizer(optimizer, model.parameters(), **HYPER[kind][optimizer])
    gen = torch.Generator().manual_seed(10_000 + seed)
    flat = Partition(model, granularity="network")
    m = s.t2 - s.t1 + 1
    recorders = {}
    for c in s.configurations:
        key = (c.granularity, c.chunk)
        if key not in recorders:
            recorders[key] = SnapshotRecorder(model, granularity=c.granularity,
                                              chunk=c.chunk, window=m)
    h_max = max(s.horizons)
    total = s.t2 + h_max
    log_every = max(1, total // s.curve_points)
    curve, saved, cum = [], {}, [0.0]
    preds: dict = {}
    scratch = copy.deepcopy(model)

    def evaluate(flat_vec):
        scratch.load_state_dict(flat.unflatten(flat_vec), strict=False)
        loss = problem.eval_loss(scratch)
        return (loss if math.isfinite(loss) else None), problem.metrics(scratch)

    for step in range(1, total + 1):
        dt = timed_step(problem, model, opt, problem.batch(gen))  # the batch: untimed
        if step > s.t2:
            cum.append(cum[-1] + dt)
        if s.t1 <= step <= s.t2:
            for rec in recorders.values():
                rec.record()
        if step == s.t2 - 1:
            w_prev = flat.flatten()
        if step == s.t2:
            w_t2 = flat.flatten()
            preds = _koopman_jumps(s, recorders, flat, scratch)
        if step > s.t2 and (step - s.t2) in s.horizons:
            saved[step - s.t2] = flat.flatten()
        if step % log_every == 0 or step == s.t2:
            curve.append((step, problem.eval_loss(model)))
        if progress is not None:
            progress.update(1)

    loss_t2, metrics_t2 = evaluate(w_t2)
    rows, scatter = [], {}
    base = {"task": s.task, "optimizer": optimizer, "seed": seed, "split": split,
            "t1": s.t1, "t2": s.t2}
    for h in s.horizons:
        true = saved[h]
        loss_opt, metrics_opt = evaluate(true)
        opt_seconds = cum[h]
        common = dict(base, T=h, optimizer_seconds=opt_seconds, loss_t2=loss_t2,
                      loss_optimizer=loss_opt, metrics_t2=metrics_t2,
                      metrics_optimizer=metrics_opt)
        for name, w in baselines(w_t2, w_prev, h).items():
            lk, mk = evaluate(w)
            rows.append(dict(common, method=name, config=name, granularity=None,
                             observables=None, options={}, koopman_seconds=0.0,
                             speedup=None, loss_koopman=lk, metrics_koopman=mk,
                             error_to_growth=error_to_growth(w, true, w_t2),
                             mean_abs_error=mean_abs_error(w, true), diverged=lk is None))
        for c in s.configurations:
            if c.fixed_point and h != s.T:
                continue
            p, key = preds[c.name], (math.inf if c.fixed_point else h)
            w, secs = p["flat"].get(key), p["seconds"].get(key)
            if w is None:
                lk, mk, etg, mae = None, {}, None, None
            else:
                lk, mk = evaluate(w)
                etg, mae = error_to_growth(w, true, w_t2), mean_abs_error(w, true)
                if h == s.T:
                    scatter[c.name] = {"error": (w - true).abs().tolist(),
                                       "evolution": (true - w_t2).abs().tolist()}
            rows.append(dict(
                common, method="koopman", config=c.name, granularity=c.granularity,
                observables=c.observables, options=c.options(),
                T=None if c.fixed_point else h,
                koopman_seconds=secs, speedup=(opt_seconds / secs) if secs else None,
                loss_koopman=lk, metrics_koopman=mk, error_to_growth=etg,  # inf -> null later
                mean_abs_error=mae, diverged=lk is None,
            ))
    return {"rows": rows, "curve": curve, "spectra": preds[PAPER.name]["spectra"]
            if PAPER.name in preds else None, "scatter": scatter}


def _koopman_jumps(s: Settings, recorders, flat: Partition, scratch) -> dict:
    """Timed jumps for every configuration and horizon, from the recorded window.

    ``koopman_seconds`` covers gather, cast, fit, predict and scatter into a model
    (``SnapshotRecorder.predict`` + ``load_state_dict``), median of repeats.
    """
    out = {}
    for c in s.configurations:
        rec = recorders[(c.granularity, c.chunk)]
        horizons = [math.inf] if c.fixed_point else list(s.horizons)
        res = {"flat": {}, "seconds": {}, "spectra": None}
        for h in horizons:
            def jump(h=h, rec=rec, c=c):
                scratch.load_state_dict(rec.fit(**c.engine_options()).predict(h), strict=False)
            try:
                res["seconds"][h] = median_seconds(jump, s.timing_repeats)
                # scratch is a deep copy of the model: same parameter names
                res["flat"][h] = flat.flatten(dict(scratch.named_parameters()))
            except (FloatingPointError, NoFixedPointError):  # counted as diverged
                res["seconds"][h] = None
        if c is PAPER or c.name == PAPER.name:
            ops = rec.fit(**c.engine_options())
            res["spectra"] = {}
            for g, op in zip(rec.partition.groups, ops.operators, strict=True):
                lam = op.eigenvalues
                for layer in sorted(set(g.layers)):
                    mask = torch.tensor([lay == layer for lay in g.layers])
                    vals = lam[mask].reshape(-1)
                    res["spectra"].setdefault(layer, {"re": [], "im": []})
                    res["spectra"][layer]["re"] += vals.real.tolist()
                    res["spectra"][layer]["im"] += vals.imag.tolist()
        out[c.name] = res
    return out


def _run_job(task: str, mnist_dir: str | None, settings: Settings, optimizer: str, seed: int,
             split: str, threads: int) -> dict:
    """One network in a worker process (``jobs > 1``): its own problem, ``threads`` threads."""
    global _WORKER_PROVENANCE
    torch.set_num_threads(threads)
    if _WORKER_PROVENANCE is None:  # the code this worker loaded: taken at its first job,
        _WORKER_PROVENANCE = provenance()  # not at each network (commits may follow)
    r = run_one(make_problem(task, mnist_dir), settings, optimizer, seed, split)
    r["provenance"] = dict(_WORKER_PROVENANCE)
    return r


_WORKER_PROVENANCE: dict | None = None


def fingerprint(settings: Settings, mnist_dir: str | None = None) -> dict:
    """Everything one network's run depends on (not which optimizers or how many seeds)."""
    d = settings.as_json()
    for k in ("optimizers", "seeds", "select_seeds"):
        d.pop(k)
    d["mnist_dir"] = mnist_dir
    d["schema_version"] = SCHEMA_VERSION
    return d


def run(task: str = "hnn", optimizers=("adam", "adadelta", "adagrad"), seeds: int | None = None,
        full: bool = False, mnist_dir: str | None = None, progress: bool = True,
        store_dir=None, jobs: int = 1, **overrides) -> dict:
    """Run the window experiment; returns the JSON-ready results.

    ``seeds`` report seeds (0..seeds-1); ``select_seeds`` further seeds
    (1000, 1001, ...) are used only to choose the configuration reported as
    "selected". Extra keyword arguments override ``Settings`` fields.

    ``store_dir``: keep each finished network under ``store_dir/.kooptrain-partial`` and
    reuse the ones already there (resume). ``jobs``: train that many networks at once in
    worker processes, each with ``torch.get_num_threads() // jobs`` threads (at least 1).
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} must be an integer >= 1.")
    problem = make_problem(task, mnist_dir)
    settings = default_settings(task, problem, full, seeds=seeds,
                                optimizers=tuple(optimizers), **overrides)
    for o in settings.optimizers:
        if o not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {o!r}; choose from {OPTIMIZERS}.")
    keys = [(o, sd, "report") for o in settings.optimizers for sd in range(settings.seeds)]
    keys += [(o, 1000 + sd, "select") for o in settings.optimizers
             for sd in range(settings.select_seeds)]
    prov = provenance()  # at the start: the code that runs, not the code at the end
    plan = RunPlan(keys, store_dir, fingerprint(settings, mnist_dir))
    done, todo, finish = plan.done, plan.todo, plan.finish
    threads = max(1, torch.get_num_threads() // jobs)
    if jobs == 1:
        steps = settings.t2 + max(settings.horizons)
        bar = progress_bar(progress, total=steps * len(keys), initial=steps * len(done),
                           desc=task, unit="step", mininterval=1.0)
    else:
        bar = progress_bar(progress, total=len(keys), initial=len(done),
                           desc=f"{task} ({jobs} jobs)", unit="network")

    if jobs == 1:
        for o, sd, split in todo:
            if bar is not None:
                bar.set_postfix_str(f"{o} seed {sd}")
            r = run_one(problem, settings, o, sd, split, bar)
            r["provenance"] = dict(prov)  # this process's code, as loaded at the start
            finish((o, sd, split), r)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_run_job, task, mnist_dir, settings, *key, threads): key
                       for key in todo}
            try:
                for fut in as_completed(futures):
                    finish(futures[fut], fut.result())
                    if bar is not None:
                        bar.update(1)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    if bar is not None:
        bar.close()
    prov.update(jobs=jobs, threads=threads if jobs > 1 else prov["threads"],
                resumed_runs=plan.resumed)
    return assemble(problem, settings, keys, done, prov)


def assemble(problem, settings: Settings, plan: list[tuple], done: dict,
             prov: dict | None = None) -> dict:
    """The results dict from finished networks ``done[(optimizer, seed, split)]``, in the
    order of ``plan``. ``provenance`` is ``prov`` (default: now) plus ``network_commits``,
    how many networks each commit trained (a resumed run may span several)."""
    prov = dict(prov or provenance())
    commits: dict[str, int] = {}
    for key in plan:
        p = done[key].get("provenance") or {}
        c = f"{p.get('git_commit')}{' (with uncommitted changes)' if p.get('git_dirty') else ''}"
        commits[c] = commits.get(c, 0) + 1
    prov["network_commits"] = commits
    rows, curves, spectra, scatter = [], {}, {}, {}
    for o, sd, split in plan:
        r = done[(o, sd, split)]
        rows += r["rows"]
        if split != "report":
            continue
        if o not in curves:
            curves[o] = {"seed": sd, "points": r["curve"]}
            spectra[o] = r["spectra"]
        for cfg, d in r["scatter"].items():  # every report seed: Fig. 1e pools networks
            sc = scatter.setdefault(o, {}).setdefault(cfg, {"seeds": [], "error": [],
                                                            "evolution": []})
            sc["seeds"].append(sd)
            sc["error"].append(d["error"])
            sc["evolution"].append(d["evolution"])
    sett = settings.as_json()
    summary = summarize_windows(rows, sett)
    keep = {PAPER.name} | {s["selected"]["config"] for s in summary if s.get("selected")}
    scatter = {o: {c: v for c, v in d.items() if c in keep} for o, d in scatter.items()}
    model = problem.make_model(0)
    m = settings.t2 - settings.t1 + 1
    cost = {c.name: koopman_cost(Partition(model, granularity=c.granularity, chunk=c.chunk),
                                 m=m, T=settings.T, affine=c.observables == "affine")
            for c in settings.configurations if not c.fixed_point}
    return compact(json_safe({"schema_version": SCHEMA_VERSION, "provenance": prov,
                       "settings": sett, "results": rows, "summary": summary, "curves": curves,
                       "spectra": spectra, "scatter": scatter, "complexity": cost,
                       "selection": selection_summary(rows, sett)}))


def compact(res: dict) -> dict:
    """Round the per-parameter arrays (scatter, spectra, curves) to 4 significant digits:
    they feed figures only, and full precision triples the file size."""
    for d in res.get("scatter", {}).values():
        for cfg in d.values():  # a figure needs ~1000 points per network: keep every k-th
            n = max((len(e) for e in cfg["error"]), default=0)
            stride = cfg.get("stride", 1) * max(1, math.ceil(n / 1000))
            step = stride // cfg.get("stride", 1)
            for k in ("error", "evolution"):
                cfg[k] = [[round_floats(v, 4) for v in per_seed[::step]] for per_seed in cfg[k]]
            cfg["stride"] = stride
    for d in res.get("spectra", {}).values():
        for layer in (d or {}).values():
            for k in ("re", "im"):
                layer[k] = [round_floats(v, 4) for v in layer[k]]
    for c in res.get("curves", {}).values():
        c["points"] = [[st, round_floats(v, 4)] for st, v in c["points"]]

    # result rows: 6 significant digits is beyond any timing's precision
    res["results"] = round_floats(res.get("results", []), 6)
    return res
