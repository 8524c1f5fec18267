"""Spin-model physics: models, exact and approximate thermodynamics, observables.

This layer knows nothing about transformers. A model is data (:class:`IsingModel`,
:class:`VectorSpinModel`); :func:`thermodynamics` turns it into a :class:`Thermodynamics` result
with the method registered under a name (``available_methods()`` lists them).
"""

from spinformer.physics import exact as _exact  # noqa: F401  (registers "exact")
from spinformer.physics import meanfield as _meanfield  # noqa: F401  (registers "mean_field", "tap")
from spinformer.physics import saddle as _saddle  # noqa: F401  (registers "saddle")
from spinformer.physics.constructors import (
    chain,
    curie_weiss,
    hopfield_couplings,
    sherrington_kirkpatrick,
    square_lattice,
)
from spinformer.physics.exact import (
    MAX_ENUMERATION_SPINS,
    all_states,
    enumeration_log_partition,
    transfer_matrix_log_partition,
)
from spinformer.physics.models import IsingModel, SquareLattice, VectorSpinModel
from spinformer.physics.special import bessel_ratio, log_bessel_iv, log_bessel_iv_normalized
from spinformer.physics.thermo import (
    Thermodynamics,
    ThermodynamicsMethod,
    available_methods,
    register_method,
    thermodynamics,
    thermodynamics_from_log_partition,
)

__all__ = [
    "MAX_ENUMERATION_SPINS",
    "IsingModel",
    "SquareLattice",
    "Thermodynamics",
    "ThermodynamicsMethod",
    "VectorSpinModel",
    "all_states",
    "available_methods",
    "bessel_ratio",
    "chain",
    "curie_weiss",
    "enumeration_log_partition",
    "hopfield_couplings",
    "log_bessel_iv",
    "log_bessel_iv_normalized",
    "register_method",
    "sherrington_kirkpatrick",
    "square_lattice",
    "thermodynamics",
    "thermodynamics_from_log_partition",
    "transfer_matrix_log_partition",
]
