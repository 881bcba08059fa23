"""With BatchNorm and ``bn_loader``, both sides of every comparison are judged on equal
terms: a jump that does not move the weights is never kept, whatever a refresh of the
running statistics would do for the judged loss. One test per path that compares losses:
the search, the built-in predictor, the screen and its confirmation, the
payoff controller and the Lightning callback (DDP: tests/distributed/test_ddp.py)."""

import pytest
import torch
from torch import nn

from kooptrain import KoopmanAccelerator


def identity(W):
    """A custom predictor that returns the current weights: a zero-length jump."""
    return W[..., -1]


def bn_net():
    torch.manual_seed(0)
    # a slow running average: the statistics training leaves are stale, so refreshing them
    # alone changes the judged loss by more than the margin
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16, momentum=0.01), nn.Tanh(),
                         nn.Linear(16, 1))


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    return x, torch.sin(x[:, :1]) * x[:, 1:2]


def eval_loss(model, x, y):
    def closure():
        was = model.training
        model.eval()
        with torch.no_grad():
            loss = nn.functional.mse_loss(model(x), y)
        model.train(was)
        return loss
    return closure


def train(steps=120, screen=None, **options):
    """SGD with momentum on minibatches; an attempt every 6 steps. Returns the accelerator
    and the weights and buffers after every step (before its attempt) and after it."""
    model, (x, y) = bn_net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    options = {"every": 1, "window": 6, "interval": 6, "max_backoff": 1,
               "bn_loader": [x[:128]], **options}
    acc = KoopmanAccelerator(model, opt, **options)
    closure = eval_loss(model, x, y)
    g = torch.Generator().manual_seed(1)
    unchanged = []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
        before = [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]
        entry = acc.step(closure, screen=screen)
        if entry is not None:
            after = [*model.parameters(), *model.buffers()]
            unchanged.append(all(torch.equal(a, b) for a, b in zip(before, after, strict=True)))
    return acc, unchanged


@pytest.mark.parametrize("bn_refresh", ["each", "kept"])
@pytest.mark.parametrize("options", [
    {"predictor": identity},
    # the built-in operator with every block distrusted: each block stays at its weights
    {"granularity": "layer", "max_residual": 1e-300},
], ids=["custom", "koopman-all-blocks-stay"])
def test_a_zero_length_jump_is_never_kept(options, bn_refresh):
    acc, unchanged = train(**options, bn_refresh=bn_refresh)
    assert acc.jumps_tried >= 15
    assert acc.jumps_accepted == 0, [(h["loss_before"], h["loss_after"]) for h in acc.history]
    assert all(unchanged)  # weights and BatchNorm buffers bit for bit


def test_with_bn_refresh_each_both_sides_of_a_zero_length_jump_judge_the_same():
    acc, _ = train(predictor=identity)
    judged = [h for h in acc.history if h["loss_after"] is not None]
    assert len(judged) >= 15
    assert all(h["loss_after"] == h["loss_before"] for h in judged)


def test_a_screen_that_favours_every_candidate_still_needs_a_fair_confirmation():
    calls = []

    def screen():  # every new point looks better than the one before
        calls.append(1)
        return 1.0 / len(calls)

    acc, unchanged = train(predictor=identity, screen=screen)
    confirmed = [h for h in acc.history if h["evaluations"] == 2]
    assert len(confirmed) >= 15  # the screen passed every attempt on to the closure
    assert acc.jumps_accepted == 0 and all(unchanged)
    assert all(h["loss_after"] == h["loss_before"] for h in confirmed)


def test_the_payoff_controller_keeps_no_zero_length_jump():
    acc, unchanged = train(steps=240, predictor=identity, max_overhead=0.5, eval_cost=0.01)
    assert acc.jumps_tried >= 15
    assert acc.jumps_accepted == 0 and all(unchanged)
    assert all(h["gain_steps"] == 0 for h in acc.history)


def test_with_bn_refresh_kept_every_point_is_judged_on_the_statistics_of_before():
    model, (x, y) = bn_net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    acc = KoopmanAccelerator(model, opt, every=1, window=4, horizons=(2, 4, 8),
                             bn_loader=[x[:128]], bn_refresh="kept")
    seen, start = [], []

    def closure():
        seen.append(torch.equal(model[1].running_mean, start[-1]))
        model(x[:8])  # a train-mode forward pass: must not leak into the next point
        return float(len(seen)) if len(seen) > 1 else 10.0  # the first candidate is best

    for _ in range(4):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        start.append(model[1].running_mean.clone())
        entry = acc.step(closure)
    assert entry is not None and entry["accepted"] and len(seen) >= 3
    assert all(seen)
    # the kept weights get statistics of their own
    torch.testing.assert_close(model[1].running_mean,
                               model[0](x[:128]).mean(0).detach(), atol=1e-6, rtol=0)


def test_bn_refresh_is_validated():
    model = bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="bn_refresh"):
        KoopmanAccelerator(model, opt, bn_refresh="always")


def test_the_lightning_callback_keeps_no_zero_length_jump():
    pl = pytest.importorskip("lightning.pytorch")
    from kooptrain.lightning import KoopmanCallback

    x, y = data()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = bn_net()

        def forward(self, x):  # update_bn calls the module on each bn_loader batch
            return self.net(x)

        def training_step(self, batch, _):
            return nn.functional.mse_loss(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    module = Module()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32,
                                         shuffle=True,
                                         generator=torch.Generator().manual_seed(1))
    cb = KoopmanCallback(lambda m: eval_loss(m.net, x, y)(), predictor=identity,
                         bn_loader=[x[:128]], every=1, window=6, interval=6, max_backoff=1)
    trainer = pl.Trainer(max_steps=120, callbacks=[cb], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader)
    acc = cb.accelerator
    assert acc.jumps_tried >= 15 and acc.jumps_accepted == 0
