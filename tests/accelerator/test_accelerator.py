"""KoopmanAccelerator contracts: rejected jumps change nothing, failures restore the
weights, resume is bit-identical, state outside the weights is handled, and jumps on a
system with known linear dynamics are accepted and save steps."""

import copy
import io
import math

import pytest
import torch
from torch import nn

from kooptrain import KoopmanAccelerator


def problem(seed=0, bn=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 5, generator=g)
    y = torch.sin(x[:, :1]) + 0.1 * x[:, 1:2]
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)]
    if bn:
        layers.insert(1, nn.BatchNorm1d(16))
    model = nn.Sequential(*layers)
    return model, x, y


def train(model, opt, x, y, steps, acc=None, closure=None, sched=None):
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()
        if acc is not None:
            acc.step(closure)


def same_state(a: dict, b: dict) -> bool:
    """Bit-identical nested optimizer / model state."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(u, v) for u, v in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("opt_cls,kw", [(torch.optim.Adam, {"lr": 1e-2}),
                                        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9})])
@pytest.mark.parametrize("predictor", ["koopman", "linear", "average"])
def test_rejected_jumps_change_nothing(opt_cls, kw, predictor):
    model, x, y = problem()
    ref = copy.deepcopy(model)
    opt, ref_opt = opt_cls(model.parameters(), **kw), opt_cls(ref.parameters(), **kw)
    acc = KoopmanAccelerator(model, opt, window=5, predictor=predictor, horizons=(4, 8), every=1)
    train(model, opt, x, y, 60, acc, closure=lambda: 1.0)  # a loss that never improves
    train(ref, ref_opt, x, y, 60)
    assert acc.jumps_tried >= 3 and acc.jumps_accepted == 0
    assert same_state(model.state_dict(), ref.state_dict())
    assert same_state(opt.state_dict(), ref_opt.state_dict())
    assert all(h["reason"] == "no candidate improved the loss" for h in acc.history)


def test_non_finite_losses_and_predictions_reject_the_jump():
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = copy.deepcopy(model.state_dict())
    acc = KoopmanAccelerator(model, opt, window=3, horizons=(2,), every=1)
    train(model, opt, x, y, 2, acc)  # two snapshots: not yet a window
    calls = iter([1.0, math.nan])
    entry = None
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    snap = copy.deepcopy(model.state_dict())
    entry = acc.step(lambda: next(calls))
    assert entry is not None and not entry["accepted"]
    assert same_state(model.state_dict(), snap)
    assert not same_state(model.state_dict(), before)
    # NaN before the jump: nothing is evaluated further
    acc2 = KoopmanAccelerator(model, opt, window=3, horizons=(2,), every=1)
    train(model, opt, x, y, 3, acc2, closure=lambda: math.nan)
    assert acc2.history[-1]["reason"] == "non-finite loss before the jump: window skipped"
    assert acc2.recorder.n_snapshots == 0  # the window starts afresh
    assert acc2.history[-1]["evaluations"] == 1
    # an exploding prediction: identity observables, no stabilisation, huge horizon
    grow = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        grow.weight.fill_(1.0)
    gopt = torch.optim.SGD(grow.parameters(), lr=0.1)
    acc3 = KoopmanAccelerator(grow, gopt, window=4, observables="identity", stabilize=None,
                              horizons=(2**40,), every=1)
    for _ in range(4):
        gopt.zero_grad()
        (-grow.weight.sum()).backward()  # weight grows by 0.1 per step
        gopt.step()
        with torch.no_grad():
            grow.weight.mul_(1.5)
        w = grow.weight.detach().clone()
        acc3.step(lambda: 1.0)
    assert not acc3.history[-1]["accepted"] and "predict" in acc3.history[-1]["reason"]
    assert torch.equal(grow.weight.detach(), w)


def test_an_exception_in_the_closure_restores_the_weights_and_propagates():
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, window=4, horizons=(4, 8), every=1)
    train(model, opt, x, y, 3, acc)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    snap = copy.deepcopy(model.state_dict())
    n = {"calls": 0}

    def closure():
        n["calls"] += 1
        if n["calls"] == 2:  # raised while a candidate sits in the model
            raise KeyboardInterrupt
        return 10.0

    with pytest.raises(KeyboardInterrupt):
        acc.step(closure)
    assert same_state(model.state_dict(), snap)


def test_resume_is_bit_identical():
    def run(stop_at=None, state=None):
        model, x, y = problem()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        acc = KoopmanAccelerator(model, opt, window=6, horizons=(3, 6, 12), every=3)

        def closure():
            with torch.no_grad():
                return nn.functional.mse_loss(model(x), y)

        start = 0
        if state is not None:
            buf = io.BytesIO(state)
            ck = torch.load(buf, weights_only=False)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            acc.load_state_dict(ck["acc"])
            start = ck["step"]
        for step in range(start, 90):
            if step == stop_at:
                buf = io.BytesIO()
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "acc": acc.state_dict(), "step": step}, buf)
                return buf.getvalue()
            train(model, opt, x, y, 1, acc, closure)
        return model, opt, acc

    full_model, full_opt, full_acc = run()
    assert full_acc.jumps_accepted >= 1  # the resumed part includes real jumps
    state = run(stop_at=40)  # mid-window
    model, opt, acc = run(state=state)
    assert same_state(model.state_dict(), full_model.state_dict())
    assert same_state(opt.state_dict(), full_opt.state_dict())
    def strip(h):  # wall time differs between runs; everything else must match
        return [{k: v for k, v in e.items() if k not in ("seconds", "fit_seconds")} for e in h]

    assert strip(acc.history) == strip(full_acc.history)


def test_resume_refuses_a_mismatched_state():
    model, x, y = problem()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    state = KoopmanAccelerator(model, opt, window=6, every=1).state_dict()
    with pytest.raises(ValueError, match="window"):
        KoopmanAccelerator(model, opt, window=7, every=1).load_state_dict(state)
    with pytest.raises(ValueError, match="signature"):
        KoopmanAccelerator(model, opt, every=1, window=10).load_state_dict({"model": 1})
    other = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    with pytest.raises(ValueError, match="shapes"):
        KoopmanAccelerator(other, torch.optim.Adam(other.parameters()), window=6, every=1) \
            .load_state_dict(state)


def accepted_run(policy):
    model, x, y = problem()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1000)
    acc = KoopmanAccelerator(model, opt, window=8, horizons=(8, 16, 32),
                             optimizer_state=policy, every=1)

    def closure():
        with torch.no_grad():
            return nn.functional.mse_loss(model(x), y)

    for _ in range(200):
        state = copy.deepcopy(opt.state_dict())
        train(model, opt, x, y, 1, acc, closure, sched)
        if acc.jumps_accepted:
            break
    return opt, sched, state, acc


def test_optimizer_state_policies_after_an_accepted_jump():
    opt, sched, _, acc = accepted_run("momentum")
    assert acc.jumps_accepted == 1
    for st in opt.state.values():
        assert torch.count_nonzero(st["exp_avg"]) == 0       # first moment zeroed
        assert torch.count_nonzero(st["exp_avg_sq"]) > 0     # second moment kept
        assert int(st["step"]) > 0
    assert sched.last_epoch == acc.history[-1]["step"]     # schedules count real steps
    opt, _, _, _ = accepted_run("reset")
    assert len(opt.state) == 0
    opt, _, _, acc = accepted_run("keep")
    assert all(torch.count_nonzero(st["exp_avg"]) > 0 for st in opt.state.values())


def test_batchnorm_statistics_follow_the_accepted_weights():
    model, x, y = problem(bn=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = [(x,)]  # update_bn takes the first element of each batch
    acc = KoopmanAccelerator(model, opt, window=8, horizons=(8, 16, 32), bn_loader=loader, every=1)

    def closure():
        model.eval()
        with torch.no_grad():
            loss = nn.functional.mse_loss(model(x), y)
        model.train()
        return loss

    for _ in range(300):
        train(model, opt, x, y, 1, acc, closure)
        if acc.jumps_accepted:
            break
    assert acc.jumps_accepted == 1
    bn = model[1]
    with torch.no_grad():
        h = model[0](x)
    torch.testing.assert_close(bn.running_mean, h.mean(0))
    torch.testing.assert_close(bn.running_var, h.var(0, unbiased=True))


def test_known_linear_dynamics_jumps_are_accepted_and_save_steps():
    """Gradient descent on a quadratic: w_{t+1} = (I - lr A) w_t + lr b is affine, so
    affine Koopman jumps are exact; the accelerated run reaches the target in far fewer
    optimizer steps than plain gradient descent."""
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(10, 10, generator=g))[0]
    A = Q @ torch.diag(torch.linspace(0.01, 1.0, 10)) @ Q.T
    b = torch.randn(10, generator=g)
    w_star = torch.linalg.solve(A, b)

    def loss_of(w):
        return 0.5 * w @ A @ w - b @ w

    target = float(loss_of(w_star)) + 1e-6

    def run(accelerate):
        p = nn.Parameter(torch.zeros(10))
        opt = torch.optim.SGD([p], lr=0.5)
        model = nn.Module()
        model.p = p
        acc = KoopmanAccelerator(model, opt, window=12, optimizer_state="keep",
                                 horizons=(16, 64, 256, 1024, 4096),
                                         every=1) if accelerate else None
        for step in range(1, 5000):
            opt.zero_grad()
            loss_of(p).backward()
            opt.step()
            if acc is not None:
                acc.step(lambda: loss_of(p.detach()))
            if float(loss_of(p.detach())) <= target:
                return step, acc
        return None, acc

    plain_steps, _ = run(False)
    fast_steps, acc = run(True)
    assert plain_steps is not None and fast_steps is not None
    assert acc.jumps_accepted >= 1
    assert all(h["accepted"] for h in list(acc.history)[:1])
    assert fast_steps < plain_steps / 5


def test_any_optimizer_groups_frozen_and_low_precision_parameters():
    model, x, y = problem()
    model[0].bias.requires_grad_(False)
    model[2].half()
    model[2].float()
    opt = torch.optim.Adagrad([{"params": [model[0].weight], "lr": 0.1},
                               {"params": model[2].parameters(), "lr": 0.05}])
    acc = KoopmanAccelerator(model, opt, window=5, horizons=(5, 10), every=1)
    frozen = model[0].bias.detach().clone()

    def closure():
        with torch.no_grad():
            return nn.functional.mse_loss(model(x), y)

    train(model, opt, x, y, 40, acc, closure)
    assert acc.jumps_tried >= 1
    assert torch.equal(model[0].bias.detach(), frozen)
    bf = nn.Linear(3, 1).to(torch.bfloat16)
    bopt = torch.optim.SGD(bf.parameters(), lr=0.1)
    bacc = KoopmanAccelerator(bf, bopt, window=4, horizons=(4,), every=1)
    assert bacc.recorder.dtype == torch.float32
    xb = torch.randn(16, 3, dtype=torch.bfloat16)
    for _ in range(8):
        bopt.zero_grad()
        bf(xb).float().pow(2).mean().backward()
        bopt.step()
        bacc.step(lambda: bf(xb).float().pow(2).mean().detach())
    assert bf.weight.dtype == torch.bfloat16 and bacc.jumps_tried >= 1


@pytest.mark.parametrize("kwargs,match", [
    ({"window": 1}, "window"), ({"every": 0}, "every"), ({"granularity": "neuron"},
                                                        "granularity"),
    ({"predictor": "ema"}, "predictor"), ({"optimizer_state": "zero"}, "optimizer_state"),
    ({"horizons": ()}, "horizons"), ({"horizons": (3,), "every": 2}, "multiples"),
    ({"horizons": (0,)}, "horizons"), ({"margin": 1.0}, "margin"), ({"interval": 0},
                                                                    "interval"),
    ({"observables": "poly"}, "observables"), ({"stabilize": "yes"}, "stabilize"),
])
def test_invalid_arguments_name_the_argument(kwargs, match):
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match=match):
        KoopmanAccelerator(model, torch.optim.SGD(model.parameters(), lr=0.1),
            **({"every": 1, "window": 10} | kwargs))


def test_closure_must_return_a_scalar():
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, window=2, horizons=(2,), every=1)
    train(model, opt, x, y, 1, acc)
    opt.step()
    with pytest.raises(ValueError, match="scalar"):
        acc.step(lambda: torch.ones(3))
    opt.step()  # one optimizer step per acc.step(): a window that stands still is skipped
    with pytest.raises(TypeError, match="number"):
        acc.step(lambda: "low")
    with pytest.raises(TypeError, match="Module"):
        KoopmanAccelerator("model", opt, every=1, window=10)


def test_residual_scoring_keeps_badly_forecast_blocks_in_place():
    """Node granularity: a unit whose weights are pure noise fails its held-out forecast
    and must keep its weights through an accepted jump; the others move."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = KoopmanAccelerator(model, opt, window=12, granularity="node", horizons=(4,),
                             max_residual=0.5, margin=0.0, optimizer_state="keep", every=1)
    g = torch.Generator().manual_seed(1)
    target = torch.tensor([[1.0, -2.0, 0.5]] * 4)
    for _ in range(12):
        with torch.no_grad():
            model[0].weight.add_(0.2 * (target - model[0].weight))   # units settle smoothly
            model[0].weight[3] = torch.randn(3, generator=g)         # unit 3 is noise
        before = model[0].weight.detach().clone()
        entry = acc.step(lambda: float((model[0].weight[:3] - target[:3]).abs().sum().detach()))
    assert entry is not None and entry["accepted"]
    after = model[0].weight.detach()
    assert torch.equal(after[3], before[3])            # the noisy unit stayed
    assert not torch.equal(after[:3], before[:3])      # the smooth units jumped
    with pytest.raises(ValueError, match="max_residual"):
        KoopmanAccelerator(model, opt, max_residual=-1, every=1, window=10)


def test_scalars_reach_an_optional_summary_writer():
    class Writer:  # the part of torch.utils.tensorboard.SummaryWriter the accelerator uses
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

    model, x, y = problem()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    w = Writer()
    acc = KoopmanAccelerator(model, opt, window=5, horizons=(2, 4), writer=w, every=1)

    def closure():
        with torch.no_grad():
            return nn.functional.mse_loss(model(x), y)

    train(model, opt, x, y, 30, acc, closure)
    tags = {t for t, _, _ in w.scalars}
    assert {"koopman/loss_before", "koopman/accepted"} <= tags
    accepted = [v for t, v, _ in w.scalars if t == "koopman/accepted"]
    assert len(accepted) == acc.jumps_tried and sum(accepted) == acc.jumps_accepted
