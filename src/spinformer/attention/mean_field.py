r"""Mean-field self-consistency of attention.

Replacing the query spin by its mean :math:`m` turns every attention row into the
self-consistency equation

.. math::

    m = f(m) = \sum_j x_j\,\alpha_j(m),\qquad
    \alpha_j(m) = \operatorname{softmax}_j\!\big(\beta\, x_j^\top W_{QK}\, m\big),

with the tokens :math:`x_j` as the states and :math:`W_{QK} = W_K^\top W_Q` the couplings
(Bal, "Transformers are secretly collectives of spin systems", 2021). Every query :math:`i` is an initial condition :math:`m_i^{(0)} = x_i`; one
application of :math:`f` is value-free attention, and iterating it converges to an attractor:
this is modern Hopfield retrieval (Ramsauer et al., "Hopfield Networks is All You Need", 2020).
The iteration itself is the physical dynamics, so :func:`self_consistent` iterates :math:`f`
(Picard) by default and basins of attraction are measured with it.

Jacobian. Write :math:`s_j = \beta\,x_j^\top W m`, so
:math:`\partial s_j/\partial m_c = \beta (W^\top x_j)_c` and
:math:`\partial\alpha_j/\partial m_c = \alpha_j(\partial_c s_j - \sum_k \alpha_k \partial_c s_k)`.
Then

.. math::

    \frac{\partial f_a}{\partial m_c}
    = \beta\sum_j \alpha_j x_{ja}\big[W^\top(x_j - \langle x\rangle)\big]_c
    = \beta \sum_b \operatorname{Cov}_\alpha(x)_{ab}\, W_{bc},
    \qquad\text{i.e.}\qquad \mathcal{J} = \beta\,\operatorname{Cov}_\alpha(x)\,W_{QK}

in the convention of ``torch.autograd.functional.jacobian`` (row index = output component).
The transpose-convention form :math:`\beta\operatorname{Cov}_\alpha(x)W_{QK}^\top` that is often
quoted (scores written :math:`m^\top W_{QK} x_j`) is a different matrix but has the same
eigenvalues, because :math:`\operatorname{Cov}` is symmetric: eig(CW) = eig(WC) = eig((WC)ᵀ) =
eig(CWᵀ). A fixed point is linearly stable under the iteration iff the spectral radius
:math:`\rho(\mathcal{J}) < 1`.

Phases. The critical point of the high-temperature branch and the phase diagram are
:mod:`spinformer.attention.critical`. For tokens :math:`\{+v, -v\}` with :math:`|v|^2 = 2` and
:math:`W = I` the map has a pitchfork at :math:`\beta_c = 1/2`, with :math:`m = \pm s v`,
:math:`s = \tanh(2\beta s)` above it; in :math:`D = 1` with patterns :math:`\pm 1` the equation
is Curie–Weiss, :math:`m = \tanh(\beta m)`.

Tolerances. :math:`f` maps into the convex hull of the tokens, so :math:`|f(m)| \le R =
\max_j|x_j|`. Fixed points are solved in coordinates shifted by :math:`2R\,e` (:math:`e` a unit
vector), which makes the solvers' relative residual :math:`|f - z|/|f + 2Re|` a residual relative
to the token radius (between :math:`|f(m) - m|/3R` and :math:`|f(m)-m|/R`) and keeps it
meaningful at the symmetric solution :math:`m = 0`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from spinformer._validation import as_tensor, check_beta, check_finite, check_square, describe
from spinformer.solvers import fixed_point

__all__ = [
    "FixedPoints",
    "SelfConsistentResult",
    "fixed_points",
    "mean_field_jacobian",
    "mean_field_map",
    "self_consistent",
    "spectral_radius",
]

_MOVED = ("CriticalBeta", "PhaseDiagram", "critical_beta", "critical_beta_qk", "phase_diagram")


def __getattr__(name: str):
    """The critical point and the phase diagram moved to :mod:`spinformer.attention.critical`."""
    if name in _MOVED:
        from spinformer.attention import critical

        return getattr(critical, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# the map, its Jacobian, and boundary checks


def _check_system(x: Tensor, w_qk: Tensor) -> torch.Size:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError(f"x must be a floating tensor of shape (..., N, D), got {describe(x)}")
    if not isinstance(w_qk, Tensor) or not w_qk.is_floating_point() or w_qk.ndim < 2:
        raise ValueError(
            f"w_qk must be a floating tensor of shape (..., D, D), got {describe(w_qk)}"
        )
    dim = x.shape[-1]
    if w_qk.shape[-2:] != (dim, dim):
        raise ValueError(
            f"w_qk must have shape (..., {dim}, {dim}) to couple tokens of dimension {dim},"
            f" got {tuple(w_qk.shape)}"
        )
    check_finite(x, "x")
    check_finite(w_qk, "w_qk")
    try:
        return torch.broadcast_shapes(x.shape[:-2], w_qk.shape[:-2])
    except RuntimeError as err:
        raise ValueError(
            f"x and w_qk batch shapes must broadcast, got {tuple(x.shape[:-2])} and"
            f" {tuple(w_qk.shape[:-2])}"
        ) from err


def _beta_tensor(beta: Tensor | float, batch: torch.Size, like: Tensor) -> Tensor:
    beta_t = as_tensor(beta, "beta", dtype=like.dtype, device=like.device)
    check_beta(beta_t)
    if beta_t.ndim > len(batch):
        raise ValueError(
            f"beta must broadcast to the batch shape {tuple(batch)}, got {tuple(beta_t.shape)}"
        )
    try:
        return torch.broadcast_to(beta_t, batch)
    except RuntimeError as err:
        raise ValueError(
            f"beta must broadcast to the batch shape {tuple(batch)}, got {tuple(beta_t.shape)}"
        ) from err


def _token_radius(x: Tensor) -> Tensor:
    """R = max_i |x_i| per system (*batch), without overflow of the squares (|x| = s|x/s|)."""
    tiny = torch.finfo(x.dtype).tiny
    if x.shape[-2] == 0:
        return torch.full(x.shape[:-2], tiny, dtype=x.dtype, device=x.device)
    size = x.detach().abs().amax(dim=(-1, -2), keepdim=True).clamp_min(tiny)
    return ((x / size).norm(dim=-1).amax(dim=-1) * size[..., 0, 0]).clamp_min(tiny)


def _check_scores(keys: Tensor, radius: Tensor, beta: Tensor) -> None:
    """Raise, naming the user's inputs, unless every score β m·(x_j W_QK) with |m| <= R is finite.

    Finite tokens can still overflow here; unchecked, the softmax would turn the overflow into
    NaN and the solver would report it as a diverged sample rather than an input out of range.
    """
    bound = beta * radius * _token_radius(keys)
    if not bool(torch.isfinite(bound).all()):
        raise ValueError(
            f"x, w_qk and beta are outside the {keys.dtype} range: the scores β x_i·W_QK x_j"
            " overflow; rescale x or w_qk, or use float64"
        )


def _weights(m: Tensor, keys: Tensor, beta: Tensor) -> Tensor:
    """α (…, Q, N) for magnetizations m (…, Q, D), effective keys x W (…, N, D), β (…)."""
    scores = m @ keys.transpose(-1, -2)
    return torch.softmax(beta[..., None, None] * scores, dim=-1)


def mean_field_map(m: Tensor, x: Tensor, w_qk: Tensor, beta: Tensor | float) -> Tensor:
    """f(m) = Σ_j x_j softmax_j(β x_jᵀ W_QK m) for magnetizations m of shape (*batch, Q, D).

    ``x`` is (*batch, N, D), ``w_qk`` (*batch, D, D) and ``beta`` broadcasts to the batch shape.
    One application from m = x is value-free attention with W_V = I.
    """
    batch = _check_system(x, w_qk)
    if not isinstance(m, Tensor) or m.ndim < 2 or m.shape[-1] != x.shape[-1]:
        raise ValueError(f"m must have shape (..., Q, {x.shape[-1]}), got {describe(m)}")
    beta_t = _beta_tensor(beta, batch, x)
    keys = x @ w_qk
    return _weights(m, keys, beta_t) @ x


def mean_field_jacobian(m: Tensor, x: Tensor, w_qk: Tensor, beta: Tensor | float) -> Tensor:
    """∂f_a/∂m_c = β [Cov_α(x) W_QK]_ac at magnetizations m (*batch, Q, D) → (*batch, Q, D, D).

    Derived in the module docstring; the covariance is under the weights α(m).
    """
    batch = _check_system(x, w_qk)
    beta_t = _beta_tensor(beta, batch, x)
    return _jacobian(m, x, x @ w_qk, w_qk, beta_t)


def _jacobian(m: Tensor, x: Tensor, keys: Tensor, w_qk: Tensor, beta: Tensor) -> Tensor:
    alpha = _weights(m, keys, beta)  # (…, Q, N)
    mean = alpha @ x  # (…, Q, D)
    second = torch.einsum("...qn,...na,...nb->...qab", alpha, x, x)
    cov = second - mean.unsqueeze(-1) * mean.unsqueeze(-2)
    return beta[..., None, None, None] * (cov @ w_qk.unsqueeze(-3))


def spectral_radius(matrix: Tensor) -> Tensor:
    """max |eigenvalue| of square matrices (…, D, D).

    The entries are checked to be finite and the matrix is divided by its largest |entry| s
    before LAPACK sees it, ρ(A) = s·ρ(A/s): the eigenvalue routine crashes the interpreter on
    NaN or infinite entries and overflows on entries near the top of the dtype's range. A
    radius beyond the dtype's range is ``inf``.
    """
    if not isinstance(matrix, Tensor) or not (matrix.is_floating_point() or matrix.is_complex()):
        raise ValueError(
            f"matrix must be a floating tensor of shape (..., D, D), got {describe(matrix)}"
        )
    check_square(matrix, "matrix")
    check_finite(matrix, "matrix")
    return _spectral_radius(matrix)


def _spectral_radius(matrix: Tensor) -> Tensor:
    """:func:`spectral_radius` of a finite square matrix (rescaled by its largest |entry|)."""
    real = matrix.real.dtype if matrix.is_complex() else matrix.dtype
    if matrix.shape[-1] == 0:
        return torch.zeros(matrix.shape[:-2], dtype=real, device=matrix.device)
    scale = matrix.detach().abs().amax(dim=(-1, -2), keepdim=True)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    radius = torch.linalg.eigvals(matrix / safe).abs().amax(dim=-1).to(real)
    return radius * safe[..., 0, 0].to(real)


def _jacobian_radius(jacobian: Tensor) -> Tensor:
    """ρ of the Jacobians of a user's system; a non-finite Jacobian is an input out of range."""
    if not bool(torch.isfinite(jacobian).all()):
        raise ValueError(
            f"x, w_qk and beta are outside the {jacobian.dtype} range: the Jacobian"
            " β Cov(x) W_QK of the mean-field map is not finite (overflow); rescale x or w_qk,"
            " or use float64"
        )
    return _spectral_radius(jacobian)


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-6


