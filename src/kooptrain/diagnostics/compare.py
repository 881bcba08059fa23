"""How different are the training dynamics of two runs? The Wasserstein distance between
their Koopman eigenvalues, per layer and per phase of training (Redman et al., NeurIPS 2024:
topologically conjugate dynamics have the same eigenvalues)."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np

from .record import load_record

__all__ = ["compare", "compare_groups", "spectral_distance"]


def _points(z) -> np.ndarray:
    """``(n, 2)`` real points from complex values or ``[re, im]`` pairs."""
    z = np.asarray(z)
    if z.size == 0:
        return np.zeros((0, 2))
    if np.iscomplexobj(z) or z.ndim == 1:  # complex (or real) values
        z = np.stack([z.real, z.imag], axis=-1).astype(np.float64)
    elif z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"eigenvalues must be complex values (n,) or [re, im] pairs (n, 2), "
                         f"got shape {z.shape}.")
    z = z.astype(np.float64)
    if not np.isfinite(z).all():
        raise ValueError("eigenvalues must be finite.")
    return z


def spectral_distance(a, b) -> float:
    """The 1-Wasserstein distance between two sets of eigenvalues in the complex plane,
    each point of a set carrying the same mass.

    a, b : complex arrays ``(n,)`` and ``(k,)``, or ``[re, im]`` pairs ``(n, 2)``. For
        ``n == k`` this is the mean distance of the best one-to-one matching (as in Redman
        et al.); otherwise the optimal transport between the two uniform distributions.
        Needs scipy.
    """
    try:
        from scipy.optimize import linear_sum_assignment, linprog
        from scipy.spatial.distance import cdist
    except ImportError as e:  # pragma: no cover - scipy is in every extra
        raise ImportError("compare needs scipy: pip install 'kooptrain[reproduce]' "
                          "(or pip install scipy).") from e
    p, q = _points(a), _points(b)
    if not len(p) or not len(q):
        raise ValueError(f"both eigenvalue sets must be non-empty, got {len(p)} and {len(q)}.")
    cost = cdist(p, q)
    n, k = cost.shape
    if n == k:
        rows, cols = linear_sum_assignment(cost)
        return float(cost[rows, cols].mean())
    # transport plan P (n x k) >= 0 with rows summing to 1/n and columns to 1/k
    A = np.zeros((n + k, n * k))
    for i in range(n):
        A[i, i * k:(i + 1) * k] = 1
    for j in range(k):
        A[n + j, j::k] = 1
    res = linprog(cost.ravel(), A_eq=A, b_eq=np.r_[np.full(n, 1 / n), np.full(k, 1 / k)],
                  bounds=(0, None), method="highs")
    return float(res.fun)


def _leading(layer: dict, top: int | None) -> list:
    """A layer entry's eigenvalues, or the ``top`` that carry the most motion."""
    z = layer["eigenvalues"]
    if top is None or len(z) <= top:
        return z
    order = np.argsort(layer["shares"])[::-1][:top]
    return [z[i] for i in sorted(order)]


def compare(record_a, record_b, *, phases: int = 3, top: int | None = None) -> dict:
    """Distances between the Koopman spectra of two runs.

    record_a, record_b : ``KoopmanMonitor`` records (dicts, monitors or JSON paths).
    phases : the aligned fits are split into this many consecutive phases (early, ...,
        late).
    top : compare only the ``top`` eigenvalues of each layer that carry the largest shares
        of the motion (Redman et al. keep the 10 leading DMD modes); default all.

    The i-th fit of one run is paired with the i-th fit of the other (records with another
    ``every``, ``window`` or ``interval`` are refused; ``steps`` says which steps were
    paired), and layers are paired by
    name (by position if the names differ but the counts agree). For each pair of fits and
    layers the distance is ``spectral_distance`` of their eigenvalues. Returns a dict:
    ``distance`` (mean over layers and fits), ``phases`` (mean per phase), ``layers``
    (``{name: {"distance", "phases"}}``), ``fits`` (the number of aligned fits),
    ``steps`` (the steps of the aligned fits in each run) and ``pairing``.
    """
    a, b = load_record(record_a), load_record(record_b)
    for name, v in (("phases", phases), ("top", 1 if top is None else top)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}.")
    n = min(len(a["entries"]), len(b["entries"]))
    if n < phases:
        raise ValueError(f"the records share {n} fit(s), fewer than phases={phases}; "
                         "train longer, fit more often (interval) or ask for fewer phases.")
    if a["settings"].get("every") != b["settings"].get("every"):
        raise ValueError(f"the runs were recorded every {a['settings'].get('every')} and "
                         f"{b['settings'].get('every')} steps: their eigenvalues are per "
                         "different intervals. Record both with the same every.")
    for key in ("window", "interval"):
        if a["settings"].get(key) != b["settings"].get(key):
            raise ValueError(
                f"the runs were recorded with {key} {a['settings'].get(key)} and "
                f"{b['settings'].get(key)}: their i-th fits would cover different steps "
                f"(the first fits end at steps {a['entries'][0]['step']} and "
                f"{b['entries'][0]['step']}). Record both with the same {key}.")
    most = a["settings"].get("window", 0) - 2  # eigenvalues a layer can have
    if top is not None and top >= most > 0:
        warnings.warn(f"top={top} keeps every eigenvalue: a window of "
                      f"{a['settings']['window']} snapshots gives at most {most} per layer. "
                      f"Use top < {most} to keep only the modes that carry the most motion.",
                      UserWarning, stacklevel=2)
    common = [x for x in a["layers"] if x in set(b["layers"])]
    if common:
        pairs, pairing = [(x, x) for x in common], "by name"
    elif len(a["layers"]) == len(b["layers"]):
        pairs, pairing = list(zip(a["layers"], b["layers"], strict=True)), "by position"
    else:
        raise ValueError(f"no layer names in common and different layer counts "
                         f"({len(a['layers'])} and {len(b['layers'])}): nothing to pair.")
    bounds = np.linspace(0, n, phases + 1).round().astype(int)
    out_layers, per_phase = {}, [[] for _ in range(phases)]
    for la, lb in pairs:
        ds = []
        for i in range(n):
            ea, eb = a["entries"][i]["layers"].get(la), b["entries"][i]["layers"].get(lb)
            if ea and eb and ea["eigenvalues"] and eb["eigenvalues"]:
                ds.append((i, spectral_distance(_leading(ea, top), _leading(eb, top))))
        ph = []
        for k in range(phases):
            vals = [d for i, d in ds if bounds[k] <= i < bounds[k + 1]]
            ph.append(float(np.mean(vals)) if vals else None)
            per_phase[k] += vals
        out_layers[la if la == lb else f"{la} / {lb}"] = {
            "distance": float(np.mean([d for _, d in ds])) if ds else None, "phases": ph}
    every = [d for _, v in out_layers.items() if v["distance"] is not None
             for d in [v["distance"]]]
    return {"distance": float(np.mean(every)) if every else None,
            "phases": [float(np.mean(v)) if v else None for v in per_phase],
            "layers": out_layers, "fits": n, "pairing": pairing,
            "steps": [[e["step"] for e in a["entries"][:n]],
                      [e["step"] for e in b["entries"][:n]]]}


