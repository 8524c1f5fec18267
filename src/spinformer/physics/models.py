r"""Spin models as data: couplings, fields and inverse temperatures, batched over leading dims.

The one convention of the library (the energy of Bal, "Transformers are secretly collectives
of spin systems", 2021):

.. math::

    E(\sigma) = -\tfrac12 \sum_{ij} J_{ij}\, \sigma_i\cdot\sigma_j - \sum_i h_i\cdot\sigma_i,
    \qquad p(\sigma) = e^{-\beta E(\sigma)}/Z,

with :math:`J` symmetric and zero on the diagonal. Ising spins are :math:`\pm 1`; vector spins
live on the sphere of radius :math:`R` in :math:`D` dimensions.

A model holds no behaviour beyond its energy: a *method* (see :mod:`spinformer.physics.thermo`)
turns it into thermodynamics. Every tensor carries leading batch dimensions that broadcast
against each other -- couplings ``(..., N, N)``, fields ``(..., N)`` (Ising) or ``(..., N, D)``
(vector), ``beta`` ``(...)`` -- so that a sweep over :math:`\beta` or over disorder samples is one
call.

Lattice models keep their geometry instead of a dense matrix (a 1024x1024 lattice has 10^12
matrix entries): ``lattice`` is a :class:`SquareLattice` and ``couplings`` is then the
nearest-neighbour bond strength, batch-shaped. The dense matrix is built only when asked.
A :class:`CompleteGraph` does the same for all-to-all couplings J_ij = c (i ≠ j), the
rank-one geometry of the Curie–Weiss model: every pair is one bond of strength c, so the local
field Σ_{j≠i} J_ij σ_j = c(Σ_j σ_j − σ_i) and the energy cost O(N) instead of O(N²).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from spinformer._validation import (
    as_tensor,
    check_beta,
    check_finite,
    check_square,
    check_symmetric,
    check_zero_diagonal,
)
from spinformer.physics._limits import check_memory

__all__ = ["MAX_DENSE_SPINS", "CompleteGraph", "IsingModel", "SquareLattice", "VectorSpinModel"]

MAX_DENSE_SPINS = 16_384
"""Largest number of sites for which a lattice's dense coupling matrix is materialized."""


@dataclass(frozen=True)
class SquareLattice:
    """Geometry of an ``L x W`` square lattice (a chain is ``(n, 1)``), sites in row-major order.

    Bonds join each site to its right and lower neighbour, so every nearest-neighbour bond is
    counted once. With periodic boundaries the wrap-around bond is included; a dimension of size
    1 has no bonds, and a periodic dimension of size 2 has two bonds between the same pair of
    sites (the usual convention of the roll-based energy, kept so that every route agrees).
    """

    shape: tuple[int, int]
    periodic: bool = True

    def __post_init__(self) -> None:
        if (
            len(self.shape) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) for s in self.shape)
            or min(self.shape) < 1
        ):
            raise ValueError(f"shape must be two positive integers (L, W), got {self.shape!r}")

    @property
    def num_sites(self) -> int:
        return self.shape[0] * self.shape[1]

    def _bond_axes(self) -> list[int]:
        return [axis for axis, size in enumerate(self.shape) if size > 1]

    def _grid(self, spins: Tensor, vector: bool) -> tuple[Tensor, int]:
        """Reshape (..., N[, D]) to (..., L, W[, D]); return it and the index of the L axis."""
        tail = spins.shape[-1:] if vector else ()
        batch = spins.shape[: spins.ndim - 1 - len(tail)]
        return spins.reshape(*batch, *self.shape, *tail), len(batch)

    def bond_sum(self, spins: Tensor, vector: bool = False) -> Tensor:
        """Σ over bonds of σ_i·σ_j for spins shaped (..., N) or, if ``vector``, (..., N, D)."""
        grid, first = self._grid(spins, vector)
        total = torch.zeros(grid.shape[:first], dtype=spins.dtype, device=spins.device)
        for axis in self._bond_axes():
            dim = first + axis
            if self.periodic:
                prod = grid * torch.roll(grid, shifts=-1, dims=dim)
            else:
                n = grid.shape[dim]
                prod = grid.narrow(dim, 0, n - 1) * grid.narrow(dim, 1, n - 1)
            total = total + prod.sum(dim=tuple(range(first, grid.ndim)))
        return total

    def neighbour_sum(self, spins: Tensor, vector: bool = False) -> Tensor:
        """Σ_{j∈∂i} σ_j (with bond multiplicity) for spins (..., N) or (..., N, D)."""
        grid, first = self._grid(spins, vector)
        total = torch.zeros_like(grid)
        for axis in self._bond_axes():
            dim = first + axis
            if self.periodic:
                total = total + torch.roll(grid, 1, dim) + torch.roll(grid, -1, dim)
            else:
                n = grid.shape[dim]
                pad = torch.zeros_like(grid.narrow(dim, 0, 1))
                total = total + torch.cat([pad, grid.narrow(dim, 0, n - 1)], dim)
                total = total + torch.cat([grid.narrow(dim, 1, n - 1), pad], dim)
        return total.reshape(spins.shape)

    def adjacency(self, dtype: torch.dtype = torch.float64, device: Any = None) -> Tensor:
        """Dense (N, N) matrix A with A_ij = number of bonds between i and j.

        Refuses (:class:`~spinformer.physics._limits.ResourceLimitError`) before allocating an
        N × N matrix over the memory limit.
        """
        n = self.num_sites
        check_memory(
            float(n) * n * torch.empty((), dtype=dtype).element_size(),
            f"a dense adjacency matrix of the {self.shape[0]} x {self.shape[1]} lattice",
            "the lattice geometry (bond_sum, neighbour_sum) instead of a dense matrix",
        )
        index = torch.arange(n, device=device).reshape(self.shape)
        adj = torch.zeros(n, n, dtype=dtype, device=device)
        for axis in self._bond_axes():
            if self.periodic:
                a, b = index, torch.roll(index, -1, axis)
            else:
                size = self.shape[axis]
                a, b = index.narrow(axis, 0, size - 1), index.narrow(axis, 1, size - 1)
            adj.index_put_(
                (a.reshape(-1), b.reshape(-1)),
                torch.ones(a.numel(), dtype=dtype, device=device),
                accumulate=True,
            )
            adj.index_put_(
                (b.reshape(-1), a.reshape(-1)),
                torch.ones(a.numel(), dtype=dtype, device=device),
                accumulate=True,
            )
        return adj


