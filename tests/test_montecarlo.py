"""Monte Carlo against exact enumeration, transfer matrices, closed forms and published values."""

from __future__ import annotations

import math

import pytest
import torch

from spinformer.physics import (
    IsingModel,
    VectorSpinModel,
    all_states,
    autocorrelation_times,
    bessel_ratio,
    blocking_standard_error,
    estimate_mean,
    integrated_autocorrelation_time,
    sample,
    square_lattice,
    thermodynamics,
    von_mises_fisher,
)
from spinformer.physics.montecarlo.updates import lazy_digits

BETA_C = 0.5 * math.log(1.0 + math.sqrt(2.0))


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_dense(n: int, seed: int, ferromagnetic: bool = False) -> IsingModel:
    g = _gen(seed)
    j = torch.randn(n, n, generator=g, dtype=torch.float64) / n**0.5
    if ferromagnetic:
        j = j.abs()
    j = torch.triu(j, 1)
    j = j + j.T
    field = 0.0 if ferromagnetic else 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    return IsingModel(j, field, beta=0.8)


# -- autocorrelation -----------------------------------------------------------------------


def _ar1(phi: float, steps: int, chains: int, seed: int) -> torch.Tensor:
    g = _gen(seed)
    noise = torch.randn(steps, chains, generator=g, dtype=torch.float64)
    x = torch.empty_like(noise)
    x[0] = noise[0] / math.sqrt(1 - phi**2)
    for t in range(1, steps):
        x[t] = phi * x[t - 1] + noise[t]
    return x


def test_integrated_time_of_ar1_matches_closed_form() -> None:
    # AR(1): ρ(t) = φ^t, so τ_int = ½ + φ/(1−φ) = (1+φ)/(2(1−φ)) = 4.5 at φ = 0.8.
    phi = 0.8
    x = _ar1(phi, 20000, 8, seed=0)
    tau = float(integrated_autocorrelation_time(x))
    assert tau == pytest.approx((1 + phi) / (2 * (1 - phi)), rel=0.08)


def test_blocking_and_tau_standard_errors_agree() -> None:
    x = _ar1(0.9, 2**14, 4, seed=1)
    tau_se = float(estimate_mean(x).stderr)
    block_se = float(blocking_standard_error(x))
    # exact: Var(mean) ≈ 2τ σ²/n with σ² = 1/(1−φ²)
    phi, n = 0.9, x.numel()
    exact = math.sqrt((1 + phi) / (1 - phi) / (1 - phi**2) / n)
    assert tau_se == pytest.approx(exact, rel=0.2)
    assert block_se == pytest.approx(exact, rel=0.25)


def test_series_validation() -> None:
    with pytest.raises(ValueError, match="series"):
        integrated_autocorrelation_time(torch.zeros(10))
    with pytest.raises(ValueError, match="window_factor"):
        integrated_autocorrelation_time(torch.zeros(10, 2), window_factor=0.0)


# -- von Mises–Fisher ----------------------------------------------------------------------


@pytest.mark.parametrize(("dim", "kappa"), [(2, 0.7), (3, 2.5), (16, 7.0), (64, 3.0)])
def test_von_mises_fisher_moments_match_bessel_ratio(dim: int, kappa: float) -> None:
    g = _gen(dim)
    count = 40000
    mu = torch.randn(dim, generator=g, dtype=torch.float64)
    x = von_mises_fisher(mu.expand(count, dim), torch.full((count,), kappa, dtype=torch.float64), g)
    assert torch.allclose(x.norm(dim=-1), torch.ones(count, dtype=torch.float64))
    w = x @ (mu / mu.norm())
    ratio = float(bessel_ratio(dim / 2 - 1, torch.tensor(kappa, dtype=torch.float64)))
    se = float(w.std()) / count**0.5
    assert abs(float(w.mean()) - ratio) < 4 * se
    second = 1 - (dim - 1) * ratio / kappa  # E[w²] = 1 − (D−1) A_D(κ)/κ
    se2 = float((w**2).std()) / count**0.5
    assert abs(float((w**2).mean()) - second) < 4 * se2
    transverse = x - w[:, None] * (mu / mu.norm())
    assert transverse.mean(0).norm() < 0.03  # symmetric about the mean direction


