r"""Exact thermodynamics: enumeration, transfer matrices, and free vector spins.

Three independent exact routes, registered together as method ``"exact"``:

* **Enumeration** of all :math:`2^N` Ising states (:mod:`spinformer.physics.enumeration`),
  streamed in chunks so memory stays bounded (N ≤ 24 here). Expectation values are accumulated directly -- ⟨E⟩, Var(E), ⟨σ⟩, Cov(σ) -- with
  a numerically stable pairwise (Chan) merge of chunk moments, so heat capacity and
  susceptibility need no cancelling differences.
* **Transfer matrix** (:mod:`spinformer.physics.transfer`) for chains and L×W strips/tori: Z = tr Π_r M_r over row-configuration
  matrices of size 2^W. U and C are carried through the products as energy moments (product
  rule), m and χ come from forward/backward messages; nothing is differentiated, so this route
  is the independent check on enumeration (and on the autodiff of
  :func:`transfer_matrix_log_partition`, which stays differentiable).
* **Free vector spins** (J = 0): each site is a von Mises–Fisher distribution on the sphere of
  radius R; ln Z, m and χ are Bessel-function closed forms (:mod:`spinformer.physics.vmf`).

**Extreme β.** Every Ising route measures energies from a reference E_ref at (or next to) the
ground state and never forms βE: weights are e^{−β(E − E_ref)} ≤ 1, ln Z = ln Z_ref − βE_ref,
U = E_ref + ⟨E − E_ref⟩ and S = β⟨E − E_ref⟩ + ln Z_ref. The textbook S = βU + ln Z subtracts two
numbers of size β|E₀| (3·10⁹ for a 4×4 torus at β = 10⁸) and returned S = 6.79 there; now S, C
and U hold 1e-9 relative accuracy from β = 1e-6 to 1e8 and reach S → ln g₀, C → 0, U → E₀.
Transfer matrices use the Viterbi gauge (min-plus potentials, Viterbi 1967) so that every step's
weights are ≤ 1 with a zero-excess path to each state; frustrated periodic rows whose ground
cycles cost more than ~500/β over the best open path are refused by name (the auto route then
enumerates when N ≤ 24).

**Sizes.** Each entry estimates its memory and work before starting
(:mod:`spinformer.physics._limits`) and raises ``ResourceLimitError`` naming the limit and an
alternative; long work shows a progress bar.

Interacting vector models have no exact route here: the error points to the approximate methods.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spinformer.physics.enumeration import (
    MAX_ENUMERATION_SPINS,
    all_states,
    enumeration_log_partition,
    enumeration_moments,
)
from spinformer.physics.models import IsingModel, SquareLattice, VectorSpinModel
from spinformer.physics.special import vmf_moments
from spinformer.physics.thermo import Thermodynamics, register_method
from spinformer.physics.transfer import (
    MAX_TRANSFER_WIDTH,
    _TransferUnderflowError,
    transfer_matrix_log_partition,
    transfer_moments,
)
from spinformer.physics.vmf import bessel_order

__all__ = [
    "MAX_ENUMERATION_SPINS",
    "MAX_TRANSFER_WIDTH",
    "all_states",
    "enumeration_log_partition",
    "exact_ising",
    "exact_vector",
    "transfer_matrix_log_partition",
]


def _from_reference(
    reference: Tensor,
    log_z_ref: Tensor,
    mean_excess: Tensor,
    var_e: Tensor,
    beta: Tensor,
    magnetization: Tensor,
    susceptibility: Tensor | None,
    route: str,
) -> Thermodynamics:
    r"""Exact thermodynamics from energies measured from a reference E_ref near the ground state.

    With :math:`\ln Z_\text{ref} = \ln \sum e^{-\beta(E - E_\text{ref})}` and the excess
    :math:`\langle \Delta E\rangle`: :math:`\ln Z = \ln Z_\text{ref} - \beta E_\text{ref}`,
    :math:`U = E_\text{ref} + \langle\Delta E\rangle`,
    :math:`S = \beta\langle\Delta E\rangle + \ln Z_\text{ref}` (no two terms of size
    :math:`\beta|E_0|` cancel, so S keeps its digits at any β) and
    :math:`C = \beta^2 \mathrm{Var}(E)`.
    """
    return Thermodynamics.from_log_partition(
        log_partition=log_z_ref - beta * reference,
        energy=reference + mean_excess,
        entropy=beta * mean_excess + log_z_ref,
        heat_capacity=beta**2 * var_e,
        magnetization=magnetization,
        susceptibility=susceptibility,
        beta=beta,
        method="exact",
        extras={"route": route},
    )


def _enumerate(
    model: IsingModel, chunk_size: int, susceptibility: bool, progress: bool | None
) -> Thermodynamics:
    moments = enumeration_moments(model, chunk_size, susceptibility, progress)
    return _from_reference(*moments, "enumerate")


def _transfer(model: IsingModel, susceptibility: bool, progress: bool | None) -> Thermodynamics:
    return _from_reference(*transfer_moments(model, susceptibility, progress), "transfer")


@register_method("exact", IsingModel)
def exact_ising(
    model: IsingModel,
    route: str = "auto",
    chunk_size: int = 1 << 20,
    susceptibility: bool = True,
    progress: bool | None = None,
) -> Thermodynamics:
    """Exact Ising thermodynamics.

    Args:
        route: ``"enumerate"`` (any couplings, N ≤ 24), ``"transfer"`` (lattice models), or
            ``"auto"`` (transfer for lattices whose narrow side fits, else enumeration).
        chunk_size: states per enumeration chunk (bounds memory).
        susceptibility: also compute χ.
        progress: show a progress bar (``None``: only when the estimated work is long).

    Both routes estimate their memory and work first and refuse at once
    (:class:`~spinformer.physics._limits.ResourceLimitError`) when over the limits.
    """
    if route not in ("auto", "enumerate", "transfer"):
        raise ValueError(f"route must be 'auto', 'enumerate' or 'transfer', got {route!r}")
    if route == "auto":
        lattice = model.lattice
        route = (
            "transfer"
            if isinstance(lattice, SquareLattice) and min(lattice.shape) <= MAX_TRANSFER_WIDTH
            else "enumerate"
        )
        if route == "transfer" and model.num_spins <= MAX_ENUMERATION_SPINS:
            try:
                return _transfer(model, susceptibility, progress)
            except _TransferUnderflowError:
                route = "enumerate"  # frustrated ring at huge beta: enumeration is exact
    if route == "enumerate":
        return _enumerate(model, chunk_size, susceptibility, progress)
    return _transfer(model, susceptibility, progress)


@register_method("exact", VectorSpinModel)
def exact_vector(model: VectorSpinModel, susceptibility: bool = True) -> Thermodynamics:
    """Exact thermodynamics of non-interacting vector spins (J = 0).

    Each site is von Mises–Fisher with κ_i = βR|h_i| and ν = D/2 − 1. With the uniform
    probability measure on the sphere (Z = 1 at h = 0):
    ln Z_i = ln[Γ(ν+1)(2/κ)^ν I_ν(κ)], m_i = R A(κ) ĥ_i with A = I_{ν+1}/I_ν,
    Var(ĥ·σ) = R²(1 − A² − (D−1)A/κ), χ_i = βR²[A' ĥĥᵀ + (A/κ)(1 − ĥĥᵀ)].
    Entropies are relative to the uniform measure (S ≤ 0).
    """
    if (
        bool((model.coupling_matrix != 0).any())
        if model.lattice is None
        else bool((model.bond != 0).any())
    ):
        raise ValueError(
            "exact thermodynamics of interacting vector spins is not available: couplings must be "
            "zero for method='exact'; use method='mean_field', 'tap', 'saddle' or 'monte_carlo'"
        )
    dim, radius = model.dim, model.radius
    nu = bessel_order(dim)
    field = model.expanded_field()
    beta = model.expanded_beta()
    norm = field.norm(dim=-1)  # (..., N)
    kappa = beta[..., None] * radius * norm
    log_single, ratio_over_kappa, slope, _ = vmf_moments(nu, kappa * kappa)
    log_z = log_single.sum(-1)
    ratio = kappa * ratio_over_kappa
    direction = field / torch.where(norm > 0, norm, torch.ones_like(norm))[..., None]
    magnetization = radius * ratio[..., None] * direction
    energy = -(field * magnetization).sum((-1, -2))
    # slope = A'(κ) = Var(ĥ·σ)/R², without the cancellation of 1 − A² − (D−1)A/κ
    heat_capacity = beta**2 * (radius**2 * norm**2 * slope).sum(-1)
    chi = None
    if susceptibility:
        eye = torch.eye(dim, dtype=field.dtype, device=field.device)
        outer = direction[..., :, None] * direction[..., None, :]
        # At h = 0 the direction is zero and A' = A/κ = 1/D, so the block is isotropic.
        block = slope[..., None, None] * outer + ratio_over_kappa[..., None, None] * (eye - outer)
        block = beta[..., None, None, None] * radius**2 * block  # (..., N, D, D)
        n = model.num_spins
        site_eye = torch.eye(n, dtype=field.dtype, device=field.device)
        chi = torch.einsum("...nab,nm->...namb", block, site_eye)
    return Thermodynamics.from_log_partition(
        log_partition=log_z,
        energy=energy,
        heat_capacity=heat_capacity,
        magnetization=magnetization,
        susceptibility=chi,
        beta=beta,
        method="exact",
        extras={"route": "von_mises_fisher"},
    )