@dataclass(frozen=True)
class CompleteGraph:
    """All-to-all geometry on ``num_sites`` sites: every pair i < j is one bond.

    Same interface as :class:`SquareLattice` (``bond_sum``, ``neighbour_sum``, ``adjacency``),
    computed from the total spin in O(N): Σ_{i<j} σ_i·σ_j = ½(|Σ_i σ_i|² − Σ_i |σ_i|²).
    """

    num_sites: int

    def __post_init__(self) -> None:
        n = self.num_sites
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_sites must be a positive integer, got {n!r}")

    @staticmethod
    def _site_dims(spins: Tensor, vector: bool) -> tuple[int, ...]:
        return (-2, -1) if vector else (-1,)

    def bond_sum(self, spins: Tensor, vector: bool = False) -> Tensor:
        """Σ_{i<j} σ_i·σ_j for spins shaped (..., N) or, if ``vector``, (..., N, D)."""
        total = spins.sum(dim=-2 if vector else -1)
        square = (total * total).sum(-1) if vector else total * total
        return 0.5 * (square - (spins * spins).sum(dim=self._site_dims(spins, vector)))

    def neighbour_sum(self, spins: Tensor, vector: bool = False) -> Tensor:
        """Σ_{j≠i} σ_j for spins (..., N) or (..., N, D)."""
        return spins.sum(dim=-2 if vector else -1, keepdim=True) - spins

    def adjacency(self, dtype: torch.dtype = torch.float64, device: Any = None) -> Tensor:
        """Dense (N, N) matrix 1 − I."""
        n = self.num_sites
        return 1.0 - torch.eye(n, dtype=dtype, device=device)


def _broadcast_batch(name_shapes: dict[str, tuple[int, ...]]) -> torch.Size:
    try:
        return torch.broadcast_shapes(*name_shapes.values())
    except RuntimeError as err:
        described = ", ".join(f"{k} batch {v}" for k, v in name_shapes.items())
        raise ValueError(f"batch dimensions do not broadcast: {described}") from err


