"""The multi-spin engine moved to :mod:`spinformer.physics.montecarlo.multispin`; re-exported."""

from spinformer.physics.montecarlo.multispin import (
    BACKENDS,
    DIGITS,
    LAZY_DIGITS,
    MultispinIsing,
    lazy_digits,
    multispin_supported,
)

__all__ = [
    "BACKENDS",
    "DIGITS",
    "LAZY_DIGITS",
    "MultispinIsing",
    "lazy_digits",
    "multispin_supported",
]