# -- Ising: exact references ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["metropolis", "heat_bath"])
def test_dense_model_matches_enumeration(method: str) -> None:
    model = _random_dense(7, seed=3)
    exact = thermodynamics(model)
    mc = thermodynamics(
        model, "monte_carlo", algorithm=method, sweeps=1500, chains=64, generator=_gen(4)
    )
    assert abs(float(mc.energy - exact.energy)) < 3 * float(mc.stderr["energy"])
    assert abs(float(mc.heat_capacity - exact.heat_capacity)) < 4 * float(
        mc.stderr["heat_capacity"]
    )
    z = (mc.magnetization - exact.magnetization) / mc.stderr["magnetization"]
    assert float(z.abs().max()) < 4.0


def test_wolff_on_dense_ferromagnet_matches_enumeration() -> None:
    model = _random_dense(7, seed=5, ferromagnetic=True)
    exact = thermodynamics(model)
    mc = thermodynamics(
        model, "monte_carlo", algorithm="wolff", sweeps=3000, chains=32, generator=_gen(6)
    )
    assert abs(float(mc.energy - exact.energy)) < 3 * float(mc.stderr["energy"])
    states = all_states(7)
    weights = torch.softmax(-model.beta * model.energy(states), 0)
    m2_exact = float((weights * states.mean(-1) ** 2).sum())
    m2 = float(mc.extras["magnetization_squared"])
    assert abs(m2 - m2_exact) < 3 * float(mc.stderr["magnetization_squared"])


@pytest.mark.parametrize(
    ("shape", "periodic", "field"),
    [((4, 4), True, 0.1), ((3, 3), True, 0.0), ((3, 4), False, 0.2)],
)
def test_lattice_sweeps_match_exact(shape: tuple[int, int], periodic: bool, field: float) -> None:
    # (4, 4) periodic uses the compact checkerboard, (3, 3) periodic needs three colours,
    # (3, 4) open is bipartite through masks.
    model = square_lattice(shape, beta=0.4, field=field, periodic=periodic)
    exact = thermodynamics(model)
    for k, method in enumerate(["metropolis", "heat_bath"]):
        mc = thermodynamics(
            model, "monte_carlo", algorithm=method, sweeps=2000, chains=32, generator=_gen(k)
        )
        assert abs(float(mc.energy - exact.energy)) < 3 * float(mc.stderr["energy"]), method


def test_exact_m2_from_susceptibility_equals_direct_enumeration() -> None:
    # At h = 0, m_i = 0 and χ_ij = β⟨σ_iσ_j⟩, so ⟨m²⟩ = Σ_ij χ_ij / (β N²): checked against the
    # direct Boltzmann average of m² over all 2^16 states, then used for 8x8.
    model = square_lattice(4, beta=BETA_C)
    chi = thermodynamics(model, route="transfer").susceptibility
    via_chi = float(chi.sum()) / (BETA_C * 16**2)
    states = all_states(16)
    weights = torch.softmax(-BETA_C * model.energy(states), 0)
    assert via_chi == pytest.approx(float((weights * states.mean(-1) ** 2).sum()), abs=1e-12)


def _exact_m2_8x8() -> float:
    chi = thermodynamics(square_lattice(8, beta=BETA_C)).susceptibility
    return float(chi.sum()) / (BETA_C * 64**2)


def test_published_8x8_m2_at_critical_point() -> None:
    exact = _exact_m2_8x8()
    assert exact == pytest.approx(0.6469115750, abs=1e-9)
    mc = thermodynamics(
        square_lattice(8, beta=BETA_C),
        "monte_carlo",
        algorithm="wolff",
        sweeps=800,
        chains=32,
        generator=_gen(7),
    )
    err = float(mc.stderr["magnetization_squared"])
    assert abs(float(mc.extras["magnetization_squared"]) - 0.6469115750) < 3 * err
    assert err < 0.01


