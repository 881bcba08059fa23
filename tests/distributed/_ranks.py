"""Run a function on WORLD ranks, with a timeout: what each rank returned, or what it raised.

``run_ranks``: gloo ranks in fresh processes, the real thing. ``run_threads``: the ranks as
threads of this process on torch's threaded process group (``torch.testing``'s
``multi_threaded_pg``: real collectives between threads, DDP and FSDP2 included), so a
test's ranks run in seconds and in the process that measures coverage (mutation testing).
The rank functions are the same for both; they build their models under ``seeded``."""

import gc
import os
import threading
import traceback
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
TIMEOUT = 120  # seconds for all ranks of one test
THREAD_TIMEOUT = 60  # as threads: the slowest test takes ~12 s


def data(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, :1]) + 0.3 * x[:, 1:2]
    return x, y


_BUILD = threading.Lock()


@contextmanager
def seeded(seed=0):
    """Seed torch's global generator for a build; rank threads share that generator, so
    they take turns (FSDP2 shards what each rank initialised: the builds must agree)."""
    with _BUILD:
        torch.manual_seed(seed)
        yield


def model():
    with seeded():
        return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def flat(m):
    return torch.cat([p.detach().ravel() for p in m.parameters()])


def _report(e: BaseException) -> dict:
    return {"raised": type(e).__name__, "message": str(e),
            "traceback": traceback.format_exc()[-3000:]}


def _entry(rank, fn, init, out, args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        result = fn(rank, *args)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        result = _report(e)
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


def run_threads(fn, *args):
    """Run ``fn(rank, *args)`` on WORLD ranks that are threads of this process; their
    results, or what each raised. Refuses (skips) where torch has no threaded group."""
    import pytest

    mt = pytest.importorskip("torch.testing._internal.distributed.multi_threaded_pg")
    results: list = [None] * WORLD
    store = dist.HashStore()

    def entry(rank):
        dist.init_process_group("threaded", rank=rank, world_size=WORLD, store=store)
        try:
            results[rank] = fn(rank, *args)
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            results[rank] = _report(e)
        finally:
            dist.destroy_process_group()

    mt.ProcessLocalGroup.reset()
    torch._C._distributed_c10d._set_thread_isolation_mode(True)
    mt._install_threaded_pg()
    try:
        threads = [threading.Thread(target=entry, args=(r,), daemon=True)
                   for r in range(WORLD)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(THREAD_TIMEOUT)
        alive = sum(t.is_alive() for t in threads)
        if alive:  # a rank left in a collective: wake it (it raises) so that it ends
            mt.ProcessLocalGroup.exception_handle(RuntimeError("left waiting"))
            for t in threads:
                t.join(10)
    finally:
        mt.ProcessLocalGroup.reset()  # for the next test, whatever happened in this one
        mt._uninstall_threaded_pg()
        torch._C._distributed_c10d._set_thread_isolation_mode(False)
    assert not alive, f"{alive} rank(s) still running after {THREAD_TIMEOUT} s: left waiting"
    return results
