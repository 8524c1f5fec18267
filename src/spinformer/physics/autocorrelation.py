"""Autocorrelation estimators moved to :mod:`spinformer.physics.montecarlo.autocorrelation`."""

from spinformer.physics.montecarlo.autocorrelation import *  # noqa: F403
from spinformer.physics.montecarlo.autocorrelation import __all__ as __all__
