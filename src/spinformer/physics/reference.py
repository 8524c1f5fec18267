r"""Exact reference values: Onsager's square lattice and the Curie–Weiss binomial sums.

These closed forms are what the numerical routes of this package are checked against, so each
has one definition here, used by the experiments, the tests and the report.

**Square-lattice Ising model** (zero field, coupling J, K = βJ). Onsager's free energy per spin
of the infinite lattice (Onsager, "Crystal statistics. I. A two-dimensional model with an
order-disorder transition", 1944; Kaufman, "Crystal statistics. II. Partition function
evaluated by spinor analysis", 1949) is

.. math::

    \frac{\ln Z}{N} = \ln 2 + \frac{1}{8\pi^2}\int_0^{2\pi}\!\!\int_0^{2\pi}
    \ln\big[\cosh^2 2K - \sinh 2K(\cos\theta_1 + \cos\theta_2)\big]\,d\theta_1\,d\theta_2,

and its critical point (Kramers and Wannier's self-dual point, 1941) is
:math:`\beta_c J = \tfrac12\ln(1 + \sqrt2)`.

**Curie–Weiss model** (N Ising spins, J_ij = 1/N, field h), with the energy
:func:`spinformer.physics.curie_weiss` defines, E(M) = −(M² − N)/(2N) − hM, depends on the
spins only through the total magnetization M = N − 2k, a sector of C(N, k) states, so

.. math:: Z = \sum_{k=0}^{N} \binom{N}{k} e^{-\beta E(N - 2k)}

is a sum of N + 1 terms, exact at any N.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["ONSAGER_BETA_C", "curie_weiss_binomial", "onsager_log_partition_per_spin"]

ONSAGER_BETA_C = 0.5 * math.log(1.0 + math.sqrt(2.0))
"""β_c J = ½ ln(1 + √2) ≈ 0.4406868, the critical point of the square-lattice Ising model."""


def onsager_log_partition_per_spin(
    beta: float | np.ndarray, coupling: float = 1.0, grid: int = 512
) -> np.ndarray:
    """ln Z / N of the infinite square-lattice Ising model at zero field (Onsager, 1944).

    ln Z/N = ln 2 + (1/8π²) ∬ ln[cosh² 2K − sinh 2K (cos θ₁ + cos θ₂)] dθ₁ dθ₂ with K = βJ,
    by the midpoint rule on a ``grid x grid`` mesh; the integrand is periodic, so this converges
    exponentially away from β_c (where its log singularity costs a few digits). Returns an
    array with one entry per β.
    """
    k = 2.0 * coupling * np.atleast_1d(np.asarray(beta, dtype=np.float64))
    theta = (np.arange(grid) + 0.5) * 2.0 * np.pi / grid
    cos_sum = np.cos(theta)[:, None] + np.cos(theta)[None, :]
    integrand = np.log(np.cosh(k)[:, None, None] ** 2 - np.sinh(k)[:, None, None] * cos_sum)
    return math.log(2.0) + 0.5 * integrand.mean(axis=(1, 2))


def curie_weiss_binomial(n: int, beta: float, field: float = 0.0) -> tuple[float, float, float]:
    """(ln Z, ⟨m⟩, ⟨E⟩/n) of the Curie–Weiss model (J = 1) by the binomial sum over M = n − 2k.

    Z = Σ_k C(n, k) exp(−β E(n − 2k)) with E(M) = −(M² − n)/(2n) − hM, as
    :func:`spinformer.physics.curie_weiss` defines it; ⟨m⟩ = ⟨M⟩/n and ⟨E⟩/n are the same sums
    weighted by M and E (in float64, through logsumexp, so any n and β stay finite).
    """
    k = torch.arange(n + 1, dtype=torch.float64)
    total = n - 2.0 * k
    log_degeneracy = math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    energy = -(total**2 - n) / (2.0 * n) - field * total
    log_weights = log_degeneracy - beta * energy
    weights = torch.softmax(log_weights, 0)
    log_partition = float(torch.logsumexp(log_weights, 0))
    return log_partition, float((weights * total).sum()) / n, float((weights * energy).sum()) / n
