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

from spinformer.attention import (
    critical_beta,
    ensemble,
    fixed_points,
    self_consistent,
    spectral_radius,
)


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


@pytest.mark.parametrize("solve", ["self_consistent", "fixed_points", "critical_beta"])
def test_overflowing_scores_name_the_users_inputs(solve):
    # finite float32 tokens of size 3e19: the radius |x| and the scores x W x overflow; the error
    # names x and w_qk (the solver used to reject its own start point as "z0")
    x = 3e19 * torch.tensor([[1.0, 0.5], [-1.0, 0.25], [0.5, -1.0]])
    call = {
        "self_consistent": lambda: self_consistent(x, torch.eye(2), 1.0),
        "fixed_points": lambda: fixed_points(x, torch.eye(2), 1.0, num_random=2),
        "critical_beta": lambda: critical_beta(x, torch.eye(2)),
    }[solve]
    with pytest.raises(ValueError, match=r"x(,| and) w_qk.* outside the torch\.float32 range"):
        call()


def test_large_tokens_within_range_keep_the_closed_form():
    # 1e18-sized float32 tokens ±v: the radius (|x|^2 = 2e36) is representable only via rescaling
    # and the self-consistent m = a v solves a = tanh(β|v|² a)
    v = torch.tensor([1e18, 1e18])
    x = torch.stack([v, -v])
    beta = 1.5 / float(v.double().square().sum())
    result = self_consistent(x, torch.eye(2), beta, method="anderson")
    assert result.converged.all()
    a = torch.tensor(1.0, dtype=torch.float64)
    for _ in range(200):
        a = torch.tanh(1.5 * a)
    ratio = result.magnetization[0].double() / v.double()
    torch.testing.assert_close(ratio, a.expand(2), rtol=1e-4, atol=0)


def test_no_tokens_or_no_keys():
    empty = torch.zeros(0, 3)
    assert self_consistent(empty, torch.eye(3), 1.0).magnetization.shape == (0, 3)
    with pytest.raises(ValueError, match="x must hold at least one token"):
        self_consistent(empty, torch.eye(3), 1.0, init=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="x must hold at least one token"):
        fixed_points(empty, torch.eye(3), 1.0)
    with pytest.raises(ValueError, match="x must hold at least one token"):
        critical_beta(empty, torch.eye(3))
    with pytest.raises(ValueError, match="no key to attend to"):
        ensemble(torch.zeros(2, 4, 3), torch.zeros(2, 0, 3), 1.0)
    assert ensemble(torch.zeros(0, 4, 3), torch.zeros(0, 0, 3), 1.0).entropy.shape == (0, 4)


def test_bad_tensors_are_described_not_printed():
    tokens = torch.ones(3, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"got a torch\.int64 tensor of shape \(3, 2\)$"):
        self_consistent(tokens, torch.eye(2), 1.0)
    with pytest.raises(ValueError, match=r"got a torch\.float32 tensor of shape \(4,\)$"):
        ensemble(torch.ones(4), torch.ones(2, 4), 1.0)
