r"""Dynamical (Plefka[t−1, t]) mean field for kinetic spin models with asymmetric couplings.

Asymmetric couplings define no energy, so there is no equilibrium free energy; the system is
defined by its parallel (Glauber) dynamics instead: given the spins s(t−1), each spin at time t
is drawn from its single-site Boltzmann distribution in the field θ_i = h_i + Σ_j J_ij s_j(t−1).
Its mean is ⟨m(θ_i)⟩ over the previous spins, m(·) the single-site response. Plefka's
expansion around independent previous spins with means m(t−1) (Aguilera, Moosavi & Shimazaki,
"A unifying framework for mean-field theories of asymmetric kinetic Ising systems", Nat. Commun.
12, 1197, 2021, the [t−1, t] expansion) gives, with θ̄_i = h_i + Σ_j J_ij m_j(t−1) and
K_i = Σ_j J_ij² C_j the covariance of the field fluctuation,

.. math::

    m_i(t) = m(\bar\theta_i) \;+\; \tfrac12 \sum_{ab} \partial_a\partial_b m(\bar\theta_i)\,(K_i)_{ab}
    \;+\; O(J^3).

Order 1 ("naive") keeps the first term; order 2 adds the Onsager-like correction. For Ising
spins m = tanh(βθ) and the correction is −β² tanh(βθ̄)(1 − tanh²βθ̄) Σ_j J_ij²(1 − m_j²) =
−β(1 − m_i²) Ω_i, with Ω_i = β m_i Σ_j J_ij²(1 − m_j(t−1)²) the Onsager reaction field
(:func:`~spinformer.physics.onsager.ising_reaction`): the dynamical TAP equations of Roudi &
Hertz (2011), m_i = tanh(β(θ̄_i − Ω_i)), to O(J²).

For vector spins the response is the large-D φ(θ) = g(|θ|) θ, g = β/(1 + u),
u = √(1 + β²|θ|²/R²) (:func:`~spinformer.physics.vmf.phi`). Its previous-time
covariance is the one consistent with φ, C = β⁻¹ ∂φ/∂θ, written in terms of m alone
(s = |m|, :func:`~spinformer.physics.vmf.large_d_covariance`): tangential b = (R² − s²)/(2R²),
radial − tangential = w s² with w = −(R² − s²)/(R²(R² + s²)). For a radial map the Hessian contraction is

.. math::

    \tfrac12\Big[\theta\big(g''\,\hat\theta^{\mathsf T} K\hat\theta
      + \tfrac{g'}{r}(\operatorname{tr}K - \hat\theta^{\mathsf T} K\hat\theta)\big)
      + 2\,\tfrac{g'}{r} K\theta\Big],\quad
    \tfrac{g'}{r} = -\frac{\beta^3}{R^2 u(1+u)^2},\quad
    g'' = \frac{\beta^3(2u^2 - 2u - 1)}{R^2u^3(1+u)^2},

all O(N²D) without forming D×D matrices. Stationary states m* = step(m*) are solved by
:mod:`spinformer.solvers` (differentiable through the implicit backward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from spinformer._validation import as_tensor, check_beta, check_finite, check_positive_int
from spinformer.physics import onsager, vmf
from spinformer.solvers import FixedPointResult, fixed_point

__all__ = [
    "dynamical_mean_field",
    "kinetic_ising_step",
    "kinetic_vector_step",
    "stationary_dynamical_mean_field",
    "vector_step",
    "vector_step_vjp",
    "vector_step_with_vjp",
]

Spin = Literal["ising", "vector"]


def _check_order(order: int) -> None:
    if order not in (1, 2):
        raise ValueError(f"order must be 1 (naive) or 2 (Plefka second order), got {order!r}")


def _check_inputs(m_prev: Tensor, couplings: Tensor, beta: Tensor | float) -> Tensor:
    check_finite(m_prev, "magnetization")
    check_finite(couplings, "couplings")
    beta = as_tensor(beta, "beta", dtype=m_prev.dtype, device=m_prev.device)
    check_beta(beta)
    return beta


def kinetic_ising_step(
    m_prev: Tensor,
    couplings: Tensor,
    field: Tensor | float,
    beta: Tensor | float,
    order: int = 1,
) -> Tensor:
    """m(t) from m(t−1) (..., N) for a kinetic Ising model with couplings (..., N, N) (any J)."""
    _check_order(order)
    beta = _check_inputs(m_prev, couplings, beta)
    return _ising_step(m_prev, couplings, field, beta[..., None] if beta.ndim else beta, order)


def _ising_step(m_prev: Tensor, couplings: Tensor, field, beta, order: int) -> Tensor:
    theta = field + torch.einsum("...ij,...j->...i", couplings, m_prev)
    m = torch.tanh(beta * theta)
    if order == 2:  # tanh(β(θ̄ − Ω)) to first order in the reaction field Ω
        reaction = onsager.ising_reaction(m, beta, onsager.SiteCouplings(couplings), others=m_prev)
        m = m - beta * (1.0 - m * m) * reaction
    return m


def kinetic_vector_step(
    m_prev: Tensor,
    couplings: Tensor,
    field: Tensor,
    beta: Tensor | float,
    radius: float,
    order: int = 1,
) -> Tensor:
    """m(t) from m(t−1) (..., N, D) for kinetic vector spins with the large-D response.

    ``couplings`` (..., N, N) may be asymmetric (e.g. softmax attention rows); ``beta``
    broadcasts against the batch dims; |m(t−1)| must be < R.
    """
    _check_order(order)
    beta = _check_inputs(m_prev, couplings, beta)
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius!r}")
    return vector_step(
        m_prev, couplings, field, beta[..., None, None] if beta.ndim else beta, radius, order
    )


def _radial_slopes(u: Tensor, beta, radius: float) -> tuple[Tensor, Tensor]:
    """(g'/r, g'') of φ = g(r) θ at u = √(1 + β²|θ|²/R²) (see the module docstring)."""
    b3 = beta**3 / radius**2
    g1 = -b3 / (u * (1.0 + u) ** 2)  # g'/r
    g2 = b3 * (2.0 * u * u - 2.0 * u - 1.0) / (u**3 * (1.0 + u) ** 2)  # g''
    return g1, g2


def vector_step(
    m_prev: Tensor | None,
    couplings: Tensor,
    field: Tensor,
    beta,
    radius: float,
    order: int,
    squared: Tensor | None = None,
    workspace: Tensor | None = None,
    keep: list | None = None,
) -> Tensor:
    """Unchecked :func:`kinetic_vector_step`; ``beta`` broadcastable against (..., N, D).

    ``squared`` is J² when the caller iterates with fixed couplings (computed here otherwise).
    ``workspace`` (..., N, N), the couplings' shape over m_prev's batch, receives the order-2
    overlap matrix θ_i·(w_j m_j) when autograd is off, so a caller iterating reuses one buffer.
    ``m_prev=None`` is the step from rest, m(t−1) = 0, without the matrix products with it
    (they vanish). Order 1 with a tensor β uses φ with its closed-form derivative. At order 2 the
    weights w_j of K are folded into the overlaps, w_j θ_i·m_j = θ_i·(w_j m_j), and θᵀKθ is
    θ·(Kθ), so a step takes one elementwise pass over the N × N couplings besides the matrix
    products.

    ``keep`` (a list), without autograd, receives this evaluation's couplings part (m_prev, its
    version, θ and at order 2 Σ_j J² b_j, tr K, Kθ and the overlaps, in the workspace) for a
    later :func:`vector_step_with_vjp` at the same, unchanged m_prev (``known``).
    """
    return _vector_step(
        m_prev, couplings, field, beta, radius, order, squared, False, workspace, keep
    )[0]


def vector_step_with_vjp(
    m_prev: Tensor,
    couplings: Tensor,
    field: Tensor,
    beta,
    radius: float,
    order: int,
    squared: Tensor | None = None,
    known: list | None = None,
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """(:func:`vector_step`, :func:`vector_step_vjp`) at ``m_prev`` from one evaluation: the
    step (differentiable as usual) and its closed-form (∂ step/∂m_prev)ᵀ, which reuses the
    step's θ, overlaps and Kθ instead of computing them again.

    ``known``, a ``keep`` list of :func:`vector_step` without autograd, supplies the couplings
    part when it was evaluated at m_prev's values (same tensor contents, not written since),
    with the same couplings and field: the step at a constant m_prev then skips its N × N × D
    products in the forward (J m; at order 2 three, of which the backward recomputes one).
    """
    if known and _parameter_backward(m_prev, couplings, field):
        kept, version, *terms = known
        if kept._version == version and kept.shape == m_prev.shape and _same_values(kept, m_prev):
            if order == 2:
                return _vector_step_couplings_backward(
                    m_prev, couplings, field, beta, radius, squared, True, terms
                )
            theta = _KnownField.apply(couplings, field, m_prev, terms[0])
            return _first_order(theta, couplings, beta, radius, True)
    return _vector_step(m_prev, couplings, field, beta, radius, order, squared, True)


def vector_step_vjp(
    m_prev: Tensor,
    couplings: Tensor,
    field: Tensor,
    beta,
    radius: float,
    order: int,
    squared: Tensor | None = None,
) -> Callable[[Tensor], Tensor]:
    r"""The vector-Jacobian product y ↦ (∂ step/∂m_prev)ᵀ y of :func:`vector_step` at ``m_prev``,
    in closed form (same arguments; inputs trusted, no autograd).

    Everything that depends on ``m_prev`` alone (θ, u, g'/r, g'', the covariance weights, the
    overlaps J² w_j θ_i·m_j, Kθ, θᵀKθ, tr K) is computed once here; each product then costs
    one elementwise pass and, at order 2, four N × N × D matrix products besides Jᵀ(·), with no
    graph: the adjoint iterations of an implicit backward at a fixed point apply it repeatedly.

    Order 1, φ(θ) = g θ with ∂φ/∂θ = g 1 + (g'/r) θθᵀ: θ̄ = g y + (g'/r)(θ·y) θ, m̄ = Jᵀθ̄.
    Order 2 writes the step as φ(θ) + ½ θ c + (g'/r) Kθ with c = (g'' − g'/r) θᵀKθ/|θ|² +
    (g'/r) tr K and Kθ = (Σ_j J²_ij b_j) θ + Σ_j J²_ij w_j (θ·m_j) m_j, and applies the chain
    rule through θ = h + J m, b_j, w_j and |m_j|² (d b/d s² = −1/(2R²), d w/d s² = 2/(R² + s²)²)
    and through u = √(1 + β²|θ|²/R²) in g'/r and g'' (du/d|θ|² = (β³/R²)/(2βu)).
    """
    with torch.no_grad():
        return _vector_step(m_prev, couplings, field, beta, radius, order, squared, True)[1]


def _vector_step(
    m_prev: Tensor | None,
    couplings: Tensor,
    field: Tensor,
    beta,
    radius: float,
    order: int,
    squared: Tensor | None,
    with_vjp: bool,
    workspace: Tensor | None = None,
    keep: list | None = None,
) -> tuple[Tensor, Callable[[Tensor], Tensor] | None]:
    """The step and, with ``with_vjp``, its closed-form VJP from the same intermediates."""
    if order == 2 and m_prev is not None and _parameter_backward(m_prev, couplings, field):
        return _vector_step_couplings_backward(
            m_prev, couplings, field, beta, radius, squared, with_vjp
        )
    theta = field if m_prev is None else _local_field(m_prev, couplings, field)
    if order == 1:
        if keep is not None and m_prev is not None and not torch.is_grad_enabled():
            keep[:] = [m_prev, m_prev._version, theta]
        return _first_order(theta, couplings, beta, radius, with_vjp)
    m, norm2, u = vmf.phi_terms(theta, beta, radius)
    dim = theta.shape[-1]
    if squared is None:
        squared = couplings * couplings
    if m_prev is None:  # s² = 0: the covariance weights at rest, no overlaps θ_i·m_j
        tangential, weight = vmf.large_d_covariance(theta.new_zeros((*theta.shape[:-1], 1)), radius)
        weighted = s2 = weighted_m = None
    else:
        s2 = (m_prev * m_prev).sum(-1)  # (..., N)
        tangential, weight = vmf.large_d_covariance(m_prev, radius)
        weighted_m = weight[..., None] * m_prev
        if torch.is_grad_enabled():
            weighted = squared * (theta @ weighted_m.transpose(-1, -2))  # J² w_j θ_i·m_j
        else:  # the same, into the workspace or one fresh N × N product, scaled in place
            overlaps = torch.matmul(theta, weighted_m.transpose(-1, -2), out=workspace)
            weighted = overlaps.mul_(squared)
    trace_terms = dim * tangential if s2 is None else dim * tangential + weight * s2
    sums = squared @ torch.stack([tangential, trace_terms], -1)
    k_scalar, trace = sums[..., :1], sums[..., 1:]  # Σ_j J² b_j and tr K, (..., N, 1)
    # Kθ; the product is fresh (and not saved for backward), so the sum accumulates into it
    k_theta = (
        k_scalar * theta if weighted is None else (weighted @ m_prev).addcmul_(k_scalar, theta)
    )
    if keep is not None and weighted is not None and not torch.is_grad_enabled():
        keep[:] = [m_prev, m_prev._version, theta, k_scalar, trace, k_theta, weighted]
    return _second_order_tail(
        m_prev, couplings, beta, radius, squared, with_vjp,
        m, norm2, u, theta, k_scalar, trace, k_theta, s2, weight, weighted, weighted_m,
    )  # fmt: skip


def _second_order_tail(
    m_prev, couplings, beta, radius, squared, with_vjp,
    m, norm2, u, theta, k_scalar, trace, k_theta, s2, weight, weighted, weighted_m,
):  # fmt: skip
    """The order-2 step from φ(θ), |θ|², u, Kθ, Σ_j J² b_j and tr K (per-site operations only),
    and with ``with_vjp`` its closed-form VJP."""
    quad = (theta * k_theta).sum(-1, keepdim=True)  # θᵀKθ
    g1, g2 = _radial_slopes(u, beta, radius)
    radial = quad / norm2.clamp_min(torch.finfo(theta.dtype).tiny)
    # m + ½[θ (g'' θᵀKθ/|θ|² + (g'/r)(tr K − θᵀKθ/|θ|²)) + 2 (g'/r) Kθ], per-site scalars first
    along = 0.5 * (g2 * radial + g1 * (trace - radial))
    out = torch.addcmul(m, theta, along).addcmul_(k_theta, g1)
    if not with_vjp or m_prev is None:
        return out, None
    terms = (theta, norm2, u, g1, g2, radial, k_scalar, trace, k_theta, weighted, weighted_m)
    with torch.no_grad():
        detached = [t.detach() for t in (m_prev, couplings, squared, s2, weight, *terms)]
        beta = beta.detach() if isinstance(beta, Tensor) else beta
        return out, _second_order_vjp(*detached, beta, radius)


def _local_field(m_prev: Tensor, couplings: Tensor, field: Tensor) -> Tensor:
    """θ = J m + h, a fresh tensor in the layout of the product J m (contiguous, whatever the
    field's strides: a solver then views it flat without a copy); without autograd the field
    is added into the product in place."""
    product = couplings @ m_prev
    grad = torch.is_grad_enabled() and (
        m_prev.requires_grad or couplings.requires_grad or field.requires_grad
    )
    if not grad and (field.shape == product.shape or _broadcasts_to(field, product)):
        return product.add_(field)
    return product + field


def _broadcasts_to(t: Tensor, target: Tensor) -> bool:
    """Whether ``t`` broadcasts to ``target``'s shape (so it can be added into it in place)."""
    if t.ndim > target.ndim:
        return False
    return all(a in (1, b) for a, b in zip(reversed(t.shape), reversed(target.shape), strict=False))


def _first_order(theta: Tensor, couplings: Tensor, beta, radius: float, with_vjp: bool):
    """The naive step φ(θ) at the local field θ and, with ``with_vjp``, its VJP."""
    if not torch.is_grad_enabled():  # the solver's iterations: φ = g θ, one product
        gain, u = vmf.phi_gain(theta, beta, radius)
        m = theta * gain
        return m, (
            _first_order_vjp(theta, couplings, beta, radius, (gain, u)) if with_vjp else None
        )
    if isinstance(beta, Tensor):
        m = vmf.phi_fused(theta, beta, radius)
    else:
        m = vmf.phi(theta, beta, radius)
    return m, (_first_order_vjp(theta, couplings, beta, radius) if with_vjp else None)


class _KnownField(torch.autograd.Function):
    """θ = h + J m at a constant m, given θ as evaluated without autograd: h̄ = θ̄, J̄ = θ̄ mᵀ."""

    @staticmethod
    def forward(ctx, couplings, field, m_prev, theta):
        ctx.save_for_backward(m_prev)
        return theta.clone() if theta is field else theta

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, theta_bar):
        (m_prev,) = ctx.saved_tensors
        return theta_bar @ m_prev.transpose(-1, -2), theta_bar, None, None


def _same_values(kept: Tensor, m_prev: Tensor) -> bool:
    """Whether ``m_prev`` holds the values of ``kept`` (same shape, ``kept`` not written since it
    was kept): the same memory and strides (e.g. a solver's solution viewed again) answer
    without reading it, other tensors are compared."""
    same_memory = (
        m_prev._version == kept._version
        and kept.data_ptr() == m_prev.data_ptr()
        and kept.stride() == m_prev.stride()
        and kept.dtype == m_prev.dtype
        and kept.device == m_prev.device
    )
    return same_memory or torch.equal(kept, m_prev)


def _parameter_backward(m_prev: Tensor, couplings: Tensor, field: Tensor) -> bool:
    """Whether the order-2 step's couplings part takes :class:`_CouplingTerms` (autograd on, a
    constant m_prev, couplings or field differentiable, same shapes as the plain path)."""
    return (
        torch.is_grad_enabled()
        and not m_prev.requires_grad
        and (couplings.requires_grad or field.requires_grad)
        and field.shape == m_prev.shape
        and couplings.shape[:-2] == m_prev.shape[:-2]
    )


class _CouplingTerms(torch.autograd.Function):
    r"""θ = h + J m, Kθ, Σ_j J²_ij b_j and tr K of the order-2 step at a constant m (no gradient
    to m: the implicit backward's f(z*) at a detached z*), with a hand-written backward to the
    couplings and the field instead of autograd's chain of N × N elementwise nodes.

    With O_ij = θ_i·(w_j m_j), W = J² ⊙ O, Kθ = W m + (Σ_j J² b_j) θ and (Σ_j J² b_j, tr K) =
    J² (b, D b + w s²): given (θ̄, Σ̄, t̄r, K̄θ), θ̄ ← θ̄ + Σ K̄θ + (J² ⊙ K̄θ mᵀ)(w m),
    Σ̄ ← Σ̄ + θ·K̄θ, S̄ = (K̄θ mᵀ) ⊙ O + (Σ̄, t̄r)(b, D b + w s²)ᵀ the gradient of J², and
    h̄ = θ̄, J̄ = θ̄ mᵀ + 2 J ⊙ S̄. ``squared`` is J² (without a graph of its own). The fifth
    output, W, is not differentiable (it feeds the closed-form VJP).
    """

    @staticmethod
    def forward(ctx, couplings, field, m_prev, squared, columns, weighted_m, known):
        if known is None:
            theta = torch.matmul(couplings, m_prev).add_(field)
            overlaps = theta @ weighted_m.transpose(-1, -2)  # θ_i·(w_j m_j)
            weighted = squared * overlaps
            sums = squared @ columns
            k_scalar, trace = sums[..., :1], sums[..., 1:]
            k_theta = (weighted @ m_prev).addcmul_(k_scalar, theta)
        else:  # the same numbers from an evaluation without autograd; O again in backward
            theta, k_scalar, trace, k_theta, weighted = known
            overlaps = None
        saved = (couplings, m_prev, squared, columns, weighted_m, overlaps, theta, k_scalar)
        ctx.save_for_backward(*saved)
        ctx.mark_non_differentiable(weighted)
        return theta, k_scalar, trace, k_theta, weighted

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, theta_bar, scalar_bar, trace_bar, k_theta_bar, _):
        couplings, m_prev, squared, columns, weighted_m, overlaps, theta, k_scalar = (
            ctx.saved_tensors
        )
        theta_bar = torch.addcmul(theta_bar, k_theta_bar, k_scalar)
        scalar_bar = scalar_bar + (theta * k_theta_bar).sum(-1, keepdim=True)
        if overlaps is None:
            overlaps = theta @ weighted_m.transpose(-1, -2)
        w_bar = k_theta_bar @ m_prev.transpose(-1, -2)  # ∂/∂W
        s_bar = torch.mul(w_bar, overlaps)
        theta_bar += w_bar.mul_(squared) @ weighted_m  # ∂/∂O = W̄ ⊙ J², through O = θ (w m)ᵀ
        s_bar += torch.cat([scalar_bar, trace_bar], -1) @ columns.transpose(-1, -2)
        couplings_bar = s_bar.mul_(couplings).mul_(2.0)
        couplings_bar += theta_bar @ m_prev.transpose(-1, -2)
        return couplings_bar, theta_bar, None, None, None, None, None


