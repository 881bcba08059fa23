"""Collection rules for the whole repository (tests/ and the doctests in src/)."""

import importlib.util
import os

# kooptrain.lightning needs the optional Lightning extra; without it, skip its doctests
collect_ignore = [] if importlib.util.find_spec("lightning") else ["src/kooptrain/lightning.py"]

if "PYTEST_XDIST_WORKER" in os.environ:
    # `pytest -n N`: N workers share the cores, so each of them (and every process it starts:
    # the CLI tests, the gloo ranks) runs one torch thread; more would oversubscribe OpenMP
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
