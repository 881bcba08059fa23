"""Run by test_lightning_ddp.py (Lightning relaunches this file once per rank):
KoopmanCallback under ModelParallelStrategy, Lightning's FSDP2, on 2 CPU processes. Prints
one JSON line from rank 0."""

import json

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from kooptrain.lightning import KoopmanCallback


class Sharded(pl.LightningModule):
    """Each rank fits its own half of a regression set; ``fully_shard`` in configure_model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        g = torch.Generator().manual_seed(0)
        self.x_all = torch.randn(128, 4, generator=g)
        self.y_all = torch.sin(self.x_all[:, :1]) + 0.2 * self.x_all[:, 1:2]

    def configure_model(self):
        from torch.distributed.fsdp import fully_shard

        fully_shard(self.net, mesh=self.device_mesh["data_parallel"])

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


class Report(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.full_tensor().detach().ravel() for p in pl_module.parameters()])
        copies = trainer.strategy.all_gather(flat)
        koop = next(c for c in trainer.callbacks if isinstance(c, KoopmanCallback))
        if trainer.global_rank == 0:
            print(json.dumps({"identical": bool((copies == copies[0]).all()),
                              "accepted": koop.accelerator.jumps_accepted,
                              "memory": koop.accelerator.recorder.memory_bytes,
                              "parameters": flat.numel()}))


def fixed_loss(module):
    return module.fixed_loss()


if __name__ == "__main__":
    torch.set_num_threads(1)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         accelerator="cpu", devices=2,
                         strategy=ModelParallelStrategy(data_parallel_size=2,
                                                        tensor_parallel_size=1),
                         use_distributed_sampler=False,
                         callbacks=[KoopmanCallback(fixed_loss, window=5,
                                                    horizons=(2, 4, 8, 16)), Report()])
    trainer.fit(Sharded())