def test_published_8x8_m2_with_metropolis() -> None:
    mc = thermodynamics(
        square_lattice(8, beta=BETA_C, dtype=torch.float32),
        "monte_carlo",
        sweeps=4000,
        chains=64,
        generator=_gen(8),
    )
    err = float(mc.stderr["magnetization_squared"])
    assert abs(float(mc.extras["magnetization_squared"]) - 0.6469115750) < 3 * err


def test_published_32x32_energy_at_beta_half() -> None:
    model = square_lattice(32, beta=0.5)
    mc = thermodynamics(
        model, "monte_carlo", sweeps=1000, burn_in=200, chains=16, initial="up", generator=_gen(9)
    )
    per_spin, err = float(mc.energy) / 1024, float(mc.stderr["energy"]) / 1024
    assert abs(per_spin - (-1.74556446)) < 3 * err
    assert err < 2e-3


def test_wolff_autocorrelation_grows_slower_than_metropolis() -> None:
    taus = {}
    for size in (8, 16):
        model = square_lattice(size, beta=BETA_C, dtype=torch.float32)
        metro = sample(model, 1500, burn_in=300, chains=16, generator=_gen(size))
        wolff = sample(model, 400, burn_in=50, chains=16, algorithm="wolff", generator=_gen(size))
        tau_w = autocorrelation_times(wolff)["magnetization_squared"].mean()
        sweeps_per_cluster = wolff.acceptance.mean()  # mean flipped fraction per cluster
        taus[size] = (
            float(autocorrelation_times(metro)["magnetization_squared"].mean()),
            float(tau_w * sweeps_per_cluster),
        )
    metro_growth = taus[16][0] / taus[8][0]
    wolff_growth = taus[16][1] / taus[8][1]
    assert metro_growth > 2.5  # z ≈ 2.17: 2^2.17 ≈ 4.5
    assert wolff_growth < 1.8  # z ≈ 0.25
    assert taus[16][1] < taus[16][0]


def test_thermodynamic_integration_gives_log_partition() -> None:
    model = _random_dense(6, seed=11)
    exact = thermodynamics(model)
    mc = thermodynamics(
        model, "monte_carlo", sweeps=600, chains=32, integration_points=6, generator=_gen(12)
    )
    err = float(mc.stderr["log_partition"])
    assert abs(float(mc.log_partition - exact.log_partition)) < 3 * err + 1e-3
    assert torch.isfinite(mc.free_energy) and torch.isfinite(mc.entropy)


def test_log_partition_is_nan_without_integration() -> None:
    mc = thermodynamics(_random_dense(4, 0), "monte_carlo", sweeps=20, chains=2, generator=_gen(0))
    assert math.isnan(float(mc.log_partition))
    assert mc.method == "monte_carlo"


# -- vector spins --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["metropolis", "heat_bath"])
def test_free_vector_spins_match_von_mises_fisher_closed_form(method: str) -> None:
    g = _gen(13)
    field = torch.randn(3, 4, generator=g, dtype=torch.float64)
    model = VectorSpinModel(torch.zeros(3, 3, dtype=torch.float64), field, beta=1.3, radius=1.5)
    exact = thermodynamics(model)
    mc = thermodynamics(
        model, "monte_carlo", algorithm=method, sweeps=3000, chains=16, generator=_gen(14)
    )
    assert abs(float(mc.energy - exact.energy)) < 3 * float(mc.stderr["energy"])
    z = (mc.magnetization - exact.magnetization) / mc.stderr["magnetization"]
    assert float(z.abs().max()) < 4.0