@dataclass(frozen=True, eq=False)
class _SpinModel:
    couplings: Tensor
    field: Tensor | None = None
    beta: Tensor | float = 1.0
    lattice: SquareLattice | CompleteGraph | None = None

    # -- construction --------------------------------------------------------------------
    def _normalize_couplings(self) -> tuple[Tensor, int]:
        dtype = (
            self.couplings.dtype
            if isinstance(self.couplings, Tensor) and self.couplings.is_floating_point()
            else None
        )
        if self.lattice is not None:
            if not isinstance(self.lattice, SquareLattice | CompleteGraph):
                raise ValueError(
                    "lattice must be a SquareLattice or a CompleteGraph, got "
                    f"{type(self.lattice).__name__}"
                )
            bond = as_tensor(self.couplings, "couplings", dtype=dtype)
            check_finite(bond, "couplings")
            return bond, self.lattice.num_sites
        couplings = as_tensor(self.couplings, "couplings", dtype=dtype)
        n = check_square(couplings, "couplings")
        check_finite(couplings, "couplings")
        check_symmetric(couplings, "couplings")
        check_zero_diagonal(couplings, "couplings")
        return couplings, n

    def _finish(self, couplings: Tensor, field: Tensor, n: int, **extra: Any) -> None:
        """Check beta, broadcast the batch shapes and store the normalized fields (and ``extra``)."""
        beta = as_tensor(self.beta, "beta", dtype=couplings.dtype, device=couplings.device)
        check_beta(beta)
        coupling_batch = couplings.shape if self.lattice is not None else couplings.shape[:-2]
        batch = _broadcast_batch(
            {
                "couplings": tuple(coupling_batch),
                "field": tuple(field.shape[: -self._site_ndim]),  # type: ignore[attr-defined]
                "beta": tuple(beta.shape),
            }
        )
        self._set(
            couplings=couplings, field=field, beta=beta, **extra, _num_spins=n, _batch_shape=batch
        )

    def _set(self, **values: Any) -> None:
        for key, value in values.items():
            object.__setattr__(self, key, value)

    # -- shared API ----------------------------------------------------------------------
    @property
    def num_spins(self) -> int:
        """Number of sites N."""
        return self._num_spins  # type: ignore[attr-defined]

    @property
    def batch_shape(self) -> torch.Size:
        """Broadcast shape of the leading (batch) dimensions of couplings, field and beta."""
        return self._batch_shape  # type: ignore[attr-defined]

    @property
    def dtype(self) -> torch.dtype:
        return self.field.dtype  # type: ignore[union-attr]

    @property
    def device(self) -> torch.device:
        return self.field.device  # type: ignore[union-attr]

    @property
    def bond(self) -> Tensor:
        """Bond strength of a lattice or complete-graph model, shape ``batch_shape``."""
        if self.lattice is None:
            raise ValueError("bond is defined for lattice models only (lattice=None here)")
        return self.couplings

    @property
    def coupling_matrix(self) -> Tensor:
        """Dense couplings J, shape (..., N, N); built from the geometry for lattice models."""
        if self.lattice is None:
            return self.couplings
        if self.num_spins > MAX_DENSE_SPINS:
            raise ValueError(
                f"a dense coupling matrix for {self.num_spins} sites is too large "
                f"(limit {MAX_DENSE_SPINS}); use the model's geometry (model.lattice) instead"
            )
        adj = self.lattice.adjacency(self.dtype, self.device)
        return self.couplings[..., None, None] * adj

    def with_beta(self, beta: Tensor | float) -> _SpinModel:
        """The same model at another inverse temperature (validated)."""
        return dataclasses.replace(self, beta=beta)

    def expanded_field(self) -> Tensor:
        """The field broadcast to the full batch shape."""
        assert self.field is not None
        site_shape = self.field.shape[-self._site_ndim :]  # type: ignore[attr-defined]
        return self.field.expand(*self.batch_shape, *site_shape)

    def expanded_beta(self) -> Tensor:
        return self.beta.expand(self.batch_shape)  # type: ignore[union-attr]

    def coupling_energy(self, spins: Tensor) -> Tensor:
        """−½ Σ_ij J_ij σ_i·σ_j for spins with the model's site shape; returns (...)."""
        if self.lattice is not None:
            return -self.couplings * self.lattice.bond_sum(spins, vector=self._site_ndim == 2)  # type: ignore[attr-defined]
        if self._site_ndim == 2:  # type: ignore[attr-defined]
            overlap = torch.einsum("...nd,...nm,...md->...", spins, self.couplings, spins)
        else:
            overlap = torch.einsum("...n,...nm,...m->...", spins, self.couplings, spins)
        return -0.5 * overlap

    def energy(self, spins: Tensor) -> Tensor:
        """E(σ) = −½ σᵀJσ − h·σ, broadcast over the batch dims of spins and of the model."""
        site_ndim = self._site_ndim  # type: ignore[attr-defined]
        expected = self.field.shape[-site_ndim:]  # type: ignore[union-attr]
        if spins.shape[-site_ndim:] != expected:
            raise ValueError(
                f"spins must have site shape {tuple(expected)}, got {tuple(spins.shape)}"
            )
        spins = spins.to(self.dtype)
        field_term = (self.field * spins).sum(dim=tuple(range(-site_ndim, 0)))  # type: ignore[operator]
        return self.coupling_energy(spins) - field_term


