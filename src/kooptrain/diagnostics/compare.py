"""How different are the training dynamics of two runs? The Wasserstein distance between
their Koopman eigenvalues, per layer and per phase of training (Redman et al., NeurIPS 2024:
topologically conjugate dynamics have the same eigenvalues)."""

from __future__ import annotations

import warnings

import numpy as np

from .record import load_record

__all__ = ["compare", "spectral_distance"]


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
