"""The payoff controller (``max_overhead``): where jumps never pay, attempts cost at most
about ``max_overhead`` of the training steps; where they pay, it attempts as often as the
plain schedule; it resumes bit-identically; bad settings are refused."""

import io

import pytest
import torch
from torch import nn

from kooptrain import KoopmanAccelerator


def regression(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g)
    torch.manual_seed(seed)
    return nn.Linear(5, 1), x, y


def loop(model, x, y, acc, steps, closure, lr=0.05):
    opt = acc.optimizer
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        acc.step(closure)


def test_where_jumps_never_pay_attempts_cost_at_most_max_overhead():
    model, x, y = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    calls = []

    def closure():  # a judge no candidate can beat: every attempt is rejected
        calls.append(acc.step_count)
        return 1.0

    acc = KoopmanAccelerator(model, opt, window=5, max_overhead=0.05, eval_cost=2.0, every=1,
                             horizons=[2**k for k in range(1, 11)])
    g = torch.Generator().manual_seed(1)
    y = y + 0.3 * torch.randn(y.shape, generator=g)  # noise: no exact fit to settle on
    for _ in range(4000):  # minibatches: the weights never stop moving
        i = torch.randint(0, len(x), (16,), generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[i]), y[i]).backward()
        opt.step()
        acc.step(closure)
    cost = [h["cost_steps"] for h in acc.history]
    assert all(h["gain_steps"] == 0.0 and not h["accepted"] for h in acc.history)
    # each attempt judges the current weights and all 10 horizons: 11 calls, 22 steps
    assert set(cost) == {22.0}
    late = [c for c in calls if c > 2000]
    assert 0 < 2.0 * len(late) <= 0.05 * 2000 + 22  # one attempt's slack at the boundary
    steps = [h["step"] for h in acc.history]
    assert steps[-1] - steps[-2] == 22 / 0.05 + 0  # the interval settled at cost / 5%


def test_where_jumps_pay_it_attempts_as_often_as_the_plain_schedule():
    steps = 0

    def run(**kw):
        model, x, y = regression()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        acc = KoopmanAccelerator(model, opt, window=5,
                                 **({"every": 1, "horizons": (4, 16, 64)} | kw))

        def closure():
            with torch.no_grad():
                return nn.functional.mse_loss(model(x), y)

        loop(model, x, y, acc, steps, closure)
        return acc

    # while the loss is far above float32's floor: every jump pays, as in the plain schedule
    steps = 24
    plain, paid = run(), run(max_overhead=0.05)
    assert paid.jumps_accepted == 4
    # a kept jump on a linear regression is worth many steps of gradient descent
    assert all(h["gain_steps"] > h["cost_steps"] for h in paid.history)
    assert [h["step"] for h in paid.history] == [h["step"] for h in plain.history]
    # a kept jump worth fewer steps than its calls cost does not pay: where a call costs 10
    # steps, 2 or more of them outweigh a jump of at most 16 steps (decided by counts, not
    # by losses at float32's floor, which round differently from one CPU to the next)
    dear = run(max_overhead=0.05, eval_cost=10.0, horizons=(4, 16))
    h = list(dear.history)
    assert h[0]["accepted"] and h[0]["gain_steps"] <= 16 < 20 <= h[0]["cost_steps"]
    assert h[1]["step"] - h[0]["step"] == 2 * 5  # so it backed off, though it kept it


def test_the_controller_resumes_bit_identically():
    def run(stop_at=None, state=None):
        model, x, y = regression(1)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        acc = KoopmanAccelerator(model, opt, window=5, horizons=(2, 8, 32), max_overhead=0.1,
                every=1)

        def closure():
            with torch.no_grad():
                return nn.functional.mse_loss(model(x), y)

        start = 0
        if state is not None:
            ck = torch.load(io.BytesIO(state), weights_only=False)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            acc.load_state_dict(ck["acc"])
            start = ck["step"]
        for step in range(start, 200):
            if step == stop_at:
                buf = io.BytesIO()
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                            "acc": acc.state_dict(), "step": step}, buf)
                return buf.getvalue()
            loop(model, x, y, acc, 1, closure)
        return model, acc

    full_model, full = run()
    assert full.jumps_accepted >= 2 and full.jumps_tried > full.jumps_accepted
    model, resumed = run(state=run(stop_at=97))

    def strip(h):
        return [{k: v for k, v in e.items() if k not in ("seconds", "fit_seconds")}
                for e in h]

    assert strip(resumed.history) == strip(full.history)
    assert torch.equal(model.weight, full_model.weight)


@pytest.mark.parametrize("kw, match", [({"max_overhead": 0}, "max_overhead"),
                                       ({"max_overhead": 1}, "max_overhead"),
                                       ({"max_overhead": "5%"}, "max_overhead"),
                                       ({"max_overhead": 0.05, "eval_cost": 0}, "eval_cost")])
def test_bad_controller_settings_are_refused(kw, match):
    model, _, _ = regression()
    with pytest.raises((ValueError, TypeError), match=match):
        KoopmanAccelerator(model, torch.optim.SGD(model.parameters(), lr=0.1),
            **({"every": 1, "window": 10} | kw))


def test_with_a_cheap_judge_it_is_never_busier_than_the_plain_schedule():
    def attempts(**kw):
        model, x, y = regression()
        g = torch.Generator().manual_seed(1)
        y = y + 0.3 * torch.randn(y.shape, generator=g)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        acc = KoopmanAccelerator(model, opt, window=5, **({"every": 1} | kw))
        for _ in range(1500):
            i = torch.randint(0, len(x), (16,), generator=g)
            opt.zero_grad()
            nn.functional.mse_loss(model(x[i]), y[i]).backward()
            opt.step()
            acc.step(lambda: 1.0)  # never beaten: every attempt is rejected
        return [h["step"] for h in acc.history]

    # 11 calls at 0.001 steps each would allow an attempt every step; it still backs off
    assert attempts(max_overhead=0.05, eval_cost=0.001) == attempts()
