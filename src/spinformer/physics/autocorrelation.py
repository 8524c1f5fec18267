"""Autocorrelation estimators moved to :mod:`spinformer.physics.montecarlo.autocorrelation`."""

from spinformer.physics.montecarlo.autocorrelation import (
    SeriesEstimate,
    autocorrelation_function,
    blocking_standard_error,
    estimate_mean,
    integrated_autocorrelation_time,
)

__all__ = [
    "SeriesEstimate",
    "autocorrelation_function",
    "blocking_standard_error",
    "estimate_mean",
    "integrated_autocorrelation_time",
]
