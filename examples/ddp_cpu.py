"""KoopmanAccelerator under DDP or FSDP2 on CPU: each rank trains on its own shard, and every
jump is decided once for all ranks. Run with

    torchrun --standalone --nproc-per-node 2 examples/ddp_cpu.py          # DDP
    torchrun --standalone --nproc-per-node 2 examples/ddp_cpu.py --fsdp   # fully_shard

It prints the jumps kept and checks that every rank holds the same model.
"""

import argparse
import gc

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from kooptrain import KoopmanAccelerator


def full(p: torch.Tensor) -> torch.Tensor:
    """The whole parameter (FSDP's are DTensors sharded across the ranks)."""
    return (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().ravel()


def train(rank: int, world: int, steps: int, fsdp: bool):
    """Each rank trains on its shard; returns the whole model's weights (flat) and the
    accelerator's counters. The model lives only in here, so it is gone before the process
    group is destroyed (see ``main``)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = torch.sin(x[:, :1]) + 0.1 * x[:, 1:2]
    xs, ys = x[rank::world], y[rank::world]  # this rank's shard
    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        model = fully_shard(model)  # each rank now holds (and records) half of every layer
    else:
        model = DDP(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # a short run: the fine cadence (the default, every=25, is for long training)
    acc = KoopmanAccelerator(model, opt, every=1, window=10)  # one decision for all ranks

    def closure():  # this rank's loss; the accelerator averages it over the ranks
        with torch.no_grad():
            return nn.functional.mse_loss(model(xs), ys)

    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(xs), ys).backward()
        opt.step()
        acc.step(closure)
    flat = torch.cat([full(p) for p in model.parameters()])
    return flat, acc.jumps_accepted, acc.jumps_tried, float(closure())


def main(steps: int = 200, fsdp: bool = False) -> None:
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, ...
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    flat, kept, tried, loss = train(rank, world, steps, fsdp)
    # Free the DDP model (its reducer holds the process group) while the group is alive.
    # If the reducer dropped the last reference after destroy_process_group, gloo's
    # destructor would join its worker threads holding the GIL, and a worker still
    # releasing a finished collective's tensors waits for the GIL: a rare hang at exit.
    gc.collect()
    copies = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(copies, flat)
    same = all(torch.equal(c, flat) for c in copies)
    if rank == 0:
        print(f"{'FSDP' if fsdp else 'DDP'}: jumps kept {kept} of {tried}; "
              f"replicas identical: {same}; loss {loss:.4g}")
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()
    if not same:
        raise SystemExit("the replicas drifted apart")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="KoopmanAccelerator under DDP or FSDP2 on CPU.")
    ap.add_argument("--fsdp", action="store_true", help="shard with fully_shard, not DDP")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    main(args.steps, args.fsdp)
