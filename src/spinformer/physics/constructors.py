"""Standard spin models: square lattices and chains, Curie–Weiss, Sherrington–Kirkpatrick, Hebb.

Every constructor returns an :class:`~spinformer.physics.models.IsingModel` in float64 (exact
physics is checked to 10+ digits) unless ``dtype`` says otherwise. Scalar parameters may be
tensors with batch dimensions, so that a sweep is one model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spinformer._validation import as_tensor, check_finite, check_positive_int
from spinformer.physics._limits import check_memory
from spinformer.physics.models import CompleteGraph, IsingModel, SquareLattice

__all__ = [
    "DENSE_CURIE_WEISS_SPINS",
    "chain",
    "curie_weiss",
    "hopfield_couplings",
    "sherrington_kirkpatrick",
    "square_lattice",
]

Scalar = Tensor | float


def _site_field(field: Scalar, n: int, dtype: torch.dtype) -> Tensor:
    value = as_tensor(field, "field", dtype=dtype)
    return (
        value if value.ndim and value.shape[-1] == n else value[..., None].expand(*value.shape, n)
    )


def square_lattice(
    size: int | tuple[int, int],
    coupling: Scalar = 1.0,
    field: Scalar = 0.0,
    beta: Scalar = 1.0,
    periodic: bool = True,
    dtype: torch.dtype = torch.float64,
) -> IsingModel:
    """Nearest-neighbour Ising model on an L×L (or L×W) lattice, each bond counted once.

    E = −J Σ_<ij> σ_i σ_j − h Σ_i σ_i. ``field`` is a scalar, batch-shaped, or per site (..., N).

    >>> square_lattice(4, beta=0.4).num_spins
    16
    """
    if isinstance(size, int) and not isinstance(size, bool):
        shape: tuple = (size, size)
    elif isinstance(size, tuple | list):
        shape = tuple(size)
    else:
        shape = ()
    if len(shape) != 2:
        raise ValueError(f"size must be an int L or a pair (L, W), got {size!r}")
    for s in shape:
        check_positive_int(s, "size")
    lattice = SquareLattice(shape, periodic=periodic)  # type: ignore[arg-type]
    bond = as_tensor(coupling, "coupling", dtype=dtype)
    return IsingModel(bond, _site_field(field, lattice.num_sites, dtype), beta, lattice=lattice)


def chain(
    n: int,
    coupling: Scalar = 1.0,
    field: Scalar = 0.0,
    beta: Scalar = 1.0,
    periodic: bool = True,
    dtype: torch.dtype = torch.float64,
) -> IsingModel:
    """1-D Ising chain of ``n`` spins (an n×1 lattice): E = −J Σ_i σ_i σ_{i+1} − h Σ_i σ_i."""
    check_positive_int(n, "n")
    return square_lattice((n, 1), coupling, field, beta, periodic, dtype)


DENSE_CURIE_WEISS_SPINS = 4096
"""Largest Curie–Weiss model stored with a dense coupling matrix (128 MiB in float64)."""


def curie_weiss(
    n: int,
    coupling: Scalar = 1.0,
    field: Scalar = 0.0,
    beta: Scalar = 1.0,
    dtype: torch.dtype = torch.float64,
) -> IsingModel:
    """Mean-field ferromagnet: J_ij = J/n for i ≠ j, so E = −(J/2n)(M² − n) − hM.

    Up to ``DENSE_CURIE_WEISS_SPINS`` sites the couplings are a dense matrix (every method
    applies). Larger models keep the rank-one geometry instead (``lattice`` is a
    :class:`~spinformer.physics.models.CompleteGraph`, ``couplings`` the bond strength J/n):
    energies, local fields, mean field and TAP then cost O(N) memory and time, and no N×N
    matrix is built (10⁵ spins would need 80 GB).
    """
    check_positive_int(n, "n")
    strength = as_tensor(coupling, "coupling", dtype=dtype)
    check_finite(strength, "coupling")
    if n > DENSE_CURIE_WEISS_SPINS:
        return IsingModel(
            strength / n, _site_field(field, n, dtype), beta, lattice=CompleteGraph(n)
        )
    off_diagonal = 1.0 - torch.eye(n, dtype=dtype)
    couplings = strength[..., None, None] * off_diagonal / n
    return IsingModel(couplings, _site_field(field, n, dtype), beta)


def sherrington_kirkpatrick(
    n: int,
    beta: Scalar = 1.0,
    generator: torch.Generator | None = None,
    field: Scalar = 0.0,
    num_samples: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> IsingModel:
    """SK spin glass: J_ij = J_ji ~ N(0, 1/n) for i < j, zero diagonal.

    ``num_samples`` draws that many disorder realisations as one batched model (batch dim
    first); ``generator`` makes the draw reproducible. The couplings are a dense n × n matrix
    per sample: sizes whose matrices would exceed the memory limit are refused
    (:class:`~spinformer.physics.ResourceLimitError`) before anything is drawn.
    """
    check_positive_int(n, "n")
    batch = () if num_samples is None else (check_positive_int(num_samples, "num_samples"),)
    samples = 1 if num_samples is None else num_samples
    check_memory(  # the Gaussian draw, its upper triangle and the symmetrised couplings
        3.0 * samples * n * n * torch.empty((), dtype=dtype).element_size(),
        f"sherrington_kirkpatrick({n}) with {samples} disorder sample(s) (dense n x n couplings)",
        "a smaller n or fewer num_samples per call (SK couplings are dense and full rank)",
    )
    gaussian = torch.randn(*batch, n, n, generator=generator, dtype=dtype) / n**0.5
    upper = torch.triu(gaussian, diagonal=1)
    return IsingModel(upper + upper.transpose(-1, -2), _site_field(field, n, dtype), beta)


def hopfield_couplings(patterns: Tensor) -> Tensor:
    """Hebb rule J = (1/N) Σ_μ ξ^μ ξ^μᵀ with the diagonal set to zero; patterns (..., P, N)."""
    patterns = as_tensor(patterns, "patterns")
    if patterns.ndim < 2 or patterns.shape[-2] == 0 or patterns.shape[-1] == 0:
        raise ValueError(
            f"patterns must have shape (..., P, N) with P, N >= 1, got {tuple(patterns.shape)}"
        )
    check_finite(patterns, "patterns")
    n = patterns.shape[-1]
    couplings = patterns.transpose(-1, -2) @ patterns / n
    return couplings * (1.0 - torch.eye(n, dtype=couplings.dtype, device=couplings.device))
