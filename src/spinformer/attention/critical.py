r"""The critical point of attention's high-temperature branch, and its phase diagram.

The self-consistency equation m = f(m) = Σ_j x_j softmax_j(β x_jᵀ W_QK m) of
:mod:`spinformer.attention.mean_field` (Bal, "Transformers are secretly collectives of spin
systems", 2021; Ramsauer et al., "Hopfield networks is all you need", 2020) has the Jacobian
:math:`\mathcal{J} = \beta\,\mathrm{Cov}_\alpha(x)\,W_{QK}`; a solution is linearly stable iff
its spectral radius ρ < 1.

Phases. At small β the weights are nearly uniform and :math:`f(m) \approx \bar x`: one stable
(high-temperature) solution near the token mean. For centred tokens (:math:`\bar x = 0`),
:math:`m = 0` solves the equation at every β with :math:`\mathcal{J}(0) = \beta C W`,
:math:`C = N^{-1}\sum_j x_j x_j^\top`, so it loses stability at the closed form
:math:`\beta_c = 1/\rho(CW)`. In general :func:`critical_beta` finds the point by continuation:
it follows the high-temperature branch in β (each solve warm-started from the previous one) until
:math:`\rho` reaches 1 or the branch ends (a fold, where :math:`\rho \to 1` and the solution jumps),
then bisects. For a head given by its factors, :func:`critical_beta_qk` does the same in query
coordinates, where the Jacobian is the d×d matrix :math:`\beta\,\mathrm{Cov}_\alpha(q, k) =
\beta W_Q \mathrm{Cov}_\alpha(x) W_K^\top` with the non-zero spectrum of :math:`\mathcal{J}`.
For tokens :math:`\{+v, -v\}` with :math:`|v|^2 = 2` and :math:`W = I` this is a
pitchfork at :math:`\beta_c = 1/2`, with :math:`m = \pm s v`, :math:`s = \tanh(2\beta s)` above it;
in :math:`D = 1` with patterns :math:`\pm 1` the equation is Curie–Weiss, :math:`m = \tanh(\beta m)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict, Unpack

import torch
from torch import Tensor

from spinformer._validation import as_tensor, check_beta, check_finite, describe
from spinformer.attention.mean_field import (
    FixedPoints,
    _check_scores,
    _check_system,
    _default_tol,
    _jacobian_radius,
    _solve,
    _spectral_radius,
    _token_radius,
    _weights,
    fixed_points,
)

__all__ = [
    "Continuation",
    "CriticalBeta",
    "PhaseDiagram",
    "critical_beta",
    "critical_beta_qk",
    "phase_diagram",
]


# ---------------------------------------------------------------------------------------------
# the critical point of the high-temperature branch


@dataclass(frozen=True)
class CriticalBeta:
    """Where the high-temperature solution loses stability, per system.

    Attributes:
        beta: β_c (*batch); ``inf`` where the branch stays stable up to the largest β tried.
        found: bool (*batch).
        magnetization: the high-temperature solution at β_c (*batch, D).
        spectral_radius: ρ of the Jacobian there (*batch) (→ 1 at the transition).
        closed_form: 1/ρ(C W_QK) for centred tokens (the m = 0 branch), NaN otherwise (*batch).
        betas: the continuation grid (*batch, K).
        branch: the branch m(β) on the grid (*batch, K, D) (after β_c it may be another branch).
        branch_spectral_radius: ρ along the grid (*batch, K).
    """

    beta: Tensor
    found: Tensor
    magnetization: Tensor
    spectral_radius: Tensor
    closed_form: Tensor
    betas: Tensor
    branch: Tensor
    branch_spectral_radius: Tensor


class Continuation(TypedDict, total=False):
    """The keyword options of :func:`critical_beta` and :func:`critical_beta_qk` (defaults).

    Attributes:
        beta_min, beta_max: ends of the geometric β grid (10⁻³ and 10 times β₀ = 1/ρ(C W_QK),
            per system).
        num_betas: points of the grid (64, at least 2).
        bisection_steps: bisections of the bracket around β_c (40).
        tol: the solver's residual tolerance (the dtype's default).
        max_iter: solver iterations at each β (2000).
        jump_tol: a step of the branch longer than ``jump_tol`` times the token radius is a jump,
            the end of the branch (0.25).
    """

    beta_min: float | None
    beta_max: float | None
    num_betas: int
    bisection_steps: int
    tol: float | None
    max_iter: int
    jump_tol: float


def critical_beta(x: Tensor, w_qk: Tensor, **continuation: Unpack[Continuation]) -> CriticalBeta:
    """β_c of the high-temperature solution by continuation in β, then bisection.

    The branch starts at the token mean at ``beta_min`` and is followed on a geometric grid up to
    ``beta_max`` (defaults: 10⁻³ and 10 times β₀ = 1/ρ(C W_QK), the inverse initial slope, per
    system); each solve (Anderson) is warm-started from the previous β. The first grid step where
    ρ ≥ 1, the solve fails, or the solution jumps by more than ``jump_tol``·R brackets β_c, which
    is refined by ``bisection_steps`` bisections warm-started from the stable side.

    Args:
        x: tokens (*batch, N, D); w_qk: couplings (*batch, D, D).
        continuation: the grid, bisection and solver settings (:class:`Continuation`).
    """
    batch = _check_system(x, w_qk)
    if x.shape[-2] == 0:
        raise ValueError(f"x must hold at least one token, got shape {tuple(x.shape)}")
    x_b = x.expand(*batch, *x.shape[-2:])
    w_b = w_qk.expand(*batch, *w_qk.shape[-2:])
    dtype = x.dtype
    # moments of the tokens divided by their largest |entry| s (no overflow of squares);
    # ρ(C W_QK) = s² ρ(C_s W_QK)
    tiny = torch.finfo(dtype).tiny
    size = x_b.detach().abs().amax(dim=(-1, -2)).clamp_min(tiny)
    x_s = x_b / size[..., None, None]
    centred = x_s - x_s.mean(dim=-2).unsqueeze(-2)
    cov_w = (centred.transpose(-1, -2) @ centred / x.shape[-2]) @ w_b
    if not bool(torch.isfinite(cov_w).all()):
        raise ValueError(
            f"w_qk is outside the {dtype} range: Cov(x) W_QK overflows; rescale w_qk or use float64"
        )
    return _follow_branch(x_b, x_b @ w_b, cov_w, size**2, **continuation)


def critical_beta_qk(q: Tensor, k: Tensor, **continuation: Unpack[Continuation]) -> CriticalBeta:
    r""":func:`critical_beta` of heads given by their tokens' queries and keys (d-dimensional).

    The map sees m only through the query :math:`q(m) = W_Q m + b_Q`, and
    :math:`q(\sum_j \alpha_j x_j) = \sum_j \alpha_j q_j` (the weights sum to one), so the
    self-consistency equation in query coordinates reads
    :math:`q = g(q) = \sum_j q_j\,\mathrm{softmax}_j(\beta\,k_j\cdot q)` with
    :math:`q_j = W_Q x_j + b_Q`, :math:`k_j = W_K x_j + b_K` (a key bias shifts every score of a
    row by the same amount and cancels). Fixed points correspond one to one
    (:math:`q^* = q(m^*)`, :math:`m^* = \sum_j \alpha_j(q^*) x_j`), and the Jacobian of
    :math:`g` is :math:`\beta\,\mathrm{Cov}_\alpha(q, k) = \beta\,W_Q \mathrm{Cov}_\alpha(x)
    W_K^\top`, whose eigenvalues are the non-zero ones of :math:`\beta\,\mathrm{Cov}_\alpha(x)
    W_K^\top W_Q` (eig(AB) = eig(BA) with A = W_Q, B = Cov W_Kᵀ): the same ρ, from a d×d
    eigenproblem instead of a D×D one, and d-dimensional solves. The token radius, the solver's
    tolerance and the jump test (the fold detector) use the stacked coordinates
    :math:`(q, \langle k\rangle_\alpha)`, so the result is, to rounding, that of
    :func:`critical_beta` on the stacked states :math:`(q_j, k_j)` with the coupling
    :math:`\begin{pmatrix}0 & 0\\ I & 0\end{pmatrix}`; against
    ``critical_beta(x, W_K.T @ W_Q)`` (no biases) the spectral radii are the same, and β_c too
    unless the jump test, measured in other coordinates, brackets a different grid step.
    ``magnetization`` and ``branch`` are the query :math:`q(m)` of the high-temperature
    solution, not m.

    Args:
        q: the tokens' queries (*batch, N, d); k: their keys (*batch, N, d).
        continuation: :func:`critical_beta`'s settings (:class:`Continuation`).
    """
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim < 2:
            raise ValueError(
                f"{name} must be a floating tensor of shape (..., N, d), got {describe(t)}"
            )
        check_finite(t, name)
    if q.shape[-2:] != k.shape[-2:]:
        raise ValueError(
            f"q and k must have the same (N, d) trailing shape, got {tuple(q.shape)} and"
            f" {tuple(k.shape)}"
        )
    try:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    except RuntimeError as err:
        raise ValueError(
            f"q and k batch shapes must broadcast, got {tuple(q.shape[:-2])} and"
            f" {tuple(k.shape[:-2])}"
        ) from err
    if q.shape[-2] == 0:
        raise ValueError(f"q must hold at least one token, got shape {tuple(q.shape)}")
    q_b = q.expand(*batch, *q.shape[-2:])
    k_b = k.expand(*batch, *k.shape[-2:])
    tiny = torch.finfo(q.dtype).tiny
    size_q = q_b.detach().abs().amax(dim=(-1, -2)).clamp_min(tiny)
    size_k = k_b.detach().abs().amax(dim=(-1, -2)).clamp_min(tiny)
    q_c = q_b / size_q[..., None, None]
    k_c = k_b / size_k[..., None, None]
    q_c = q_c - q_c.mean(dim=-2, keepdim=True)
    k_c = k_c - k_c.mean(dim=-2, keepdim=True)
    cov_qk = q_c.transpose(-1, -2) @ k_c / q.shape[-2]
    return _follow_branch(q_b, k_b, cov_qk, size_q * size_k, k_b, **continuation)


def _cross_jacobian(m: Tensor, values: Tensor, keys: Tensor, beta: Tensor) -> Tensor:
    """β Cov_α(values, keys) (…, Q, D, D): the Jacobian of m ↦ Σ_j values_j softmax_j(β keys_j·m).

    With values = x and keys = x W_QK this is :func:`mean_field_jacobian`'s β Cov_α(x) W_QK.
    """
    alpha = _weights(m, keys, beta)  # (…, Q, N)
    mean_v = alpha @ values
    mean_k = alpha @ keys
    second = torch.einsum("...qn,...na,...nb->...qab", alpha, values, keys)
    cov = second - mean_v.unsqueeze(-1) * mean_k.unsqueeze(-2)
    return beta[..., None, None, None] * cov


def _follow_branch(
    values: Tensor,
    keys: Tensor,
    cov_scaled: Tensor,
    cov_scale: Tensor,
    track: Tensor | None = None,
    /,
    *,
    beta_min: float | None = None,
    beta_max: float | None = None,
    num_betas: int = 64,
    bisection_steps: int = 40,
    tol: float | None = None,
    max_iter: int = 2000,
    jump_tol: float = 0.25,
) -> CriticalBeta:
    """Continuation and bisection of :func:`critical_beta` for the map m ↦ Σ_j v_j α_j(β k_j·m).

    ``values`` and ``keys`` (*batch, N, D) are broadcast; the uniform-weight covariance
    Cov(values, keys) is ``cov_scale · cov_scaled`` (kept factored against overflow). With
    ``track`` (*batch, N, E), the token radius, the solver's tolerance and the jump test use the
    stacked coordinates (m, Σ_j α_j track_j), as if the states were (values_j, track_j).
    """
    if isinstance(num_betas, bool) or not isinstance(num_betas, int) or num_betas < 2:
        raise ValueError(f"num_betas must be an integer >= 2, got {num_betas!r}")
    for name, value in (("beta_min", beta_min), ("beta_max", beta_max)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite float, got {value!r}")
    if beta_min is not None and beta_max is not None and beta_min >= beta_max:
        raise ValueError(f"beta_min must be < beta_max, got {beta_min} and {beta_max}")
    batch = values.shape[:-2]
    dtype, device = values.dtype, values.device
    tol = _default_tol(dtype) if tol is None else tol
    tiny = torch.finfo(dtype).tiny
    size = values.detach().abs().amax(dim=(-1, -2)).clamp_min(tiny)
    v_s = values / size[..., None, None]
    radius_s = v_s.norm(dim=-1).amax(dim=-1)
    radius = (size * radius_s).clamp_min(tiny)
    mean = v_s.mean(dim=-2) * size[..., None]
    if track is not None:
        radius = _token_radius(torch.cat([values, track], dim=-1))
    rho0 = _spectral_radius(cov_scaled) * cov_scale
    if not bool(torch.isfinite(rho0).all()) or bool(((rho0 > 0) & (1.0 / rho0 < tiny)).any()):
        largest = float((_spectral_radius(cov_scaled.double()) * cov_scale.double()).max())
        raise ValueError(
            f"x and w_qk are outside the {dtype} range: ρ(Cov(x) W_QK) = {largest:.3g}, so"
            f" β_c ~ 1/ρ is not a normal {dtype} number; rescale x or w_qk, or use float64"
        )
    centred_data = v_s.mean(dim=-2).norm(dim=-1) <= 1e3 * torch.finfo(dtype).eps * radius_s
    closed = torch.where(centred_data & (rho0 > 0), 1.0 / rho0, torch.nan)
    scale = torch.where(rho0 > 0, 1.0 / rho0.clamp_min(torch.finfo(dtype).tiny), 1.0)
    lo_factor = math.log(1e-3) if beta_min is None else None
    hi_factor = math.log(10.0) if beta_max is None else None
    t = torch.linspace(0.0, 1.0, num_betas, dtype=dtype, device=device)
    log_lo = (
        (scale.log() + lo_factor)
        if lo_factor is not None
        else torch.full_like(scale, math.log(beta_min))
    )
    log_hi = (
        (scale.log() + hi_factor)
        if hi_factor is not None
        else torch.full_like(scale, math.log(beta_max))
    )
    betas = torch.exp(log_lo[..., None] + (log_hi - log_lo)[..., None] * t)  # (*batch, K)
    _check_scores(keys, radius, betas.amax(dim=-1))

    def solve(beta: Tensor, init: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m, ok, _, _ = _solve(
            values, keys, beta, init.unsqueeze(-2), radius, method="anderson", tol=tol,
            max_iter=max_iter, damping=1.0, implicit=False, warn=False,
        )  # fmt: skip
        m = m.squeeze(-2).detach()
        rho = _jacobian_radius(_cross_jacobian(m.unsqueeze(-2), values, keys, beta).squeeze(-3))
        return m, ok.squeeze(-1), rho

    branch, radii, broken = [], [], []
    m_prev = mean

    def displacement(m: Tensor, m_ref: Tensor, beta: Tensor, beta_ref: Tensor) -> Tensor:
        step = (m - m_ref).norm(dim=-1)
        if track is None:
            return step
        tracked = _weights(m.unsqueeze(-2), keys, beta) @ track
        tracked_ref = _weights(m_ref.unsqueeze(-2), keys, beta_ref) @ track
        return torch.sqrt(step**2 + (tracked - tracked_ref).squeeze(-2).norm(dim=-1) ** 2)

    for step in range(num_betas):
        m, ok, rho = solve(betas[..., step], m_prev)
        jump = (
            displacement(m, m_prev, betas[..., step], betas[..., step - 1]) > jump_tol * radius
            if step
            else torch.zeros_like(ok)
        )
        branch.append(m)
        radii.append(rho)
        broken.append(~ok | (rho >= 1) | jump)
        m_prev = m
    branch_t, radii_t, broken_t = (
        torch.stack(branch, -2),
        torch.stack(radii, -1),
        torch.stack(broken, -1),
    )
    first = broken_t.to(torch.uint8).argmax(dim=-1)
    found = broken_t.any(dim=-1) & (first > 0)
    lower = (first - 1).clamp_min(0)
    lo = betas.gather(-1, lower[..., None]).squeeze(-1)
    hi = betas.gather(-1, first[..., None]).squeeze(-1)
    m_lo = branch_t.gather(-2, lower[..., None, None].expand(*batch, 1, values.shape[-1])).squeeze(
        -2
    )
    rho_lo = radii_t.gather(-1, lower[..., None]).squeeze(-1)
    for _ in range(bisection_steps):
        mid = 0.5 * (lo + hi)
        m, ok, rho = solve(mid, m_lo)
        good = ok & (rho < 1) & (displacement(m, m_lo, mid, lo) <= jump_tol * radius)
        lo = torch.where(good, mid, lo)
        hi = torch.where(good, hi, mid)
        m_lo = torch.where(good[..., None], m, m_lo)
        rho_lo = torch.where(good, rho, rho_lo)
    inf = torch.full_like(lo, math.inf)
    return CriticalBeta(
        beta=torch.where(found, 0.5 * (lo + hi), inf),
        found=found,
        magnetization=m_lo,
        spectral_radius=rho_lo,
        closed_form=closed,
        betas=betas,
        branch=branch_t,
        branch_spectral_radius=radii_t,
    )


# ---------------------------------------------------------------------------------------------
# phase diagram


@dataclass(frozen=True)
class PhaseDiagram:
    """Number of fixed points, stable ones and basin sizes against β for one system.

    Attributes:
        betas: the β grid (B,).
        num_fixed_points: distinct fixed points found at each β (B,).
        num_stable: stable ones among them (B,).
        basin_fractions: fraction of queries flowing to each stable fixed point, descending,
            zero-padded to the largest count (B, K_max).
        fixed_points: the full :class:`FixedPoints` at each β.
        critical: the continuation result for the high-temperature branch.
    """

    betas: Tensor
    num_fixed_points: Tensor
    num_stable: Tensor
    basin_fractions: Tensor
    fixed_points: tuple[FixedPoints, ...]
    critical: CriticalBeta


def phase_diagram(
    x: Tensor,
    w_qk: Tensor,
    betas: Tensor | list[float],
    on_step: Callable[[int, float], None] | None = None,
    **fixed_point_options: float | int,
) -> PhaseDiagram:
    """:func:`fixed_points` on every β of ``betas`` plus :func:`critical_beta` for one system."""
    beta_grid = as_tensor(betas, "betas", dtype=x.dtype if isinstance(x, Tensor) else None)
    if beta_grid.ndim != 1 or beta_grid.numel() == 0:
        raise ValueError(
            f"betas must be a non-empty 1-D sequence, got shape {tuple(beta_grid.shape)}"
        )
    check_beta(beta_grid, "betas")
    results = []
    for index, beta in enumerate(beta_grid.tolist()):
        results.append(fixed_points(x, w_qk, beta, **fixed_point_options))  # type: ignore[arg-type]
        if on_step is not None:
            on_step(index, beta)
    k_max = max(1, *(r.num_stable for r in results))
    fractions = torch.zeros(len(results), k_max, dtype=x.dtype)
    for row, r in enumerate(results):
        stable = r.basin_fraction[r.stable].sort(descending=True).values
        fractions[row, : stable.numel()] = stable
    return PhaseDiagram(
        betas=beta_grid,
        num_fixed_points=torch.tensor([r.num_fixed_points for r in results]),
        num_stable=torch.tensor([r.num_stable for r in results]),
        basin_fractions=fractions,
        fixed_points=tuple(results),
        critical=critical_beta(x, w_qk),
    )
