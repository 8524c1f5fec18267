r"""Exact thermodynamics: enumeration, transfer matrices, and free vector spins.

Three independent exact routes, registered together as method ``"exact"``:

* **Enumeration** of all :math:`2^N` Ising states, streamed in chunks so memory stays bounded
  (N ≤ 24 here). Expectation values are accumulated directly -- ⟨E⟩, Var(E), ⟨σ⟩, Cov(σ) -- with
  a numerically stable pairwise (Chan) merge of chunk moments, so heat capacity and
  susceptibility need no cancelling differences.
* **Transfer matrix** for chains and L×W strips/tori: Z = tr Π_r M_r over row-configuration
  matrices of size 2^W. U and C are carried through the products as energy moments (product
  rule), m and χ come from forward/backward messages; nothing is differentiated, so this route
  is the independent check on enumeration (and on the autodiff of
  :func:`transfer_matrix_log_partition`, which stays differentiable).
* **Free vector spins** (J = 0): each site is a von Mises–Fisher distribution on the sphere of
  radius R; ln Z, m and χ are Bessel-function closed forms (:mod:`spinformer.physics.special`).

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

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from spinformer.physics._limits import (
    check_memory,
    check_work,
    memory_limit_bytes,
    show_progress,
)
from spinformer.physics.models import IsingModel, SquareLattice, VectorSpinModel
from spinformer.physics.special import vmf_moments
from spinformer.physics.thermo import (
    Thermodynamics,
    register_method,
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


def _enumerate(
    model: IsingModel,
    chunk_size: int = 1 << 20,
    susceptibility: bool = True,
    progress: bool | None = None,
) -> Thermodynamics:
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
    return _from_reference(reference, log_z_ref, mean_excess, var_e, beta, mean_s, chi, "enumerate")


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


# -- transfer matrices ------------------------------------------------------------------------


_UNDERFLOW = 2.0**40  # a partition sum this close to the smallest normal number has lost digits


class _TransferUnderflowError(ValueError):
    """Frustrated periodic rows at a β where the ground cycles' weights underflow."""


