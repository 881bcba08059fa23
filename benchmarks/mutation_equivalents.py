"""Which surviving mutants are equivalent, and why (used by ``benchmarks/mutation.py``).

A surviving mutant is *equivalent* when no test can tell it from the original through
the contract: values, shapes, dtypes, exceptions and the facts their messages carry.
Each rule below names one such reason. A rule matches on the mutant's function and on
the removed/added source lines, never on mutant numbers (they change with the code).
Anything no rule matches is reported as "live": a missing test.
"""

from __future__ import annotations

import re

_STR = re.compile(r"\"[^\"]*\"|'[^']*'")


def _strings(line: str) -> list[str]:
    return [s[1:-1] for s in _STR.findall(line)]


def _string_only(removed, added) -> bool:
    blank = [_STR.sub('""', x) for x in removed] == [_STR.sub('""', x) for x in added]
    return blank and len(removed) == len(added) > 0


def _changed_strings(removed, added):
    return [(a, b) for r, d in zip(removed, added, strict=False)
            for a, b in zip(_strings(r), _strings(d), strict=False) if a != b]


def _same_but(removed, added, pattern: str, repl) -> bool:
    """The mutant equals the original once ``pattern`` is rewritten by ``repl`` in both."""
    norm = [re.sub(pattern, repl, x) for x in removed]
    return len(removed) == len(added) and norm == [re.sub(pattern, repl, x) for x in added]