@pytest.mark.slow
def test_interacting_vector_spins_metropolis_agrees_with_heat_bath() -> None:
    g = _gen(15)
    j = torch.randn(5, 5, generator=g, dtype=torch.float64)
    j = torch.triu(j, 1) + torch.triu(j, 1).T
    model = VectorSpinModel(j, torch.randn(5, 3, generator=g, dtype=torch.float64), beta=0.9)
    a = thermodynamics(model, "monte_carlo", algorithm="heat_bath", sweeps=2000, generator=_gen(1))
    b = thermodynamics(
        model, "monte_carlo", sweeps=4000, step_size=0.8, chains=16, generator=_gen(2)
    )
    combined = math.hypot(float(a.stderr["energy"]), float(b.stderr["energy"]))
    assert abs(float(a.energy - b.energy)) < 3 * combined


def test_vector_lattice_runs_with_masks() -> None:
    model = VectorSpinModel(
        torch.tensor(1.0), None, beta=0.5, dim=3, lattice=square_lattice(3).lattice
    )
    run = sample(model, 5, chains=2, algorithm="heat_bath", generator=_gen(0), snapshot_every=1)
    assert run.final_state.shape == (2, 9, 3)
    assert run.snapshots is not None and run.snapshots.shape == (5, 2, 9, 3)
    assert torch.allclose(run.final_state.norm(dim=-1), torch.ones(2, 9))


# -- API -----------------------------------------------------------------------------------


def test_batched_betas_and_shapes() -> None:
    model = square_lattice(4, beta=torch.tensor([0.2, 0.6], dtype=torch.float64))
    run = sample(model, 10, chains=3, generator=_gen(0), correlations=True)
    assert run.energy.shape == (10, 3, 2)
    assert run.magnetization.shape == (10, 3, 2)
    assert run.final_state.shape == (3, 2, 16)
    assert run.mean_correlation is not None and run.mean_correlation.shape == (2, 16, 16)
    assert torch.allclose(run.energy[-1], model.energy(run.final_state))


def test_runs_are_reproducible() -> None:
    model = _random_dense(5, 0)
    a = sample(model, 20, chains=4, generator=_gen(3))
    b = sample(model, 20, chains=4, generator=_gen(3))
    assert torch.equal(a.energy, b.energy)


def test_bad_input_is_rejected_with_named_errors() -> None:
    model = square_lattice(4)
    with pytest.raises(ValueError, match="sweeps"):
        sample(model, 0)
    with pytest.raises(ValueError, match="algorithm"):
        sample(model, 5, algorithm="glauber")
    with pytest.raises(ValueError, match="burn_in"):
        sample(model, 5, burn_in=-1)
    with pytest.raises(ValueError, match="zero field"):
        sample(square_lattice(4, field=0.1), 5, algorithm="wolff")
    with pytest.raises(ValueError, match="ferromagnetic"):
        sample(square_lattice(4, coupling=-1.0), 5, algorithm="wolff")
    with pytest.raises(ValueError, match="initial"):
        sample(model, 5, initial=torch.ones(15))
    vector = VectorSpinModel(torch.zeros(2, 2), None, dim=3)
    with pytest.raises(ValueError, match="site shape"):
        sample(vector, 5, initial=torch.ones(2, 4))
    with pytest.raises(ValueError, match="wolff"):
        sample(vector, 5, algorithm="wolff")
    with pytest.raises(ValueError, match="dim >= 2"):
        sample(VectorSpinModel(torch.zeros(2, 2), None, dim=1), 5)
    with pytest.raises(ValueError, match="symmetric"):
        IsingModel(torch.tensor([[0.0, 1.0], [0.5, 0.0]]))
    with pytest.raises(ValueError, match="algorithm"):
        thermodynamics(model, "monte_carlo", algorithm="gibbs")


