"""Eigenvalues of the mean-field maps at the edges of the floating-point range.

LAPACK's eigenvalue routine crashes the interpreter on NaN/inf entries, so these calls run in
a subprocess: a crash fails the test instead of ending the test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from spinformer.attention import critical_beta, spectral_radius


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_non_finite_or_overflowing_matrices_are_clear_errors_not_crashes():
    # one interpreter for the four cases (each used to end in a segfault in the eigen-solver)
    done = _run(
        """
        import torch
        from spinformer.attention import critical_beta, spectral_radius
        cases = [
            lambda: spectral_radius(torch.full((3, 3), float("nan"))),
            lambda: spectral_radius(torch.full((3, 3), float("inf"))),
            lambda: critical_beta(1e20 * torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), torch.eye(2)),
            # Cov(x) = ones, so Cov(x) W_QK = 6e38 overflows float32
            lambda: critical_beta(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), torch.full((2, 2), 3e38)),
        ]
        for case in cases:
            try:
                case()
            except ValueError as err:
                print("ValueError:", err)
        """
    )
    assert done.returncode == 0, done.stderr  # a segfault gives -11
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout
    assert lines[0] == "ValueError: matrix must be finite, got NaN entries"
    assert lines[1] == "ValueError: matrix must be finite, got infinite entries"
    assert lines[2].startswith("ValueError: x and w_qk are outside the torch.float32 range")
    assert lines[3].startswith("ValueError: w_qk is outside the torch.float32 range")


def test_critical_beta_of_huge_tokens_in_float64_is_the_closed_form():
    # tokens ±v: f(m) = v tanh(β v·m), so the m = 0 branch loses stability at β_c = 1/|v|^2
    scale = 1e20
    x = scale * torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    result = critical_beta(x, torch.eye(2, dtype=torch.float64))
    exact = 1.0 / (2.0 * scale**2)
    assert bool(result.found)
    assert float(result.closed_form) == pytest.approx(exact, rel=1e-12)
    assert float(result.beta) == pytest.approx(exact, rel=1e-6)


def test_spectral_radius_rescales_huge_entries():
    # [[a, a], [a, a]] has eigenvalues 2a and 0; 2a = 6e38 is beyond float32 (inf), 2e30 is not
    ones = torch.ones(2, 2)
    torch.testing.assert_close(spectral_radius(1e30 * ones), torch.tensor(2e30))
    assert torch.isinf(spectral_radius(3e38 * ones))
    rotation = 1e300 * torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    assert float(spectral_radius(rotation)) == pytest.approx(1e300, rel=1e-12)


def test_spectral_radius_of_zero_and_empty_matrices():
    assert spectral_radius(torch.zeros(2, 3, 3)).tolist() == [0.0, 0.0]
    assert spectral_radius(torch.zeros(2, 0, 0)).shape == (2,)


@pytest.mark.parametrize("bad", [torch.zeros(2, 3), "matrix"])
def test_spectral_radius_bad_input(bad):
    with pytest.raises(ValueError, match="matrix must"):
        spectral_radius(bad)
