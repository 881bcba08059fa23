"""kooptrain: Koopman operator theory for neural-network training.

Public API::

    KoopmanOperator     batched exact-DMD engine: fit (..., d, m) -> predict (..., d)
    SnapshotStatistics  running sums for streaming fits (from_snapshots, update)
    NoFixedPointError   raised by predict(math.inf) for blocks without a fixed point
    Partition           model parameters <-> blocks (weight, quasi-node, node, layer, network)
    ModelChangedError   raised once a partitioned model's parameters change (surgery)
    SnapshotRecorder    records a training window and predicts a jump
    KoopmanAccelerator  verified Koopman jumps inside a training loop (step(closure))
"""

from .accelerator import KoopmanAccelerator
from .koopman import DEFAULT_RTOL, KoopmanOperator, NoFixedPointError, SnapshotStatistics
from .partition import GRANULARITIES, BlockGroup, ModelChangedError, Partition
from .recorder import SnapshotRecorder

__all__ = [
    "GRANULARITIES",
    "BlockGroup",
    "DEFAULT_RTOL",
    "KoopmanAccelerator",
    "KoopmanOperator",
    "ModelChangedError",
    "NoFixedPointError",
    "Partition",
    "SnapshotRecorder",
    "SnapshotStatistics",
]
__version__ = "0.1.0"
