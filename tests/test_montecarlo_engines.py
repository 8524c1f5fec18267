"""The engine registry of ``sample``, the compiled checkerboard engine, and exact bit counts.

Physics numbers come from exact enumeration (``thermodynamics(model)`` on 4×4 tori); the
multi-spin engine's bit-count measurements are compared with the energy of the unpacked state.
"""

from __future__ import annotations

import ast
import inspect

import pytest
import torch

from spinformer.physics import (
    IsingModel,
    VectorSpinModel,
    sample,
    square_lattice,
    thermodynamics,
)
from spinformer.physics.montecarlo import (
    Engine,
    available_engines,
    get_engine,
    register_engine,
    sampling,
)
from spinformer.physics.montecarlo import engines as engine_registry
from spinformer.physics.montecarlo.build import native_library, native_unavailable_reason
from spinformer.physics.montecarlo.multispin import NativeMultispin, TorchMultispin
from spinformer.physics.montecarlo.sweepers import tensor_sweeper

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _require_native() -> None:
    if native_library() is None:
        pytest.skip(f"native kernels unavailable: {native_unavailable_reason()}")


# -- the registry ------------------------------------------------------------------------------


@pytest.fixture
def toy_engine():
    """A toy engine: the tensor engine's sweeper behind a counter, for Ising models only."""
    built: list[int] = []

    def build(model, initial, chains, algorithm, generator, step_size, backend):
        built.append(chains)
        return tensor_sweeper(model, initial, algorithm, generator, step_size)

    def supports(model, algorithm, chains):
        return None if isinstance(model, IsingModel) else "an IsingModel"

    engine = register_engine(Engine("toy", supports, lambda *_: 0.0, build))
    yield engine, built
    engine_registry._ENGINES.pop("toy")


def test_an_engine_is_one_registration(toy_engine) -> None:
    _, built = toy_engine
    assert "toy" in available_engines()
    model = square_lattice(4, beta=0.3)
    run = sample(model, 5, chains=3, generator=_gen(0), engine="toy")
    assert run.extras["engine"] == "toy" and built == [3]
    # the cheapest engine that supports the run: the toy claims zero cost
    assert sample(model, 5, chains=2, generator=_gen(0)).extras["engine"] == "toy"
    vector = VectorSpinModel(torch.zeros(3, 3), None, dim=2)
    assert sample(vector, 5, generator=_gen(0)).extras["engine"] != "toy"
    with pytest.raises(ValueError, match="engine='toy' needs an IsingModel"):
        sample(vector, 5, engine="toy")
    result = thermodynamics(model, "monte_carlo", sweeps=20, chains=2, engine="toy")
    assert result.extras["engine"] == "toy"


