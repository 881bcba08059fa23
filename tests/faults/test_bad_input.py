"""Bad input raises ValueError/TypeError with a message that says what to do."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from kooptrain import KoopmanOperator, Partition, SnapshotRecorder


@pytest.mark.parametrize(
    "X,exc,match",
    [
        (np.ones((3, 1)), ValueError, "at least 2"),
        (np.ones(5), ValueError, r"\(\.\.\., d, m\)"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), ValueError, "NaN/Inf"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), ValueError, "NaN/Inf"),
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "numbers"),
        (np.ones((2, 3), dtype=complex), TypeError, "complex"),
        (torch.ones(2, 3, dtype=torch.complex64), TypeError, "complex"),
        ([[1.0, 2.0], [3.0, 4.0]], TypeError, "torch.as_tensor"),
        ("snapshots", TypeError, "torch.Tensor or numpy.ndarray"),
        (np.ones((2, 0, 4)), ValueError, "empty"),
    ],
)
def test_fit_rejects_bad_snapshots(X, exc, match):
    with pytest.raises(exc, match=match):
        KoopmanOperator().fit(X)


@pytest.mark.parametrize(
    "T,exc,match",
    [(-1, ValueError, "negative"), ([3, -2], ValueError, "negative"), (2.5, TypeError, "whole"),
     ("10", TypeError, "int"), ([], ValueError, "empty"), (True, TypeError, "bool"),
     (-math.inf, TypeError, "int"), (math.nan, TypeError, "whole"), ([1, math.inf], TypeError,
     "whole"), (10**30, ValueError, "2\\*\\*62"), ([1, "2"], TypeError, "whole"),
     (torch.tensor([1.5]), TypeError, "whole"), (object(), TypeError, "int")],
)
def test_predict_rejects_bad_horizons(T, exc, match):
    op = KoopmanOperator().fit(np.random.default_rng(0).standard_normal((2, 6)))
    with pytest.raises(exc, match=match):
        op.predict(T)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"observables": "poly"}, "^observables='poly' is not one of"),
     ({"stabilize": "yes"}, "^stabilize='yes' is not one of"),
     ({"rank": 0}, "^rank=0 must be an int >= 1 or None"), ({"rtol": 2.0}, "^rtol=2.0 must"),
     ({"rtol": -1e-3}, "^rtol=-0.001 must"), ({"rtol": True}, "^rtol=True must"),
     ({"rank": 2.5}, "^rank=2.5 must"), ({"rank": True}, "^rank=True must"),
     ({"fixed_point_tol": 0}, r"^fixed_point_tol=0 must be a positive number\.$"),
     ({"fixed_point_tol": None}, r"^fixed_point_tol=None must be a positive number\.$"),
     ({"no_fixed_point": "zero"}, "^no_fixed_point='zero' is not one of"),
     ({"holdout": 1.5}, "^holdout=1.5 must be an int >= 0"),
     ({"holdout": -1}, "^holdout=-1 must be an int >= 0")],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KoopmanOperator(**kwargs).fit(np.ones((2, 5)) + np.arange(5))


def test_holdout_too_large():
    with pytest.raises(ValueError, match="holdout"):
        KoopmanOperator(holdout=4).fit(np.random.default_rng(0).standard_normal((2, 5)))


def test_predict_before_fit():
    with pytest.raises(RuntimeError, match="fit"):
        KoopmanOperator().predict(3)


def test_overflow_raises_instead_of_silent_inf():
    X = np.array([[1.0, 2.0, 4.0, 8.0]])
    with pytest.raises(FloatingPointError, match="stabilize"):
        KoopmanOperator().fit(X).predict(5000)


def test_partition_and_recorder_arguments():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="granularity"):
        Partition(model, granularity="neuron")
    with pytest.raises(ValueError, match="chunk"):
        Partition(model, granularity="quasi-node")
    with pytest.raises(ValueError, match="chunk"):
        Partition(model, granularity="node", chunk=2)
    with pytest.raises(TypeError, match="nn.Module"):
        Partition({"w": torch.ones(2)})
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        Partition(frozen)
    with pytest.raises(ValueError, match="window"):
        SnapshotRecorder(model, window=1)
    with pytest.raises(ValueError, match="storage"):
        SnapshotRecorder(model, storage="disk")
    rec = SnapshotRecorder(model)
    rec.record()
    with pytest.raises(RuntimeError, match="at least 2"):
        rec.fit().predict(3)


def test_settings_hold_plain_python_numbers():
    import numpy as np

    from kooptrain import FitSettings

    s = FitSettings(rank=np.int64(3), holdout=np.int64(2), rtol=np.float32(1e-3))
    assert type(s.rank) is int and type(s.holdout) is int and type(s.rtol) is float
    assert (s.rank, s.holdout) == (3, 2)
