"""KoopmanCallback under Lightning's DDP on 2 CPU processes: each rank trains on its own
shard and judges on it, and the replicas still end bit-identical."""

import json

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from kooptrain.lightning import KoopmanCallback  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]  # spawns processes


class Sharded(pl.LightningModule):
    """Each rank fits its own half of a regression set (its own data, its own closure)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        g = torch.Generator().manual_seed(0)
        self.x_all = torch.randn(128, 4, generator=g)
        self.y_all = torch.sin(self.x_all[:, :1]) + 0.2 * self.x_all[:, 1:2]

    def shard(self):
        r, w = self.global_rank, self.trainer.world_size
        return self.x_all[r::w], self.y_all[r::w]

    def training_step(self, batch, batch_idx):
        x, y = self.shard()
        return nn.functional.mse_loss(self.net(x), y)

    def fixed_loss(self):
        x, y = self.shard()
        with torch.no_grad():
            return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader([0] * 120, batch_size=1)


def fixed_loss(module):
    return module.fixed_loss()


class Gather(pl.Callback):
    def __init__(self, path):
        self.path = path

    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().ravel() for p in pl_module.parameters()])
        copies = trainer.strategy.all_gather(flat)
        koop = next(c for c in trainer.callbacks if isinstance(c, KoopmanCallback))
        if trainer.global_rank == 0:
            self.path.write_text(json.dumps({
                "identical": bool((copies == copies[0]).all()),
                "accepted": koop.accelerator.jumps_accepted,
                "sent": koop.accelerator.bytes_sent}))


def test_replicas_stay_identical_under_lightning_ddp(tmp_path):
    out = tmp_path / "gathered.json"
    cb = KoopmanCallback(fixed_loss, every=1, window=5, horizons=(2, 4, 8, 16))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         accelerator="cpu", devices=2, strategy="ddp_spawn",
                         use_distributed_sampler=False, callbacks=[cb, Gather(out)])
    trainer.fit(Sharded())
    got = json.loads(out.read_text())
    assert got["identical"] and got["accepted"] >= 1 and got["sent"] > 0


def test_replicas_stay_identical_under_lightning_fsdp2():
    """ModelParallelStrategy (Lightning's FSDP2) on CPU: Lightning relaunches the script once
    per rank, so it runs as a subprocess."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("_lightning_fsdp.py")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["identical"] and got["accepted"] >= 5
    # rank 0 records its shard only: 57 of the 97 weights, window 5 plus the mean snapshot's
    # block sum and read buffer, float32
    assert got["memory"] == 57 * (5 + 2) * 4 and got["parameters"] == 97
