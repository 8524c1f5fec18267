"""Mean field and TAP return the stable stationary point, stay finite at zero field and at
extreme β, and scale to large complete graphs; every value checked against a closed form."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from scipy.optimize import brentq

from spinformer.physics import (
    CompleteGraph,
    IsingModel,
    VectorSpinModel,
    chain,
    curie_weiss,
    thermodynamics,
)

F64 = torch.float64


def _langevin(x: float) -> float:
    """L(x) = coth x − 1/x, the mean cosine of a D = 3 spin (series near 0)."""
    return x / 3.0 - x**3 / 45.0 if abs(x) < 1e-4 else 1.0 / math.tanh(x) - 1.0 / x


def _complete(n: int, total: float) -> torch.Tensor:
    """Dense J_ij = total/(n − 1) for i ≠ j: Σ_j J_ij = total."""
    return total / (n - 1) * (1.0 - torch.eye(n, dtype=F64))


# -- item: the stable solution of lowest free energy among several stationary points ----------


def test_ising_mean_field_returns_the_stable_curie_weiss_solution():
    """J_ij = (60/59)/60, h = 0.1, β = 1.5: θ = h + m, m = tanh(1.5(m + 0.1)) has three roots;
    the stable one is m = 0.907037791765 (root bracketed independently)."""
    model = curie_weiss(60, coupling=60 / 59, field=0.1, beta=1.5)
    r = thermodynamics(model, "mean_field")
    expected = brentq(lambda m: m - math.tanh(1.5 * (m + 0.1)), 0.5, 1.0, xtol=1e-15)
    assert expected == pytest.approx(0.907037791765, abs=1e-12)
    torch.testing.assert_close(r.magnetization, torch.full((60,), expected, dtype=F64))
    assert bool(r.converged) and bool(r.extras["stable"])
    assert int(r.extras["stationary_points"]) == 3  # m ≈ 0.907 and the two negative roots
    # linear response of the uniform state: Σ_j χ_ij = β(1 − m²) / (1 − β(1 − m²))
    slope = 1.5 * (1 - expected**2)
    torch.testing.assert_close(
        r.susceptibility.sum(-1), torch.full((60,), slope / (1 - slope), dtype=F64)
    )
    # TAP adds −β m Σ_j J_ij² (1 − m_j²) = −β m (1 − m²)/59 to θ
    tap = thermodynamics(model, "tap", susceptibility=False)
    c = 1 / 59

    def tap_equation(m: float) -> float:
        return m - math.tanh(1.5 * (0.1 + m - 1.5 * m * (1 - m * m) * 59 * c * c))

    expected_tap = brentq(tap_equation, 0.5, 1.0, xtol=1e-15)
    torch.testing.assert_close(tap.magnetization, torch.full((60,), expected_tap, dtype=F64))
    assert bool(tap.extras["stable"])


def test_vector_mean_field_finds_the_ordered_heisenberg_state_batched():
    """O(3) complete graph, Σ_j J_ij = 1, field 1e-9 x̂, β = (1, 4.5) in one batch: m = L(β(m + h))
    gives the paramagnet at β = 1 and |m| = 0.6757 at β = 4.5 (not the unstable m ≈ 0)."""
    n = 8
    field = torch.zeros(n, 3, dtype=F64)
    field[:, 0] = 1e-9
    beta = torch.tensor([1.0, 4.5], dtype=F64)
    r = thermodynamics(VectorSpinModel(_complete(n, 1.0), field, beta), "mean_field")
    for k, b in enumerate(beta.tolist()):
        lo = 0.0 if b < 3 else 0.1
        expected = brentq(lambda m, b=b: m - _langevin(b * (m + 1e-9)), lo, 1.0, xtol=1e-15)
        got = r.magnetization[k, :, 0]
        torch.testing.assert_close(
            got, torch.full((n,), expected, dtype=F64), rtol=1e-9, atol=1e-12
        )
        assert bool(r.extras["stable"][k])
    assert r.magnetization[1, 0, 0] == pytest.approx(0.6757069001, abs=1e-9)
    assert r.converged.shape == (2,) and bool(r.converged.all())
    assert int(r.extras["stationary_points"][1]) >= 2  # ordered state and the paramagnet


# -- item: exactly zero field ------------------------------------------------------------------


def _open_chain(n: int, k: float) -> torch.Tensor:
    j = torch.zeros(n, n, dtype=F64)
    idx = torch.arange(n - 1)
    j[idx, idx + 1] = k
    j[idx + 1, idx] = k
    return j


def test_vector_mean_field_and_tap_at_exactly_zero_field():
    """Open Heisenberg chain N = 12, K = 0.2, h = 0: naive ln Z = U = 0, m = 0 and
    χ = (β/D)(1 − βJ/D)⁻¹ ⊗ 1; TAP ln Z = β²(N − 1)K²/(2D), U = −β(N − 1)K²/D."""
    n, k, dim = 12, 0.2, 3
    j = _open_chain(n, k)
    model = VectorSpinModel(j, None, 1.0, dim=dim)
    naive = thermodynamics(model, "mean_field")
    assert float(naive.log_partition) == pytest.approx(0.0, abs=1e-14)
    assert float(naive.energy) == pytest.approx(0.0, abs=1e-14)
    assert float(naive.magnetization.abs().max()) == 0.0
    chi = torch.linalg.inv(torch.eye(n, dtype=F64) - j / dim) / dim
    expected = torch.einsum("nm,ab->namb", chi, torch.eye(dim, dtype=F64))
    torch.testing.assert_close(naive.susceptibility, expected, rtol=1e-10, atol=1e-12)
    tap = thermodynamics(model, "tap", susceptibility=False)
    onsager = (n - 1) * k**2 / (2 * dim)
    assert float(tap.log_partition) == pytest.approx(onsager, rel=1e-12)
    assert float(tap.energy) == pytest.approx(-2 * onsager, rel=1e-12)
    assert float(tap.heat_capacity) == pytest.approx(2 * onsager, rel=1e-10)
    assert bool(naive.converged) and bool(tap.converged)


# -- item: extreme β ---------------------------------------------------------------------------


def _ln2cosh(x: float) -> float:
    x = abs(x)
    return x + math.log1p(math.exp(-2 * x))


@pytest.mark.parametrize("beta", [1e-6, 1e-2, 1.0, 1e3, 1e8])
def test_ising_mean_field_closed_form_from_high_to_zero_temperature(beta):
    """Curie–Weiss N = 20, Σ_j J_ij = 1.3·19/20, h = 0.2: the uniform mean-field state
    m = tanh(β(km + h)) in closed form, ln Z/N = ln 2cosh βθ − βkm²/2, U/N = −(km²/2 + hm),
    C/N = β² θ (1 − m²)(θ)/(1 − βk(1 − m²)); S → 0 and C → 0 as β → ∞."""
    n, h = 20, 0.2
    k = 1.3 * (n - 1) / n
    model = curie_weiss(n, coupling=1.3, field=h, beta=beta)
    r = thermodynamics(model, "mean_field", susceptibility=False)
    m = brentq(lambda m: m - math.tanh(beta * (k * m + h)), 0.0, 1.0, xtol=1e-16, rtol=1e-15)
    theta = k * m + h
    log_z = n * (_ln2cosh(beta * theta) - beta * k * m * m / 2)
    energy = -n * (k * m * m / 2 + h * m)
    spread = 1.0 / math.cosh(min(beta * theta, 350.0)) ** 2
    heat = n * beta**2 * theta**2 * spread / (1 - beta * k * spread)
    assert bool(r.converged) and bool(r.extras["stable"])
    assert float(r.log_partition) == pytest.approx(log_z, rel=1e-12)
    assert float(r.energy) == pytest.approx(energy, rel=1e-12)
    torch.testing.assert_close(
        r.magnetization, torch.full((n,), m, dtype=F64), rtol=1e-12, atol=1e-15
    )
    assert float(r.heat_capacity) == pytest.approx(heat, rel=1e-9, abs=1e-12)
    entropy = log_z + beta * energy
    assert float(r.entropy) == pytest.approx(entropy, rel=1e-9, abs=1e-12 * beta * n)
    tap = thermodynamics(model, "tap", susceptibility=False)
    assert bool(tap.converged) and bool(torch.isfinite(tap.heat_capacity))
    if beta >= 1e3:  # saturated: TAP's reaction term vanishes with 1 − m² → 0
        assert float(tap.heat_capacity) == pytest.approx(0.0, abs=1e-12)
        assert float(tap.energy) == pytest.approx(energy, rel=1e-12)


@pytest.mark.parametrize("method", ["mean_field", "tap"])
def test_ising_chain_mean_field_is_finite_at_extreme_beta(method):
    """Open chain N = 10, h = 0.3: every observable finite and flagged converged for β up to
    1e8; at β → ∞ the saturated state has U = −(N − 1) − N h, S = 0, C = 0."""
    betas = torch.tensor([1e-6, 1e2, 1e4, 1e8], dtype=F64)
    r = thermodynamics(chain(10, field=0.3, beta=betas, periodic=False), method)
    for value in (r.log_partition, r.energy, r.entropy, r.heat_capacity, r.susceptibility):
        assert bool(torch.isfinite(value).all())
    assert bool(r.converged.all()) and bool(r.extras["stable"].all())
    torch.testing.assert_close(r.energy[-1], torch.tensor(-9.0 - 3.0, dtype=F64))
    assert float(r.heat_capacity[-1]) == pytest.approx(0.0, abs=1e-12)
    assert float(r.entropy[-1]) == pytest.approx(0.0, abs=1e-6)


def test_vector_mean_field_zero_temperature_limit():
    """Ferromagnetic open O(3) chain in a field along z at β = 1e8: the aligned state, each spin
    a harmonic oscillator in its two transverse directions: C → N(D − 1)/2, U → −(N−1)K − Nh."""
    n, k, h, dim = 6, 0.5, 0.3, 3
    field = torch.zeros(n, dim, dtype=F64)
    field[:, 2] = h
    beta = torch.tensor([1e3, 1e6, 1e8], dtype=F64)
    r = thermodynamics(VectorSpinModel(_open_chain(n, k), field, beta), "mean_field")
    assert bool(r.converged.all()) and bool(r.extras["stable"].all())
    for value in (r.log_partition, r.energy, r.heat_capacity, r.susceptibility):
        assert bool(torch.isfinite(value).all())
    ground = -(n - 1) * k - n * h
    assert float(r.energy[-1]) == pytest.approx(ground, rel=1e-7)
    assert float(r.heat_capacity[-1]) == pytest.approx(n * (dim - 1) / 2, rel=1e-6)
    # U − U₀ ≈ C/β at low temperature (equipartition of the transverse modes)
    assert float(r.energy[0] - ground) == pytest.approx(n * (dim - 1) / 2 / 1e3, rel=0.05)


# -- item: large complete graphs in O(N) -------------------------------------------------------


def test_complete_graph_geometry_matches_the_dense_couplings():
    g = torch.Generator().manual_seed(0)
    n = 5
    field = torch.randn(n, generator=g, dtype=F64)
    geometric = IsingModel(torch.tensor(0.4, dtype=F64), field, 0.8, lattice=CompleteGraph(n))
    dense = IsingModel(0.4 * (1 - torch.eye(n, dtype=F64)), field, 0.8)
    torch.testing.assert_close(geometric.coupling_matrix, dense.couplings)
    spins = torch.randint(0, 2, (5, n), generator=g).to(F64) * 2 - 1
    torch.testing.assert_close(geometric.energy(spins), dense.energy(spins))
    torch.testing.assert_close(geometric.local_field(spins), dense.local_field(spins))
    exact = thermodynamics(geometric)  # enumeration reads the dense matrix of the geometry
    torch.testing.assert_close(exact.log_partition, thermodynamics(dense).log_partition)
    for method in ("mean_field", "tap"):
        a = thermodynamics(geometric, method)
        b = thermodynamics(dense, method)
        torch.testing.assert_close(a.magnetization, b.magnetization)
        torch.testing.assert_close(a.heat_capacity, b.heat_capacity)
        torch.testing.assert_close(a.susceptibility, b.susceptibility)
    vector = VectorSpinModel(
        torch.tensor(0.3, dtype=F64),
        torch.randn(n, 3, generator=g, dtype=F64),
        1.2,
        lattice=CompleteGraph(n),
    )
    dense_vector = VectorSpinModel(0.3 * (1 - torch.eye(n, dtype=F64)), vector.field, 1.2)
    a = thermodynamics(vector, "tap", susceptibility=False)
    b = thermodynamics(dense_vector, "tap", susceptibility=False)
    torch.testing.assert_close(a.log_partition, b.log_partition)
    torch.testing.assert_close(a.heat_capacity, b.heat_capacity)
    with pytest.raises(ValueError, match="num_sites"):
        CompleteGraph(0)


def test_small_curie_weiss_stays_dense_and_exact():
    model = curie_weiss(10, beta=0.7, field=0.1)
    assert model.lattice is None and model.couplings.shape == (10, 10)
    # ln Z by the binomial sum over the total spin M (independent of the model code)
    n, beta, h = 10, 0.7, 0.1
    terms = [
        math.lgamma(n + 1)
        - math.lgamma((n + s) // 2 + 1)
        - math.lgamma((n - s) // 2 + 1)
        + beta * ((s * s - n) / (2 * n) + h * s)
        for s in range(-n, n + 1, 2)
    ]
    top = max(terms)
    log_z = top + math.log(sum(math.exp(t - top) for t in terms))
    assert float(thermodynamics(model).log_partition) == pytest.approx(log_z, rel=1e-12)


_LARGE = """
import json, math, torch
from spinformer.physics import curie_weiss, thermodynamics


