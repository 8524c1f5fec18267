r"""Exact Ising thermodynamics by enumerating all 2^N states (N ≤ 24), streamed in chunks.

Expectation values are accumulated directly -- ⟨E⟩, Var(E), ⟨σ⟩, Cov(σ) -- with a numerically
stable pairwise merge of chunk moments (Chan, Golub & LeVeque, "Updating formulae and a pairwise
algorithm for computing sample variances", 1979), so heat capacity and susceptibility need no
cancelling differences. Every energy is measured from a reference E_ref near the minimum, so the
exponent never forms the large product βE (see :mod:`spinformer.physics.exact` for how ln Z, U,
S, C follow from the referenced moments). Memory stays bounded by ``chunk_size``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from spinformer.physics._limits import check_memory, show_progress
from spinformer.physics.models import IsingModel

__all__ = [
    "MAX_ENUMERATION_SPINS",
    "ReferencedMoments",
    "all_states",
    "enumeration_log_partition",
    "enumeration_moments",
]

MAX_ENUMERATION_SPINS = 24

ReferencedMoments = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]
"""(E_ref, ln Z_ref, ⟨E − E_ref⟩, Var E, β, ⟨σ⟩, χ or None): what an exact route measures."""


def all_states(
    n: int,
    start: int = 0,
    stop: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Ising states with indices [start, stop) of all 2^n, as ±1 rows (bit k of the index → σ_k).

    Refuses (:class:`~spinformer.physics._limits.ResourceLimitError`) before allocating when the
    rows would not fit the memory limit; take them in slices with ``start``/``stop`` instead.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    total = 2**n
    stop = total if stop is None else stop
    for name, value in (("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= total:
            raise ValueError(f"{name} must be an integer in [0, 2**n = {total}], got {value!r}")
    if stop < start:
        raise ValueError(f"stop must be >= start, got start={start}, stop={stop}")
    count = stop - start
    element = torch.empty((), dtype=dtype).element_size()
    check_memory(
        count * (8 + n * (16 + element)),
        f"all_states({n}) with {count} rows",
        "start/stop to take the states in slices, or exact(..., chunk_size=...) which streams them",
    )
    index = torch.arange(start, stop, device=device)
    bits = (index[:, None] >> torch.arange(n, device=device)) & 1
    return (2 * bits - 1).to(dtype)


def _check_enumerable(model: IsingModel) -> None:
    if model.num_spins > MAX_ENUMERATION_SPINS:
        from spinformer.physics.transfer import MAX_TRANSFER_WIDTH  # (transfer imports this module)

        raise ValueError(
            f"exact enumeration needs N <= {MAX_ENUMERATION_SPINS} spins, got N = {model.num_spins}; "
            f"use a lattice transfer matrix (narrow side <= {MAX_TRANSFER_WIDTH}), "
            "or method='monte_carlo' / 'mean_field'"
        )


_INNER_SPINS = 12


def _outer_per_chunk(model: IsingModel, chunk_size: int) -> int:
    """Outer states per chunk so that a chunk holds about ``chunk_size`` entries (states × batch)."""
    inner = 2 ** min(model.num_spins, _INNER_SPINS)
    return max(1, chunk_size // (inner * max(1, model.batch_shape.numel())))


def _enumeration_cost(model: IsingModel, chunk_size: int, susceptibility: bool) -> float:
    """Estimated bytes of the streamed enumeration (checked against the limit); returns its
    floating-point operations."""
    n, batch = model.num_spins, max(1, model.batch_shape.numel())
    inner = 2 ** min(n, _INNER_SPINS)
    entries = _outer_per_chunk(model, chunk_size) * inner * batch
    moments = batch * (n * n * (6 if susceptibility else 0) + 4 * n)
    check_memory(
        8 * (10 * entries + moments + batch * inner * n),
        f"exact enumeration of {n} spins over a batch of {batch}",
        "a smaller chunk_size, fewer batch entries per call, or susceptibility=False",
    )
    return float(2**n) * batch * (min(n, _INNER_SPINS) + 12 + (n if susceptibility else 0))


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
    """Differentiable ln Z by enumeration (autograd flows to couplings, field and beta).

    Each chunk's energies are measured from the chunk's lowest (a constant for autograd), so
    the exponent β(E − E_min) never forms the large product βE.
    """
    _check_enumerable(model)
    _enumeration_cost(model, chunk_size, susceptibility=False)
    beta = model.beta[..., None, None]
    parts = []
    for _, _, energies in _split_chunks(model, chunk_size):
        reference = energies.detach().flatten(-2).amin(-1)
        shifted = energies - reference[..., None, None]
        parts.append(
            torch.logsumexp((-beta * shifted).flatten(-2), dim=-1) - model.beta * reference
        )
    return torch.logsumexp(torch.stack(parts, dim=-1), dim=-1).expand(model.batch_shape)


def enumeration_moments(
    model: IsingModel,
    chunk_size: int = 1 << 20,
    susceptibility: bool = True,
    progress: bool | None = None,
) -> ReferencedMoments:
    """Streamed expectation values, every energy measured from a reference near the minimum.

    Per chunk, E_ref is the chunk's lowest energy and the weights are e^{−β(E − E_ref)} ≤ 1;
    the chunk keeps (E_ref, ln Σ e^{−β(E − E_ref)}, ⟨E − E_ref⟩, Var E, ⟨σ⟩, Cov σ), merged
    pairwise (Chan et al. 1979) after moving both to the lower reference. Then
    ln Z = ln Z_ref − β E_ref, U = E_ref + ⟨E − E_ref⟩ and S = β⟨E − E_ref⟩ + ln Z_ref: no
    term is ~β|E|, so S and C keep their digits up to β ~ 1e8 and beyond (S → ln g₀, C → 0).
    Covariances are accumulated about each chunk's mean, so χ has no cancelling difference.
    """
    _check_enumerable(model)
    operations = _enumeration_cost(model, chunk_size, susceptibility)
    beta = model.expanded_beta()
    state: tuple[Tensor, ...] | None = None
    chunks = _split_chunks(model, chunk_size)
    if show_progress(progress, operations):
        from rich.progress import track

        n_outer = model.num_spins - min(model.num_spins, _INNER_SPINS)
        total = -(-(2**n_outer) // _outer_per_chunk(model, chunk_size))
        chunks = track(chunks, total=total, description=f"enumerating 2^{model.num_spins} states")
    for outer, inner, energies in chunks:
        c_ref = energies.flatten(-2).amin(-1)
        excess = energies - c_ref[..., None, None]
        log_w = -beta[..., None, None] * excess
        c_log_z = torch.logsumexp(log_w.flatten(-2), dim=-1)
        p = torch.exp(log_w - c_log_z[..., None, None])
        c_mean_e = (p * excess).sum((-1, -2))
        c_var_e = (p * (excess - c_mean_e[..., None, None]) ** 2).sum((-1, -2))
        p_outer, p_inner = p.sum(-1), p.sum(-2)
        m_inner, m_outer = p_inner @ inner, p_outer @ outer
        c_mean_s = torch.cat([m_inner, m_outer], dim=-1)
        c_cov_s = None
        if susceptibility:  # about the chunk's mean: no cancelling E[σσ] − E[σ]E[σ]
            d_inner = inner - m_inner[..., None, :]
            d_outer = outer - m_outer[..., None, :]
            bb = torch.einsum("...s,...sn,...sm->...nm", p_inner, d_inner, d_inner)
            aa = torch.einsum("...c,...cn,...cm->...nm", p_outer, d_outer, d_outer)
            ab = torch.einsum("...cn,...cs,...sm->...nm", d_outer, p, d_inner)
            c_cov_s = torch.cat(
                [torch.cat([bb, ab.transpose(-1, -2)], -1), torch.cat([ab, aa], -1)], -2
            )
        chunk = (c_ref, c_log_z, c_mean_e, c_var_e, c_mean_s, c_cov_s)
        state = chunk if state is None else _merge_chunks(state, chunk, beta, susceptibility)
    assert state is not None
    reference, log_z_ref, mean_excess, var_e, mean_s, cov_s = state
    chi = beta[..., None, None] * cov_s if susceptibility else None
    return reference, log_z_ref, mean_excess, var_e, beta, mean_s, chi


def _merge_chunks(
    a: tuple[Tensor, ...], b: tuple[Tensor, ...], beta: Tensor, susceptibility: bool
) -> tuple[Tensor, ...]:
    """Chan's parallel merge of two groups' moments, both moved to the lower energy reference."""
    ref_a, log_a, mean_a, var_a, s_a, cov_a = a
    ref_b, log_b, mean_b, var_b, s_b, cov_b = b
    reference = torch.minimum(ref_a, ref_b)
    up_a, up_b = ref_a - reference, ref_b - reference
    log_a, log_b = log_a - beta * up_a, log_b - beta * up_b
    log_z = torch.logaddexp(log_a, log_b)
    w_a, w_b = torch.exp(log_a - log_z), torch.exp(log_b - log_z)
    mean_a, mean_b = mean_a + up_a, mean_b + up_b
    d_e = mean_b - mean_a
    var_e = w_a * var_a + w_b * var_b + w_a * w_b * d_e**2
    mean_e = w_a * mean_a + w_b * mean_b
    d_s = s_b - s_a
    cov = None
    if susceptibility:
        cov = (
            w_a[..., None, None] * cov_a
            + w_b[..., None, None] * cov_b
            + (w_a * w_b)[..., None, None] * d_s[..., :, None] * d_s[..., None, :]
        )
    mean_s = w_a[..., None] * s_a + w_b[..., None] * s_b
    return reference, log_z, mean_e, var_e, mean_s, cov