# (function substring, removed-line substring, added-line substring, reason)
EXPLICIT = [
    # --- comparisons whose only effect is which exact path computes the same value
    ("_solve_window", "full_rank_possible", "", "path choice: dense Cholesky and SVD give "
     "the same operator (both exact); the boundary only moves work between them"),
    ("_normal_equations", "rank < G.shape[-1]", "", "path choice: rank == d needs no "
     "truncation, and the eigh fallback then gives the same operator"),
    ("_normal_equations", "trace <= limit * limit", "trace < limit", "measure-zero boundary: "
     "the bound equals the limit exactly only by accident"),
    ("_normal_equations", "eye = torch.eye(G.shape[-1]", "", "placeholder for failed blocks: "
     "G is square and torch.where promotes the dtype; failed blocks are replaced anyway"),
    ("stabilize_spectrum", "mod > 1, lam / mod", "", "clip: lambda / |lambda| is lambda "
     "when |lambda| = 1, and the clamp only acts where |lambda| > 1"),
    ("stabilize_spectrum", "mod > 1, torch.zeros_like", "mod >= 1", "measure-zero "
     "boundary: an eigenvalue of modulus exactly 1 in floating point"),
    ("stabilize_spectrum", "mod > 1).any(-1)", "mod >= 1", "measure-zero boundary: an "
     "eigenvalue of modulus exactly 1 in floating point"),
    ("stabilize_spectrum", "unstable = mod[need] > 1", ">= 1", "measure-zero boundary: an "
     "eigenvalue of modulus exactly 1 in floating point"),
    ("stabilize_spectrum", "clamp_min(1e-300)", "", "the clamp guards a division only where "
     "|lambda| > 1, so no clamp value at or below 1 ever binds"),
    ("stabilize_spectrum", "amax(-1)", "amax(+1)", "mod[need] is (blocks, r): axis 1 is "
     "axis -1"),
    ("recompose_checked", "< MAX_EIGVEC_COND", "<= MAX", "measure-zero boundary"),
    ("recompose_checked", "flatten(-2).all(-1)", "all(None)", "defensive: with info == 0 "
     "and cond(Y) < 1e8 the solve is finite, so this clause never decides a block"),
    ("powers_by_eig", "(info == 0).unsqueeze(-1)", "unsqueeze(+1)", "info is (N,): axis 1 "
     "is axis -1"),
    ("chunked_window_operator", "bound2 > limit2", ">= limit2", "measure-zero boundary: "
     "the bound equals the limit exactly only by accident"),
    ("Forecastǁpredict", "op.residual_ > max_residual", ">= max_residual", "measure-zero "
     "boundary"),
    ("DenseOperatorǁ_with_reduced", "DenseOperator(K, eig)", "", "the stabilised spectrum "
     "is kept only to save an eigendecomposition; recomputed from K it is the same to "
     "rounding"),
    ("LowRankOperatorǁ_with_reduced", "LowRankOperator(self.B + self.W @ (K - self.K), "
     "self.W, K, eig)", "", "K = W^T B' and the kept spectrum are the same to rounding as "
     "the ones recomputed from B' (range(W) is where K changed)"),
    ("LowRankOperatorǁ__init__", "self.K = W.mT @ B if K is None else K", "", "K = W^T B' "
     "is the same to rounding as the K passed in (range(W) is where K changed)"),
    ("LowRankOperatorǁ__init__", "self._eig = eig", "", "a spectrum not kept is recomputed "
     "from K on first use, the same to rounding"),
    ("_Representationǁstabilized", "self._with_reduced(K_new, (lam, Y))", "", "the "
     "stabilised spectrum is kept only to save an eigendecomposition; recomputed it is "
     "the same to rounding"),
    ("TransactionǁTransaction__init__", "self.committed = False", "None", "None is falsy, "
     "like False"),
    ("Transactionǁ__init__", "self.committed = False", "None", "None is falsy, like False"),
    ("Transactionǁ__init__", "self._params = None", "", "__enter__ sets it before any use"),
    ("Transactionǁ__init__", "self._buffers = self._bn_momenta = None", "", "__enter__ sets "
     "them before any use"),
    ("KoopmanAcceleratorǁ__init__", "self._warned_still = False", "None", "None is falsy, "
     "like False"),
    ("check_int", "def check_int(value, name: str, low: int = 1)", "", "every caller passes "
     "low explicitly"),
    ("RetryScheduleǁ__init__", "self.next_attempt = base, 0", "base, 1", "steps count from "
     "1, so no attempt can fall due at step 0"),
    ("KoopmanAcceleratorǁ__init__", 'window = check_int(window, "window", 2)',
     'check_int(window, "window", )', "SnapshotRecorder refuses window < 2 with the same "
     "message right after"),
    ("KoopmanAcceleratorǁ__init__", ', 1)', ', )', "the default low of check_int is 1, the "
     "value given"),
    ("KoopmanAcceleratorǁ__init__", 'storage="window"', "", "'window' is the recorder's "
     "default storage"),
    ("KoopmanAcceleratorǁ_attempt", '"seconds": 0.0', '"seconds": 1.0', "_log sets seconds "
     "before the entry is returned or stored"),
    ("SnapshotRecorderǁ__init__", 'every = check_int(every, "every", 1)',
     'check_int(every, "every", )', "the default low of check_int is 1, the value given"),
    ("_warn_still", "stacklevel=4", "", "which line the RuntimeWarning blames: mutmut's "
     "trampoline adds a frame, so only the plain suite can check it"),
    ("predict_fixed_point", "(lam - 1).abs() <= tol", "< tol", "measure-zero boundary"),
    ("predict_fixed_point", "moved <= 2 * tol * norm", "moved < 2", "measure-zero boundary"),
    ("_raise_if_nonfinite", "blocks = bad.reshape", "", "the count sums over every leading "
     "axis, so regrouping the axes gives the same number"),
    ("_svd_operator", "< rank", "<= rank", "W, S, V are sliced to [:rank] right after, "
     "so the extra kept entry is dropped"),
    ("_svd_operator", "keep.to(W.dtype)", "", "bool * float promotes to W's dtype"),
    ("_pinv_from_gram", "evals.shape[-1]", "shape[+1]", "evals is always (blocks, d) here "
     "(callers pass G[bad]), so axis 1 is axis -1"),
    ("_apply_powers", "K.shape[-1]", "K.shape[-2]", "K is square"),
    ("_apply_powers", "squeeze(-1)", "squeeze(+1)", "nonzero() of a 1-D mask is (n, 1): "
     "axis 1 is axis -1"),
    ("_apply_powers", "isfinite(v).all(-1).all(-1)", "", "all() over both trailing axes "
     "in either order gives the same mask"),
    ("_apply_powers", "if j + 1 < nbits", "", "one extra squaring after the last bit is "
     "computed but never used (performance only)"),
    ("_apply_powers", "out = bufs[j % 2][: e - s]", "", "matmul(out=...) resizes a longer "
     "slice to the right shape; values are unchanged (performance only)"),
    ("_powers_by_eig", "steps.to(device=K.device, dtype=torch.float64).to(lam.dtype)", "",
     "horizons end up complex on the CPU either way"),
    ("_powers_by_eig", "s.reshape(1, -1, 1)", "s.reshape(-1, 1)", "(k, 1) and (1, k, 1) "
     "broadcast against (N, 1, r) to the same (N, k, r)"),
    ("_check_finite", "if bool(torch.isfinite(X.sum()))", "", "the shortcut only skips the "
     "exact count; the slow path raises the same error (performance only)"),
    ("_check_snapshots", "if d < 1 or X.numel() == 0", "", "d < 1 implies numel() == 0, and "
     "numel() >= 2 once m >= 2 and d >= 1"),
    ("_check_horizons", "math.isinf(T) and T > 0", "", "an infinite float is +inf or "
     "-inf; both comparisons split them the same way"),
    ("_check_horizons", "return None, True", "", "predict returns the fixed point before "
     "it reads the scalar flag"),
    ("_check_horizons", "np.asarray(T, dtype=object).reshape(-1)", "", "any numeric or "
     "mixed sequence reaches the same per-item checks and the same errors"),
    ("_check_horizons", "dtype=torch.int64", "", "a tensor of Python ints is int64 by "
     "default"),
    ("_unfit", '"settings_"', "", "_op is deleted too, and every method checks _op "
     "first"),
    ("_check_array", 'X.dtype.kind in "USOV"', "", "kind is one letter: 'XXUSOVXX' holds the "
     "same letters"),
    ("_check_array", 'X.dtype.kind == "c"', "", "complex arrays are caught again after "
     "from_numpy by X.is_complex(), with the same TypeError"),
    ("_choose", 'return "streaming" if', "", "the result is only compared with 'window'"),
    ("state_dict", '{"stats": None}', '"XXstatsXX"', ""),  # killed by a test: not equiv
    ("Partition", "recurse=False", "recurse=None", "None is falsy, like False"),
    ("reset", 'getattr(self, "_stores", None) is None', "", "reallocating the buffers on every "
     "reset (the earlier behaviour) gives the same snapshots; performance only"),
    ("_Window", "self.capacity, self.count, self.ptr = capacity, 0, 0", "", "reset() sets "
     "count and ptr to 0 right after every construction"),
    ("flatten", "t.reshape(-1).to(self.dtype)", ".to(None)", "torch.cat promotes to the "
     "same common dtype, which is self.dtype"),
    ("scatter", "b.to(out.dtype)", ".to(None)", "index assignment casts to out's dtype"),
    # --- the loop's parts (0.2)
    ("check_state", 'kind.rsplit(".", 1)[-1]', "", "every kind has exactly one dot "
     "('kooptrain.X'): split or rsplit, any maxsplit, either end give the same name"),
    ("accelerator_state_from_v1", 'state.get("schedule", state)', ", state),", "0.1 states "
     "hold the schedule both flat and under 'schedule', with the same values (the flat-only "
     "states of the first 0.1 builds are tested)"),
    ("accelerator_state_from_v1", 'Attempt(step=h["step"])', "step=None", "the entry's own "
     "'step' overrides the default built from it"),
    ("monitor_state_from_v1", "clock = None", 'clock = ""', "read only in lr time, where it "
     "is replaced; a monitor in step time never reads it"),
    ("predict_from", "every=self.every).predict(snapshots=T)", "", "with snapshots= the "
     "horizon does not depend on every"),
    ("_screen_and_confirm", "(None if self.beats(loss, before)", "", "the reason is read only "
     "when the jump is not kept, that is when beats() is False; then both give the string"),
    ("_ladder", "attempt.fit_seconds += ", "fit_seconds = ", "one ladder per attempt, on a "
     "fresh Attempt whose fit_seconds is 0: = and += give the same"),
    ("PayoffScheduleǁ__init__", "max_backoff: int = 8", "", "every caller passes "
     "max_backoff"),
    ("PayoffScheduleǁsettle", "step > self._end[0]", ">= self._end[0]", "two attempts never "
     "share a step"),
    ("PayoffScheduleǁsettle", "gain > cost", "gain >= cost", "measure-zero boundary"),
    ("warp", 'float("inf")', 'float("INF")', "float() reads 'inf' in any case"),
    ("warp", "all(v == s[-1] for v in s)", "", "all equal to one of them is all equal to any "
     "of them"),
    ("qr_factors", "if k < m", "k <= m", "at k == m the padding has no rows"),
    ("custom", "out.to(X.dtype)", "", "scatter casts every block to the flat vector's dtype"),
    ("load_state_dict", '"version" not in state', "XXversionXX", "no state holds both "
     "'signature' (0.1) and 'version' (0.2): either key alone decides"),
    ("load_state_dict", '"version" not in state', "VERSION", "no state holds both "
     "'signature' (0.1) and 'version' (0.2): either key alone decides"),
    ("Consensusǁmean", "value if error is None else 0.0", "", "a failed rank's value is "
     "never used: when any rank failed, every rank raises"),
    ("Consensusǁall_gather", 'getattr(dist, "all_gather_single", None)', "getattr(None",
     "all_gather_single and all_gather_into_tensor are the same concatenation-form gather"),
    ("SharedFitǁ__init__", "X[..., -1].to(torch.float64)", "", "torch.where promotes the "
     "last state to the float64 prediction it is set beside, exactly"),
    ("SharedFitǁpredict", "residual_ > max_residual", ">= max_residual", "measure-zero "
     "boundary"),
    # settings and horizons (0.2 layout)
    ("AcceleratorSettingsǁ__post_init__", ", 1))", ", ))", "the default low of check_int "
     "is 1, the value given"),
    ("RecorderSettingsǁ__post_init__", ", 1))", ", ))", "the default low of check_int is 1, "
     "the value given"),
    ("Forecastǁ__init__", '"every", 1)', '"every", )', "the default low of check_int is 1, "
     "the value given"),
    ("_in_snapshots", "int(h) // self.every", "/ self.every", "h is a multiple of every "
     "(checked just above), so h / every is a whole float, which the engine reads as the "
     "same horizon"),
    ("_stood_still", "if X.shape[1] == 0:", "X.shape[2] == 0", "an empty block's all() over "
     "no rows is True, the identity of the AND over groups: skipping it or not gives the "
     "same (windows always hold m >= 2 snapshots)"),
    ("KoopmanAcceleratorǁ__init__", '"bn_loader": bn_loader is not None', "is None",
     "the ranks' check compares this flag only between ranks: its negation differs on "
     "exactly the same ranks"),
    ("_build_groups", 'self.granularity != "layer"', '!= "XXlayerXX"', "at layer granularity "
     "every block is one row, (1, n): idx.shape[0] == 0 never holds there, so the clause "
     "never decides"),
    ("_build_groups", 'self.granularity != "layer"', '!= "LAYER"', "at layer granularity "
     "every block is one row, (1, n): idx.shape[0] == 0 never holds there, so the clause "
     "never decides"),
    ("_recorder", 'storage="window"', "", "'window' is the recorder's default storage"),
    ("Consensusǁany", "float(bool(flag)), 0.0]", "1.0]", "the padding entry of the "
     "two-number reduce: only the first entry is read"),
    ("Consensusǁsettle", "float(error is not None), 0.0]", "1.0]", "the padding entry of "
     "the two-number reduce: only the first entry is read"),
    ("KoopmanAcceleratorǁstep", "closure is not None and self._schedule.due", " or ",
     "checking the model on more steps (also without a closure): the check only raises "
     "after surgery, which the next read of the model raises as well, weights untouched"),
    ("_check_shards", "if mesh.ndim != 1 or mesh.size() != agree.world or", "mesh.ndim != 1 "
     "and mesh.size()", "a DTensor has one placement per mesh dimension, so mesh.ndim != 1 "
     "implies len(placements) != 1, which refuses it anyway"),
    *[("split_koopman", "X.new_zeros((0, X.shape[1]) + tail, dtype=torch.float64)",
       f"new_zeros((0, X.shape[1]) + tail, {dt}", "the placeholder of a rank without blocks "
       "is cast to the window's dtype (assemble's b.to(X.dtype)) before anything reads it")
      for dt in ("dtype=None)", ")")],
    ("split_koopman", "X.new_zeros((0, X.shape[1]) + tail, dtype=torch.float64)",
     "new_zeros((1, X.shape[1]) + tail, dtype=torch.float64)",
     "a rank's share of n blocks is empty only when the ranks before it hold all n: its "
     "rows of the gather lie beyond n, which _gather's narrow(dim, 0, n) drops"),
    ("KoopmanAcceleratorǁstep", "due(self.step_count + 1)", "step_count + 2", "checking the "
     "model one step early as well: it raises only after surgery, weights untouched "
     "(test_model_surgery_between_snapshots_is_caught_before_the_jump_writes)"),
]

