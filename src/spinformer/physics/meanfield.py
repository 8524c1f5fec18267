r"""Mean-field responses and the naive mean-field and TAP free energies (Ising and vector spins).

**Single-site responses.** Ising spins respond with m = tanh(βθ); a vector spin on the sphere
of radius R in D dimensions is von Mises–Fisher, with its exact mean, covariance and
log-normalizer and the parameter-free large-D response
φ(θ) = βθ/(1 + √(1 + β²|θ|²/R²)) (R² = D/2 − 1; Bal, "Spin-model transformers", 2023) all in
:mod:`spinformer.physics.vmf` (``bessel_response``, ``large_d_response``,
``vector_covariance`` and ``transformer_radius`` are re-exported here).

**Free energies.** Naive mean field and TAP (Thouless, Anderson & Palmer 1977; Plefka 1982) are
stationary points of a variational ln Z written here in the effective fields θ (so that no
inverse Bessel ratio is needed), with m = m(θ) the single-site response and C(θ) its covariance:

.. math::

    \Phi(\theta) = \sum_i\big[\ln z(\theta_i) - \beta\,\theta_i\cdot m_i\big]
      + \beta\Big(\tfrac12\sum_{ij}J_{ij}\,m_i\cdot m_j + \sum_i h_i\cdot m_i\Big)
      + \underbrace{\tfrac{\beta^2}{4}\sum_{i\ne j}J_{ij}^2\,\operatorname{tr}(C_iC_j)}_{\text{TAP only}} .

ln z is ln 2cosh βθ (Ising) or the normalized log Bessel function (vector, uniform probability
measure on the sphere, as in ``method="exact"``). Stationarity gives θ = h + Jm (naive) and, for
Ising TAP, the textbook θ_i = h_i + Σ_j J_ij m_j − β m_i Σ_j J_ij²(1 − m_j²). For vector TAP the
reaction term is θ_i ← h_i + Σ_j J_ij m_j + β⁻² C_i⁻¹ ∂O/∂θ_i (O the Onsager term), because
∂m_i/∂θ_i = βC_i; the Onsager term and both reaction fields are :mod:`spinformer.physics.onsager`. The fixed point is solved by :mod:`spinformer.solvers`; every observable then
follows from Φ by autodiff (:mod:`spinformer.physics._variational`). Plefka's expansion makes
naive mean field exact to first order in J and TAP to second: at couplings scaled by ε the
magnetization errors scale as ε² and ε³.

**Which stationary point.** Below the critical temperature Φ has several stationary points
(the paramagnet becomes a saddle, ordered states appear; in a field the metastable state
survives), and a fixed-point solver converges to whichever its start leads to. In all four
cases ∇_θΦ = βM(F(θ) − θ) with M = ∂m/∂θ positive definite, so the stationary points are the
fixed points of the update F, and one is a local maximum of Φ (a local minimum of the
variational free energy −Φ/β, the physical solution) exactly when the eigenvalues of
1 − ∂F/∂θ are all positive. The solver therefore runs from the starts in ``STARTS`` (the
field, the two saturated states along the total field, the paramagnet) as one batch, and the
result is the locally stable point of largest Φ; ``extras`` report how many distinct
stationary points were found and whether the returned one is stable.

**Numerics.** Every single-site quantity is a function of β²R²|θ|² (``vmf_moments``), so the
potential is smooth at θ = 0 (zero field), and the Newton step that makes ln Z differentiable
uses 1 − ∂F/∂θ, which tends to 1 when the spins saturate, so β up to 1e8 stays finite. Above
``DENSE_JACOBIAN`` spin components that matrix is applied matrix-free (GMRES); with the
complete-graph geometry of large Curie–Weiss models every step is then O(N).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from spinformer._validation import as_tensor, check_beta, check_finite, check_positive_int
from spinformer.physics import onsager, vmf
from spinformer.physics._variational import (
    ResidualOperator,
    fixed_point_log_partition,
    map_jacobian,
)
from spinformer.physics.models import CompleteGraph, IsingModel, VectorSpinModel
from spinformer.physics.onsager import SiteCouplings
from spinformer.physics.thermo import (
    Thermodynamics,
    register_method,
    thermodynamics_from_log_partition,
)
from spinformer.physics.vmf import (  # re-exported: the single-spin responses live in vmf
    bessel_response as bessel_response,
)
from spinformer.physics.vmf import large_d_response as large_d_response
from spinformer.physics.vmf import transformer_radius as transformer_radius
from spinformer.physics.vmf import vector_covariance as vector_covariance
from spinformer.solvers import SolverWarning, fixed_point

__all__ = [
    "DENSE_JACOBIAN",
    "STARTS",
    "ising_response",
    "mean_field_thermodynamics",
]


def _beta_tensor(beta: Tensor | float, like: Tensor) -> Tensor:
    beta = as_tensor(beta, "beta", dtype=like.dtype, device=like.device)
    check_beta(beta)
    return beta


def ising_response(theta: Tensor, beta: Tensor | float) -> Tensor:
    """m = tanh(βθ), the mean of an Ising spin in the effective field θ."""
    check_finite(theta, "theta")
    beta = _beta_tensor(beta, theta)
    return torch.tanh(beta * theta)


def _site_couplings(model: IsingModel | VectorSpinModel) -> SiteCouplings:
    """The model's couplings as a dense matrix or, for the complete graph, its bond (O(N))."""
    if isinstance(model.lattice, CompleteGraph):
        return SiteCouplings.complete_graph(model.bond)
    return SiteCouplings(model.coupling_matrix)


