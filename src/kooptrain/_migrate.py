"""Reading kooptrain 0.1's checkpoints: its version-1 ``state_dict`` layouts, turned into
this version's after the checks 0.1 itself made. The recorder's version 1 is read by the
recorder (its layout did not change, only its envelope)."""

from __future__ import annotations

import warnings

from ._attempt import Attempt
from ._validation import check_signature

__all__ = ["accelerator_state_from_v1", "monitor_state_from_v1"]


def accelerator_state_from_v1(settings, state: dict) -> dict:
    """A 0.1 ``KoopmanAccelerator`` state for an accelerator with ``settings``
    (``AcceleratorSettings``). Refused as 0.1 refused it, and also where 0.1's check looked
    one way only (a state in lr time, or with the controller, into an accelerator without
    them); the settings 0.1 did not record
    (``margin``, ``interval``, ``max_backoff``, ``bn_refresh``) are warned about, not assumed
    silently."""
    s = settings
    old = {"window": s.window, "every": s.every, "predictor": s.signature()["predictor"],
           "horizons": list(s.horizons), "engine": s.engine_options(),
           "fixed_point": s.fixed_point, "optimizer_state": s.optimizer_state,
           "max_residual": s.max_residual,
           **({} if s.clock == "steps" else {"time": s.clock}),
           **({} if s.max_overhead is None else {"max_overhead": s.max_overhead,
                                                "eval_cost": s.eval_cost})}
    check_signature("KoopmanAccelerator", old, state)
    extra = sorted(set(state["signature"]) - set(old))  # 0.1 missed these (lr time, ...)
    if extra:
        raise ValueError(f"this KoopmanAccelerator state was saved with different {extra}: "
                         f"saved {[state['signature'][k] for k in extra]}, here not set. "
                         "Resume with the same model and settings, or start afresh.")
    unchecked = ["margin", "interval", "max_backoff", "bn_refresh"]
    warnings.warn(f"KoopmanAccelerator: this state was saved by kooptrain 0.1, which did "
                  f"not record {', '.join(unchecked)}; resuming with this accelerator's "
                  f"({', '.join(f'{k}={getattr(s, k)!r}' for k in unchecked)}).",
                  UserWarning, stacklevel=3)
    tried, accepted, jumped = state["counters"]
    lr = state.get("lr_time")  # present only in lr time
    return {"recorder": state["recorder"], "step_count": state["step"],
            "schedule": state.get("schedule", state),  # the first 0.1 states: flat
            "history": [{**Attempt(step=h["step"]).as_dict(), **h} for h in state["history"]],
            "counters": {"jumps_tried": tried, "jumps_accepted": accepted,
                         "steps_jumped": jumped},
            "lr_clock": None if lr is None else {
                "spacing": lr["spacing"], "running": lr["running"],
                "started": state["recorder"]["n_snapshots"] > 0}}


def monitor_state_from_v1(monitor, state: dict, kind: str, version: int) -> dict:
    """A 0.1 ``KoopmanMonitor`` state for ``monitor``. Its recorder took a snapshot at every
    call it got (``every=1``) and its lr clock kept running sums; both are rewritten into
    this version's layout (the recorder's window is the same)."""
    old = state["record"]["settings"]
    mine = {k: v for k, v in monitor.record["settings"].items() if k in old}
    free = monitor.settings.RESUMABLE  # may differ (warned): the warning's rule
    for k in sorted(free & set(old)):
        if old[k] != mine[k]:
            warnings.warn(f"KoopmanMonitor: {k} was {old[k]!r} when this state was saved "
                          f"and is {mine[k]!r} now; resuming with {mine[k]!r}.", UserWarning,
                          stacklevel=4)
    old = {k: v for k, v in old.items() if k not in free}
    mine = {k: v for k, v in mine.items() if k not in free}
    if old != mine:
        raise ValueError(f"the state was saved with settings {old}, this monitor has "
                         f"{mine}; nothing was loaded.")
    rec = dict(state["recorder"])
    rec["signature"] = {**rec["signature"], "every": monitor.settings.every}
    rec["calls"] = int(state["step"])  # the recorder now counts every step
    clock = None
    if monitor.settings.lr_time:
        marks = [float(v) for v in state["lr_marks"]]
        clock = {"spacing": [b - a for a, b in zip(marks, marks[1:], strict=False)],
                 "running": float(state["lr_sum"]) - marks[-1] + float(state["lr_next"])
                 if marks else 0.0, "started": bool(marks)}
    return {"kind": kind, "version": version, "settings": monitor.settings.signature(),
            "recorder": rec, "record": state["record"], "raw": state["raw"],
            "lr_clock": clock}
