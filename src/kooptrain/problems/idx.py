"""Read MNIST from IDX files (raw or .gz). Nothing is downloaded."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "load_mnist", "MNIST_ENV"]

MNIST_ENV = "KOOPTRAIN_MNIST_DIR"
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file -> array of its declared shape and dtype."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r}).")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[data[2]])
    body = data[4 + 4 * ndim :]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(body) != expected:
        raise ValueError(f"{path} is truncated or padded: header says {dims} ({expected} bytes), "
                         f"file holds {len(body)} bytes.")
    return np.frombuffer(body, dtype=dtype).reshape(dims).copy()  # writable, owns its data


def _find(directory: Path, stem: str) -> Path | None:
    for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        if (directory / cand).exists():
            return directory / cand
    return None


def load_mnist(directory: str | os.PathLike | None = None):
    """``((x_train, y_train), (x_test, y_test))`` from the four standard IDX files.

    directory: the folder holding them; default ``$KOOPTRAIN_MNIST_DIR``.
    """
    directory = directory or os.environ.get(MNIST_ENV)
    hint = (
        f"Put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        f"t10k-labels-idx1-ubyte (raw or .gz) in one folder and pass --mnist-dir DIR or set "
        f"{MNIST_ENV}=DIR. kooptrain downloads nothing; the offline tasks 'mnist1d' and "
        f"'digits' need no files."
    )
    if not directory:
        raise FileNotFoundError(f"no MNIST folder given. {hint}")
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"MNIST folder {directory} does not exist. {hint}")
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST folder {directory} is a file, not a folder. {hint}")
    found = {k: _find(directory, v) for k, v in _FILES.items()}
    missing = [_FILES[k] for k, v in found.items() if v is None]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}. {hint}")
    arrays = {k: read_idx(v) for k, v in found.items()}
    return ((arrays["train_images"], arrays["train_labels"]),
            (arrays["test_images"], arrays["test_labels"]))