@dataclass(frozen=True, eq=False)
class IsingModel(_SpinModel):
    """Ising spins σ_i = ±1 with E(σ) = −½ σᵀJσ − h·σ (see the module docstring).

    Args:
        couplings: symmetric, zero-diagonal (..., N, N) matrix; with ``lattice``, the bond
            strength (a scalar or batch-shaped tensor).
        field: external field h, (..., N) or a scalar; default zero.
        beta: inverse temperature, > 0, broadcastable against the batch dims.
        lattice: optional geometry, :class:`SquareLattice` or :class:`CompleteGraph`.

    >>> m = IsingModel(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), beta=0.5)
    >>> float(m.energy(torch.tensor([1.0, 1.0])))
    -1.0
    """

    _site_ndim = 1

    def __post_init__(self) -> None:
        couplings, n = self._normalize_couplings()
        dtype = couplings.dtype
        field = as_tensor(
            0.0 if self.field is None else self.field, "field", dtype=dtype, device=couplings.device
        )
        if field.ndim == 0:
            field = field.expand(n)
        if field.shape[-1] != n:
            raise ValueError(
                f"field must have shape (..., {n}) to match couplings, got {tuple(field.shape)}"
            )
        check_finite(field, "field")
        self._finish(couplings, field, n)

    def local_field(self, spins: Tensor) -> Tensor:
        """h_i + Σ_j J_ij σ_j for spins (..., N)."""
        if self.lattice is not None:
            return self.field + self.couplings[..., None] * self.lattice.neighbour_sum(spins)
        return self.field + torch.einsum("...nm,...m->...n", self.couplings, spins)


@dataclass(frozen=True, eq=False)
class VectorSpinModel(_SpinModel):
    """Vector spins on the sphere |σ_i| = R in D dimensions, E = −½ Σ J_ij σ_i·σ_j − Σ h_i·σ_i.

    Args:
        couplings: symmetric, zero-diagonal (..., N, N) matrix (or bond strength with
            ``lattice``).
        field: (..., N, D); D is read from its last dimension. May be ``None`` if ``dim`` is
            given (zero field).
        beta: inverse temperature, > 0.
        radius: sphere radius R > 0. The spin-model-transformer convention is R² = D/2 − 1.
        dim: spin dimension D, required when ``field`` is ``None``.
        lattice: optional geometry.
    """

    radius: float = 1.0
    dim: int | None = None

    _site_ndim = 2

    def __post_init__(self) -> None:
        couplings, n = self._normalize_couplings()
        dtype = couplings.dtype
        if self.field is None:
            if self.dim is None:
                raise ValueError("dim must be given when field is None (the spin dimension D)")
            field = torch.zeros(n, self.dim, dtype=dtype, device=couplings.device)
        else:
            field = as_tensor(self.field, "field", dtype=dtype, device=couplings.device)
        if field.ndim < 2 or field.shape[-2] != n:
            raise ValueError(
                f"field must have shape (..., {n}, D) to match couplings, got {tuple(field.shape)}"
            )
        if self.dim is not None and field.shape[-1] != self.dim:
            raise ValueError(
                f"field's last dimension must equal dim={self.dim}, got {field.shape[-1]}"
            )
        check_finite(field, "field")
        if not (
            isinstance(self.radius, int | float) and math.isfinite(self.radius) and self.radius > 0
        ):
            raise ValueError(f"radius must be a positive finite number, got {self.radius!r}")
        self._finish(couplings, field, n, dim=field.shape[-1], radius=float(self.radius))

    def local_field(self, spins: Tensor) -> Tensor:
        """h_i + Σ_j J_ij σ_j for spins (..., N, D)."""
        if self.lattice is not None:
            return self.field + self.couplings[..., None, None] * self.lattice.neighbour_sum(
                spins, vector=True
            )
        return self.field + torch.einsum("...nm,...md->...nd", self.couplings, spins)
