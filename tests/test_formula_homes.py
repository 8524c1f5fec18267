"""One home per formula: the single vector spin, the Onsager reaction term and the ln Z of an
attention row each have one body in ``src/``, and the physics methods and the nn modules call it.

Two kinds of check. The source check strips comments and strings from every module and looks for
the defining expression of each formula (φ's β²|θ|²/R², the tangential variance of φ, the
Bessel mean βR²qθ, the Onsager prefactor β²/4, the row's ln Z = max + ln Z'): it must occur
in the formula's home only. The routing checks replace the home function by a counting wrapper
and run the physics methods and the nn modules, which must call it (and give the same numbers,
since the wrapper passes through).
"""

from __future__ import annotations

import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest
import torch

import spinformer
from spinformer.nn import BoltzmannAttention, MeanFieldAttention, SpinTransformerBlock
from spinformer.physics import (
    IsingModel,
    VectorSpinModel,
    dynamical_mean_field,
    kinetic_ising_step,
    kinetic_vector_step,
    large_d_response,
    onsager,
    thermodynamics,
    vmf,
)

# the modules themselves (``spinformer.attention.ensemble`` the attribute is the function)
ENSEMBLE = importlib.import_module("spinformer.attention.ensemble")
BLOCKED = importlib.import_module("spinformer.attention.blocked")
F64 = torch.float64
SRC = Path(spinformer.__file__).parent


def _code(path: Path) -> str:
    """The module's tokens without comments and strings (docstrings, messages), space-joined."""
    skip = {tokenize.COMMENT, tokenize.STRING}
    if hasattr(tokenize, "FSTRING_MIDDLE"):  # Python >= 3.12 splits f-strings
        skip |= {tokenize.FSTRING_START, tokenize.FSTRING_MIDDLE, tokenize.FSTRING_END}
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return " ".join(t.string for t in tokens if t.type not in skip)


def _homes(pattern: str, package: str = "") -> dict[str, int]:
    found = {}
    for path in sorted((SRC / package).rglob("*.py")):
        count = len(re.findall(pattern, _code(path)))
        if count:
            found[path.relative_to(SRC).as_posix()] = count
    return found


R2 = r"(?:radius\s*\*\*\s*2|r2)"