def _vector_step_couplings_backward(
    m_prev: Tensor,
    couplings: Tensor,
    field: Tensor,
    beta,
    radius: float,
    squared,
    with_vjp: bool,
    known: list | None = None,
):
    """:func:`_vector_step` at order 2 with its couplings part in :class:`_CouplingTerms`
    (``known``: θ, Σ_j J² b_j, tr K, Kθ and W already evaluated at m_prev)."""
    with torch.no_grad():
        squared = couplings * couplings if squared is None else squared.detach()
        s2 = (m_prev * m_prev).sum(-1)
        tangential, weight = vmf.large_d_covariance(m_prev, radius)
        columns = torch.stack([tangential, m_prev.shape[-1] * tangential + weight * s2], -1)
        weighted_m = weight[..., None] * m_prev
    theta, k_scalar, trace, k_theta, weighted = _CouplingTerms.apply(
        couplings, field, m_prev, squared, columns, weighted_m, known
    )
    m, norm2, u = vmf.phi_terms(theta, beta, radius)
    return _second_order_tail(
        m_prev, couplings, beta, radius, squared, with_vjp,
        m, norm2, u, theta, k_scalar, trace, k_theta, s2, weight, weighted, weighted_m,
    )  # fmt: skip


def _first_order_vjp(
    theta: Tensor, couplings: Tensor, beta, radius: float, scales: tuple | None = None
):
    """y ↦ Jᵀ(g y + (g'/r)(θ·y) θ), the naive step's VJP at the local field θ (``scales``:
    (g, u) of :func:`~spinformer.physics.vmf.phi_gain` at θ when the caller has them)."""
    with torch.no_grad():
        theta = theta.detach()
        beta = beta.detach() if isinstance(beta, Tensor) else beta
        gain, u = vmf.phi_gain(theta, beta, radius) if scales is None else scales
        g1, _ = _radial_slopes(u, beta, radius)
        transposed = couplings.detach().transpose(-1, -2)
    buffer: list[Tensor] = []  # θ ⊙ y, allocated at the first product and reused

    def first(y: Tensor) -> Tensor:
        if not buffer:
            buffer.append(torch.empty_like(theta))
        along = torch.mul(theta, y, out=buffer[0]).sum(-1, keepdim=True).mul_(g1)
        return transposed @ torch.mul(y, gain).addcmul_(theta, along)

    return first


