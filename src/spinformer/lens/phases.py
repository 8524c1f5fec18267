r"""Self-consistent states, critical β and the phase of attention heads (the lens's mean field).

The mean-field map in query–key coordinates. The map sees :math:`m` only through the query
:math:`q(m) = W_Q m + b_Q`, and the biases of the keys only shift a row. With the head's states
:math:`y_j = (q_j, k_j) \in \mathbb{R}^{2d}` (queries and keys of the actual tokens) and the
coupling :math:`W' = \begin{pmatrix}0 & 0\\ I & 0\end{pmatrix}`, one has
:math:`y_j^\top W' (q, k) = k_j\cdot q`, and the linear map
:math:`L: m \mapsto (W_Q m + b_Q, W_K m + b_K)` sends the map of the tokens onto the map of the
states, :math:`L f(m) = f'(L m)`; fixed points correspond one to one (:math:`m = \sum_j \alpha_j
x_j`), and the Jacobians :math:`\beta\,\mathrm{Cov}(x) W_K^\top W_Q` and
:math:`\beta L\,\mathrm{Cov}(x) L^\top W'` have the same non-zero eigenvalues (eig(AB) = eig(BA)).
So :func:`spinformer.attention.self_consistent` runs unchanged on 2d-dimensional states instead
of D-dimensional ones (d = head size), biases included. β_c goes one step further, to the query
alone (:func:`spinformer.attention.critical_beta_qk`): the map
:math:`q \mapsto \sum_j q_j\,\mathrm{softmax}_j(\beta k_j\cdot q)` has the Jacobian
:math:`\beta\,\mathrm{Cov}_\alpha(q, k)`, a d×d matrix with the same non-zero spectrum, so
each continuation step is a d-dimensional solve and a d×d eigenproblem for all heads at once.
For rotary models this is the coupling at :math:`\Delta = 0` (R(0) = I): the lens treats the
content couplings as the spin system and the rotation as a position-dependent modulation,
reported separately. For a causal model the system holds all the tokens of the text
(the ensemble of the last position).

Phase of a head (criterion). With :math:`\beta` the head's own inverse temperature, :math:`\beta_c`
where the high-temperature branch (continued from the token mean at small β) loses stability, and
the distinct stable attractors reached by iterating the map from the start tokens:

* ``ordered`` (retrieval): :math:`\beta \ge \beta_c` — the high-temperature solution is unstable
  at the head's temperature; the iteration falls into condensed states;
* ``metastable``: :math:`\beta < \beta_c` but more than one stable fixed point coexist;
* ``high-temperature`` (averaging): :math:`\beta < \beta_c` and one stable fixed point.

For tokens :math:`\pm v` with :math:`|v|^2 = 2` and :math:`W_{QK} = I` this is the pitchfork at
:math:`\beta_c = 1/2` (``high-temperature`` below, ``ordered`` above).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from spinformer.attention import (
    critical_beta_qk,
    mean_field_jacobian,
    self_consistent,
    spectral_radius,
)

__all__ = ["PHASES", "HeadPhases", "LensConfig", "head_phases"]

PHASES = ("high-temperature", "metastable", "ordered")


@dataclass(frozen=True)
class LensConfig:
    """Numerical settings of the mean-field part of :func:`analyze`.

    Attributes:
        mean_field: compute self-consistent states, β_c and phases (the costly part).
        max_starts: the map is iterated from at most this many tokens, evenly spaced along the
            text (all of them when the text is shorter).
        max_iter: Picard iterations of the mean-field map from each start token.
        tol: residual tolerance of the fixed points, relative to the token radius.
        num_betas, bisection_steps: :func:`spinformer.attention.critical_beta`'s continuation
            grid and bisection refinements.
        max_states: stability (spectral radius) is checked at the attractors of the
            ``max_states`` largest basins of each head.
        distinct_tol: states closer than this times the token radius are the same state.
        coverage: the weight mass that defines k (Ramsauer's k for 90 %).
    """

    mean_field: bool = True
    max_starts: int = 32
    max_iter: int = 100
    tol: float = 1e-7
    num_betas: int = 8
    bisection_steps: int = 8
    max_states: int = 2
    distinct_tol: float = 1e-3
    coverage: float = 0.9

    def __post_init__(self) -> None:
        for name in ("max_starts", "max_iter", "num_betas", "bisection_steps", "max_states"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_betas < 2:
            raise ValueError(f"num_betas must be >= 2, got {self.num_betas}")
        for name in ("tol", "distinct_tol"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive float, got {value!r}")
        if not (0 < self.coverage < 1):
            raise ValueError(f"coverage must lie in (0, 1), got {self.coverage!r}")


# ---------------------------------------------------------------------------------------------
# phases of heads


@dataclass(frozen=True)
class HeadPhases:
    """Self-consistent states, β_c and phase of a batch of heads (see the module docstring).

    Attributes:
        magnetization: the state m = Σ_j α_j x_j reached from each start (*batch, S, D).
        converged: whether each iteration converged (*batch, S).
        starts: token positions the iterations started from (S,).
        num_states: distinct converged states per head (*batch).
        num_stable: stable ones (ρ < 1) among the ``max_states`` largest basins (*batch).
        critical_beta: β_c of the high-temperature branch (*batch); ``inf`` if none was found.
        beta: the head's inverse temperature (*batch).
        phase: index into :data:`PHASES` (*batch).
    """

    magnetization: Tensor
    converged: Tensor
    starts: Tensor
    num_states: Tensor
    num_stable: Tensor
    critical_beta: Tensor
    beta: Tensor
    phase: Tensor

    @property
    def labels(self) -> list[Any]:
        """Phase names, nested like ``phase``."""
        return _labels(self.phase, PHASES)


def _labels(codes: Tensor, names: tuple[str, ...]) -> list[Any]:
    return _map_nested(codes.tolist(), lambda c: names[int(c)])


def _map_nested(value: Any, fn: Any) -> Any:
    if isinstance(value, list):
        return [_map_nested(v, fn) for v in value]
    return fn(value)


def _phases_from_states(
    x: Tensor, q: Tensor, k: Tensor, beta: Tensor, config: LensConfig
) -> HeadPhases:
    """Core: tokens x (*batch, N, D), unrotated queries/keys (*batch, N, d), β (*batch)."""
    if q.shape[-2] < 2 * q.shape[-1]:
        try:
            return _phases(x, q, k, beta, config, reduce=True)
        except torch.linalg.LinAlgError:
            # LAPACK's eigensolver occasionally fails to converge on the small reduced
            # Jacobians of real heads; the full 2d×2d problem has the same spectrum
            pass
    return _phases(x, q, k, beta, config, reduce=False)


def _phases(
    x: Tensor, q: Tensor, k: Tensor, beta: Tensor, config: LensConfig, reduce: bool
) -> HeadPhases:
    d = q.shape[-1]
    full_states = torch.cat([q, k], dim=-1)
    full_coupling = full_states.new_zeros(2 * d, 2 * d)
    full_coupling[d:, :d] = torch.eye(d, dtype=q.dtype, device=q.device)
    num_tokens = full_states.shape[-2]
    if reduce:
        # fewer tokens than coordinates: work in an orthonormal basis Q of their span (exact:
        # the map never leaves it, scores are yᵀ Q Qᵀ W' Q Qᵀ m, and the Jacobian keeps its
        # non-zero spectrum), so the eigenproblems are N×N instead of 2d×2d
        basis = torch.linalg.qr(full_states.transpose(-1, -2)).Q  # (…, 2d, N)
        states = full_states @ basis
        coupling = basis.transpose(-1, -2) @ full_coupling @ basis
    else:
        basis, states, coupling = None, full_states, full_coupling
    starts = torch.linspace(0, num_tokens - 1, min(config.max_starts, num_tokens))
    starts = starts.round().long().unique()
    solved = self_consistent(
        states,
        coupling,
        beta,
        init=states[..., starts, :],
        method="picard",
        tol=config.tol,
        max_iter=config.max_iter,
        implicit=False,
        warn=False,
    )
    reduced = solved.magnetization.detach()
    fixed = reduced if basis is None else reduced @ basis.transpose(-1, -2)  # (q(m), k(m))
    converged = solved.converged
    radius = states.norm(dim=-1).amax(dim=-1).clamp_min(torch.finfo(states.dtype).tiny)
    scale = config.distinct_tol * radius
    n = fixed.shape[-2]
    pair_ok = converged.unsqueeze(-1) & converged.unsqueeze(-2)
    close = (torch.cdist(fixed, fixed) <= scale[..., None, None]) & pair_ok
    index = torch.arange(n, device=states.device)
    first = torch.where(close.any(dim=-1), close.to(torch.uint8).argmax(dim=-1), index)
    is_rep = converged & (first == index)
    basin = (first.unsqueeze(-1) == index).logical_and(converged.unsqueeze(-1)).sum(dim=-2)
    basin = torch.where(is_rep, basin, 0)
    top = min(config.max_states, n)
    sizes, reps = basin.topk(top, dim=-1)
    rep_states = reduced.gather(-2, reps.unsqueeze(-1).expand(*reps.shape, reduced.shape[-1]))
    with torch.no_grad():
        rho = spectral_radius(mean_field_jacobian(rep_states, states, coupling, beta))
    num_stable = ((rho < 1) & (sizes > 0)).sum(dim=-1)
    # β_c in query coordinates: d×d Jacobians β Cov_α(q, k), d-dimensional solves
    crit = critical_beta_qk(
        full_states[..., :d],
        full_states[..., d:],
        num_betas=config.num_betas,
        bisection_steps=config.bisection_steps,
        tol=config.tol,
        max_iter=config.max_iter,
    )
    beta_b = torch.broadcast_to(beta, crit.beta.shape)
    phase = torch.where(
        beta_b >= crit.beta,
        2,
        torch.where(num_stable > 1, 1, 0),
    )
    # back to token space: m = Σ_j α_j x_j with α the weights at the fixed point
    weights = torch.softmax(beta_b[..., None, None] * (fixed[..., :d] @ k.transpose(-1, -2)), -1)
    return HeadPhases(
        magnetization=weights @ x,
        converged=converged,
        starts=starts,
        num_states=is_rep.sum(dim=-1),
        num_stable=num_stable,
        critical_beta=crit.beta,
        beta=beta_b,
        phase=phase,
    )


def head_phases(
    x: Tensor,
    w_q: Tensor,
    w_k: Tensor,
    beta: Tensor | float,
    b_q: Tensor | None = None,
    b_k: Tensor | None = None,
    config: LensConfig | None = None,
) -> HeadPhases:
    """Self-consistent states, β_c and phase of heads (W_Q, W_K) on tokens x.

    Args:
        x: tokens (*batch, N, D).
        w_q, w_k: one head's query and key maps (*batch, d, D) (``nn.Linear`` layout).
        beta: the heads' inverse temperature, broadcastable to the batch shape.
        b_q, b_k: biases (*batch, d) or ``None``.
        config: numerical settings (:class:`LensConfig`).

    >>> v = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    >>> eye = torch.eye(2, dtype=torch.float64)
    >>> [head_phases(v, eye, eye, b).labels for b in (0.4, 0.6)]
    ['high-temperature', 'ordered']
    """
    config = LensConfig() if config is None else config
    for name, t in (("x", x), ("w_q", w_q), ("w_k", w_k)):
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim < 2:
            raise ValueError(f"{name} must be a floating tensor with at least 2 dims, got {t!r}")
    if w_q.shape[-2:] != w_k.shape[-2:] or w_q.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"w_q and w_k must both have shape (..., d, {x.shape[-1]}), got {tuple(w_q.shape)}"
            f" and {tuple(w_k.shape)}"
        )
    dtype = x.dtype
    q = torch.einsum("...cd,...nd->...nc", w_q.to(dtype), x)
    k = torch.einsum("...cd,...nd->...nc", w_k.to(dtype), x)
    for name, b, t in (("b_q", b_q, q), ("b_k", b_k, k)):
        if b is None:
            continue
        if not isinstance(b, Tensor) or b.shape[-1] != t.shape[-1]:
            raise ValueError(f"{name} must have shape (..., {t.shape[-1]}), got {b!r}")
    if b_q is not None:
        q = q + b_q.to(dtype).unsqueeze(-2)
    if b_k is not None:
        k = k + b_k.to(dtype).unsqueeze(-2)
    beta_t = torch.as_tensor(beta, dtype=dtype, device=x.device)
    if not bool((beta_t > 0).all()) or not bool(torch.isfinite(beta_t).all()):
        raise ValueError(f"beta must be positive and finite, got {beta!r}")
    try:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], x.shape[:-2], beta_t.shape)
    except RuntimeError as err:
        raise ValueError(
            f"x, w_q, w_k and beta batch shapes must broadcast, got {tuple(x.shape[:-2])},"
            f" {tuple(w_q.shape[:-2])}, {tuple(w_k.shape[:-2])} and {tuple(beta_t.shape)}"
        ) from err
    q, k = q.expand(*batch, *q.shape[-2:]), k.expand(*batch, *k.shape[-2:])
    x_b = x.expand(*batch, *x.shape[-2:])
    return _phases_from_states(x_b, q, k, torch.broadcast_to(beta_t, batch), config)
