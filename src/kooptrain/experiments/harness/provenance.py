"""Where a result came from: versions, threads, CPU, commit, date."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from ... import __version__

SCHEMA_VERSION = 1


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_signature() -> str | None:
    """The CPU beyond its marketing name: vendor, family/model/stepping, cache size and a
    digest of its feature flags (``"GenuineIntel 6/167/1, 491520 KB, flags 1a2b3c4d"``).
    BLAS kernels choose code paths and block sizes from these, and with them the order of
    a float32 sum; two machines that both call themselves "AMD EPYC" may differ here.
    None off Linux."""
    import hashlib

    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k = k.strip()
            if k in ("vendor_id", "cpu family", "model", "stepping", "cache size", "flags"):
                fields.setdefault(k, v.strip())
            elif not k and fields:
                break  # the first processor is enough
    except OSError:
        return None
    if "vendor_id" not in fields:
        return None
    flags = hashlib.sha256(" ".join(sorted(fields.get("flags", "").split())).encode())
    return (f"{fields['vendor_id']} {fields.get('cpu family', '?')}/{fields.get('model', '?')}"
            f"/{fields.get('stepping', '?')}, {fields.get('cache size', '?')}, "
            f"flags {flags.hexdigest()[:8]}")


# the whole package: src/kooptrain (a change to the engine matters as much as one here)
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=PACKAGE_ROOT)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _dirty() -> bool | None:
    """Whether the package's source differs from the recorded commit."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True,
                             text=True, timeout=5, cwd=PACKAGE_ROOT)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _capability() -> str | None:
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return get() if get is not None else None


def provenance() -> dict:
    import os

    return {
        "schema_version": SCHEMA_VERSION,
        "kooptrain": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "cpu": _cpu(),
        # the vector kernels torch picked (e.g. AVX2, AVX512): two CPUs of one name may
        # differ here, and with them the float32 rounding of a long training run
        "cpu_capability": _capability(),
        "cpu_signature": _cpu_signature(),
        "git_commit": _commit(),
        "git_dirty": _dirty(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def describe_code(p: dict) -> str:
    """Which code made a result, in words: the package version and, from a checkout, the
    commit (``"kooptrain 0.2.0, commit abc1234"``; results older than 0.2 name no
    version)."""
    version = f"kooptrain {p['kooptrain']}" if p.get("kooptrain") else \
        "kooptrain version not recorded"
    if p.get("git_commit") is None:
        return f"{version} (installed, not a git checkout)"
    dirty = " (with uncommitted changes)" if p.get("git_dirty") else ""
    return f"{version}, commit {p['git_commit']}{dirty}"
