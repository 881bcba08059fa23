"""kooptrain: Koopman operator theory for neural-network training.

Public API::

    KoopmanOperator     batched exact-DMD engine: fit (..., d, m) -> predict (..., d)
    FitSettings         the frozen, validated settings of a KoopmanOperator fit
    DEFAULT_RTOL        the engine's default truncation rule (1e-6 * sigma_max)
    SnapshotStatistics  running sums for streaming fits (from_snapshots, update)
    Partition           model parameters <-> blocks (weight, quasi-node, node, layer, network)
    BlockGroup          the blocks of one size in a Partition: (B, d) index, layers
    GRANULARITIES       the granularities Partition accepts
    SnapshotRecorder    records a training window; fit() -> Forecast
    Forecast            fitted operators of every block group; predict(T) never refits
    KoopmanAccelerator  verified Koopman jumps inside a training loop (step(closure))
    KoopmanAverage      an evaluation copy at the Koopman estimate of training's limit
    CoordinateTrust     a predictor that trusts a jump per coordinate (PDT's rule)
    NoFixedPointError   raised by predict(math.inf) for blocks without a fixed point
    ModelChangedError   raised once a partitioned model's parameters change (surgery)
    RemoteRankError     under torch.distributed: another rank failed inside an attempt
    KoopmanMonitor      per-layer Koopman spectra during training: instability, convergence
    compare             the distance between the Koopman spectra of two runs' records
    compare_groups      two groups of runs (seeds) apart beyond a shuffled control

The optional Lightning adapters are ``kooptrain.lightning.KoopmanCallback`` and
``KoopmanMonitorCallback``; more diagnostics are in ``kooptrain.diagnostics``; the experiments
(``kooptrain reproduce``, ``kooptrain race``) live in ``kooptrain.experiments``.
"""

from .accelerator import KoopmanAccelerator
from .average import KoopmanAverage
from .diagnostics import KoopmanMonitor, compare, compare_groups
from .errors import ModelChangedError, NoFixedPointError, RemoteRankError
from .koopman import DEFAULT_RTOL, FitSettings, KoopmanOperator
from .partition import GRANULARITIES, BlockGroup, Partition
from .recorder import Forecast, SnapshotRecorder
from .statistics import SnapshotStatistics
from .trust import CoordinateTrust

__all__ = [
    "DEFAULT_RTOL",
    "GRANULARITIES",
    "BlockGroup",
    "CoordinateTrust",
    "FitSettings",
    "Forecast",
    "KoopmanAccelerator",
    "KoopmanAverage",
    "KoopmanMonitor",
    "KoopmanOperator",
    "ModelChangedError",
    "NoFixedPointError",
    "Partition",
    "RemoteRankError",
    "SnapshotRecorder",
    "SnapshotStatistics",
    "compare",
    "compare_groups",
]
__version__ = "0.2.0"
