"""Sizes are refused before the damage, and large exact work runs in bounded memory.

A :class:`ResourceLimitError` is raised only by the estimates in ``physics/_limits.py``, before
any allocation, so "raises ResourceLimitError" is the check that nothing was allocated first.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from spinformer.physics import (
    SquareLattice,
    all_states,
    chain,
    sample,
    sherrington_kirkpatrick,
    square_lattice,
    thermodynamics,
)
from spinformer.physics._limits import MEMORY_LIMIT_ENV, ResourceLimitError


def test_all_states_refuses_before_allocating():
    with pytest.raises(ResourceLimitError, match=r"all_states\(28\).*start/stop"):
        all_states(28)
    assert all_states(28, start=5, stop=7).tolist() == [
        [1.0, -1.0, 1.0] + [-1.0] * 25,
        [-1.0, 1.0, 1.0] + [-1.0] * 25,
    ]
    with pytest.raises(ValueError, match="stop must be an integer"):
        all_states(3, stop=9)


def test_huge_lattice_builds_without_allocating_per_site():
    """square_lattice(20000) held 4.4 GB checking its broadcast scalar field."""
    code = (
        "import resource\n"
        "from spinformer.physics import square_lattice, thermodynamics\n"
        "model = square_lattice(20000)\n"
        "try:\n"
        "    thermodynamics(model)\n"
        "except ValueError as err:\n"
        "    assert 'N <= 24' in str(err) and 'monte_carlo' in str(err), err\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    peak_kib = int(out.stdout.split()[-1])
    assert peak_kib < 1.5 * 2**20  # 4e8 sites: one byte per site would already be 0.4 GB


def test_dense_matrices_are_refused_before_allocating():
    with pytest.raises(ResourceLimitError, match=r"sherrington_kirkpatrick\(1000000\)"):
        sherrington_kirkpatrick(10**6)
    with pytest.raises(ResourceLimitError, match="adjacency"):
        SquareLattice((2000, 2000)).adjacency()


def test_sampling_refuses_impossible_chain_counts():
    with pytest.raises(ResourceLimitError, match=r"chains=1000000000.*fewer chains"):
        sample(square_lattice(8, beta=0.4), sweeps=10, chains=10**9)
    with pytest.raises(ResourceLimitError, match="chains="):
        thermodynamics(square_lattice(8, beta=0.4), "monte_carlo", chains=10**9)


def test_widest_periodic_transfer_is_refused_by_its_estimate():
    """The 12 x 12 torus (allowed width) died of memory at 5.4 GB; now the estimate refuses."""
    with pytest.raises(ResourceLimitError, match=r"12 x 12 periodic.*monte_carlo"):
        thermodynamics(square_lattice(12, beta=0.4))


def test_memory_limit_is_configurable(monkeypatch):
    model = square_lattice(8, beta=0.4)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1e-6")
    with pytest.raises(ResourceLimitError, match=MEMORY_LIMIT_ENV):
        sample(model, sweeps=10, chains=64)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MEMORY_LIMIT_ENV} must be a positive number"):
        sample(model, sweeps=10, chains=64)


def test_long_chain_susceptibility_from_transfer_matrices():
    """chain(2000): chi by transfer-matrix messages (minutes of backward passes before),
    against the 1-D closed forms: <s_0 s_d> = (t^d + t^(N-d)) / (1 + t^N) at h = 0, and the
    infinite-chain chi = beta cosh(b) e^(-4K) / (sinh^2 b + e^(-4K))^(3/2) in a field."""
    n, beta = 2000, 0.7
    t = math.tanh(beta)
    result = thermodynamics(chain(n, beta=beta))
    row = torch.tensor(
        [beta * (t**d + t ** (n - d)) / (1 + t**n) for d in range(n)], dtype=torch.float64
    )
    torch.testing.assert_close(result.susceptibility[0], row, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(
        result.susceptibility[1234], torch.roll(row, 1234), rtol=1e-9, atol=1e-15
    )
    h, n = 0.05, 500  # correlation length ~2: the infinite-chain value to 1e-200
    in_field = thermodynamics(chain(n, field=h, beta=beta))
    b, q = beta * h, math.exp(-4 * beta)
    closed = beta * math.cosh(b) * q / (math.sinh(b) ** 2 + q) ** 1.5
    per_spin = in_field.susceptibility.sum(-1)  # sum_j chi_ij, every i alike
    torch.testing.assert_close(
        per_spin, torch.full((n,), closed, dtype=torch.float64), rtol=1e-9, atol=0
    )
    m = math.sinh(b) / math.sqrt(math.sinh(b) ** 2 + q)
    torch.testing.assert_close(
        in_field.magnetization, torch.full((n,), m, dtype=torch.float64), rtol=1e-10, atol=0
    )


def test_transfer_susceptibility_in_row_chunks_matches_enumeration(monkeypatch, generator):
    """A memory limit that fits one row of chi insertions at a time gives the same chi."""
    field = 0.3 * torch.randn(16, generator=generator, dtype=torch.float64)
    model = square_lattice(4, coupling=0.8, field=field, beta=torch.tensor([0.3, 0.9]))
    reference = thermodynamics(model, route="enumerate")
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "0.0003")  # ~300 kB: one of the four rows per pass
    chunked = thermodynamics(model, route="transfer")
    torch.testing.assert_close(
        chunked.susceptibility, reference.susceptibility, rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(
        chunked.magnetization, reference.magnetization, rtol=1e-9, atol=1e-12
    )