def peak_mb():  # this process's own high-water mark (ru_maxrss would include pytest's, via fork)
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) / 1024


model = curie_weiss(50000, coupling=1.2, field=0.05, beta=1.0)
r = thermodynamics(model, "mean_field", susceptibility=False)
print(json.dumps({
    "geometry": type(model.lattice).__name__, "couplings": list(model.couplings.shape),
    "m": r.magnetization.tolist()[:3] + [float(r.magnetization.std())],
    "log_z": float(r.log_partition), "energy": float(r.energy), "heat": float(r.heat_capacity),
    "stable": bool(r.extras["stable"]), "converged": bool(r.converged),
    "rss_mb": peak_mb(),
}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_curie_weiss_of_fifty_thousand_spins_in_linear_memory():
    """N = 50000 (a dense J would be 20 GB): mean field against m = tanh(β(k m + h)) with
    k = J(N − 1)/N (no self-coupling), ln Z, U and C in closed form; peak memory < 1.5 GB."""
    out = subprocess.run(
        [sys.executable, "-c", _LARGE], capture_output=True, text=True, check=True, timeout=300
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    n, beta, h = 50000, 1.0, 0.05
    k = 1.2 * (n - 1) / n
    m = brentq(lambda m: m - math.tanh(beta * (k * m + h)), 0.1, 1.0, xtol=1e-16, rtol=1e-15)
    theta = k * m + h
    spread = 1 - m * m
    assert got["geometry"] == "CompleteGraph" and got["couplings"] == []
    assert got["stable"] and got["converged"]
    assert got["m"][:3] == pytest.approx([m] * 3, rel=1e-12)
    assert got["m"][3] < 1e-12
    assert got["log_z"] == pytest.approx(
        n * (_ln2cosh(beta * theta) - beta * k * m * m / 2), rel=1e-12
    )
    assert got["energy"] == pytest.approx(-n * (k * m * m / 2 + h * m), rel=1e-12)
    heat = n * beta**2 * theta**2 * spread / (1 - beta * k * spread)
    assert got["heat"] == pytest.approx(heat, rel=1e-9)
    assert got["rss_mb"] < 1500


def test_large_models_refuse_a_dense_susceptibility_and_unsupported_methods():
    model = curie_weiss(5000)
    with pytest.raises(ValueError, match="susceptibility=False"):
        thermodynamics(model, "mean_field")
    with pytest.raises(ValueError, match="N <= 24"):
        thermodynamics(model)
    with pytest.raises(ValueError, match="complete-graph"):
        thermodynamics(model, "monte_carlo")
