r"""Colour classes: sets of sites that do not interact, updated together in one vectorised step.

Sites :math:`i, j` with :math:`J_{ij} = 0` can be updated simultaneously without breaking
detailed balance, so a sweep is a loop over colour classes: the two checkerboard sublattices of
a bipartite lattice (three colours when a periodic side is odd), or the classes of a greedy
colouring of the coupling graph for dense models (a fully coupled model has N classes of one
site). Even periodic lattices store the two sublattices compactly, half a lattice each
(:func:`to_compact`), so every site costs one random number per sweep.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spinformer.physics.models import SquareLattice

__all__ = [
    "compact_neighbours",
    "even_periodic_reason",
    "from_compact",
    "greedy_colour_classes",
    "lattice_colour_masks",
    "to_compact",
]


def _axis_colours(size: int, periodic: bool) -> list[int]:
    colours = [i % 2 for i in range(size)]
    if periodic and size > 2 and size % 2 == 1:
        colours[-1] = 2
    return colours


def lattice_colour_masks(lattice: SquareLattice, device: torch.device) -> Tensor:
    """(k, N) boolean masks of a proper colouring (k = 2 if bipartite, else 3)."""
    rows, cols = lattice.shape
    a = torch.tensor(_axis_colours(rows, lattice.periodic), device=device)
    b = torch.tensor(_axis_colours(cols, lattice.periodic), device=device)
    k = 3 if bool((a == 2).any() or (b == 2).any()) else 2
    colour = ((a[:, None] + b[None, :]) % k).reshape(-1)
    return torch.stack([colour == c for c in range(k)])


def greedy_colour_classes(couplings: Tensor) -> list[Tensor]:
    """Index tensors of colour classes of the graph J_ij ≠ 0 (union over batch dims)."""
    n = couplings.shape[-1]
    adjacency = (couplings != 0).reshape(-1, n, n).any(dim=0).cpu()
    colours = torch.full((n,), -1, dtype=torch.long)
    for site in range(n):  # setup only: O(N^2) once per run
        used = colours[adjacency[site] & (colours >= 0)]
        taken = torch.zeros(n + 1, dtype=torch.bool)
        taken[used] = True
        colours[site] = int(torch.nonzero(~taken)[0])
    return [
        torch.nonzero(colours == c).squeeze(-1).to(couplings.device)
        for c in range(int(colours.max()) + 1)
    ]


# -- compact checkerboard for even periodic lattices ------------------------------------------


def even_periodic_reason(lattice: SquareLattice | None) -> str | None:
    """``None`` for a periodic square lattice with even sides (two compact sublattices), else
    what is missing."""
    if lattice is None:
        return "a SquareLattice model (got dense couplings)"
    rows, cols = lattice.shape
    if not lattice.periodic or rows % 2 or cols % 2:
        return f"a periodic lattice with even sides (got shape {lattice.shape}, periodic={lattice.periodic})"
    return None


def to_compact(grid: Tensor) -> tuple[Tensor, Tensor]:
    """(..., L, W) → black, white sublattices (..., L, W/2); black sites have (r + c) even."""
    *batch, rows, cols = grid.shape
    g = grid.reshape(*batch, rows // 2, 2, cols // 2, 2)
    black = torch.stack((g[..., :, 0, :, 0], g[..., :, 1, :, 1]), dim=-2)
    white = torch.stack((g[..., :, 0, :, 1], g[..., :, 1, :, 0]), dim=-2)
    return black.reshape(*batch, rows, cols // 2), white.reshape(*batch, rows, cols // 2)


def from_compact(black: Tensor, white: Tensor) -> Tensor:
    *batch, rows, half = black.shape
    bb = black.reshape(*batch, rows // 2, 2, half)
    ww = white.reshape(*batch, rows // 2, 2, half)
    even = torch.stack((bb[..., :, 0, :], ww[..., :, 0, :]), dim=-1)
    odd = torch.stack((ww[..., :, 1, :], bb[..., :, 1, :]), dim=-1)
    return torch.stack((even, odd), dim=-3).reshape(*batch, rows, 2 * half)


def compact_neighbours(other: Tensor, target_black: bool, even_rows: Tensor) -> Tensor:
    """Sum of the four neighbours (all on the other sublattice) of each target-sublattice site.

    A black site (r, k) sits at column 2k + (r mod 2); its neighbours are the other
    sublattice's (r ± 1, k), (r, k) and (r, k − 1) for even r, (r, k + 1) for odd r; for a white
    target the side neighbour is (r, k + 1) / (r, k − 1). One circular pad supplies all shifts.
    """
    *batch, rows, half = other.shape
    padded = torch.nn.functional.pad(
        other.reshape(-1, 1, rows, half), (1, 1, 1, 1), mode="circular"
    ).reshape(*batch, rows + 2, half + 2)
    left, right = padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]
    side = (
        torch.where(even_rows, left, right) if target_black else torch.where(even_rows, right, left)
    )
    return padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + other + side
