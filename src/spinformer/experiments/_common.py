"""Small helpers shared by the experiments: seeded generators and power-law fits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["log_log_slope", "seeded"]


def seeded(seed: int) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded with ``seed`` (one per random stream)."""
    return torch.Generator().manual_seed(seed)


def log_log_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (the exponent of a power law y ∝ x^slope)."""
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])
