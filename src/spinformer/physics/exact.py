r"""Exact thermodynamics: enumeration, transfer matrices, and free vector spins.

Three independent exact routes, registered together as method ``"exact"``:

* **Enumeration** of all :math:`2^N` Ising states, streamed in chunks so memory stays bounded
  (N ≤ 24 here). Expectation values are accumulated directly -- ⟨E⟩, Var(E), ⟨σ⟩, Cov(σ) -- with
  a numerically stable pairwise (Chan) merge of chunk moments, so heat capacity and
  susceptibility need no cancelling differences.
* **Transfer matrix** for chains and L×W strips/tori: ln Z = ln tr Π_r D_r K (periodic) with
  row-configuration matrices of size 2^W, products rescaled as they go so that any β is finite.
  This route knows only ln Z; every observable comes from autodiff
  (:func:`~spinformer.physics.thermo.thermodynamics_from_log_partition`), which makes it the
  independent check on enumeration.
* **Free vector spins** (J = 0): each site is a von Mises–Fisher distribution on the sphere of
  radius R; ln Z, m and χ are Bessel-function closed forms (:mod:`spinformer.physics.special`).

Interacting vector models have no exact route here: the error points to the approximate methods.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from spinformer.physics.models import IsingModel, SquareLattice, VectorSpinModel
from spinformer.physics.special import vmf_moments
from spinformer.physics.thermo import (
    Thermodynamics,
    register_method,
    thermodynamics_from_log_partition,
)

__all__ = [
    "MAX_ENUMERATION_SPINS",
    "MAX_TRANSFER_WIDTH",
    "all_states",
    "enumeration_log_partition",
    "transfer_matrix_log_partition",
]

MAX_ENUMERATION_SPINS = 24
MAX_TRANSFER_WIDTH = 12


def all_states(
    n: int,
    start: int = 0,
    stop: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Ising states with indices [start, stop) of all 2^n, as ±1 rows (bit k of the index → σ_k)."""
    stop = 2**n if stop is None else stop
    index = torch.arange(start, stop, device=device)
    bits = (index[:, None] >> torch.arange(n, device=device)) & 1
    return (2 * bits - 1).to(dtype)


def _check_enumerable(model: IsingModel) -> None:
    if model.num_spins > MAX_ENUMERATION_SPINS:
        raise ValueError(
            f"exact enumeration needs N <= {MAX_ENUMERATION_SPINS} spins, got N = {model.num_spins}; "
            "use a lattice transfer matrix, or method='monte_carlo' / 'mean_field'"
        )


_INNER_SPINS = 12