def _checkerboard_sweep_matrix(model: IsingModel, keep: float) -> torch.Tensor:
    """Exact transition matrix of one (black, then white) Metropolis sweep, by enumeration.

    A flip of site i is accepted with keep · min(1, e^{−βΔE_i}); sites of one colour do not
    interact, so a half-sweep moves to each state of that colour's flips with the product of
    the per-site probabilities.
    """
    n = model.num_spins
    states = all_states(n)
    accept = keep * torch.exp(-model.beta * 2.0 * states * model.local_field(states)).clamp(max=1)
    assert model.lattice is not None
    rows, cols = model.lattice.shape
    black = ((torch.arange(rows)[:, None] + torch.arange(cols)) % 2 == 0).reshape(-1)
    sweep = torch.eye(len(states), dtype=states.dtype)
    for colour in (black, ~black):
        differs = states[:, None, :] != states[None, :, :]  # (from, to, site)
        per_site = torch.where(differs, accept[:, None, :], 1 - accept[:, None, :])
        allowed = ~(differs & ~colour).any(-1)
        half = torch.where(colour, per_site, torch.ones_like(per_site)).prod(-1) * allowed
        sweep = sweep @ half
    return sweep


@pytest.mark.parametrize("shape", [(2, 2), (4, 2)])
def test_plain_checkerboard_metropolis_is_reducible_and_lazy_metropolis_is_not(shape):
    # Plain Metropolis forces every ΔE <= 0 flip; on small tori a state where every site has
    # ΔE = 0 then flips whole sublattices back and forth forever. The exact sweep matrix keeps
    # the Boltzmann distribution stationary either way, but from a uniform (hot) start the
    # plain chain converges elsewhere; the lazy chain used by sample() converges to Boltzmann.
    model = square_lattice(shape, beta=0.3)
    states = all_states(model.num_spins)
    energy = model.energy(states)
    boltzmann = torch.softmax(-model.beta * energy, 0)
    exact = float((boltzmann * energy).sum())
    hot = torch.full_like(boltzmann, 1.0 / len(boltzmann))
    limits = {}
    for name, keep in (("plain", 1.0), ("lazy", 1 - 2.0 ** -lazy_digits(model.num_spins))):
        sweep = _checkerboard_sweep_matrix(model, keep)
        assert torch.allclose(boltzmann @ sweep, boltzmann, atol=1e-15)
        limits[name] = float((hot @ torch.linalg.matrix_power(sweep, 4096) * energy).sum())
    assert limits["lazy"] == pytest.approx(exact, abs=1e-9)
    assert abs(limits["plain"] - exact) > 0.05  # 2x2: -4.34 instead of -5.11


@pytest.mark.parametrize("engine", ["tensor", "multispin"])
def test_metropolis_hot_starts_on_small_tori_match_enumeration(engine):
    # The tori on which plain checkerboard Metropolis is reducible (2x2: E converged to -4.34
    # instead of -5.11 from hot starts; 4x2 and 4x4 a few standard errors off).
    for shape, beta in (((2, 2), 0.3), ((4, 2), 0.3), ((4, 4), 0.44)):
        model = square_lattice(shape, beta=beta)
        exact = thermodynamics(model)
        mc = thermodynamics(
            model, "monte_carlo", sweeps=1500, chains=256 if engine == "tensor" else 1024,
            generator=_gen(21), engine=engine,
        )  # fmt: skip
        assert abs(float(mc.energy - exact.energy)) < 3.5 * float(mc.stderr["energy"]), shape


def test_integrate_log_partition_takes_sample_options_by_position_or_keyword():
    from spinformer.physics import square_lattice
    from spinformer.physics.montecarlo.thermodynamics import integrate_log_partition

    model = square_lattice(4, beta=0.3)
    settings = (5, 2, "metropolis")
    by_position = integrate_log_partition(
        model, 3, 20, *settings, torch.Generator().manual_seed(1), "random"
    )
    by_keyword = integrate_log_partition(
        model, 3, 20, burn_in=5, chains=2, algorithm="metropolis",
        generator=torch.Generator().manual_seed(1), initial="random",
    )  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(by_position, by_keyword, strict=True))
    with pytest.raises(TypeError, match="by position and by keyword"):
        integrate_log_partition(model, 3, 20, 5, burn_in=5)
    with pytest.raises(TypeError, match="at most 11 positional"):
        integrate_log_partition(model, 3, 20, *range(9))
