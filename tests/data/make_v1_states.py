"""Writes ``v1_states.pt``: states saved by kooptrain 0.1 (commit 08b4d52), mid-run, and
what 0.1 did when it went on from them. Run with that version on the path:

    git worktree add /tmp/v01 08b4d52
    PYTHONPATH=/tmp/v01/src python tests/data/make_v1_states.py

``tests/accelerator/test_settings_and_state.py`` loads them into this version and checks
that it goes on exactly as 0.1 did."""

import copy
from pathlib import Path

import torch
from torch import nn

import kooptrain
from kooptrain import KoopmanAccelerator, KoopmanMonitor, SnapshotRecorder

STEPS, SAVE_AT = 60, (0, 1, 2, 9, 27)  # before the first step, early in the first window,
# inside the warm-up, after it


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g)
    return model, x, torch.sin(x[:, :1]) * x[:, 1:2]


def run(make):
    """Train with the objects ``make(model, opt)`` builds; save them at SAVE_AT."""
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 20))
    acc, rec, mon = make(model, opt)

    def closure():
        with torch.no_grad():
            return float(nn.functional.mse_loss(model(x), y))

    saved = {}
    for t in range(STEPS):
        if t in SAVE_AT:
            saved[t] = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(),
                                      "sched": sched.state_dict(), "acc": acc.state_dict(),
                                      "rec": rec.state_dict(), "mon": mon.state_dict()})
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
        acc.step(closure)
        rec.record()
        mon.step(loss=closure())
    return {"saved": saved, "weights": [p.detach().clone() for p in model.parameters()],
            "history": list(acc.history), "record": mon.record,
            "snapshots": rec.snapshots()}


OPTIONS = {"steps": {}, "lr": {"time": "lr"}, "controller": {"max_overhead": 0.5}}


def make(name):
    def build(model, opt):
        return (KoopmanAccelerator(model, opt, every=2, window=5, horizons=(2, 4, 8),
                                   **OPTIONS[name]),
                SnapshotRecorder(model, granularity="node", window=7, every=3),
                KoopmanMonitor(model, every=2, window=5,
                               optimizer=opt if name == "lr" else None))
    return build


if __name__ == "__main__":
    out = {"version": kooptrain.__version__, "steps": STEPS, "save_at": SAVE_AT,
           "options": OPTIONS, "runs": {name: run(make(name)) for name in OPTIONS}}
    torch.save(out, Path(__file__).with_name("v1_states.pt"))