def test_sample_makes_no_engine_name_comparisons() -> None:
    tree = ast.parse(inspect.getsource(sampling))
    compared = {
        node.value
        for compare in ast.walk(tree)
        if isinstance(compare, ast.Compare)
        for node in ast.walk(compare)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert not compared & set(available_engines())


def test_auto_picks_an_engine_that_supports_the_run() -> None:
    _require_native()
    lattice = square_lattice(8, beta=0.4)
    assert sample(lattice, 2, chains=1).extras["engine"] == "checkerboard"
    assert sample(lattice, 2, chains=128).extras["engine"] == "multispin"
    assert sample(lattice, 2, chains=128, algorithm="heat_bath").extras["engine"] != "multispin"
    assert sample(lattice, 2, chains=4, algorithm="wolff").extras["engine"] == "tensor"
    dense = IsingModel(torch.zeros(4, 4), beta=0.3)
    assert sample(dense, 2, chains=64).extras["engine"] == "tensor"
    odd = square_lattice(5, beta=0.4)
    assert sample(odd, 2).extras["engine"] == "tensor"
    field = square_lattice(4, beta=0.4, field=torch.linspace(-0.1, 0.1, 16))
    assert sample(field, 2).extras["engine"] == "tensor"


def test_unknown_engine_and_backend_are_refused() -> None:
    model = square_lattice(4)
    with pytest.raises(ValueError, match="engine must be one of"):
        sample(model, 5, engine="gpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        sample(model, 5, engine="tensor", backend="native")
    assert get_engine("multispin").backends == ("auto", "native", "torch")


def test_method_is_a_deprecated_alias_of_algorithm() -> None:
    model = square_lattice(4, beta=0.3)
    with pytest.warns(DeprecationWarning, match="algorithm"):
        old = sample(model, 10, chains=2, method="heat_bath", generator=_gen(1))
    new = sample(model, 10, chains=2, algorithm="heat_bath", generator=_gen(1))
    assert old.algorithm == new.algorithm == "heat_bath"
    assert torch.equal(old.energy, new.energy)
    with pytest.raises(ValueError, match="algorithm= only"):
        sample(model, 10, algorithm="metropolis", method="metropolis")


# -- the compiled checkerboard -----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["metropolis", "heat_bath"])
def test_checkerboard_matches_enumeration(algorithm: str) -> None:
    # 4×4 tori, a field and two temperatures in one batch (enumeration: 2^16 states)
    _require_native()
    betas = torch.tensor([0.3, 0.5], dtype=torch.float64)
    model = square_lattice(4, beta=betas, field=0.2)
    exact = thermodynamics(model)
    mc = thermodynamics(
        model, "monte_carlo", algorithm=algorithm, sweeps=3000, chains=32, generator=_gen(2),
        engine="checkerboard",
    )  # fmt: skip
    assert mc.extras["engine"] == "checkerboard"
    z = (mc.energy - exact.energy) / mc.stderr["energy"]
    assert float(z.abs().max()) < 3.5
    m_exact = exact.magnetization.mean(-1)
    z_m = (mc.magnetization.mean(-1) - m_exact) / mc.stderr["magnetization"].mean(-1)
    assert float(z_m.abs().max()) < 4.0


def test_checkerboard_single_chain_matches_enumeration() -> None:
    _require_native()
    for coupling in (1.0, -1.0):  # the antiferromagnet: no gauge, the table holds J < 0
        model = square_lattice((4, 2), beta=0.45, coupling=coupling)
        exact = thermodynamics(model)
        mc = thermodynamics(model, "monte_carlo", sweeps=40000, chains=1, generator=_gen(3))
        assert mc.extras["engine"] == "checkerboard"
        assert abs(float(mc.energy - exact.energy)) < 3.5 * float(mc.stderr["energy"])


def test_checkerboard_records_are_consistent_with_the_states() -> None:
    _require_native()
    model = square_lattice((4, 6), beta=torch.tensor([0.35, 0.5]), field=-0.3)
    run = sample(
        model, 40, burn_in=0, chains=3, snapshot_every=1, generator=_gen(4), engine="checkerboard"
    )
    assert torch.allclose(run.energy[-1], model.energy(run.final_state), rtol=0, atol=1e-12)
    assert torch.equal(run.magnetization[-1], run.final_state.mean(-1))
    assert run.snapshots is not None
    energies = model.energy(run.snapshots)
    assert torch.allclose(run.energy, energies, rtol=0, atol=1e-12)
    assert torch.allclose(run.mean_state, run.snapshots.mean(0))


def test_checkerboard_site_means_survive_the_flushes_of_their_byte_counters() -> None:
    # The per-site sums are kept in int8 and moved into float64 totals every 127
    # measurements: 300 measurements of spins that stay up (β → ∞, field up) sum to 300
    # exactly, and a hot run's means equal its snapshots' means.
    _require_native()
    frozen = square_lattice((4, 6), beta=1e6, field=1.0)
    run = sample(frozen, 300, burn_in=0, initial="up", generator=_gen(5), engine="checkerboard")
    assert torch.equal(run.mean_state, torch.ones(1, 24, dtype=run.mean_state.dtype))
    model = square_lattice((4, 6), beta=0.3)
    hot = sample(
        model, 300, burn_in=0, chains=2, snapshot_every=1, generator=_gen(6), engine="checkerboard"
    )
    assert hot.snapshots is not None
    assert torch.allclose(hot.mean_state, hot.snapshots.mean(0), rtol=0, atol=1e-12)


def test_checkerboard_loop_in_one_call_equals_the_loop_call_by_call() -> None:
    # Without snapshots (or correlations, or a progress bar) sample() hands the whole loop to
    # the compiled checkerboard; 133 measurements 3 sweeps apart (one flush of the byte
    # counters, one sweep left after the last measurement) give the same run as the loop of
    # single calls that snapshots need.
    _require_native()
    model = square_lattice((4, 6), beta=torch.tensor([0.35, 0.5]), field=-0.3)
    kw = {"burn_in": 5, "chains": 3, "measure_every": 3, "engine": "checkerboard"}
    fused = sample(model, 400, generator=_gen(8), **kw)
    stepped = sample(model, 400, generator=_gen(8), snapshot_every=50, **kw)
    for name in ("energy", "magnetization", "final_state", "mean_state", "acceptance"):
        assert torch.equal(getattr(fused, name), getattr(stepped, name)), name


# -- the multi-spin engine's bit counts --------------------------------------------------------


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_bit_count_measurements_equal_the_unpacked_state(backend: str) -> None:
    # 130 chains (three words per site, the last partly padding), J of both signs in one batch
    # (the gauge), 21 measurements (the per-site sums pass their 8-measurement folds with
    # slots left over): energy, magnetization and site sums are exact integers either way.
    if backend == "native":
        _require_native()
    model = square_lattice((4, 6), beta=0.4, coupling=torch.tensor([1.0, -1.0]))
    model = model.with_beta(torch.tensor([0.4, 0.6], dtype=torch.float64))
    initial = (2 * torch.randint(0, 2, (130, 2, 24), generator=_gen(5)) - 1).double()
    cls = NativeMultispin if backend == "native" else TorchMultispin
    sweeper = cls(model, initial, _gen(6))
    states = []
    for _ in range(21):
        sweeper.sweep(3, True)
        energy, magnetization = sweeper.measure()
        sweeper.accumulate()
        state = sweeper.full_state()
        states.append(state)
        assert torch.equal(energy, model.energy(state))  # integers: exact
        assert torch.equal((magnetization * 24).round(), state.sum(-1))
        assert torch.allclose(magnetization, state.mean(-1), rtol=0, atol=1e-15)
    total = torch.stack(states).sum(0)
    assert torch.equal((sweeper.site_mean(21) * 21).round(), total)


def test_checkerboard_draws_the_random_start_that_sample_would() -> None:
    # The compiled checkerboard draws its "random" start itself, as int8 from the same
    # generator calls as sample's own start: the run equals one started from that tensor.
    _require_native()
    model = square_lattice((6, 4), beta=torch.tensor([0.3, 0.5]))
    drawn = sample(model, 6, burn_in=2, chains=3, generator=_gen(4), engine="checkerboard")
    generator = _gen(4)
    start = 2 * torch.randint(0, 2, (3, 2, 24), generator=generator) - 1
    given = sample(
        model, 6, burn_in=2, chains=3, generator=generator, initial=start.to(model.dtype),
        engine="checkerboard",
    )  # fmt: skip
    assert torch.equal(drawn.final_state, given.final_state)
    assert torch.equal(drawn.energy, given.energy)