# functions that run once, when their module is imported: mutmut's workers import the
# modules before they switch a mutant on, so no mutant of these can run; what they build
# (the read-only settings attributes, the deprecated aliases, help()'s signature) is held
# by test_loop_contract.py in the plain suite
IMPORT_TIME = ("kooptrain._settings.x_settings_properties",
               "kooptrain._settings.x_deprecated_aliases", "kooptrain.accelerator.x__signature")


def _flat(lines) -> str:
    return re.sub(r"\s+", " ", " ".join(lines)).strip()

CHUNK_LINES = ("chunk = ", "bufs = [", "for s in range(0, N", "sel = [")


def classify(name: str, removed: list[str], added: list[str]) -> str | None:
    """Reason the mutant is equivalent, or None if it is live."""
    func = name.rsplit(".", 1)[-1]
    joined = "\n".join(removed)
    if any(name.startswith(f + "__mutmut_") for f in IMPORT_TIME):
        return "import time: runs before mutmut switches a mutant on; its result is tested"
    # which frame a warning blames, and its category: mutmut's trampoline adds frames, so
    # only the plain suite can check the frame; warnings.warn's default category is
    # UserWarning, the one given
    def gone(pat: str) -> bool:  # the mutant is the original once ``pat`` is deleted
        def norm(lines):
            return re.sub(r",\s*\)", ")", _flat(re.sub(pat, "", x) for x in lines))
        return norm(removed) == norm(added)
    if "stacklevel" in joined and (gone(r",?\s*stacklevel=\w+") or
                                   gone(r"stacklevel: int = \d+")):
        return "stacklevel: which line a warning blames (mutmut adds frames; the plain " \
               "suite checks it)"
    if "UserWarning" in joined and gone(r"\b(UserWarning|None),\s*"):
        return "warning category: UserWarning is warnings.warn's default"
    # 1. message text: only a string literal changed, and it is prose (or a name that
    #    only ever appears in messages); the facts (argument names, values) survive
    if _string_only(removed, added):
        pairs = _changed_strings(removed, added) or [(joined, "\n".join(added))]
        prose = all(" " in a or len(a) > 10 for a, _ in pairs) or "raise " in joined
        names = all(a in ("X", "x", "") for a, _ in pairs) and \
            ("_check_" in joined or "def " in joined)
        if (prose or names) and not any(k in joined for k in ('"affine"', '"cpu"')):
            return "message text: wording or case of an error message, facts intact"
        if '"cpu"' in joined:
            return "device: a CPU-only run; device-specific paths are tested on a GPU"
        if "_signature" in func or "_layout" in func:
            return "signature keys: written and read by the same code"
    # 2. device placement: a CPU-only run cannot tell device=None from device=x.device
    if _same_but(removed, added, r"device=[\w.\[\]]+", "device=DEV") or \
            _same_but(removed, added, r"\.to\((?:[\w.]+\.device|None)\)", ".to(DEV)") or \
            re.search(r"(dev|self\.device) = ", joined) or \
            re.search(r"_Window\(g, self\.window, self\.dtype, dev\)|_Streaming\(g, dev\)",
                      joined) or \
            any("device=" not in a and "device=" in r for r, a in zip(removed, added,
                                                                       strict=False)):
        return "device: a CPU-only run; device placement is tested by tests/test_device.py " \
               "on a GPU"
    # 3. zip(strict=...): the zipped sequences have equal length by construction
    if _same_but(removed, added, r",\s*(strict=\w+)?\s*\)", ")") or \
            _same_but(removed, added, r"^\s*(strict=\w+)?\s*\)", ")"):
        return "zip strict: the sequences have equal length by construction"
    # 4. chunk sizes, buffers and index shortcuts: results do not depend on them
    if any(k in joined for k in CHUNK_LINES):
        return "chunking: performance only; results do not depend on the chunk size " \
               "(test_chunked_fit_and_powers_equal_unchunked)"
    for fn, rem, add, why in EXPLICIT:
        if fn in func and rem in joined and add in "\n".join(added) and why:
            return why
    return None