def _second_order_vjp(
    m_prev, couplings, squared, s2, weight, theta, norm2, u, g1, g2, radial, k_scalar, trace,
    k_theta, weighted, weighted_m, beta, radius: float,
):  # fmt: skip
    """The second-order step's VJP from the step's intermediates (see :func:`vector_step_vjp`)."""
    dim = m_prev.shape[-1]
    r2 = radius**2
    b3 = beta**3 / r2
    one_u = 1.0 + u
    gain = beta / one_u  # g: φ = g θ
    transposed = couplings.transpose(-1, -2)
    weighted_t = weighted.transpose(-1, -2)
    m_t = m_prev.transpose(-1, -2)
    tiny = torch.finfo(theta.dtype).tiny
    spread = g2 - g1
    # per-site coefficients of the product, fixed at m_prev
    du = b3 / (2.0 * beta * u)  # du/d|θ|²
    dg1 = du * b3 * (1.0 + 3.0 * u) / (u**2 * one_u**3)  # d(g'/r)/d|θ|²
    dg2 = du * b3 * (3.0 + 9.0 * u + 6.0 * u * u - 6.0 * u**3) / (u**4 * one_u**3)  # dg''/d|θ|²
    q_coef = torch.where(norm2 > tiny, spread / norm2.clamp_min(tiny), 0.0)  # 0 where clamped
    alpha = gain + 0.5 * (spread * radial + g1 * trace) + k_scalar * g1
    beside = trace - radial
    radial_dg2 = radial * dg2
    slope_s = 2.0 / (r2 + s2) ** 2  # dw/ds²
    inv_2r2 = 1.0 / (2.0 * r2)
    buffer: list[Tensor] = []  # k̄ mᵀ, allocated at the first product and reused

    def second(y: Tensor) -> Tensor:
        along = (theta * y).sum(-1, keepdim=True)
        c_bar = 0.5 * along  # ∂/∂c
        q_bar = c_bar * q_coef  # ∂/∂(θᵀKθ)
        g1_bar = (k_theta * y).sum(-1, keepdim=True) + c_bar * beside
        n_bar = g1_bar * dg1 + c_bar * radial_dg2 - q_bar * radial  # ∂/∂|θ|²
        k_bar = torch.mul(y, g1).addcmul_(theta, q_bar)  # ∂/∂(Kθ)
        if not buffer:
            buffer.append(k_bar.new_empty((*k_bar.shape[:-1], m_t.shape[-1])))
        overlap = torch.matmul(k_bar, m_t, out=buffer[0]).mul_(squared)  # J² k̄_i·m_j
        # θ̄ = g y + ½ c y + (g'/r)(θ·y) θ + 2 n̄ θ + q̄ Kθ + (Σ J² b) k̄ + Σ_j J² w_j (k̄·m_j) m_j
        coefficient = 2.0 * (c_bar * g1 + n_bar) + k_scalar * q_bar
        theta_bar = torch.mul(y, alpha).addcmul_(theta, coefficient).addcmul_(k_theta, q_bar)
        theta_bar += overlap @ weighted_m
        across = overlap.transpose(-1, -2) @ theta  # Σ_i J² (k̄_i·m_j) θ_i
        k_along = g1 * along + q_bar * norm2  # θ·k̄
        # Σ_i J²_ij (k̄s_i, t̄r_i) as two rows times J² (which reads J² along its rows: several
        # times faster on the CPU than the transposed J² times two columns)
        rows = torch.cat([k_along, c_bar * g1], -1).transpose(-1, -2)
        along_j, trace_j = (rows @ squared).unbind(-2)
        w_bar = (m_prev * across).sum(-1) + s2 * trace_j
        b_bar = along_j + dim * trace_j
        s_bar = weight * trace_j - b_bar * inv_2r2 + w_bar * slope_s
        out = transposed @ theta_bar
        out += weighted_t @ k_bar
        return out.addcmul_(across, weight[..., None]).addcmul_(m_prev, 2.0 * s_bar[..., None])

    return second


