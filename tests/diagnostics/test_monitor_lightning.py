"""KoopmanMonitorCallback in a real Lightning Trainer (skipped when Lightning is absent)."""

import json

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from kooptrain import KoopmanMonitor  # noqa: E402
from kooptrain.lightning import KoopmanMonitorCallback  # noqa: E402


class Regression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x[:, :1] ** 2

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self.net(self.x), self.y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return [0] * 60


def fit(callback, **kw):
    module = Regression()
    pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu", callbacks=[callback],
               enable_checkpointing=False, **kw).fit(module)
    return module


def test_the_callback_records_what_a_hand_loop_records(tmp_path):
    cb = KoopmanMonitorCallback(path=tmp_path / "koopman.json", every=2, window=5)
    module = fit(cb)
    # the same training by hand, watched by a monitor with the same settings
    ref = Regression()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    mon = KoopmanMonitor(ref, every=2, window=5, optimizer=opt)  # lr time, as the callback
    for _ in range(60):
        opt.zero_grad()
        loss = ref.training_step(None, 0)
        loss.backward()
        opt.step()
        mon.step(loss=loss.detach())
    for p, q in zip(module.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)  # the monitor changed nothing
    assert cb.monitor.record == json.loads(json.dumps(mon.record))
    assert len(cb.monitor.record["entries"]) == 6
    assert cb.monitor.record["entries"][0]["loss"] is not None
    assert json.loads((tmp_path / "koopman.json").read_text()) == cb.monitor.record
    # Lightning users get learning-rate time: the callback hands the monitor the optimizer
    assert cb.monitor.settings.lr_time and cb.monitor.spacing == pytest.approx((0.1,) * 4)
    assert cb.step_count == cb.monitor.step_count == 60


def test_the_callback_in_step_time_records_what_a_hand_loop_without_optimizer_does():
    cb = KoopmanMonitorCallback(every=2, window=5, lr_time=False)
    fit(cb)
    ref = Regression()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    mon = KoopmanMonitor(ref, every=2, window=5)
    for _ in range(60):
        opt.zero_grad()
        loss = ref.training_step(None, 0)
        loss.backward()
        opt.step()
        mon.step(loss=loss.detach())
    assert cb.monitor.record == json.loads(json.dumps(mon.record))
    assert cb.monitor.spacing is None and not cb.monitor.settings.lr_time
    with pytest.raises(TypeError, match="lr_time=False"):
        KoopmanMonitorCallback(optimizer=torch.optim.SGD(ref.parameters(), lr=0.1))


def test_gradient_accumulation_steps_the_monitor_once_per_optimizer_step():
    cb = KoopmanMonitorCallback(every=1, window=5)
    fit(cb, accumulate_grad_batches=3)
    assert cb.monitor.step_count == 20
    assert [e["step"] for e in cb.monitor.record["entries"]] == [5, 10, 15, 20]
