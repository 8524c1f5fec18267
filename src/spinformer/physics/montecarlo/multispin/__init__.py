"""The multi-spin coded Metropolis engine: 64 replicas per int64 word, two backends.

:class:`NativeMultispin` (the fused C kernel, CPU) and :class:`TorchMultispin` (torch
operations, any device) share the layout and the algorithm of
:class:`~spinformer.physics.montecarlo.multispin.common.MultispinEngine`;
:func:`MultispinIsing` builds the one asked for (``backend``), or the native one where it can
run (``"auto"``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from spinformer.physics.models import IsingModel
from spinformer.physics.montecarlo.build import native_library
from spinformer.physics.montecarlo.multispin.common import (
    DIGITS,
    MultispinEngine,
    multispin_supported,
)
from spinformer.physics.montecarlo.multispin.native import NativeMultispin
from spinformer.physics.montecarlo.multispin.torch_backend import TorchMultispin
from spinformer.physics.montecarlo.updates import LAZY_DIGITS, lazy_digits

__all__ = [
    "BACKENDS",
    "DIGITS",
    "LAZY_DIGITS",
    "MultispinEngine",
    "MultispinIsing",
    "NativeMultispin",
    "TorchMultispin",
    "lazy_digits",
    "multispin_supported",
    "native_backend_available",
]

BACKENDS = ("auto", "native", "torch")


def native_backend_available(model: IsingModel) -> bool:
    """Whether :class:`NativeMultispin` can run for ``model`` here (CPU and a built kernel)."""
    return model.device.type == "cpu" and native_library() is not None


def MultispinIsing(
    model: IsingModel,
    state: Tensor | str,
    generator: torch.Generator | None,
    chains: int | None = None,
    backend: str = "auto",
    lazy: int | None = None,
) -> MultispinEngine:
    """The multi-spin sweeper of ``backend``: ``"native"`` (CPU only), ``"torch"`` or
    ``"auto"`` (native where it can run). Arguments as :class:`MultispinEngine`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "native" or (backend == "auto" and native_backend_available(model)):
        return NativeMultispin(model, state, generator, chains, lazy)
    return TorchMultispin(model, state, generator, chains, lazy)
