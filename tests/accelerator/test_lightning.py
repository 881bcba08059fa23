"""KoopmanCallback in a real Lightning Trainer (skipped when Lightning is absent)."""

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from kooptrain.lightning import KoopmanCallback  # noqa: E402


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

    def fixed_loss(self):
        with torch.no_grad():
            return nn.functional.mse_loss(self.net(self.x), self.y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        return [0] * 40


def trainer(**kw):
    return pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", **kw)


def test_callback_attempts_jumps_inside_fit(tmp_path):
    model = Regression()
    cb = KoopmanCallback(lambda m: m.fixed_loss(), every=1, window=5, horizons=(2, 4, 8))
    trainer(callbacks=[cb], enable_checkpointing=False).fit(model)
    acc = cb.accelerator
    assert acc is not None and acc.jumps_tried >= 2
    assert acc.recorder.partition.model is model
    assert cb.state_dict()["accelerator"]["step_count"] == acc.step_count == 40


def test_callback_rejects_a_non_callable():
    with pytest.raises(TypeError, match="callable"):
        KoopmanCallback("loss")


def test_callback_steps_once_per_optimizer_step_under_gradient_accumulation():
    model = Regression()
    cb = KoopmanCallback(lambda m: m.fixed_loss(), every=1, window=5, horizons=(2, 4, 8))
    trainer(callbacks=[cb], enable_checkpointing=False, accumulate_grad_batches=2).fit(model)
    assert cb.state_dict()["accelerator"]["step_count"] == 20  # 40 batches, 20 steps
    assert all("did not move" not in (h["reason"] or "") for h in cb.accelerator.history)


def test_both_callbacks_share_one_base_that_follows_the_optimizer_steps():
    from kooptrain.lightning import KoopmanMonitorCallback, LoopCallback

    assert issubclass(KoopmanCallback, LoopCallback)
    assert issubclass(KoopmanMonitorCallback, LoopCallback)
    model = Regression()
    cb = KoopmanCallback(lambda m: m.fixed_loss(), every=1, window=5, horizons=(2, 4, 8))
    assert cb.step_count == 0
    trainer(callbacks=[cb], enable_checkpointing=False, accumulate_grad_batches=2).fit(model)
    assert cb.step_count == cb.accelerator.step_count == 20