def _row_states(width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return all_states(width, dtype=dtype, device=device)


def _transfer_energies(
    model: IsingModel, field: Tensor, bond: Tensor
) -> tuple[Tensor, Tensor, int, bool]:
    """Row energies e_r(s) (..., L, S) and inter-row energies k(s, s') (..., S, S).

    The narrower lattice side W is the row (S = 2^W row states); E = Σ_r e_r(s_r) plus
    Σ k(s_r, s_{r+1}) over the L (periodic) or L − 1 (open) pairs of neighbouring rows.
    Returns them with W and whether the rows close periodically.
    """
    lattice = model.lattice
    assert lattice is not None
    rows, width = lattice.shape
    grid = field.reshape(*field.shape[:-1], rows, width)
    if width > rows:  # transfer along the longer side
        rows, width = width, rows
        grid = grid.transpose(-1, -2)
    states = _row_states(width, field.dtype, field.device)  # (S, W)
    # intra-row bond sum per row state (roll convention; none for width 1)
    if width > 1:
        partner = torch.roll(states, -1, dims=-1) if lattice.periodic else states[:, 1:]
        intra = (states[:, : partner.shape[-1]] * partner).sum(-1)
    else:
        intra = torch.zeros(states.shape[0], dtype=field.dtype, device=field.device)
    row_energy = -(bond[..., None, None] * intra + grid @ states.T)
    bond_energy = -bond[..., None, None] * (states @ states.T)
    return row_energy, bond_energy, width, lattice.periodic


def _check_transfer_width(model: IsingModel) -> tuple[int, int]:
    lattice = model.lattice
    if not isinstance(lattice, SquareLattice):
        raise ValueError(
            "the transfer-matrix route needs a lattice model (square_lattice or chain)"
        )
    rows, width = max(lattice.shape), min(lattice.shape)
    if width > MAX_TRANSFER_WIDTH:
        raise ValueError(
            f"transfer matrices need the narrower lattice side <= {MAX_TRANSFER_WIDTH}, got "
            f"{width}; use method='monte_carlo' (or 'mean_field')"
        )
    return rows, width


def _transfer_cost(model: IsingModel, susceptibility: bool) -> float:
    """Check the transfer route's estimated memory and work; return its operations."""
    rows, width = _check_transfer_width(model)
    assert model.lattice is not None
    periodic = model.lattice.periodic and rows > 1
    batch, states = max(1, model.batch_shape.numel()), 2**width
    # live tensors: S x S step matrices, the carried products (matrices if periodic, row
    # vectors if open), the stored backward messages, and with χ the propagated insertions
    per_step = states * states if periodic else states
    memory = batch * (12 * states * states + 12 * per_step + (rows + 1) * per_step)
    step_ops = 2.0 * states * per_step * batch
    operations = 10 * rows * step_ops
    if susceptibility:  # χ itself, and at least one row of insertions (chunked by the limit)
        memory += batch * (rows * width) ** 2 + 4 * batch * width * per_step
        operations += (rows + 1) ** 2 * width * step_ops
    what = (
        f"the exact transfer route for a {model.lattice.shape[0]} x {model.lattice.shape[1]} "
        f"{'periodic' if model.lattice.periodic else 'open'} lattice (batch {batch}"
        f"{', with susceptibility' if susceptibility else ''})"
    )
    alternative = (
        "susceptibility=False, or " if susceptibility else ""
    ) + "method='monte_carlo', a narrower lattice or a smaller batch"
    check_memory(8 * memory, what, alternative)
    check_work(operations, what, alternative)
    return operations


def _ground_potentials(steps: Tensor, start: Tensor) -> list[Tensor]:
    """Min-plus (Viterbi) potentials ψ_r(s'): the lowest energy of a path reaching s' at r.

    ``steps`` (..., R, S, S) are the step energies ε_r(s, s'), ``start`` (..., S) is ψ_0. With
    these, x_r(s, s') = ψ_r(s) + ε_r(s, s') − ψ_{r+1}(s') ≥ 0, every reachable state has a
    path of zero excess, and the gauge-transformed weights e^{−β x} neither overflow nor
    underflow at any β (Viterbi 1967; the tropical limit of the transfer matrix).
    """
    potentials = [start]
    for r in range(steps.shape[-3]):
        potentials.append((potentials[-1][..., :, None] + steps[..., r, :, :]).amin(-2))
    return potentials


def _gauge(
    row_energy: Tensor, bond_energy: Tensor, periodic: bool
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Viterbi potentials ψ_0..ψ_T (constants), the end excess ψ_T − E_ref and E_ref = min ψ_T.

    Step t carries row t to row t + 1: ε_t(s, s') = e_t(s) + k(s, s') (periodic, T = L steps,
    free start ψ_0 = 0) or k(s, s') + e_{t+1}(s') (open, T = L − 1, ψ_0 = e_0).
    """
    with torch.no_grad():
        rows_e, bonds_e = row_energy.detach(), bond_energy.detach()
        if periodic:
            steps = rows_e[..., :, :, None] + bonds_e[..., None, :, :]
            start = torch.zeros_like(rows_e[..., 0, :])
        else:
            steps = bonds_e[..., None, :, :] + rows_e[..., 1:, None, :]
            start = rows_e[..., 0, :]
        potentials = _ground_potentials(steps, start)
        reference = potentials[-1].amin(-1)
        end_excess = potentials[-1] - reference[..., None]
    return potentials, end_excess, reference


def _step_excess(
    row_energy: Tensor, bond_energy: Tensor, potentials: list[Tensor], t: int, periodic: bool
) -> Tensor:
    """x_t(s, s') = ψ_t(s) + ε_t(s, s') − ψ_{t+1}(s') ≥ 0 (differentiable in the energies)."""
    if periodic:
        step = row_energy[..., t, :, None] + bond_energy
        before = potentials[t]
    else:
        step = bond_energy + row_energy[..., t + 1, None, :]
        # ψ_0 is a detached copy of the first row's energy: use the energy itself
        before = row_energy[..., 0, :] if t == 0 else potentials[t]
    return before[..., :, None] + step - potentials[t + 1][..., None, :]


def _gauged_transfer(
    row_energy: Tensor,
    bond_energy: Tensor,
    beta: Tensor,
    periodic: bool,
    moments: bool,
    progress: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    r"""ln Z_ref = ln Σ e^{−β(E − E_ref)}, the reference energy E_ref, and (``moments``)
    ⟨E − E_ref⟩ and Var E, by transfer matrices.

    In the Viterbi gauge (:func:`_ground_potentials`) each step's weights are M_t = e^{−β x_t}
    with x_t ≥ 0, and a path's excess over E_ref (the lowest open path: the ground energy
    itself unless periodic rows are frustrated) is the sum of its x_t plus the end term.
    Alongside P = Π M_t the products carry Σ_paths w·ΔE and Σ w·ΔE² by the product rule,
    (P, P₁, P₂)·(M, M₁, M₂) = (PM, P₁M + PM₁, P₂M + 2P₁M₁ + PM₂) with M₁ = M∘x, M₂ = M∘x²:
    every term is non-negative, so ⟨ΔE⟩ and ⟨ΔE²⟩ keep relative precision at any β. The
    potentials are constants for autograd, so ln Z stays differentiable in h, J and β.
    """
    potentials, end_excess, reference = _gauge(row_energy, bond_energy, periodic)
    rows = row_energy.shape[-2]
    count = rows if periodic else rows - 1
    order: Any = range(count)
    if progress:
        from rich.progress import track

        order = track(order, description=f"transfer matrices over {rows} rows")
    log_scale = torch.zeros_like(reference)
    carry: list[Tensor] = []
    for t in order:
        excess = _step_excess(row_energy, bond_energy, potentials, t, periodic)
        weight = torch.exp(-beta[..., None, None] * excess)
        factors = [weight]
        if moments:
            factors += [weight * excess, weight * excess * excess]
        if not carry:  # the first step: open chains sum over the start row
            carry = factors if periodic else [f.sum(-2) for f in factors]
        else:
            carry = _carry_step(carry, factors, periodic)
        scale = carry[0].detach().amax((-1, -2) if periodic else -1, keepdim=True)
        carry = [c / scale for c in carry]
        log_scale = log_scale + torch.log(scale.reshape(log_scale.shape))
    if count == 0:  # a single open row: only the end term, its energy attached
        end_excess = row_energy[..., 0, :] - reference[..., None]
    final = torch.exp(-beta[..., None] * end_excess)
    if not carry:
        ones = torch.ones_like(final)
        carry = [ones, torch.zeros_like(final), torch.zeros_like(final)]
    if periodic:
        carry = [c.diagonal(dim1=-2, dim2=-1) for c in carry]
    partition = (carry[0] * final).sum(-1)
    if bool((partition.detach() < _UNDERFLOW * torch.finfo(partition.dtype).tiny).any()):
        raise _TransferUnderflowError(
            "transfer matrices underflow for this frustrated periodic lattice at this beta "
            "(its ground cycles cost beta * gap > 500 over the lowest open path); use "
            "route='enumerate' (N <= 24) or a smaller beta"
        )
    log_z_ref = torch.log(partition) + log_scale
    if not moments:
        return log_z_ref, reference, None, None
    y = end_excess
    first = ((carry[1] + carry[0] * y) * final).sum(-1) / partition
    second = ((carry[2] + 2 * carry[1] * y + carry[0] * y * y) * final).sum(-1) / partition
    variance = (second - first * first).clamp_min(0.0)
    return log_z_ref, reference, first, variance


def _carry_step(carry: list[Tensor], factors: list[Tensor], periodic: bool) -> list[Tensor]:
    """(P, P₁, P₂)·(M, M₁, M₂) by the product rule (matrices, or row vectors if open)."""

    def mul(a: Tensor, b: Tensor) -> Tensor:
        return a @ b if periodic else (a[..., None, :] @ b).squeeze(-2)

    if len(factors) == 1:
        return [mul(carry[0], factors[0])]
    (p0, p1, p2), (m0, m1, m2) = carry, factors
    return [
        mul(p0, m0),
        mul(p1, m0) + mul(p0, m1),
        mul(p2, m0) + 2 * mul(p1, m1) + mul(p0, m2),
    ]


def transfer_matrix_log_partition(
    model: IsingModel, field: Tensor | None = None, beta: Tensor | None = None
) -> Tensor:
    """ln Z of a lattice Ising model by row-to-row transfer matrices (differentiable).

    The narrower lattice dimension W is the row; cost is L matrix products of size 2^W.
    ``field`` (..., N) and ``beta`` override the model's (used by the autodiff route).
    """
    _transfer_cost(model, susceptibility=False)
    field = model.field if field is None else field
    beta = model.beta if beta is None else beta
    batch = torch.broadcast_shapes(field.shape[:-1], beta.shape, model.bond.shape)
    field = field.expand(*batch, field.shape[-1])
    beta = beta.expand(batch)
    bond = model.bond.expand(batch)
    row_energy, bond_energy, _, periodic = _transfer_energies(model, field, bond)
    rows = row_energy.shape[-2]
    log_z_ref, reference, _, _ = _gauged_transfer(
        row_energy, bond_energy, beta, periodic and rows > 1, moments=False
    )
    return log_z_ref - beta * reference


def _transfer(model: IsingModel, susceptibility: bool, progress: bool | None) -> Thermodynamics:
    """Exact thermodynamics by transfer matrices, without derivatives of ln Z.

    ln Z, U, S and C come from the pass that carries energy moments (:func:`_gauged_transfer`);
    m and χ = β Cov(σ_i, σ_j) from forward and backward messages (:func:`_site_moments`). No
    autodiff in β or h is involved, whose differences cancel catastrophically at large β and
    whose χ would need one backward pass per site.
    """
    operations = _transfer_cost(model, susceptibility)
    progress = show_progress(progress, operations)
    beta = model.expanded_beta()
    bond = model.bond.expand(model.batch_shape)
    field = model.expanded_field()
    row_energy, bond_energy, _, periodic = _transfer_energies(model, field, bond)
    periodic = periodic and row_energy.shape[-2] > 1
    with torch.no_grad():
        log_z_ref, reference, mean_excess, var_e = _gauged_transfer(
            row_energy, bond_energy, beta, periodic, moments=True, progress=progress
        )
        assert mean_excess is not None and var_e is not None
        magnetization, covariance = _site_moments(
            row_energy, bond_energy, beta, periodic, susceptibility
        )
    lattice = model.lattice
    assert lattice is not None
    transposed = lattice.shape[1] > lattice.shape[0]  # rows of the transfer = lattice columns
    if transposed:
        magnetization = magnetization.transpose(-1, -2)
    magnetization = magnetization.reshape(*model.batch_shape, model.num_spins)
    chi = None
    if covariance is not None:
        if transposed:
            covariance = covariance.permute(*range(covariance.ndim - 4), -3, -4, -1, -2)
        n = model.num_spins
        chi = beta[..., None, None] * covariance.reshape(*model.batch_shape, n, n)
    return _from_reference(
        reference, log_z_ref, mean_excess, var_e, beta, magnetization, chi, "transfer"
    )


def _site_moments(
    row_energy: Tensor, bond_energy: Tensor, beta: Tensor, periodic: bool, susceptibility: bool
) -> tuple[Tensor, Tensor | None]:
    r"""⟨σ⟩ per site (..., L, W) and (``susceptibility``) Cov(σ, σ) (..., L, W, L, W).

    In the Viterbi gauge of :func:`_gauged_transfer`, with step matrices M_t = e^{−β x_t}:
    forward messages A_t (the products up to row t; row vectors if open, matrices over the
    start row if periodic) and backward messages B_t (from row t to the end, closed by the end
    weights) give the row marginal p_t(s) ∝ Σ_i A_t(i, s) B_t(s, i). For the covariance each
    row r inserts its centred spins, U_{r,w} = A_r diag(σ_w − m_{r,w}), which then travel with
    the forward product; at row t ≥ r, Cov(σ_{r,w}, σ_{t,w'}) = Σ U_{r,w} diag(σ_{w'} −
    m_{t,w'}) B_t / Σ A_t B_t. Centred insertions make χ a sum of small terms (no
    ⟨σσ⟩ − ⟨σ⟩⟨σ⟩ cancellation at large β); all rows travel together, one batched product per
    step, so a chain of N spins costs O(N²) multiply-adds in O(N) steps.
    """
    rows, size = row_energy.shape[-2], row_energy.shape[-1]
    width = size.bit_length() - 1
    spins = _row_states(width, row_energy.dtype, row_energy.device)  # (S, W)
    potentials, end_excess, _ = _gauge(row_energy, bond_energy, periodic)
    weights = [
        torch.exp(
            -beta[..., None, None] * _step_excess(row_energy, bond_energy, potentials, t, periodic)
        )
        for t in range(rows if periodic else rows - 1)
    ]
    final = torch.exp(-beta[..., None] * end_excess)
    count = len(weights)

    def mul(a: Tensor, b: Tensor) -> Tensor:  # a product (..., [S,] S) times a step (..., S, S)
        return a @ b if periodic else (a.unsqueeze(-2) @ b).squeeze(-2)

    def scale_of(a: Tensor) -> Tensor:
        return a.amax((-1, -2) if periodic else -1, keepdim=True)

    # backward messages, stored: B_count = end weights; B_t = M_t B_{t+1}
    last = torch.diag_embed(final) if periodic else final
    backward = [last / scale_of(last)]
    for t in range(count - 1, -1, -1):
        b = (
            weights[t] @ backward[0]
            if periodic
            else (weights[t] @ backward[0][..., None]).squeeze(-1)
        )
        backward.insert(0, b / scale_of(b))
    batch = row_energy.shape[:-2]
    lead = len(batch)

    def forward_pass() -> Iterator[tuple[int, Tensor, Tensor | None]]:
        """(t, A_t normalised, the scale divided out at this step) for every row t."""
        if periodic:
            forward = torch.eye(size, dtype=row_energy.dtype, device=row_energy.device)
            forward = forward.expand(*batch, size, size)
        else:
            forward = torch.ones_like(row_energy[..., 0, :])
        yield 0, forward, None
        for t in range(1, rows):
            forward = mul(forward, weights[t - 1])
            scale = scale_of(forward)
            forward = forward / scale
            yield t, forward, scale

    def marginal(forward: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """Row t's joint weights Σ_i A_t(i, s) B_t(s, i) and their total."""
        b = backward[t]
        joint = (forward * b.transpose(-1, -2)).sum(-2) if periodic else forward * b
        norm = joint.sum(-1)
        if bool((norm < _UNDERFLOW * torch.finfo(norm.dtype).tiny).any()):
            raise _TransferUnderflowError(
                "transfer matrices underflow for this frustrated periodic lattice at this beta; "
                "use route='enumerate' (N <= 24) or a smaller beta"
            )
        return joint, norm

    dtype, device = row_energy.dtype, row_energy.device
    mean = torch.empty(*batch, rows, width, dtype=dtype, device=device)
    for t, forward, _ in forward_pass():
        joint, norm = marginal(forward, t)
        mean[..., t, :] = (joint / norm[..., None]) @ spins
    if not susceptibility:
        return mean, None
    cov = torch.zeros(*batch, rows, width, rows, width, dtype=dtype, device=device)
    shape = (size, size) if periodic else (size,)
    row_bytes = 4 * width * math.prod(shape) * max(1, math.prod(batch)) * spins.element_size()
    chunk = int(max(1, min(rows, memory_limit_bytes() // 4 // row_bytes)))
    for first in range(0, rows, chunk):  # insertions of rows [first, last) travel together
        last = min(rows, first + chunk)
        inserted = row_energy.new_zeros(*batch, last - first, width, *shape)
        for t, forward, scale in forward_pass():
            if t < first:
                continue
            live = min(t, last) - first  # insertions made so far in this chunk
            if live > 0 and scale is not None:  # they travel with the forward product
                done = inserted.narrow(lead, 0, live)  # (..., r, W, [S,] S): one flat product
                moved = done.reshape(*batch, -1, size) @ weights[t - 1]
                norm_shape = (*scale.shape[: -2 if periodic else -1], 1)
                done.copy_((moved / scale.reshape(norm_shape)[..., None]).reshape(done.shape))
            joint, norm = marginal(forward, t)
            centred = spins - mean[..., t, None, :]  # (..., S, W)
            if t < last:  # insertion of row t: A_t diag(σ_w − m_tw), one per site w
                row_t = inserted.select(lead, t - first)
                if periodic:
                    row_t.copy_(
                        forward[..., None, :, :] * centred.transpose(-1, -2)[..., :, None, :]
                    )
                else:
                    row_t.copy_(forward[..., None, :] * centred.transpose(-1, -2))
            count_r = min(t + 1, last) - first
            b = backward[t]
            if periodic:  # Σ_{i,s} U(i, s) B(s, i) (σ_w' − m)(s)
                weighted = (
                    inserted.narrow(lead, 0, count_r) * b.transpose(-1, -2)[..., None, None, :, :]
                ).sum(-2)
            else:
                weighted = inserted.narrow(lead, 0, count_r) * b[..., None, None, :]
            block = weighted.reshape(*batch, -1, size) @ centred
            block = block.reshape(*weighted.shape[:-1], width) / norm[..., None, None, None]
            cov[..., first : first + count_r, :, t, :] = block
            cov[..., t, :, first : first + count_r, :] = block.permute(*range(lead), -1, -3, -2)
    return mean, cov


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
