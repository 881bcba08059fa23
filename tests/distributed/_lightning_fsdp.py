"""Run by test_lightning_ddp.py (Lightning relaunches this file once per rank):
KoopmanCallback under ModelParallelStrategy, Lightning's FSDP2, on 2 CPU processes. Prints
one JSON line from rank 0."""

import json
import os
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from test_lightning_ddp import Sharded, fixed_loss  # this folder: run as a script

from kooptrain.lightning import KoopmanCallback


class ShardedFSDP(Sharded):
    """``test_lightning_ddp.Sharded``, with ``fully_shard`` in ``configure_model``."""

    def configure_model(self):
        from torch.distributed.fsdp import fully_shard

        fully_shard(self.net, mesh=self.device_mesh["data_parallel"])


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


if __name__ == "__main__":
    torch.set_num_threads(1)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         accelerator="cpu", devices=2,
                         strategy=ModelParallelStrategy(data_parallel_size=2,
                                                        tensor_parallel_size=1),
                         use_distributed_sampler=False,
                         callbacks=[KoopmanCallback(fixed_loss, every=1, window=5,
                                                    horizons=(2, 4, 8, 16)), Report()])
    trainer.fit(ShardedFSDP())
    # The run is over and reported. gloo's threads can abort the interpreter's teardown
    # afterwards ("terminate called without an active exception", seen once in CI), so
    # leave the process group and exit without that teardown.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
