r"""Modern (continuous) Hopfield networks: exponential capacity, and one update is attention.

Ramsauer et al., *Hopfield Networks is All You Need* (ICLR 2021), store P patterns
:math:`x_\mu \in \mathbb{R}^D` (rows of ``patterns``, the keys) and define for a state ξ

.. math::

    E(\xi) = -\operatorname{lse}(\beta, X\xi) + \tfrac12\xi^\top\xi + \beta^{-1}\ln P + \tfrac12 M^2,
    \qquad \operatorname{lse}(\beta, z) = \beta^{-1}\ln\sum_\mu e^{\beta z_\mu},
    \qquad M = \max_\mu |x_\mu|,

with the update :math:`\xi \leftarrow X^\top\operatorname{softmax}(\beta X\xi)`. This is the
concave–convex procedure for E, so E never increases along it (their Theorem 1), and it is
exactly one step of value-free attention with query ξ, keys = values = the patterns and scale β
(the softmax :math:`\partial\,\operatorname{lse}/\partial\xi`). In the spin-system reading of
attention (Bal, "Transformers are secretly collectives of spin systems", 2021) it is the
mean-field self-consistency m ← Σ_j x_j softmax_j(β x_j·m) of
:mod:`spinformer.attention.mean_field`:
with the two patterns {+1, −1} in D = 1 the update is m ← tanh(βm), the Curie–Weiss equation.

Fixed points come in three kinds (Ramsauer §2): near one pattern (β large, patterns well
separated), *metastable* states averaging a subset of similar patterns, and the *global*
fixed point near the mean of all patterns (β small). :meth:`ModernHopfield.classify` uses the
effective number of patterns a fixed point averages, :math:`n_\text{eff} = e^{S}` with S the
entropy of :math:`p = \operatorname{softmax}(\beta X\xi)`: ``"single"`` if n_eff < 1.5,
``"global"`` if n_eff ≥ P/2, otherwise ``"metastable"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from spinformer._shapes import AxisLength
from spinformer._validation import as_tensor, check_finite, check_positive_int
from spinformer.solvers import fixed_point

__all__ = ["FIXED_POINT_KINDS", "ModernHopfield", "ModernRetrieval"]

FIXED_POINT_KINDS = ("single", "metastable", "global")


@dataclass(frozen=True)
class ModernRetrieval:
    """Result of :meth:`ModernHopfield.retrieve`.

    Attributes:
        state: fixed point ξ* (..., D).
        converged: (...) True where |ξ_{t+1} − ξ_t| ≤ tol.
        iterations: (...) updates applied.
        energy_trace: (..., T + 1) energies from ξ0 on (frozen once converged).
        probabilities: (..., P) softmax(β X ξ*), the attention weights at the fixed point.
    """

    state: Tensor
    converged: Tensor
    iterations: Tensor
    energy_trace: Tensor
    probabilities: Tensor


class ModernHopfield:
    """Continuous Hopfield network storing ``patterns`` (P, D) at inverse temperature ``beta``."""

    num_patterns = AxisLength("patterns", 0, "P, the number of stored patterns.")
    dim = AxisLength("patterns", 1, "D, the dimension of the patterns and states.")

    def __init__(self, patterns: Tensor, beta: float) -> None:
        patterns = as_tensor(patterns, "patterns")
        if patterns.ndim != 2 or patterns.shape[0] == 0 or patterns.shape[1] == 0:
            raise ValueError(
                f"patterns must have shape (P, D) with P, D >= 1, got {tuple(patterns.shape)}"
            )
        check_finite(patterns, "patterns")
        if not (isinstance(beta, int | float) and math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a positive finite number, got {beta!r}")
        self.patterns = patterns
        self.beta = float(beta)

    def _check(self, xi: Tensor, name: str = "xi") -> Tensor:
        xi = as_tensor(xi, name, dtype=self.patterns.dtype, device=self.patterns.device)
        if xi.ndim < 1 or xi.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape (..., {self.dim}), got {tuple(xi.shape)}")
        check_finite(xi, name)
        return xi

    def scores(self, xi: Tensor) -> Tensor:
        """X ξ: (..., P)."""
        return self._check(xi) @ self.patterns.T

    def probabilities(self, xi: Tensor) -> Tensor:
        """softmax(β X ξ): the attention weights of state ξ over the patterns, (..., P)."""
        return torch.softmax(self.beta * self.scores(xi), dim=-1)

    def energy(self, xi: Tensor) -> Tensor:
        """Ramsauer's E(ξ) = −lse(β, Xξ) + ½ξᵀξ + β⁻¹ ln P + ½M² (≥ 0), shape (...)."""
        xi = self._check(xi)
        lse = torch.logsumexp(self.beta * (xi @ self.patterns.T), dim=-1) / self.beta
        big_m = self.patterns.norm(dim=-1).max()
        return (
            -lse
            + 0.5 * (xi * xi).sum(-1)
            + math.log(self.num_patterns) / self.beta
            + 0.5 * big_m**2
        )

    def update(self, xi: Tensor) -> Tensor:
        """One update ξ ← Xᵀ softmax(β X ξ): value-free attention with scale β."""
        return self.probabilities(xi) @ self.patterns

    def effective_patterns(self, xi: Tensor) -> Tensor:
        """n_eff = exp(entropy of softmax(β X ξ)): how many patterns state ξ averages."""
        log_p = torch.log_softmax(self.beta * self.scores(xi), dim=-1)
        return torch.exp(-(log_p.exp() * log_p).sum(-1))

    def retrieve(self, xi0: Tensor, tol: float = 1e-10, max_iter: int = 100) -> ModernRetrieval:
        """Iterate the update from ξ0 (..., D) until |Δξ| ≤ ``tol`` (per start) or ``max_iter``.

        The iteration is :func:`spinformer.solvers.fixed_point` with the ``"picard_step"``
        solver (the step that passes the test is taken; unrolled, no implicit backward); the
        energy is recorded after every update.
        """
        if not (math.isfinite(tol) and tol > 0):
            raise ValueError(f"tol must be a positive number, got {tol!r}")
        check_positive_int(max_iter, "max_iter")
        xi = self._check(xi0, "xi0")
        energies = [self.energy(xi)]

        def record(z: Tensor) -> None:
            energies.append(self.energy(z.reshape(xi.shape)))

        result = fixed_point(
            self.update,
            xi,
            method="picard_step",
            tol=tol,
            max_iter=max_iter,
            batch_dims=xi.ndim - 1,
            implicit=False,
            check_every=8,
            warn=False,
            on_step=record,
        )
        state = result.solution
        return ModernRetrieval(
            state=state,
            converged=result.converged,
            iterations=result.iterations,
            energy_trace=torch.stack(energies, dim=-1),
            probabilities=self.probabilities(state),
        )

    def classify(self, xi: Tensor) -> str | list[str]:
        """Kind of fixed point ξ: "single", "metastable" or "global" (module docstring).

        One state (D,) gives a string; a batch (..., D) a flat list in row-major order.
        """
        n_eff = self.effective_patterns(xi)
        half = 0.5 * self.num_patterns
        labels = [
            "single" if v < 1.5 else "global" if v >= half else "metastable"
            for v in n_eff.reshape(-1).tolist()
        ]
        return labels[0] if n_eff.ndim == 0 else labels
