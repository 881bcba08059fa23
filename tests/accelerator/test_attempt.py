"""One attempt, clause by clause: the defaults, the candidates each predictor proposes, the
search order and its ties, the acceptance threshold, the schedule, the history entries and
the writer."""

import math

import pytest
import torch
from torch import nn

from kooptrain import KoopmanAccelerator


def setup(**kw):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    return model, opt, KoopmanAccelerator(model, opt, **({"every": 1, "window": 10} | kw)), x, y


def sgd_step(model, opt, x, y):
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def scripted(model, losses):
    """A closure that returns ``losses`` in turn and records the weights it was shown."""
    seen = []

    def closure():
        seen.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
        return losses[len(seen) - 1]
    return closure, seen


def test_defaults_are_the_documented_ones():
    model, opt, _, _, _ = setup()
    acc = KoopmanAccelerator(model, opt)  # the coarse cadence the design race chose
    assert (acc.window, acc.every, acc.max_backoff, acc.interval) == (6, 25, 8, 150)
    assert acc.history.maxlen == 10_000 and acc.margin == 0.01
    assert acc.horizons == [25 * 2**k for k in range(1, 7)] and acc.fixed_point is False
    assert acc.max_overhead is None
    _, _, acc2, _, _ = setup(window=4, every=3)
    assert acc2.interval == 12  # window * every optimizer steps
    # the recorder keeps exactly the accelerator's window and cadence
    assert (acc2.recorder.window, acc2.recorder.every) == (4, 3)
    assert acc2.recorder.storage_ == ["window"]


def test_linear_predictor_continues_the_last_recorded_step():
    model, opt, acc, x, y = setup(window=3, every=1, predictor="linear", horizons=(2, 5),
                                  margin=0.0)
    flats = []
    for _ in range(2):
        sgd_step(model, opt, x, y)
        acc.step(lambda: 1.0)
        flats.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    sgd_step(model, opt, x, y)
    last = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    closure, seen = scripted(model, [1.0, 0.9, 0.8])
    acc.step(closure)
    v = last - flats[-1]
    torch.testing.assert_close(seen[1], last + 2 * v)
    torch.testing.assert_close(seen[2], last + 5 * v)


def test_fixed_point_is_one_more_candidate_after_the_horizons():
    model, opt, acc, x, y = setup(window=4, horizons=(2, 4), fixed_point=True, margin=0.0)
    for _ in range(3):
        sgd_step(model, opt, x, y)
        acc.step(lambda: 1.0)
    sgd_step(model, opt, x, y)
    closure, seen = scripted(model, [1.0, 0.9, 0.8, 0.7])
    entry = acc.step(closure)
    assert entry["evaluations"] == 4 and entry["accepted"] and entry["horizon"] == math.inf
    assert acc.steps_jumped == 0  # the fixed point has no horizon to count


def test_a_two_snapshot_window_jumps_without_a_holdout():
    model, opt, acc, x, y = setup(window=2, horizons=(2, 4), margin=0.0)
    sgd_step(model, opt, x, y)
    acc.step(lambda: 1.0)
    sgd_step(model, opt, x, y)
    entry = acc.step(scripted(model, [1.0, 0.5, 0.4])[0])
    assert entry["accepted"] and entry["reason"] is None and entry["horizon"] == 4


def ready(**kw):
    model, opt, acc, x, y = setup(**kw)
    for _ in range(acc.window - 1):
        sgd_step(model, opt, x, y)
        acc.step(lambda: 1.0)
    sgd_step(model, opt, x, y)
    return model, opt, acc, x, y


def test_ties_keep_the_shorter_horizon_and_the_search_goes_on_past_them():
    model, _, acc, _, _ = ready(window=3, horizons=(2, 4, 8, 16), margin=0.0)
    closure, seen = scripted(model, [1.0, 0.5, 0.5, 0.4, 0.6])
    entry = acc.step(closure)
    assert entry["horizon"] == 8 and entry["loss_after"] == 0.4 and entry["evaluations"] == 5
    model, _, acc, _, _ = ready(window=3, horizons=(2, 4, 8), margin=0.0)
    entry = acc.step(scripted(model, [1.0, 0.5, 0.5, 0.5])[0])
    assert entry["horizon"] == 2  # equal losses: the shortest jump