def _outer_per_chunk(model: IsingModel, chunk_size: int) -> int:
    """Outer states per chunk so that a chunk holds about ``chunk_size`` entries (states × batch)."""
    inner = 2 ** min(model.num_spins, _INNER_SPINS)
    return max(1, chunk_size // (inner * max(1, model.batch_shape.numel())))


def _split_chunks(model: IsingModel, chunk_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Energies of all states, chunk by chunk, as (outer states, inner states, energies).

    Meet in the middle: the spins split into an inner block b (the first ≤ 12) and an outer
    block a, E(a, b) = E_a(a) + E_b(b) − aᵀ J_ab b. All 2^|b| inner energies are computed once;
    a chunk of outer states then costs one (C_a × |b|) @ (|b| × 2^|b|) product, so each state
    costs |b| multiply-adds rather than N². Energies have shape (..., C_a, 2^|b|); ``chunk_size``
    bounds the number of entries (states × batch) per chunk, hence the memory.
    """
    n = model.num_spins
    n_inner = min(n, _INNER_SPINS)
    couplings, field = model.coupling_matrix, model.field
    inner = all_states(n_inner, dtype=model.dtype, device=model.device)
    j_bb, j_ab, j_aa = (
        couplings[..., :n_inner, :n_inner],
        couplings[..., n_inner:, :n_inner],
        couplings[..., n_inner:, n_inner:],
    )
    e_inner = (
        -0.5 * torch.einsum("sn,...nm,sm->...s", inner, j_bb, inner)
        - field[..., :n_inner] @ inner.T
    )
    per_chunk = _outer_per_chunk(model, chunk_size)
    for start in range(0, 2 ** (n - n_inner), per_chunk):
        outer = all_states(
            n - n_inner,
            start,
            min(start + per_chunk, 2 ** (n - n_inner)),
            model.dtype,
            model.device,
        )
        e_outer = (
            -0.5 * torch.einsum("cn,...nm,cm->...c", outer, j_aa, outer)
            - field[..., n_inner:] @ outer.T
        )
        cross = torch.einsum("cn,...nm->...cm", outer, j_ab) @ inner.T
        yield outer, inner, e_outer[..., :, None] + e_inner[..., None, :] - cross


def enumeration_log_partition(model: IsingModel, chunk_size: int = 1 << 20) -> Tensor:
    """Differentiable ln Z by enumeration (autograd flows to couplings, field and beta)."""
    _check_enumerable(model)
    beta = model.beta[..., None, None]
    parts = [
        torch.logsumexp((-beta * energies).flatten(-2), dim=-1)
        for _, _, energies in _split_chunks(model, chunk_size)
    ]
    return torch.logsumexp(torch.stack(parts, dim=-1), dim=-1).expand(model.batch_shape)


def _enumerate(
    model: IsingModel,
    chunk_size: int = 1 << 20,
    susceptibility: bool = True,
    progress: bool = False,
) -> Thermodynamics:
    _check_enumerable(model)
    beta = model.expanded_beta()
    log_z = mean_e = var_e = mean_s = cov_s = None
    chunks = _split_chunks(model, chunk_size)
    if progress:
        from rich.progress import track

        n_outer = model.num_spins - min(model.num_spins, _INNER_SPINS)
        total = -(-(2**n_outer) // _outer_per_chunk(model, chunk_size))
        chunks = track(chunks, total=total, description=f"enumerating 2^{model.num_spins} states")
    for outer, inner, energies in chunks:
        log_w = -beta[..., None, None] * energies
        c_log_z = torch.logsumexp(log_w.flatten(-2), dim=-1)
        p = torch.exp(log_w - c_log_z[..., None, None])
        c_mean_e = (p * energies).sum((-1, -2))
        c_var_e = (p * (energies - c_mean_e[..., None, None]) ** 2).sum((-1, -2))
        p_outer, p_inner = p.sum(-1), p.sum(-2)
        c_mean_s = torch.cat([p_inner @ inner, p_outer @ outer], dim=-1)
        c_cov_s = None
        if susceptibility:
            bb = torch.einsum("...s,sn,sm->...nm", p_inner, inner, inner)
            aa = torch.einsum("...c,cn,cm->...nm", p_outer, outer, outer)
            ab = torch.einsum("cn,...cs,sm->...nm", outer, p, inner)
            second = torch.cat(
                [torch.cat([bb, ab.transpose(-1, -2)], -1), torch.cat([ab, aa], -1)], -2
            )
            c_cov_s = second - c_mean_s[..., :, None] * c_mean_s[..., None, :]
        if log_z is None:
            log_z, mean_e, var_e, mean_s, cov_s = c_log_z, c_mean_e, c_var_e, c_mean_s, c_cov_s
            continue
        # Chan's parallel merge of two weighted groups with weights w_a + w_b = 1.
        new_log_z = torch.logaddexp(log_z, c_log_z)
        w_a, w_b = torch.exp(log_z - new_log_z), torch.exp(c_log_z - new_log_z)
        d_e = c_mean_e - mean_e
        var_e = w_a * var_e + w_b * c_var_e + w_a * w_b * d_e**2
        mean_e = w_a * mean_e + w_b * c_mean_e
        d_s = c_mean_s - mean_s
        if susceptibility:
            cov_s = (
                w_a[..., None, None] * cov_s
                + w_b[..., None, None] * c_cov_s
                + (w_a * w_b)[..., None, None] * d_s[..., :, None] * d_s[..., None, :]
            )
        mean_s = w_a[..., None] * mean_s + w_b[..., None] * c_mean_s
        log_z = new_log_z
    return Thermodynamics.from_log_partition(
        log_partition=log_z,
        energy=mean_e,
        heat_capacity=beta**2 * var_e,
        magnetization=mean_s,
        susceptibility=beta[..., None, None] * cov_s if susceptibility else None,
        beta=beta,
        method="exact",
        extras={"route": "enumerate"},
    )


def _row_states(width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return all_states(width, dtype=dtype, device=device)


def transfer_matrix_log_partition(
    model: IsingModel, field: Tensor | None = None, beta: Tensor | None = None
) -> Tensor:
    """ln Z of a lattice Ising model by row-to-row transfer matrices (differentiable).

    The narrower lattice dimension W is the row; cost is L matrix products of size 2^W.
    ``field`` (..., N) and ``beta`` override the model's (used by the autodiff route).
    """
    lattice = model.lattice
    if not isinstance(lattice, SquareLattice):
        raise ValueError(
            "the transfer-matrix route needs a lattice model (square_lattice or chain)"
        )
    field = model.field if field is None else field
    beta = model.beta if beta is None else beta
    rows, width = lattice.shape
    grid = field.reshape(*field.shape[:-1], rows, width)
    if width > rows:  # transfer along the longer side
        rows, width = width, rows
        grid = grid.transpose(-1, -2)
    if width > MAX_TRANSFER_WIDTH:
        raise ValueError(
            f"transfer matrices need the narrower lattice side <= {MAX_TRANSFER_WIDTH}, got {width}"
        )
    states = _row_states(width, field.dtype, field.device)  # (S, W)
    bond = model.bond
    # intra-row bond sum per row state (roll convention; none for width 1)
    if width > 1:
        partner = torch.roll(states, -1, dims=-1) if lattice.periodic else states[:, 1:]
        intra = (states[:, : partner.shape[-1]] * partner).sum(-1)
    else:
        intra = torch.zeros(states.shape[0], dtype=field.dtype, device=field.device)
    beta_b = beta[..., None, None]
    log_d = beta_b * (bond[..., None, None] * intra + grid @ states.T)  # (..., L, S)
    d_max = log_d.amax(-1, keepdim=True).detach()
    diag = torch.exp(log_d - d_max)
    log_scale = d_max.squeeze(-1).sum(-1)
    if rows == 1:
        return torch.log(diag[..., 0, :].sum(-1)) + log_scale
    log_k = beta_b * bond[..., None, None] * (states @ states.T)  # (..., S, S)
    k_max = log_k.amax((-1, -2), keepdim=True).detach()
    kernel = torch.exp(log_k - k_max)
    n_kernels = rows if lattice.periodic else rows - 1
    log_scale = log_scale + n_kernels * k_max.squeeze(-1).squeeze(-1)
    if lattice.periodic:
        product = diag[..., 0, :, None] * kernel
        for r in range(1, rows):
            product = product @ (diag[..., r, :, None] * kernel)
            scale = product.abs().amax((-1, -2), keepdim=True).detach()
            product = product / scale
            log_scale = log_scale + torch.log(scale.squeeze(-1).squeeze(-1))
        trace = product.diagonal(dim1=-2, dim2=-1).sum(-1)
        return torch.log(trace) + log_scale
    vector = diag[..., 0, :]
    for r in range(1, rows):
        vector = (vector[..., None, :] @ kernel).squeeze(-2) * diag[..., r, :]
        scale = vector.amax(-1, keepdim=True).detach()
        vector = vector / scale
        log_scale = log_scale + torch.log(scale.squeeze(-1))
    return torch.log(vector.sum(-1)) + log_scale


@register_method("exact", IsingModel)
def exact_ising(
    model: IsingModel,
    route: str = "auto",
    chunk_size: int = 1 << 20,
    susceptibility: bool = True,
    progress: bool = False,
) -> Thermodynamics:
    """Exact Ising thermodynamics.

    Args:
        route: ``"enumerate"`` (any couplings, N ≤ 24), ``"transfer"`` (lattice models), or
            ``"auto"`` (transfer for lattices whose narrow side fits, else enumeration).
        chunk_size: states per enumeration chunk (bounds memory).
        susceptibility: also compute χ (N backward passes on the transfer route).
        progress: show a progress bar while enumerating.
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
    if route == "enumerate":
        return _enumerate(model, chunk_size, susceptibility, progress)

    def log_partition(field: Tensor, beta: Tensor) -> Tensor:
        return transfer_matrix_log_partition(model, field, beta)

    return thermodynamics_from_log_partition(
        log_partition, model, "exact", susceptibility=susceptibility, extras={"route": "transfer"}
    )


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
    nu = dim / 2 - 1
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