FORMULAS = {
    # φ(θ) = βθ/(1 + √(1 + β²|θ|²/R²)): the β²|θ|²/R² under the root
    "large-D response": (r"\b(\w+)\s*\*\s*\1\s*\*\s*\w+\s*/\s*" + R2 + r"\b", "", "physics/vmf.py"),
    # φ⁻¹(m) = 2R²m/(β(R² − |m|²))
    "inverse response": (R2 + r"\s*-\s*norm2\s*\)", "", "physics/vmf.py"),
    # tangential variance of φ, b = (R² − |m|²)/(2R²)
    "large-D covariance": (
        r"\(\s*" + R2 + r"\s*-\s*\w+\s*\)\s*/\s*\(\s*2\.0\s*\*\s*" + R2,
        "",
        "physics/vmf.py",
    ),
    # exact (Bessel) mean m = βR² q(κ) θ
    "von Mises-Fisher response": (r"radius\s*\*\*\s*2\s*\*\s*q\b", "", "physics/vmf.py"),
    # Bessel order ν = D/2 − 1
    "Bessel order": (r"/\s*2(?:\.0)?\s*-\s*1(?:\.0)?\b", "", "physics/vmf.py"),
    # Wood's (1994) rejection envelope of the von Mises-Fisher sampler, b = d/(2κ + √(4κ² + d²))
    "von Mises-Fisher sampler": (r"4\.0\s*\*\s*kappa\s*\*\*\s*2", "", "physics/vmf.py"),
    # Onsager term (β²/4) Σ J² tr(C_i C_j)
    "Onsager term": (r"0\.25\s*\*\s*beta\s*\*\*\s*2", "", "physics/onsager.py"),
    # Ising reaction β m Σ_j J² (1 − m_j²)
    "Ising reaction": (r"\*\s*\w+\s*\.\s*apply\s*\(\s*1\.0\s*-", "", "physics/onsager.py"),
    # ln Z of a row from its shifted logits, and F = −ln Z/β of the rows
    "attention-row ln Z": (r"row_max\s*\+\s*log_z_shift", "", "attention/ensemble.py"),
    "attention-row F": (r"-\s*log_partition\s*/\s*beta", "attention", "attention/ensemble.py"),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_each_formula_is_written_once(name):
    pattern, package, home = FORMULAS[name]
    assert _homes(pattern, package) == {home: 1}


class _Spy:
    """Replace ``module.name`` by a pass-through wrapper that counts its calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module, name: str) -> None:
        self.calls = 0
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)


def _symmetric(n: int, generator: torch.Generator, scale: float = 0.3) -> torch.Tensor:
    j = scale * torch.randn(n, n, generator=generator, dtype=F64)
    return (j + j.T).fill_diagonal_(0.0)


def test_phi_has_one_body_that_every_route_calls(monkeypatch):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 6, generator=g, dtype=F64)
    radius = vmf.transformer_radius(6)
    expected = large_d_response(theta, 1.3, radius)
    torch.testing.assert_close(vmf.phi(theta, 1.3, radius), expected, rtol=0, atol=0)
    spy = _Spy(monkeypatch, vmf, "phi_terms")
    for route in (
        lambda: large_d_response(theta, 1.3, radius),
        lambda: kinetic_vector_step(theta, _symmetric(3, g), theta, 1.3, radius, 2),
        lambda: dynamical_mean_field(theta, _symmetric(3, g), theta, 1.3, 2, "vector", radius),
    ):
        before = spy.calls
        route()
        assert spy.calls > before


@pytest.mark.parametrize("onsager_kind", ["none", "tap", "learned"])
def test_nn_mean_field_attention_uses_the_physics_phi(monkeypatch, onsager_kind):
    torch.manual_seed(0)
    module = MeanFieldAttention(12, 2, onsager=onsager_kind, steps=3).double()
    x = torch.randn(2, 4, 12, dtype=F64)
    expected = module(x)
    spy = _Spy(monkeypatch, vmf, "phi_terms")
    torch.testing.assert_close(module(x), expected, rtol=0, atol=0)
    assert spy.calls == 4  # the start φ(h) and three steps


def test_nn_spin_block_uses_the_physics_phi(monkeypatch):
    torch.manual_seed(1)
    block = SpinTransformerBlock(12, 2, order=2, steps=2).double()
    spy = _Spy(monkeypatch, vmf, "phi_terms")
    block(torch.randn(1, 3, 12, dtype=F64))
    assert spy.calls == 3  # the learned start φ(W_V x̂) and two steps


def test_nn_spin_block_one_step_path_uses_the_physics_phi(monkeypatch):
    # the one-step path (no J formed, closed-form backward) still evaluates φ through vmf; its
    # compiled row kernel (nn/cosine_step.h) is the one registered second body of φ and φ⁻¹,
    # checked against vmf in test_nn_native.py, so this route is the torch one
    monkeypatch.setenv("SPINFORMER_NATIVE", "0")
    torch.manual_seed(1)
    block = SpinTransformerBlock(12, 2, steps=1, residual="magnetization").double()
    spy = _Spy(monkeypatch, vmf, "phi_terms")
    x = 0.1 * torch.randn(1, 3, 12, dtype=F64, requires_grad=True)
    block(x).sum().backward()
    assert spy.calls == 2  # the learned start and the one step
    inverse = _Spy(monkeypatch, vmf, "phi_inverse")
    block(x)
    assert inverse.calls == 1  # the stream's conjugate field φ⁻¹(x)


def test_phi_fused_backward_is_the_autograd_backward():
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(4, 5, 6, generator=g, dtype=F64, requires_grad=True)
    beta = torch.rand(4, 1, 1, generator=g, dtype=F64).add(0.5).requires_grad_()
    torch.autograd.gradcheck(lambda t, b: vmf.phi_fused(t, b, 2.0), (theta, beta))
    torch.testing.assert_close(vmf.phi_fused(theta, beta, 2.0), vmf.phi(theta, beta, 2.0))


def test_phi_fused_with_fields_and_stream_is_phi_of_the_summed_field():
    # φ(θ + h + φ⁻¹(x)) with the closed-form backward, against autograd through vmf.phi
    g = torch.Generator().manual_seed(4)
    radius = vmf.transformer_radius(6)
    theta, field = (torch.randn(2, 5, 3, 6, generator=g, dtype=F64) for _ in range(2))
    stream = 0.9 * radius * torch.tanh(torch.randn(2, 5, 3, 6, generator=g, dtype=F64)) / 6**0.5
    stream[0, 0, 0] *= radius / stream[0, 0, 0].norm()  # saturated: R² − |x|² at its floor
    beta = torch.rand(3, 1, generator=g, dtype=F64).add(0.5)
    inputs = [t.requires_grad_() for t in (theta, field, stream[1:], beta)]
    torch.autograd.gradcheck(
        lambda t, h, x, b: vmf.phi_fused(t, b, radius, h, stream=x),
        [t[1:] for t in inputs[:2]] + inputs[2:],
    )
    stream.requires_grad_()
    fused = vmf.phi_fused(theta, beta, radius, field, stream=stream)
    plain = vmf.phi(theta + field + vmf.phi_inverse(stream, beta, radius), beta, radius)
    torch.testing.assert_close(fused, plain, rtol=1e-14, atol=1e-14)
    gy = torch.randn(plain.shape, generator=g, dtype=F64)
    wrt = (theta, field, stream, beta)
    torch.testing.assert_close(
        torch.autograd.grad(fused, wrt, gy), torch.autograd.grad(plain, wrt, gy)
    )


def test_nn_tap_reaction_is_the_physics_reaction(monkeypatch):
    """MeanFieldAttention's TAP term is onsager.large_d_reaction: β(D/2R²) m Σ_j J² b_j."""
    torch.manual_seed(2)
    module = MeanFieldAttention(12, 2, onsager="tap", steps=2).double()
    spy = _Spy(monkeypatch, onsager, "large_d_reaction")
    module(torch.randn(2, 3, 12, dtype=F64))
    assert spy.calls == 2


def test_large_d_reaction_is_the_gradient_of_the_onsager_term():
    """Ω_i = −β⁻¹ ∂O/∂m_i for O = (β²/4) Σ J² D b_i b_j, b = (R² − |m|²)/(2R²) (autograd)."""
    g = torch.Generator().manual_seed(3)
    dim, beta = 6, 0.7
    radius = vmf.transformer_radius(dim)
    couplings = onsager.SiteCouplings(_symmetric(5, g))
    m = (0.4 * torch.randn(5, dim, generator=g, dtype=F64)).requires_grad_(True)
    variance, _ = vmf.large_d_covariance(m, radius)
    term = onsager.onsager_term(torch.tensor(beta, dtype=F64), couplings, variance, dim)
    (grad,) = torch.autograd.grad(term, m)
    reaction = onsager.large_d_reaction(m.detach(), beta, radius, couplings)
    torch.testing.assert_close(reaction, -grad / beta, rtol=1e-12, atol=1e-14)


def test_ising_reaction_is_the_gradient_of_the_onsager_term():
    """Textbook TAP: Ω_i = β m_i Σ_j J_ij²(1 − m_j²) = −β⁻¹ ∂O/∂m_i with C_i = 1 − m_i²."""
    g = torch.Generator().manual_seed(4)
    beta = 1.1
    couplings = onsager.SiteCouplings(_symmetric(6, g))
    m = (torch.rand(6, generator=g, dtype=F64) - 0.5).requires_grad_(True)
    term = onsager.onsager_term(torch.tensor(beta, dtype=F64), couplings, 1.0 - m * m)
    (grad,) = torch.autograd.grad(term, m)
    reaction = onsager.ising_reaction(m.detach(), beta, couplings)
    torch.testing.assert_close(reaction, -grad / beta, rtol=1e-12, atol=1e-14)


def test_physics_tap_and_dynamical_mean_field_use_the_reaction_term(monkeypatch):
    g = torch.Generator().manual_seed(5)
    j = _symmetric(4, g)
    ising = IsingModel(j, torch.randn(4, generator=g, dtype=F64), 0.8)
    vector = VectorSpinModel(j, torch.randn(4, 3, generator=g, dtype=F64), 0.8, radius=1.0)
    term = _Spy(monkeypatch, onsager, "onsager_term")
    ising_spy = _Spy(monkeypatch, onsager, "ising_reaction")
    vector_spy = _Spy(monkeypatch, onsager, "vector_reaction")
    thermodynamics(ising, "tap")
    assert term.calls > 0 and ising_spy.calls > 0
    before = term.calls
    thermodynamics(vector, "tap")
    assert term.calls > before and vector_spy.calls > 0
    before = ising_spy.calls
    kinetic_ising_step(torch.zeros(4, dtype=F64), j, 0.1, 0.8, order=2)
    assert ising_spy.calls > before


def test_physics_vector_methods_use_the_vmf_moments(monkeypatch):
    g = torch.Generator().manual_seed(6)
    model = VectorSpinModel(
        _symmetric(3, g), torch.randn(3, 4, generator=g, dtype=F64), 1.2, radius=1.5
    )
    spy = _Spy(monkeypatch, vmf, "site_moments")
    thermodynamics(model, "mean_field")
    assert spy.calls > 0


@pytest.mark.parametrize("need_weights", [False, True])
def test_nn_boltzmann_attention_uses_the_row_kernel(monkeypatch, need_weights):
    """need_thermo goes through the blocked fast path (no weights) or boltzmann_rows (weights);
    both turn the row moments into ln Z, U, S, C with the same attention.ensemble functions."""
    assert BLOCKED.row_terms is ENSEMBLE.row_terms
    assert BLOCKED.row_thermodynamics is ENSEMBLE.row_thermodynamics
    torch.manual_seed(7)
    module = BoltzmannAttention(8, 2, dtype=F64)
    x = torch.randn(2, 5, 8, dtype=F64)
    spies = [_Spy(monkeypatch, m, "row_terms") for m in (ENSEMBLE, BLOCKED)]
    assembled = [_Spy(monkeypatch, m, "row_thermodynamics") for m in (ENSEMBLE, BLOCKED)]
    with torch.no_grad():
        module(x, need_weights=need_weights, need_thermo=True)
    assert sum(s.calls for s in spies) == 1 and sum(s.calls for s in assembled) == 1
    fast_path = not need_weights
    assert spies[1].calls == int(fast_path) and spies[0].calls == int(not fast_path)