def _step_fn(spin: Spin, couplings: Tensor, field, beta: Tensor, radius: float | None, order: int):
    if spin == "ising":
        b = beta[..., None] if beta.ndim else beta
        return lambda m: _ising_step(m, couplings, field, b, order)
    if radius is None or not radius > 0:
        raise ValueError(f"radius must be a positive number for vector spins, got {radius!r}")
    b = beta[..., None, None] if beta.ndim else beta
    return lambda m: vector_step(m, couplings, field, b, radius, order)


def _check_spin(spin: str) -> None:
    if spin not in ("ising", "vector"):
        raise ValueError(f"spin must be 'ising' or 'vector', got {spin!r}")


def dynamical_mean_field(
    m0: Tensor,
    couplings: Tensor,
    field: Tensor | float,
    beta: Tensor | float,
    steps: int,
    spin: Spin = "vector",
    radius: float | None = None,
    order: int = 1,
) -> Tensor:
    """Trajectory m(0..steps) of the dynamical mean field, shape (steps + 1, *m0.shape)."""
    _check_spin(spin)
    _check_order(order)
    check_positive_int(steps, "steps")
    beta = _check_inputs(m0, couplings, beta)
    step = _step_fn(spin, couplings, field, beta, radius, order)
    states = [m0]
    for _ in range(steps):
        states.append(step(states[-1]))
    return torch.stack(states)


def stationary_dynamical_mean_field(
    couplings: Tensor,
    field: Tensor,
    beta: Tensor | float,
    spin: Spin = "vector",
    radius: float | None = None,
    order: int = 1,
    m0: Tensor | None = None,
    batch_dims: int | None = None,
    **solver_options,
) -> FixedPointResult:
    """Stationary state m* = step(m*) by :func:`spinformer.solvers.fixed_point` (implicit backward).

    ``m0`` defaults to zero; ``batch_dims`` defaults to all leading dims before the site dims.
    ``solver_options`` go to ``fixed_point`` (``method``, ``tol``, ``max_iter``, ``implicit``...).
    """
    _check_spin(spin)
    _check_order(order)
    check_finite(field, "field")
    start = torch.zeros_like(field) if m0 is None else m0
    beta = _check_inputs(start, couplings, beta)
    step = _step_fn(spin, couplings, field, beta, radius, order)
    site_dims = 1 if spin == "ising" else 2
    if batch_dims is None:
        batch_dims = start.ndim - site_dims
    return fixed_point(step, start, batch_dims=batch_dims, **solver_options)
