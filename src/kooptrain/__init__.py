"""kooptrain: Koopman operator theory for neural-network training.

Public API::

    KoopmanOperator     batched exact-DMD engine: fit (..., d, m) -> predict (..., d)
    SnapshotStatistics  running sums for streaming fits
    Partition           model parameters <-> blocks (weight, quasi-node, node, layer, network)
    SnapshotRecorder    records a training window and predicts a jump
"""

from .koopman import KoopmanOperator, SnapshotStatistics
from .partition import GRANULARITIES, BlockGroup, Partition
from .recorder import SnapshotRecorder

__all__ = [
    "GRANULARITIES",
    "BlockGroup",
    "KoopmanOperator",
    "Partition",
    "SnapshotRecorder",
    "SnapshotStatistics",
]
__version__ = "0.1.0"
