import itertools

import pytest
from _ranks import run_ranks, run_threads


@pytest.fixture(params=["threads", pytest.param("processes", marks=pytest.mark.slow)])
def ranks(request, tmp_path):
    """``ranks(fn, *args)``: ``fn(rank, *args)`` on every rank, as threads of this process
    (fast, and seen by coverage) and as gloo processes (slow, the real thing)."""
    if request.param == "threads":
        return run_threads
    calls = itertools.count()

    def run(fn, *args):
        out = tmp_path / f"call{next(calls)}"
        out.mkdir()
        return run_ranks(out, fn, *args)
    return run
