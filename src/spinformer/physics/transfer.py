r"""Exact Ising thermodynamics of chains and L×W strips/tori by row-to-row transfer matrices.

Z = tr Π_r M_r over row-configuration matrices of size 2^W, W the narrower side (≤ 12). U and C
are carried through the products as energy moments (product rule), m and χ come from
forward/backward messages; nothing is differentiated, so this route is the independent check on
enumeration (and on the autodiff of :func:`transfer_matrix_log_partition`, which stays
differentiable). Transfer matrices use the Viterbi gauge (min-plus potentials; Viterbi, "Error
bounds for convolutional codes", 1967) so that every step's weights are ≤ 1 with a zero-excess
path to each state; frustrated periodic rows whose ground cycles cost more than ~500/β over the
best open path are refused by name (the auto route of ``method="exact"`` then enumerates).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from spinformer.physics._limits import check_memory, check_work, memory_limit_bytes, show_progress
from spinformer.physics.enumeration import ReferencedMoments, all_states
from spinformer.physics.models import IsingModel, SquareLattice

__all__ = [
    "MAX_TRANSFER_WIDTH",
    "transfer_matrix_log_partition",
    "transfer_moments",
]

MAX_TRANSFER_WIDTH = 12

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


def transfer_moments(
    model: IsingModel, susceptibility: bool, progress: bool | None
) -> ReferencedMoments:
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
    return reference, log_z_ref, mean_excess, var_e, beta, magnetization, chi


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
