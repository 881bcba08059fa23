"""Diagnostics of training dynamics through the Koopman spectrum of the weights.

    KoopmanMonitor   per-layer spectra during training; instability warning, convergence flag
    compare          distance between the Koopman spectra of two runs (Redman et al. 2024)
    compare_groups   two groups of runs (seeds) apart beyond a shuffled control
    block_spectra    the spectral summary of a window of snapshots, per block
    plot_spectra     the spectra over training, one panel per layer (matplotlib)
"""

from .compare import compare, compare_groups, spectral_distance
from .monitor import KoopmanMonitor
from .plot import plot_spectra
from .spectrum import BlockSpectra, block_spectra

__all__ = ["BlockSpectra", "KoopmanMonitor", "block_spectra", "compare", "compare_groups",
           "plot_spectra", "spectral_distance"]