# -- variational potentials Φ(θ; h, β) and fixed-point maps F(θ; h, β) -----------------------------


def _ising_potential(couplings: SiteCouplings, tap: bool):
    def potential(theta: Tensor, field: Tensor, beta: Tensor) -> Tensor:
        b = beta[..., None]
        x = b * theta
        m = torch.tanh(x)
        phi = (x + torch.nn.functional.softplus(-2.0 * x) - x * m).sum(-1)  # ln 2cosh x − x m
        phi = phi + beta * (m * (0.5 * couplings.apply(m, False) + field)).sum(-1)
        if tap:
            phi = phi + onsager.onsager_term(beta, couplings, 1.0 - m * m)
        return phi

    return potential


def _ising_map(couplings: SiteCouplings, tap: bool):
    def update(theta: Tensor, field: Tensor, beta: Tensor) -> Tensor:
        b = beta[..., None]
        m = torch.tanh(b * theta)
        new = field + couplings.apply(m, False)
        if tap:
            new = new - onsager.ising_reaction(m, b, couplings)
        return new

    return update


def _vector_potential(couplings: SiteCouplings, radius: float, tap: bool):
    def potential(theta: Tensor, field: Tensor, beta: Tensor) -> Tensor:
        log_z, m = vmf.log_normalizer_and_mean(theta, beta[..., None, None], radius)
        phi = log_z.sum(-1) - beta * (theta * m).sum((-1, -2))
        phi = phi + beta * (m * (0.5 * couplings.apply(m, True) + field)).sum((-1, -2))
        if tap:
            phi = phi + onsager.vector_onsager(theta, beta, radius, couplings)
        return phi

    return potential


def _vector_map(couplings: SiteCouplings, radius: float, tap: bool):
    def update(theta: Tensor, field: Tensor, beta: Tensor) -> Tensor:
        b = beta[..., None, None]
        new = field + couplings.apply(vmf.mean(theta, b, radius), True)
        if tap:
            new = new - onsager.vector_reaction(theta, beta, radius, couplings)
        return new

    return update


# -- several starts, the stable stationary point of lowest free energy -----------------------


STARTS = ("field", "ordered_up", "ordered_down", "paramagnet")
"""Starting effective fields of the stationary-point search, in this order (see below)."""


def _starting_fields(
    couplings: SiteCouplings, field: Tensor, vector: bool, radius: float
) -> Tensor:
    """θ₀ for each of ``STARTS``, stacked in front: (4, *batch, N[, D]).

    The field start is θ = h; the ordered starts are one mean-field step from the saturated
    states m = ±R û (û the direction of the total field, or the first axis if it vanishes;
    û = 1 for Ising); the paramagnet start is θ = 0.
    """
    if vector:
        total = field.sum(-2, keepdim=True)
        norm = total.norm(dim=-1, keepdim=True)
        axis = torch.zeros_like(total)
        axis[..., 0] = 1.0
        direction = torch.where(
            norm > 0, total / norm.clamp_min(torch.finfo(field.dtype).tiny), axis
        )
        saturated = radius * direction.expand_as(field)
    else:
        saturated = torch.ones_like(field)
    ordered = couplings.apply(saturated, vector)
    return torch.stack([field, field + ordered, field - ordered, torch.zeros_like(field)])