def test_a_candidate_must_be_strictly_below_the_margin():
    model, _, acc, _, _ = ready(window=3, horizons=(2,), margin=0.0)
    entry = acc.step(scripted(model, [1.0, 1.0])[0])
    assert not entry["accepted"] and entry["loss_after"] == 1.0
    model, _, acc, _, _ = ready(window=3, horizons=(2,), margin=0.5)
    entry = acc.step(scripted(model, [1.0, 0.5])[0])  # exactly (1 - margin) * before
    assert not entry["accepted"]


def test_attempts_come_exactly_on_schedule():
    model, opt, acc, x, y = setup(window=3, horizons=(2,), interval=4, max_backoff=2)
    steps = []
    for _ in range(30):
        sgd_step(model, opt, x, y)
        entry = acc.step(lambda: 1.0)  # never better: every attempt rejected
        if entry is not None:
            steps.append(entry["step"])
    # first at the window (3), then 2x the interval (8), capped at max_backoff x 4 = 8
    assert steps == [3, 11, 19, 27]


def test_history_entries_hold_exactly_the_documented_fields():
    model, _, acc, _, _ = ready(window=3, horizons=(2, 4))
    entry = acc.step(scripted(model, [1.0, 0.5, 0.7])[0])
    assert list(entry) == ["step", "horizon", "accepted", "loss_before", "loss_after",
                           "evaluations", "seconds", "reason", "fitted", "fit_seconds",
                           "screen_before", "screen_after", "screen_evaluations",
                           "gain_steps", "cost_steps"]
    assert entry["fitted"] and 0 < entry["fit_seconds"] <= entry["seconds"]
    assert entry["screen_evaluations"] == 0 and entry["gain_steps"] is None
    assert entry["evaluations"] == 3 and entry["loss_before"] == 1.0
    assert isinstance(entry["seconds"], float) and 0 <= entry["seconds"] < 60


def test_the_writer_gets_each_attempt_at_its_step():
    class Writer:
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    w = Writer()
    model, _, acc, _, _ = ready(window=3, horizons=(2, 4), writer=w)
    acc.step(scripted(model, [1.0, 0.5, 0.7])[0])
    assert ("koopman/loss_before", 1.0, 3) in w.calls
    assert ("koopman/loss_after", 0.5, 3) in w.calls
    assert ("koopman/horizon", 2, 3) in w.calls
    assert ("koopman/accepted", 1.0, 3) in w.calls
    # a skipped window: no loss after, no horizon, a NaN before; only finite numbers go out
    w.calls.clear()
    model, _, acc, _, _ = ready(window=3, horizons=(2, 4), writer=w)
    acc.step(scripted(model, [math.nan])[0])
    assert w.calls == [("koopman/accepted", 0.0, 3)]


def test_a_failed_fit_is_logged_with_a_bounded_reason(monkeypatch):
    model, _, acc, _, _ = ready(window=3, horizons=(2,))

    def broken(**kw):
        raise ValueError("x" * 500)
    monkeypatch.setattr(acc.recorder, "fit", broken)
    entry = acc.step(lambda: 1.0)
    assert entry["reason"].startswith("fit or prediction failed: x") and \
        len(entry["reason"]) == 200


@pytest.mark.parametrize("window,holdout", [(4, 1), (8, 2), (3, 1)])
def test_residual_scoring_uses_a_quarter_of_the_window_as_holdout(monkeypatch, window,
                                                                   holdout):
    from kooptrain import SnapshotRecorder

    model, _, acc, _, _ = ready(window=window, horizons=(2,), granularity="node",
                                max_residual=0.5)
    used = []
    real = SnapshotRecorder.fit

    def spy(self, **kw):
        used.append(kw.get("holdout"))
        return real(self, **kw)
    monkeypatch.setattr(SnapshotRecorder, "fit", spy)
    acc.step(lambda: 1.0)
    assert used == [holdout]  # max(1, window // 4)


def test_a_checkpoint_with_another_max_residual_is_refused():
    _, _, a, _, _ = setup(window=4, granularity="node", max_residual=0.5)
    _, _, b, _, _ = setup(window=4, granularity="node")
    with pytest.raises(ValueError, match="max_residual"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="^not a KoopmanAccelerator state_dict"):
        b.load_state_dict({"step": 1})


def test_a_duck_typed_optimizer_is_accepted():
    class Wrapper:  # an optimizer wrapper that is no torch.optim.Optimizer
        def __init__(self, opt):
            self.opt, self.param_groups, self.state = opt, opt.param_groups, opt.state

    model = nn.Linear(2, 1)
    acc = KoopmanAccelerator(model, Wrapper(torch.optim.SGD(model.parameters(), lr=0.1)),
            every=1, window=10)
    assert acc.recorder.partition.n_params == 3
