"""Shared test configuration: float64 physics, seeded randomness, headless plotting."""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("COLUMNS", "120")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded torch generator (every random test is reproducible)."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (small tensors: avoids OpenMP contention), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
