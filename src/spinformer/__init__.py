"""spinformer: a transformer's attention is the Boltzmann distribution of a spin system.

Layers (dependencies point down): ``cli``/``report`` → ``experiments`` → ``train``/``lens`` →
``nn`` → ``attention``/``hopfield`` → ``physics`` → ``solvers``.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from spinformer.physics import (
    IsingModel,
    SquareLattice,
    Thermodynamics,
    VectorSpinModel,
    available_methods,
    chain,
    curie_weiss,
    hopfield_couplings,
    sherrington_kirkpatrick,
    square_lattice,
    thermodynamics,
)

try:
    __version__ = version("spinformer")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0"

__all__ = [
    "IsingModel",
    "SquareLattice",
    "Thermodynamics",
    "VectorSpinModel",
    "__version__",
    "available_methods",
    "chain",
    "curie_weiss",
    "hopfield_couplings",
    "sherrington_kirkpatrick",
    "square_lattice",
    "thermodynamics",
]


def __getattr__(name: str) -> Any:
    """``spinformer.sweep(...)``: the sweep package (callable), imported on first use."""
    if name == "sweep":
        import importlib

        return importlib.import_module("spinformer.sweep")
    raise AttributeError(f"module 'spinformer' has no attribute {name!r}")
