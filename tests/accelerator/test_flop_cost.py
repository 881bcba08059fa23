"""``eval_cost="flops"``: the payoff controller's currency counted, never timed. A training
iteration's FLOPs against the formulas of a linear layer (forward, backward, gradient
accumulation, L-BFGS's inner evaluations, an evaluation now and then left out), a PINN's
``autograd.grad`` untouched by the counter, a closure's cost in steps exactly, resume,
and the refusals."""

import io

import pytest
import torch
from torch import nn

from kooptrain import KoopmanAccelerator
from kooptrain._cost import StepFlops, count

N, D, H = 32, 8, 16  # batch, inputs, hidden


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, 1))


def forward_flops(n):  # two matrix products, 2 FLOPs per multiply-add
    return 2 * n * (D * H + H)


def backward_flops(n):  # weight gradients of both layers, the input gradient of the second
    return 2 * n * (D * H + H) + 2 * n * H


def step(model, opt, x, micro=1):
    opt.zero_grad()
    for xb in x.chunk(micro):
        model(xb).pow(2).mean().backward()
    opt.step()


def test_one_iteration_is_forward_and_backward_as_the_formulas_say():
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    meter = StepFlops(opt)
    x = torch.randn(N, D)
    for _ in range(4):
        step(model, opt, x)
    assert meter.flops == forward_flops(N) + backward_flops(N)


def test_micro_batches_are_one_iteration_and_an_occasional_evaluation_is_left_out():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    meter = StepFlops(opt)
    x = torch.randn(N, D)
    for i in range(5):
        step(model, opt, x, micro=4)  # four micro-batches of N / 4
        if i == 2:
            with torch.no_grad():
                model(torch.randn(1000, D))  # an evaluation in one iteration only
    assert meter.flops == forward_flops(N) + backward_flops(N)


def test_l_bfgs_inner_evaluations_are_counted():
    model = mlp()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=3)
    x = torch.randn(N, D)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    meter = StepFlops(opt, iterations=1)
    opt.step(closure)  # starts the count
    calls.clear()
    opt.step(closure)
    assert len(calls) >= 2  # several evaluations in one step
    assert meter.flops == len(calls) * (forward_flops(N) + backward_flops(N))


def test_a_pinn_s_derivatives_work_while_counting():
    """FlopCounterMode's module tracker breaks ``autograd.grad`` on a leaf input."""
    model = nn.Sequential(nn.Linear(1, H), nn.Tanh(), nn.Linear(H, 1))
    opt = torch.optim.Adam(model.parameters())
    meter = StepFlops(opt, iterations=1)
    t = torch.linspace(0, 1, N).unsqueeze(1).requires_grad_()
    for _ in range(2):
        opt.zero_grad()
        u = model(t)
        du, = torch.autograd.grad(u.sum(), t, create_graph=True)
        (du - 1).pow(2).mean().backward()
        opt.step()
    forward = 2 * N * (H + H)
    assert meter.flops > 3 * forward  # more than forward and backward: du's graph too


def test_count_counts_a_forward_pass():
    model = mlp()
    with count() as c, torch.no_grad():
        model(torch.randn(N, D))
    assert c.flops == forward_flops(N)


def lawa_run(steps, judge_batch, state=None, stop_at=None, **kw):
    """Adam on a regression; LAWA's mean of the window (no matrix product in the fit) judged
    on ``judge_batch`` examples, so an attempt's FLOPs are its closure calls only."""
    model = mlp()
    g = torch.Generator().manual_seed(1)
    x, xj = torch.randn(N, D, generator=g), torch.randn(judge_batch, D, generator=g)
    y, yj = x[:, :1].sin(), xj[:, :1].sin()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    acc = KoopmanAccelerator(model, opt, every=2, window=4, predictor="average",
                             max_overhead=0.05, eval_cost="flops", **kw)
    start = 0
    if state is not None:
        ck = torch.load(io.BytesIO(state), weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        acc.load_state_dict(ck["acc"])
        start = ck["step"]

    def closure():
        with torch.no_grad():
            return nn.functional.mse_loss(model(xj), yj)

    for i in range(start, steps):
        if i == stop_at:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "acc": acc.state_dict(), "step": i}, buf)
            return buf.getvalue()
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        acc.step(closure)
    return model, acc


def test_a_closure_call_costs_its_flops_over_a_training_iteration_s():
    _, acc = lawa_run(60, judge_batch=4 * N)
    expected = forward_flops(4 * N) / (forward_flops(N) + backward_flops(N))
    costs = [h["cost_steps"] / h["evaluations"] for h in acc.history if h["evaluations"]]
    assert len(costs) >= 2 and costs == [pytest.approx(expected, rel=1e-12)] * len(costs)


def test_a_measured_cost_resumes_bit_identically():
    full_model, full = lawa_run(80, judge_batch=N)
    for stop in (3, 9, 41):  # before the first attempt (still counting), after it, later
        model, resumed = lawa_run(80, judge_batch=N, state=lawa_run(80, N, stop_at=stop))
        strip = [{k: v for k, v in e.items() if k not in ("seconds", "fit_seconds")}
                 for e in resumed.history]
        assert strip == [{k: v for k, v in e.items() if k not in ("seconds", "fit_seconds")}
                         for e in full.history]
        for p, q in zip(model.parameters(), full_model.parameters(), strict=True):
            assert torch.equal(p, q)


def test_flops_without_the_controller_is_refused():
    model = mlp()
    with pytest.raises(ValueError, match="eval_cost='flops' is the payoff controller's "
                                         "currency; give max_overhead too"):
        KoopmanAccelerator(model, torch.optim.SGD(model.parameters(), lr=0.1),
                           eval_cost="flops")


def test_an_optimizer_without_step_hooks_warns_and_falls_back_to_a_third():
    class Bare:  # duck-typed: param_groups and state, no hooks
        def __init__(self, params, lr):
            self.param_groups = [{"params": list(params), "lr": lr}]
            self.state = {}

        def zero_grad(self):
            for p in self.param_groups[0]["params"]:
                p.grad = None

        @torch.no_grad()
        def step(self):
            for p in self.param_groups[0]["params"]:
                p.sub_(self.param_groups[0]["lr"] * p.grad)

    model = mlp()
    opt = Bare(model.parameters(), 0.05)
    acc = KoopmanAccelerator(model, opt, every=1, window=4, max_overhead=0.05,
                             eval_cost="flops", horizons=(2, 4))
    x = torch.randn(N, D)
    with pytest.warns(RuntimeWarning, match="no training iteration or no attempt was counted"):
        for _ in range(5):
            step(model, opt, x)
            acc.step(lambda: float(model(x).pow(2).mean().detach()))
    h = acc.history[0]
    assert h["cost_steps"] == pytest.approx(h["evaluations"] / 3)


def test_a_closure_without_a_counted_operation_warns_and_falls_back_to_a_third():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, every=1, window=4, max_overhead=0.05,
                             eval_cost="flops", predictor="average")
    x = torch.randn(N, D)
    with pytest.warns(RuntimeWarning, match="no training iteration or no attempt"):
        for _ in range(5):
            step(model, opt, x)
            acc.step(lambda: float(model[0].weight.pow(2).sum()))  # no matrix product
    h = acc.history[0]
    assert h["cost_steps"] == pytest.approx(h["evaluations"] / 3)