def _solve(
    x: Tensor,
    keys: Tensor,
    beta: Tensor,
    init: Tensor,
    radius: Tensor,
    *,
    method: str,
    tol: float,
    max_iter: int,
    damping: float,
    implicit: bool,
    warn: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Solve m = f(m) for init (…, Q, D); one sample per query. See "Tolerances" above."""
    dim = x.shape[-1]
    shift = (2.0 * radius / math.sqrt(dim))[..., None, None].expand(*radius.shape, 1, dim)

    def shifted_map(z: Tensor) -> Tensor:
        return _weights(z - shift, keys, beta) @ x + shift

    result = fixed_point(
        shifted_map,
        init + shift,
        method=method,
        tol=tol,
        max_iter=max_iter,
        damping=damping,
        batch_dims=init.ndim - 1,
        implicit=implicit,
        warn=warn,
    )
    return result.solution - shift, result.converged, result.iterations, result.residual


# ---------------------------------------------------------------------------------------------
# self-consistent magnetizations


@dataclass(frozen=True)
class SelfConsistentResult:
    """Converged magnetizations of every query with per-query evidence.

    Attributes:
        magnetization: m_i with m_i = f(m_i), shape (*batch, Q, D).
        converged: bool (*batch, Q).
        iterations: iterations used per query (*batch, Q).
        residual: final residual relative to the token radius (*batch, Q).
        spectral_radius: ρ of the Jacobian at each m_i (*batch, Q), or ``None`` if not asked.
        beta: the inverse temperature, broadcast to the batch shape.
    """

    magnetization: Tensor
    converged: Tensor
    iterations: Tensor
    residual: Tensor
    spectral_radius: Tensor | None
    beta: Tensor

    @property
    def stable(self) -> Tensor | None:
        """ρ < 1 per query (``None`` if the spectral radius was not computed)."""
        return None if self.spectral_radius is None else self.spectral_radius < 1


def self_consistent(
    x: Tensor,
    w_qk: Tensor,
    beta: Tensor | float,
    init: Tensor | None = None,
    *,
    method: str = "picard",
    tol: float | None = None,
    max_iter: int = 2000,
    damping: float = 1.0,
    implicit: bool = True,
    stability: bool = False,
    warn: bool = True,
) -> SelfConsistentResult:
    """Solve m = f(m) (module docstring) from every query, m_i⁽⁰⁾ = x_i, or from ``init``.

    Args:
        x: tokens (*batch, N, D), the states of the ensembles.
        w_qk: couplings W_QK = W_Kᵀ W_Q, (*batch, D, D) (broadcast).
        beta: inverse temperature > 0, broadcastable to the batch shape.
        init: initial magnetizations (*batch, Q, D); default the tokens themselves.
        method: a registered solver; "picard" is the attention dynamics itself.
        tol: residual tolerance relative to the token radius (default 1e-12 in float64,
            1e-6 in float32).
        max_iter, damping, implicit, warn: passed to :func:`spinformer.solvers.fixed_point`
            (``implicit=True``: gradients by the implicit function theorem).
        stability: also compute the spectral radius of the Jacobian at each solution.

    >>> x = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    >>> m = self_consistent(x, torch.eye(1, dtype=torch.float64), 1.5).magnetization
    >>> round(float(m[0, 0]), 10)  # Curie–Weiss: m = tanh(1.5 m)
    0.8585596366
    """
    batch = _check_system(x, w_qk)
    beta_t = _beta_tensor(beta, batch, x)
    x_b = x.expand(*batch, *x.shape[-2:])
    if init is None:
        init = x_b
    elif not isinstance(init, Tensor) or init.ndim < 2 or init.shape[-1] != x.shape[-1]:
        raise ValueError(f"init must have shape (..., Q, {x.shape[-1]}), got {describe(init)}")
    else:
        check_finite(init, "init")
        try:
            full = torch.broadcast_shapes(init.shape[:-2], batch)
        except RuntimeError as err:
            raise ValueError(
                f"init batch shape must broadcast to {tuple(batch)}, got {tuple(init.shape[:-2])}"
            ) from err
        if full != batch:
            raise ValueError(
                f"init batch shape must broadcast to {tuple(batch)}, got {tuple(init.shape[:-2])}"
            )
        init = init.to(x.dtype).expand(*batch, *init.shape[-2:])
    if x.shape[-2] == 0 and init.shape[-2] > 0:
        raise ValueError(
            f"x must hold at least one token (the states of every ensemble), got {tuple(x.shape)}"
        )
    keys = x @ w_qk
    radius = _token_radius(x_b)
    _check_scores(keys, radius, beta_t)
    m, converged, iterations, residual = _solve(
        x_b,
        keys,
        beta_t,
        init,
        radius,
        method=method,
        tol=_default_tol(x.dtype) if tol is None else tol,
        max_iter=max_iter,
        damping=damping,
        implicit=implicit,
        warn=warn,
    )
    rho = None
    if stability:
        with torch.no_grad():
            rho = _jacobian_radius(_jacobian(m.detach(), x_b, keys, w_qk, beta_t))
    return SelfConsistentResult(m, converged, iterations, residual, rho, beta_t)


# ---------------------------------------------------------------------------------------------
# all fixed points of one system


@dataclass(frozen=True)
class FixedPoints:
    """The distinct fixed points of one system at one β, with stability and basins.

    Attributes:
        magnetization: the K distinct solutions of m = f(m), shape (K, D); stable ones first,
            then by decreasing basin fraction.
        spectral_radius: ρ of the Jacobian at each (K,); ``stable`` = ρ < 1.
        basin_fraction: fraction of the queries (m⁽⁰⁾ = x_i) whose iteration ends at each (K,).
        assignment: index of the fixed point each query flows to, −1 if it did not converge (N,).
        residual: residual of each fixed point relative to the token radius (K,).
        beta: the inverse temperature.
        unconverged_fraction: fraction of queries whose iteration did not converge.
    """

    magnetization: Tensor
    spectral_radius: Tensor
    basin_fraction: Tensor
    assignment: Tensor
    residual: Tensor
    beta: float
    unconverged_fraction: float

    @property
    def stable(self) -> Tensor:
        return self.spectral_radius < 1

    @property
    def num_fixed_points(self) -> int:
        return int(self.magnetization.shape[0])

    @property
    def num_stable(self) -> int:
        return int(self.stable.sum())


def _distinct(points: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
    """Representatives of points closer than ``tolerance`` and each point's representative index."""
    close = torch.cdist(points, points) <= tolerance
    first = close.to(torch.uint8).argmax(dim=1)  # first point within tolerance (itself at worst)
    representatives, labels = torch.unique(first, return_inverse=True)
    return representatives, labels


def fixed_points(
    x: Tensor,
    w_qk: Tensor,
    beta: float,
    *,
    num_random: int = 32,
    seed: int = 0,
    tol: float | None = None,
    max_iter: int = 2000,
    root_max_iter: int = 100,
    distinct_tol: float = 1e-4,
) -> FixedPoints:
    """All distinct fixed points of m = f(m) reachable from many starts, with their stability.

    Starts: every query x_i, the token mean (the high-temperature solution), and ``num_random``
    Gaussian points of the tokens' scale (seeded). Each start is iterated (the attention dynamics,
    which finds the attractors and their basins) and also solved with Anderson acceleration (a
    root finder, which also lands on unstable solutions such as m = 0 above β_c; it gets
    ``root_max_iter`` iterations, as starts between basins can make it wander). Solutions closer
    than ``distinct_tol``·R (R the token radius) are the same fixed point.

    Args:
        x: tokens (N, D) of one system; w_qk: (D, D); beta: a positive float.
    """
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise ValueError(
            f"x must be a single system of tokens with shape (N, D), got {describe(x)}"
        )
    _check_system(x, w_qk)
    if w_qk.ndim != 2:
        raise ValueError(
            f"w_qk must have shape (D, D) for a single system, got {tuple(w_qk.shape)}"
        )
    beta_t = _beta_tensor(beta, torch.Size([]), x)
    if isinstance(num_random, bool) or not isinstance(num_random, int) or num_random < 0:
        raise ValueError(f"num_random must be a non-negative integer, got {num_random!r}")
    if not distinct_tol > 0:
        raise ValueError(f"distinct_tol must be positive, got {distinct_tol!r}")
    n, dim = x.shape
    if n == 0:
        raise ValueError(f"x must hold at least one token, got shape {tuple(x.shape)}")
    radius = _token_radius(x)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    random = torch.randn(num_random, dim, generator=generator, dtype=x.dtype).to(x.device)
    starts = torch.cat([x, x.mean(dim=0, keepdim=True), random * radius / math.sqrt(dim)])
    keys = x @ w_qk
    _check_scores(keys, radius, beta_t)
    tol = _default_tol(x.dtype) if tol is None else tol
    solutions, converged = [], []
    for method, budget in (("picard", max_iter), ("anderson", min(max_iter, root_max_iter))):
        m, ok, _, _ = _solve(
            x,
            keys,
            beta_t,
            starts,
            radius,
            method=method,
            tol=tol,
            max_iter=budget,
            damping=1.0,
            implicit=False,
            warn=False,
        )
        solutions.append(m.detach())
        converged.append(ok)
    picard_m, picard_ok = solutions[0], converged[0]
    candidates = torch.cat(solutions)[torch.cat(converged)]
    scale = float(distinct_tol) * float(radius)
    if candidates.shape[0] == 0:
        empty = x.new_zeros(0)
        return FixedPoints(
            x.new_zeros(0, dim), empty, empty, torch.full((n,), -1, dtype=torch.long),
            empty, float(beta), 1.0,
        )  # fmt: skip
    reps, _ = _distinct(candidates, scale)
    points = candidates[reps]
    rho = _jacobian_radius(_jacobian(points.unsqueeze(0), x, keys, w_qk, beta_t.reshape(1))[0])
    # basins: which fixed point each query's own iteration reached
    query_m, query_ok = picard_m[:n], picard_ok[:n]
    distance = torch.cdist(query_m, points)
    nearest = distance.argmin(dim=1)
    reached = query_ok & (distance.gather(1, nearest[:, None]).squeeze(1) <= scale)
    assignment = torch.where(reached, nearest, -1)
    counts = torch.bincount(assignment[reached], minlength=points.shape[0]).to(x.dtype)
    fraction = counts / n
    order = torch.argsort(-(fraction + 2.0 * (rho < 1).to(x.dtype)), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    assignment = torch.where(reached, rank[assignment.clamp_min(0)], -1)
    residual = (_weights(points[order], keys, beta_t) @ x - points[order]).norm(dim=-1) / radius
    return FixedPoints(
        magnetization=points[order],
        spectral_radius=rho[order],
        basin_fraction=fraction[order],
        assignment=assignment,
        residual=residual,
        beta=float(beta),
        unconverged_fraction=float((~query_ok).to(x.dtype).mean()),
    )