def compare_groups(group_a, group_b, *, top: int | None = None, phases: int = 1,
                   permutations: int = 999, seed: int = 0) -> dict:
    """Do two groups of runs (e.g. seeds of two optimizers) differ in their Koopman
    spectra beyond the spread between runs of one group?

    group_a, group_b : sequences of at least 2 monitor records each (dicts, monitors or
        JSON paths), recorded with the same ``every``, ``window`` and ``interval``.
    top, phases : passed to ``compare`` for every pair of runs.
    permutations : label shufflings for the p-value; when the groups have fewer distinct
        splits than that, every split is used (the test is then exact).

    The distance matrix ``D`` ``(n, n)`` holds ``compare(...)["distance"]`` for every pair
    of the ``n`` runs. The statistic is the mean distance between the groups minus the mean
    within them. Its **shuffled control** relabels the runs at random, keeping the group
    sizes: if the runs of both groups are exchangeable (the groups do not differ), the
    statistic is as likely to rank anywhere among the relabellings', so ``p_value`` (its
    rank, counted from the top) is exact. ``effect_size`` is the statistic over the spread
    (standard deviation) of the within-group distances; ``control`` holds the relabelled
    statistics' 5th, 50th and 95th percentiles, divided by the same spread, the
    threshold an effect must pass. Returns ``{"between", "within", "statistic",
    "effect_size", "p_value", "control", "splits", "distances"}``.
    """
    a, b = [load_record(r) for r in group_a], [load_record(r) for r in group_b]
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each group needs at least 2 runs (seeds), got {len(a)} and "
                         f"{len(b)}: the spread within a group is the control.")
    runs = a + b
    n = len(runs)
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            D[i, j] = D[j, i] = compare(runs[i], runs[j], phases=phases, top=top)["distance"]
    iu = np.triu_indices(n, 1)

    def statistic(labels: np.ndarray) -> tuple[float, float, float]:
        same = (labels[:, None] == labels[None, :])[iu]
        return float(D[iu][~same].mean() - D[iu][same].mean()), \
            float(D[iu][~same].mean()), float(D[iu][same].mean())

    labels = np.array([0] * len(a) + [1] * len(b))
    t0, between, within = statistic(labels)
    splits = math.comb(n, len(a))
    if splits <= permutations + 1:  # every split (the observed one among them)
        shuffled = []
        for chosen in itertools.combinations(range(n), len(a)):
            lab = np.ones(n, dtype=int)
            lab[list(chosen)] = 0
            shuffled.append(statistic(lab)[0])
        exact = True
    else:
        rng = np.random.default_rng(seed)
        shuffled = [t0] + [statistic(rng.permutation(labels))[0] for _ in range(permutations)]
        exact = False
    shuffled = np.asarray(shuffled)
    spread = float(np.std(D[iu][(labels[:, None] == labels[None, :])[iu]], ddof=1)) \
        if len(a) + len(b) > 3 else 0.0
    spread = spread if spread > 0 else 1e-300
    return {"between": between, "within": within, "statistic": t0,
            "effect_size": t0 / spread,
            "p_value": float((shuffled >= t0 - 1e-12 * abs(t0)).mean()),
            "control": [float(np.percentile(shuffled, q)) / spread for q in (5, 50, 95)],
            "splits": int(len(shuffled)), "exact": exact, "distances": D.tolist()}