def _select(potential_values: Tensor, converged: Tensor, stable: Tensor) -> tuple[Tensor, Tensor]:
    """Index (per batch entry) of the start to return, and whether it is converged.

    Preference: converged and locally stable, then converged, then anything; within the best
    tier, the largest Φ (= the lowest variational free energy −Φ/β).
    """
    tier = converged.long() + (converged & stable).long()
    best = tier.amax(0, keepdim=True)
    score = torch.where(
        (tier == best) & torch.isfinite(potential_values),
        potential_values,
        torch.full_like(potential_values, -math.inf),
    )
    index = score.argmax(0)
    return index, converged.gather(0, index[None])[0]


def _distinct(theta: Tensor, converged: Tensor, batch_ndim: int) -> Tensor:
    """Number of distinct converged stationary points among the starts, shape batch."""
    flat = theta.reshape(*theta.shape[: 1 + batch_ndim], -1)
    scale = 1.0 + flat.abs().amax(-1).amax(0)
    gap = (flat[:, None] - flat[None, :]).abs().amax(-1)  # (S, S, *batch)
    same = gap <= 1e-6 * scale
    count = torch.zeros_like(converged[0], dtype=torch.long)
    for s in range(flat.shape[0]):
        seen = torch.zeros_like(converged[0])
        for t in range(s):
            seen = seen | (converged[t] & same[s, t])
        count = count + (converged[s] & ~seen).long()
    return count


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """values (S, *batch, *rest) at start index (*batch) -> (*batch, *rest)."""
    rest = values.ndim - 1 - index.ndim
    idx = index.reshape(1, *index.shape, *([1] * rest)).expand(1, *values.shape[1:])
    return values.gather(0, idx)[0]


