"""Hopfield networks: energy descent, attractors, AGS capacity, modern net = attention."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spinformer.hopfield import (
    ClassicalHopfield,
    ModernHopfield,
    classical_retrieval,
    modern_retrieval,
    random_patterns,
    random_sphere_patterns,
)
from spinformer.physics import thermodynamics

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- classical -----------------------------------------------------------------------------


def test_async_zero_temperature_descends_into_fixed_points() -> None:
    net = ClassicalHopfield(random_patterns(12, 100, _gen(0)))
    starts = random_patterns(16, 100, _gen(1))
    run = net.run(starts, max_sweeps=50, generator=_gen(2))
    assert bool(run.converged.all())
    assert bool((run.energy_trace.diff(dim=-1) <= 1e-12).all())
    field = run.state @ net.couplings
    assert bool((field * run.state >= -1e-9).all())  # s_i = sign(h_i) (or h_i = 0)
    assert torch.allclose(run.energy_trace[:, -1], net.energy(run.state))


def test_stored_patterns_are_retrieved_from_corrupted_starts() -> None:
    net = ClassicalHopfield(random_patterns(10, 200, _gen(3)))  # α = 0.05
    basins = net.basin_sizes([0.05, 0.2, 0.45], trials=4, generator=_gen(4))
    assert float(basins.fraction_returned[0]) == 1.0
    assert float(basins.fraction_returned[1]) > 0.9
    assert float(basins.fraction_returned[2]) < 0.2  # 45 % flipped: no longer in the basin
    assert bool((basins.fraction_returned.diff() <= 0).all())


def test_symmetric_three_mixture_is_a_spurious_attractor_with_overlap_one_half() -> None:
    # E[ξ¹ sign(ξ¹+ξ²+ξ³)] = ½ exactly; the mixture is stable at small load (AGS 1985).
    net = ClassicalHopfield(random_patterns(3, 2000, _gen(5)))
    mixture = net.mixture_state([0, 1, 2])
    overlaps = net.overlaps(mixture)
    assert torch.allclose(overlaps, torch.full((3,), 0.5, dtype=torch.float64), atol=0.05)
    run = net.run(mixture, generator=_gen(6))
    assert float(run.state @ mixture) / 2000 > 0.98
    census = net.find_attractors(starts=60, generator=_gen(7))
    assert "pattern" in census.kinds and "mixture" in census.kinds
    pattern_energy = min(
        e for e, k in zip(census.energies, census.kinds, strict=True) if k == "pattern"
    )
    mixture_energy = min(
        e for e, k in zip(census.energies, census.kinds, strict=True) if k == "mixture"
    )
    assert pattern_energy < mixture_energy  # stored patterns lie deeper (−N/2 vs −3N/8)


def test_glauber_dynamics_samples_the_boltzmann_distribution() -> None:
    net = ClassicalHopfield(random_patterns(2, 10, _gen(8)))
    temperature = 1.5
    exact = thermodynamics(net.ising_model(beta=1.0 / temperature))
    starts = random_patterns(128, 10, _gen(9))
    energies = []
    state = starts
    for _ in range(30):
        run = net.run(state, max_sweeps=10, temperature=temperature, generator=_gen(len(energies)))
        state = run.state
        energies.append(net.energy(state))
    series = torch.stack(energies[5:])
    mean, se = float(series.mean()), float(series.std()) / series.numel() ** 0.5
    assert abs(mean - float(exact.energy)) < 4 * se * 2  # successive samples 10 sweeps apart


def test_synchronous_schedule_reaches_pattern_or_two_cycle() -> None:
    net = ClassicalHopfield(random_patterns(5, 200, _gen(10)))
    run = net.run(net.corrupt(net.patterns, 0.1, _gen(11)), schedule="sync", max_sweeps=20)
    assert torch.allclose(run.overlaps.diagonal(), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize(("alpha", "bound"), [(0.10, 0.9), (0.20, 0.6)])
def test_classical_capacity_cliff_at_n_1000(alpha: float, bound: float) -> None:
    curve = classical_retrieval(1000, loads=(alpha,), starts=20, generator=_gen(12))
    overlap = float(curve.mean_overlap[0])
    assert overlap > bound if alpha < 0.138 else overlap < bound


def test_path_between_patterns_crosses_a_barrier() -> None:
    net = ClassicalHopfield(random_patterns(4, 100, _gen(13)))
    path = net.path_energies(net.patterns[0], net.patterns[1], _gen(14))
    assert float(path.max()) > float(path[0]) and float(path.max()) > float(path[-1])
    assert path[0] == net.energy(net.patterns[0])


def test_classical_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\+1 and -1"):
        ClassicalHopfield(torch.tensor([[1.0, 0.5, -1.0]]))
    with pytest.raises(ValueError, match="patterns"):
        ClassicalHopfield(torch.zeros(0, 5))
    net = ClassicalHopfield(random_patterns(2, 8, _gen(0)))
    with pytest.raises(ValueError, match="temperature"):
        net.run(net.patterns, temperature=-1.0)
    with pytest.raises(ValueError, match="max_sweeps"):
        net.run(net.patterns, max_sweeps=0)
    with pytest.raises(ValueError, match="schedule"):
        net.run(net.patterns, schedule="parallel")
    with pytest.raises(ValueError, match="s0"):
        net.run(torch.ones(7))


# -- modern --------------------------------------------------------------------------------


def test_one_update_is_value_free_attention() -> None:
    g = _gen(20)
    patterns = torch.randn(12, 8, generator=g, dtype=torch.float64)
    queries = torch.randn(5, 8, generator=g, dtype=torch.float64)
    net = ModernHopfield(patterns, beta=0.7)
    attention = torch.nn.functional.scaled_dot_product_attention(
        queries[None], patterns[None], patterns[None], scale=0.7
    )[0]
    assert torch.allclose(net.update(queries), attention, atol=1e-12)


def test_curie_weiss_from_two_patterns_in_one_dimension() -> None:
    # ξ ← Σ_± (±1) softmax(±βξ) = tanh(βξ): the Curie–Weiss fixed point m = tanh(1.5 m).
    net = ModernHopfield(torch.tensor([[1.0], [-1.0]], dtype=torch.float64), beta=1.5)
    result = net.retrieve(torch.tensor([1.0], dtype=torch.float64), tol=1e-14, max_iter=500)
    assert bool(result.converged)
    assert float(result.state) == pytest.approx(0.858559636640, abs=1e-11)
    assert float(result.state) == pytest.approx(math.tanh(1.5 * float(result.state)), abs=1e-13)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    count=st.integers(1, 30),
    dim=st.integers(1, 12),
    beta=st.floats(0.05, 50.0),
    scale=st.floats(0.1, 5.0),
)
def test_modern_energy_never_increases_and_is_bounded(
    seed: int, count: int, dim: int, beta: float, scale: float
) -> None:
    g = _gen(seed)
    patterns = scale * torch.randn(count, dim, generator=g, dtype=torch.float64)
    net = ModernHopfield(patterns, beta)
    start = scale * torch.randn(4, dim, generator=g, dtype=torch.float64)
    trace = net.retrieve(start, max_iter=30).energy_trace
    tolerance = 1e-10 * (1.0 + trace.abs().amax())
    assert bool((trace.diff(dim=-1) <= tolerance).all())
    # after one update the state lies in the convex hull: 0 <= E <= 2 M² (Ramsauer Lemma A1)
    big_m = float(patterns.norm(dim=-1).max())
    assert bool((trace[:, 1:] >= -tolerance).all())
    assert bool((trace[:, 1:] <= 2 * big_m**2 + tolerance).all())


def test_fixed_point_kinds_follow_beta() -> None:
    patterns = random_sphere_patterns(16, 32, _gen(21))
    query = patterns[3] + 0.05 * torch.randn(32, generator=_gen(22), dtype=torch.float64)
    single = ModernHopfield(patterns, beta=100.0)
    fixed = single.retrieve(query).state
    assert single.classify(fixed) == "single"
    assert torch.allclose(fixed, patterns[3], atol=1e-3)
    hot = ModernHopfield(patterns, beta=0.1)
    assert hot.classify(hot.retrieve(query).state) == "global"
    # two nearly equal patterns plus distant ones: a metastable average of the pair
    pair = torch.cat([patterns[:1], patterns[:1] + 0.01 * patterns[1:2], patterns[2:]])
    net = ModernHopfield(pair / pair.norm(dim=-1, keepdim=True), beta=20.0)
    state = net.retrieve(pair[0]).state
    assert net.classify(state) == "metastable"
    assert net.effective_patterns(state) == pytest.approx(2.0, abs=0.1)


def test_modern_capacity_grid_shows_regimes() -> None:
    result = modern_retrieval(
        dim=8, counts=(4, 64), betas=(0.5, 64.0), queries=16, generator=_gen(23)
    )
    assert float(result.error[0].min()) == 1.0  # small β: global average, nothing retrieved
    assert float(result.kind_fraction[0, :, 2].min()) == 1.0
    assert float(result.error[1, 0]) == 0.0  # large β, few patterns: perfect retrieval


def test_modern_bad_input() -> None:
    with pytest.raises(ValueError, match="patterns"):
        ModernHopfield(torch.zeros(0, 3), beta=1.0)
    with pytest.raises(ValueError, match="beta"):
        ModernHopfield(torch.ones(2, 3), beta=-1.0)
    net = ModernHopfield(torch.ones(2, 3), beta=1.0)
    with pytest.raises(ValueError, match="xi"):
        net.update(torch.ones(4))
