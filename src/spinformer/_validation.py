"""Boundary checks shared by every public entry point.

Each check raises ``ValueError`` naming the argument and what was expected, before any work is
done. Internals trust their inputs; only public functions call these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

__all__ = [
    "Limit",
    "all_finite",
    "as_tensor",
    "check_beta",
    "check_finite",
    "check_positive_int",
    "check_square",
    "check_symmetric",
    "check_zero_diagonal",
    "describe",
    "lookup",
]

_T = TypeVar("_T")


def as_tensor(
    value: Tensor | float | int | list | tuple,
    name: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Convert ``value`` to a floating tensor (keeping a floating tensor's dtype unless given)."""
    if isinstance(value, Tensor):
        tensor = value
        if not tensor.is_floating_point():
            tensor = tensor.to(dtype or torch.get_default_dtype())
        elif dtype is not None:
            tensor = tensor.to(dtype)
        return tensor.to(device) if device is not None else tensor
    try:
        return torch.as_tensor(value, dtype=dtype or torch.float64, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}") from err


def _distinct_entries(tensor: Tensor) -> Tensor:
    """The entries of a broadcast view without its repeats (stride-0 dimensions cut to one)."""
    for dim in range(tensor.ndim):
        if tensor.stride(dim) == 0 and tensor.shape[dim] > 1:
            tensor = tensor.narrow(dim, 0, 1)
    return tensor


def all_finite(tensor: Tensor) -> bool:
    """One reduction (a sum propagates NaN/inf); the exact check only if the sum is not finite."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def check_finite(tensor: Tensor, name: str) -> None:
    """Raise if ``tensor`` holds NaN or infinite entries.

    A broadcast view (a scalar field expanded over 10^8 sites) is checked on its distinct
    entries, so the check allocates nothing proportional to the view's size; a finite sum
    settles it in one reduction (:func:`all_finite`).
    """
    tensor = _distinct_entries(tensor)
    if not all_finite(tensor):
        bad = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
        raise ValueError(f"{name} must be finite, got {bad} entries")


def check_beta(beta: Tensor, name: str = "beta") -> None:
    """Raise unless every inverse temperature is finite and strictly positive."""
    check_finite(beta, name)
    if not bool((beta > 0).all()):
        worst = float(beta.min())
        raise ValueError(f"{name} must be positive, got {worst!r}")


def check_square(matrix: Tensor, name: str) -> int:
    """Raise unless ``matrix`` has shape (..., N, N); return N."""
    if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"{name} must have shape (..., N, N), got {tuple(matrix.shape)}")
    return matrix.shape[-1]


def check_symmetric(matrix: Tensor, name: str, rtol: float = 1e-6, atol: float = 1e-10) -> None:
    """Raise unless ``matrix`` equals its transpose in the last two dimensions."""
    detached = matrix.detach()
    diff = (detached - detached.transpose(-1, -2)).abs().amax() if matrix.numel() else 0.0
    scale = detached.abs().amax() if matrix.numel() else 0.0
    if float(diff) > atol + rtol * float(scale):
        raise ValueError(
            f"{name} must be symmetric for an equilibrium model (max |J - J^T| = {float(diff):.3g});"
            " use a dynamical (non-equilibrium) method for asymmetric couplings"
        )


def check_zero_diagonal(matrix: Tensor, name: str) -> None:
    """Raise unless the diagonal of ``matrix`` vanishes (no self-coupling)."""
    diag = matrix.detach().diagonal(dim1=-2, dim2=-1)
    if diag.numel() and float(diag.abs().amax()) != 0.0:
        raise ValueError(
            f"{name} must have a zero diagonal (no self-coupling), got max |J_ii| = "
            f"{float(diag.abs().amax()):.3g}"
        )


def check_positive_int(value: int, name: str) -> int:
    """Raise unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def lookup(table: Mapping[str, _T], key: str, name: str) -> _T:
    """``table[key]``, or a ``ValueError`` naming ``name`` and the valid keys."""
    if key not in table:
        raise ValueError(f"{name} must be one of {sorted(table)}, got {key!r}")
    return table[key]


@dataclass(frozen=True)
class Limit:
    """An allowed range ``low <= value <= high`` (``<`` where ``*_open``) for a number.

    Declared once, used to check and to say what was expected (experiment configs, CLI options).

    >>> Limit(0, low_open=True).describe()
    '> 0'
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the range (NaN never does)."""
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.high_open else value > self.high)
        )

    def describe(self) -> str:
        """The range in words, for an error message: ``'>= 1'``, ``'in [0, 1]'``."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return "any value"


def describe(value: object) -> str:
    """A short account of a bad argument for an error message: a tensor's dtype and shape (its
    repr would print every entry), else the type name."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