def mean_field_thermodynamics(
    model: IsingModel | VectorSpinModel,
    tap: bool = False,
    tol: float = 1e-12,
    max_iter: int = 1000,
    solver: str = "anderson",
    damping: float = 1.0,
    susceptibility: bool = True,
) -> Thermodynamics:
    """Naive mean-field (``tap=False``) or TAP thermodynamics of an equilibrium spin model.

    The self-consistent effective fields θ are solved by :func:`spinformer.solvers.fixed_point`
    from each of the starts in ``STARTS`` at once (the field direction, the two ordered states,
    the paramagnet). Of the stationary points found, the result is the locally stable one
    (the eigenvalues of 1 − ∂F/∂θ all positive, see :mod:`spinformer.physics._variational`) of
    largest Φ, i.e. of lowest variational free energy. ln Z is Φ at that point, and m, U, C, χ
    are its autodiff derivatives (exact derivatives of the approximate ln Z).

    The result carries the per-sample ``converged``/``iterations`` flags of the returned
    point; ``extras`` holds ``residual``, ``effective_field``, ``stationary_points`` (number of
    distinct converged stationary points found), ``stable`` (whether the returned one is
    locally stable) and ``start`` (its index in ``STARTS``).
    """
    name = "tap" if tap else "mean_field"
    check_positive_int(max_iter, "max_iter")
    components = model.num_spins * (model.dim if isinstance(model, VectorSpinModel) else 1)
    if susceptibility and components > DENSE_JACOBIAN:
        raise ValueError(
            f"susceptibility=True needs the dense {components}x{components} matrix chi; for a "
            f"model this large (more than {DENSE_JACOBIAN} spin components) pass "
            "susceptibility=False"
        )
    couplings = _site_couplings(model)
    field = model.expanded_field()
    beta = model.expanded_beta()
    batch_ndim = len(model.batch_shape)
    vector = isinstance(model, VectorSpinModel)
    radius = model.radius if vector else 1.0
    if vector:
        potential = _vector_potential(couplings, radius, tap)
        fixed_map = _vector_map(couplings, radius, tap)
    else:
        potential = _ising_potential(couplings, tap)
        fixed_map = _ising_map(couplings, tap)
    field, beta = field.detach(), beta.detach()
    with torch.no_grad():
        starts = _starting_fields(couplings, field, vector, radius)
        result = fixed_point(
            lambda theta: fixed_map(theta, field, beta),
            starts,
            method=solver,
            tol=tol,
            max_iter=max_iter,
            damping=damping,
            batch_dims=1 + batch_ndim,
            warn=False,
        )
        thetas = result.solution.detach()
        values = potential(thetas, field, beta)
    flat_thetas = thetas.reshape(*thetas.shape[: 1 + batch_ndim], -1)
    finite = torch.isfinite(values) & torch.isfinite(flat_thetas).all(-1)
    if flat_thetas.shape[-1] <= DENSE_JACOBIAN:
        jacobian = map_jacobian(fixed_map, thetas, field, beta, 1 + batch_ndim)
        eye = torch.eye(jacobian.shape[-1], dtype=jacobian.dtype, device=jacobian.device)
        complement = eye - jacobian
        finite = finite & torch.isfinite(complement).all(-1).all(-1)
        complement = torch.where(finite[..., None, None], complement, eye)
        smallest = torch.linalg.eigvals(complement).real.amin(-1)
    else:  # K applied matrix-free (O(N) for the complete graph)
        safe = torch.where(
            finite.reshape(*finite.shape, *([1] * (thetas.ndim - finite.ndim))),
            thetas,
            torch.zeros_like(thetas),
        )
        smallest = ResidualOperator(
            fixed_map, safe, field, beta, 1 + batch_ndim
        ).smallest_eigenvalue()
        complement = None
    converged = result.converged & finite
    stable = converged & (smallest > -_STABILITY_SLACK)
    index, chosen_converged = _select(values, converged, stable)
    theta_star = _gather(thetas, index)
    if complement is not None:
        chosen_complement: Tensor | ResidualOperator = _gather(complement, index)
    else:
        chosen_complement = ResidualOperator(fixed_map, theta_star, field, beta, batch_ndim)
    if not bool(chosen_converged.all()):
        warnings.warn(
            f"{name}: no start converged to a stationary point for "
            f"{int((~chosen_converged).sum())} of {chosen_converged.numel()} batch entries "
            f"(tol={tol}, max_iter={max_iter}); their result is not a solution",
            SolverWarning,
            stacklevel=2,
        )

    def log_partition(field_: Tensor, beta_: Tensor) -> Tensor:
        return fixed_point_log_partition(
            potential, fixed_map, theta_star, chosen_complement, field_, beta_
        )

    return thermodynamics_from_log_partition(
        log_partition,
        model,
        name,
        susceptibility=susceptibility,
        converged=chosen_converged,
        iterations=_gather(result.iterations, index),
        extras={
            "residual": _gather(result.residual, index),
            "effective_field": theta_star,
            "stationary_points": _distinct(thetas, converged, batch_ndim),
            "stable": _gather(stable, index),
            "start": index,
        },
    )


DENSE_JACOBIAN = 1024
"""Largest number of spin components (N, or N·D) for which 1 − ∂F/∂θ is formed densely;
above it the matrix is applied matrix-free (:class:`~spinformer.physics._variational.ResidualOperator`)."""

_STABILITY_SLACK = 1e-9
"""Eigenvalues of 1 − ∂F/∂θ above −slack count as stable (a critical point has one at 0)."""


@register_method("mean_field", IsingModel, VectorSpinModel)
def _mean_field(model: IsingModel | VectorSpinModel, **options) -> Thermodynamics:
    """Naive mean field: θ = h + Jm, m = m(θ) (see :func:`mean_field_thermodynamics`)."""
    return mean_field_thermodynamics(model, tap=False, **options)


@register_method("tap", IsingModel, VectorSpinModel)
def _tap(model: IsingModel | VectorSpinModel, **options) -> Thermodynamics:
    """TAP: mean field with the Onsager reaction term (see :func:`mean_field_thermodynamics`)."""
    return mean_field_thermodynamics(model, tap=True, **options)
