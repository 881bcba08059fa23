"""KoopmanAccelerator under DDP on CPU: each rank trains on its own shard, and every jump
is decided once for all ranks. Run with

    torchrun --standalone --nproc-per-node 2 examples/ddp_cpu.py

It prints the jumps kept and checks that the replicas are still bit-identical.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from kooptrain import KoopmanAccelerator


def main(steps: int = 200) -> None:
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, ...
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = torch.sin(x[:, :1]) + 0.1 * x[:, 1:2]
    xs, ys = x[rank::world], y[rank::world]  # this rank's shard
    torch.manual_seed(0)  # DDP also broadcasts rank 0's weights at construction
    model = DDP(nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    acc = KoopmanAccelerator(model, opt)  # under DDP: one decision for all ranks

    def closure():  # this rank's loss; the accelerator averages it over the ranks
        with torch.no_grad():
            return nn.functional.mse_loss(model(xs), ys)

    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(xs), ys).backward()
        opt.step()
        acc.step(closure)
    flat = torch.cat([p.detach().ravel() for p in model.parameters()])
    copies = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(copies, flat)
    same = all(torch.equal(c, flat) for c in copies)
    if rank == 0:
        print(f"jumps kept {acc.jumps_accepted} of {acc.jumps_tried}; replicas identical: "
              f"{same}; loss {float(closure()):.4g}")
    dist.destroy_process_group()
    if not same:
        raise SystemExit("the replicas drifted apart")


if __name__ == "__main__":
    main()
