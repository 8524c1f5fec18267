"""Attention as a spin system: couplings, Boltzmann ensembles, mean-field self-consistency.

The transformer–spin-system dictionary (Bal, "Transformers are secretly collectives of spin
systems", 2021) made executable: :func:`couplings` turns attention weights into
per-head couplings W_QK = W_Kᵀ W_Q (kept factored), fields h = W_Kᵀ b_Q and β;
:func:`ensemble` turns queries and keys into the Boltzmann ensemble of every attention row
(ln Z, F, U, S, C, magnetizations); :func:`self_consistent`, :func:`fixed_points`,
:func:`critical_beta` and :func:`phase_diagram` solve and classify the mean-field
self-consistency equation m = Σ_j x_j softmax_j(β x_jᵀ W_QK m), whose iteration is modern
Hopfield retrieval (Ramsauer et al., "Hopfield networks is all you need", 2020).
"""

from spinformer.attention.blocked import blocked_boltzmann_attention
from spinformer.attention.couplings import Couplings, couplings
from spinformer.attention.critical import (
    Continuation,
    CriticalBeta,
    PhaseDiagram,
    critical_beta,
    critical_beta_qk,
    phase_diagram,
)
from spinformer.attention.ensemble import (
    AttentionEnsemble,
    EnsembleThermodynamics,
    boltzmann_rows,
    causal_mask,
    ensemble,
    mask_bias,
    padding_mask,
)
from spinformer.attention.mean_field import (
    FixedPoints,
    SelfConsistentResult,
    fixed_points,
    mean_field_jacobian,
    mean_field_map,
    self_consistent,
    spectral_radius,
)

__all__ = [
    "AttentionEnsemble",
    "Continuation",
    "Couplings",
    "CriticalBeta",
    "EnsembleThermodynamics",
    "FixedPoints",
    "PhaseDiagram",
    "SelfConsistentResult",
    "blocked_boltzmann_attention",
    "boltzmann_rows",
    "causal_mask",
    "couplings",
    "critical_beta",
    "critical_beta_qk",
    "ensemble",
    "fixed_points",
    "mask_bias",
    "mean_field_jacobian",
    "mean_field_map",
    "padding_mask",
    "phase_diagram",
    "self_consistent",
    "spectral_radius",
]
