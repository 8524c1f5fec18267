"""Spin-model physics: models, exact and approximate thermodynamics, observables.

This layer knows nothing about transformers. A model is data (:class:`IsingModel`,
:class:`VectorSpinModel`); :func:`thermodynamics` turns it into a :class:`Thermodynamics` result
with the method registered under a name (``available_methods()`` lists them).
"""

from spinformer.physics import exact as _exact  # noqa: F401  (registers "exact")
from spinformer.physics import meanfield as _meanfield  # noqa: F401  (registers "mean_field", "tap")
from spinformer.physics import montecarlo as _montecarlo  # noqa: F401  (registers "monte_carlo")
from spinformer.physics import saddle as _saddle  # noqa: F401  (registers "saddle")
from spinformer.physics._limits import ResourceLimitError
from spinformer.physics.constructors import (
    chain,
    curie_weiss,
    hopfield_couplings,
    sherrington_kirkpatrick,
    square_lattice,
)
from spinformer.physics.dynamical import (
    dynamical_mean_field,
    kinetic_ising_step,
    kinetic_vector_step,
    stationary_dynamical_mean_field,
)
from spinformer.physics.exact import (
    MAX_ENUMERATION_SPINS,
    all_states,
    enumeration_log_partition,
    transfer_matrix_log_partition,
)
from spinformer.physics.meanfield import (
    bessel_response,
    ising_response,
    large_d_response,
    mean_field_thermodynamics,
    transformer_radius,
    vector_covariance,
)
from spinformer.physics.models import CompleteGraph, IsingModel, SquareLattice, VectorSpinModel
from spinformer.physics.montecarlo import (
    ALGORITHMS,
    ENGINES,
    MonteCarloSamples,
    autocorrelation_times,
    sample,
    von_mises_fisher,
)
from spinformer.physics.montecarlo.autocorrelation import (
    SeriesEstimate,
    autocorrelation_function,
    blocking_standard_error,
    estimate_mean,
    integrated_autocorrelation_time,
)
from spinformer.physics.reference import (
    ONSAGER_BETA_C,
    curie_weiss_binomial,
    onsager_log_partition_per_spin,
)
from spinformer.physics.saddle import (
    saddle_log_partition,
    saddle_magnetization,
    saddle_response,
    saddle_thermodynamics,
    solve_saddle,
)
from spinformer.physics.special import (
    bessel_ratio,
    bessel_ratio_derivative,
    log_bessel_iv,
    log_bessel_iv_normalized,
)
from spinformer.physics.thermo import (
    Thermodynamics,
    ThermodynamicsMethod,
    available_methods,
    register_method,
    thermodynamics,
    thermodynamics_from_log_partition,
)

__all__ = [
    "ALGORITHMS",
    "ENGINES",
    "MAX_ENUMERATION_SPINS",
    "CompleteGraph",
    "IsingModel",
    "MonteCarloSamples",
    "ResourceLimitError",
    "SeriesEstimate",
    "SquareLattice",
    "Thermodynamics",
    "ThermodynamicsMethod",
    "VectorSpinModel",
    "all_states",
    "autocorrelation_function",
    "autocorrelation_times",
    "available_methods",
    "bessel_ratio",
    "bessel_ratio_derivative",
    "bessel_response",
    "blocking_standard_error",
    "chain",
    "curie_weiss",
    "dynamical_mean_field",
    "enumeration_log_partition",
    "estimate_mean",
    "hopfield_couplings",
    "integrated_autocorrelation_time",
    "ising_response",
    "kinetic_ising_step",
    "kinetic_vector_step",
    "large_d_response",
    "log_bessel_iv",
    "log_bessel_iv_normalized",
    "mean_field_thermodynamics",
    "register_method",
    "saddle_log_partition",
    "saddle_magnetization",
    "saddle_response",
    "saddle_thermodynamics",
    "sample",
    "sherrington_kirkpatrick",
    "solve_saddle",
    "square_lattice",
    "stationary_dynamical_mean_field",
    "thermodynamics",
    "thermodynamics_from_log_partition",
    "transfer_matrix_log_partition",
    "transformer_radius",
    "vector_covariance",
    "von_mises_fisher",
]

# exact reference values (Onsager 1944, Kaufman 1949; the Curie–Weiss binomial sums)
__all__ += ["ONSAGER_BETA_C", "curie_weiss_binomial", "onsager_log_partition_per_spin"]
