"""Run a function on WORLD gloo ranks in fresh processes, with a timeout: what each rank
returned, or what it raised."""

import gc
import os
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
TIMEOUT = 120  # seconds for all ranks of one test


def data(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, :1]) + 0.3 * x[:, 1:2]
    return x, y


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def flat(m):
    return torch.cat([p.detach().ravel() for p in m.parameters()])


def _entry(rank, fn, init, out, args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        result = fn(rank, *args)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        result = {"raised": type(e).__name__, "message": str(e),
                  "traceback": traceback.format_exc()[-3000:]}
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    del result
    # whatever held the group (a DDP reducer in a reference cycle) goes while it is alive:
    # gloo's destructor run from there joins its threads holding the GIL (examples/ddp_cpu.py)
    gc.collect()
    dist.destroy_process_group()


def run_ranks(tmp_path, fn, *args):
    """Run ``fn(rank, *args)`` on WORLD gloo ranks; their results, or what each raised."""
    init = f"file://{tmp_path / 'init'}"
    ctx = mp.start_processes(_entry, args=(fn, init, str(tmp_path), args), nprocs=WORLD,
                             join=False, start_method="spawn")
    for p in ctx.processes:
        p.join(TIMEOUT)
    alive = [p for p in ctx.processes if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} rank(s) still running after {TIMEOUT} s: left waiting"
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
