"""Hopfield networks: classical (±1 spins, Hebb couplings) and modern (continuous, attention).

Both are spin systems of :mod:`spinformer.physics`: the classical net is an Ising model whose
zero-temperature dynamics descends its energy into attractors (Hopfield, "Neural networks and
physical systems with emergent collective computational abilities", PNAS 79, 2554, 1982); the
modern net's update is one step of value-free attention (Ramsauer et al., "Hopfield networks is
all you need", 2020; Bal, "Transformers are secretly collectives of spin systems", 2021).
"""

from spinformer.hopfield.capacity import (
    CapacityCurve,
    ModernCapacity,
    classical_retrieval,
    modern_retrieval,
    random_sphere_patterns,
)
from spinformer.hopfield.classical import (
    SCHEDULES,
    AttractorCensus,
    BasinEstimate,
    ClassicalHopfield,
    HopfieldRun,
    random_patterns,
)
from spinformer.hopfield.modern import FIXED_POINT_KINDS, ModernHopfield, ModernRetrieval

__all__ = [
    "FIXED_POINT_KINDS",
    "SCHEDULES",
    "AttractorCensus",
    "BasinEstimate",
    "CapacityCurve",
    "ClassicalHopfield",
    "HopfieldRun",
    "ModernCapacity",
    "ModernHopfield",
    "ModernRetrieval",
    "classical_retrieval",
    "modern_retrieval",
    "random_patterns",
    "random_sphere_patterns",
]
