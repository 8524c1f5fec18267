"""The multi-spin coded Metropolis engine against transfer-matrix, enumeration and published values.

Every statistical test runs on both backends: the fused native kernel and the torch operations.
"""

from __future__ import annotations

import math

import pytest
import torch

from spinformer.physics import (
    IsingModel,
    all_states,
    sample,
    square_lattice,
    thermodynamics,
)
from spinformer.physics.montecarlo import build as _native
from spinformer.physics.montecarlo.build import native_library as multispin_library
from spinformer.physics.montecarlo.build import native_unavailable_reason
from spinformer.physics.montecarlo.multispin import DIGITS, MultispinIsing, TorchMultispin
from spinformer.physics.montecarlo.multispin.common import _add_bits, _bit_counts, _digits

BETA_C = 0.5 * math.log(1.0 + math.sqrt(2.0))


pytestmark = pytest.mark.usefixtures("one_thread")


def _require_native() -> None:
    if multispin_library() is None:
        pytest.skip(f"native kernel unavailable: {native_unavailable_reason()}")


def _require_native_compiler() -> None:
    if _native._compiler() is None:
        pytest.skip("no C compiler on this machine")


@pytest.fixture(params=["native", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs each test with ``engine="multispin"`` on the native kernel and on torch operations."""
    if request.param == "torch":
        monkeypatch.setenv("SPINFORMER_NATIVE", "0")
    else:
        monkeypatch.delenv("SPINFORMER_NATIVE", raising=False)
        _require_native()
    return request.param


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mc(model, seed: int, sweeps: int = 2000, chains: int = 128, **kw):
    return thermodynamics(
        model,
        "monte_carlo",
        sweeps=sweeps,
        chains=chains,
        generator=_gen(seed),
        engine="multispin",
        **kw,
    )


def _random_spins(chains: int, sites: int, seed: int) -> torch.Tensor:
    return (2 * torch.randint(0, 2, (chains, sites), generator=_gen(seed)) - 1).double()


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (8, 8), (2, 4), (4, 2), (2, 2), (4, 260)])
@pytest.mark.parametrize("beta", [1e6, 1e-30])
@pytest.mark.parametrize("coupling", [1.0, -1.0])
def test_native_and_torch_sweeps_agree_bit_for_bit_when_deterministic(
    shape: tuple[int, int], beta: float, coupling: float
) -> None:
    # beta = 1e6: p1 = p0 = 0, a spin flips iff k >= 2 of its bonds are unsatisfied (the
    # geometry of every neighbour); beta = 1e-30: p = 1, every spin flips. Neither uses the
    # random bits, so the two backends must give the same states and flip masks exactly.
    # 130 chains: three words per site, the last one partly padding; J < 0: the gauge;
    # (4, 260): quarter rows of 130 words, drawn in blocks of 64 by the native kernel.
    _require_native()
    model = square_lattice(shape, beta=beta, coupling=coupling)
    initial = _random_spins(130, model.num_spins, 10)
    native = MultispinIsing(model, initial, _gen(0), backend="native", lazy=0)
    native.keep_flip_masks = True  # type: ignore[attr-defined]
    reference = MultispinIsing(model, initial, _gen(0), backend="torch", lazy=0)
    for _ in range(4):
        native.sweep()
        reference.sweep()
        assert torch.equal(native.full_state(), reference.full_state())
    assert native.last_flips is not None and reference.last_flips is not None
    for ours, theirs in zip(native.last_flips, reference.last_flips, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.usefixtures("backend")
def test_zero_temperature_sweep_flips_exactly_the_frustrated_spins() -> None:
    # An independent check of the neighbour geometry: at beta -> inf a checkerboard sweep flips
    # a black spin iff the flip lowers its energy or leaves it unchanged (dE <= 0), computed
    # here from the model's own local field; then the white spins, from the new black ones.
    model = square_lattice((6, 8), beta=1e6)
    initial = _random_spins(64, 48, 11)
    sweeper = MultispinIsing(model, initial, _gen(0), lazy=0)  # plain Metropolis
    sweeper.sweep()
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(8), indexing="ij")
    black = ((rows + cols) % 2 == 0).reshape(-1)
    expected = initial.clone()
    for colour in (black, ~black):
        delta = 2.0 * expected * model.local_field(expected)
        expected = torch.where(colour & (delta <= 0), -expected, expected)
    assert torch.equal(sweeper.full_state(), expected)


def test_native_results_do_not_depend_on_the_thread_count() -> None:
    _require_native()
    model = square_lattice((8, 6), beta=torch.tensor([0.3, 0.45]))
    runs = []
    for threads in (1, 2, 3):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            runs.append(sample(model, 30, chains=100, generator=_gen(12), engine="multispin"))
        finally:
            torch.set_num_threads(previous)
    for run in runs[1:]:
        assert torch.equal(run.final_state, runs[0].final_state)
        assert torch.equal(run.energy, runs[0].energy)


def test_native_backend_is_refused_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINFORMER_NATIVE", "0")
    with pytest.raises(RuntimeError, match="SPINFORMER_NATIVE=0"):
        MultispinIsing(square_lattice(4), "up", None, 64, backend="native")
    with pytest.raises(ValueError, match="backend must be one of"):
        MultispinIsing(square_lattice(4), "up", None, 64, backend="cuda")


@pytest.fixture
def fresh_native(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """An empty kernel cache and a forgotten library; restored afterwards."""
    monkeypatch.setenv("SPINFORMER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SPINFORMER_NATIVE", raising=False)
    _native._load.cache_clear()
    yield tmp_path
    _native._load.cache_clear()


def test_kernel_is_built_into_the_cache_dir(fresh_native) -> None:
    _require_native_compiler()
    assert multispin_library() is not None, native_unavailable_reason()
    assert [p.suffix for p in fresh_native.iterdir()] == [".so"]  # no staging files left


@pytest.mark.parametrize("compiler", ["/nonexistent/cc", "false"])
def test_without_a_working_compiler_the_engine_falls_back_to_torch(
    fresh_native, monkeypatch: pytest.MonkeyPatch, compiler: str
) -> None:
    monkeypatch.setenv("CC", compiler)
    assert multispin_library() is None
    reason = native_unavailable_reason()
    assert reason is not None and ("no C compiler" in reason or "failed" in reason)
    assert list(fresh_native.iterdir()) == []  # nothing half-written
    model = square_lattice(4, beta=0.4)
    assert isinstance(MultispinIsing(model, "up", _gen(0), 64), TorchMultispin)
    run = sample(model, 5, chains=64, generator=_gen(0), engine="multispin")
    assert run.final_state.shape == (64, 16)


def test_unpacked_bits_match_shifts() -> None:
    words = torch.randint(-(2**63), 2**63 - 1, (3, 2, 5000), dtype=torch.int64, generator=_gen(13))
    out = torch.zeros(3, 64, 2, 5000, dtype=torch.float64)
    _add_bits(out, words, -2.0, chunk=777)
    bits = (words.unsqueeze(1) >> torch.arange(64).reshape(64, 1, 1)) & 1
    assert torch.equal(out, -2.0 * bits.double())


def test_acceptance_digits_rebuild_the_probability() -> None:
    p = torch.tensor([0.0, 0.0294, math.exp(-4 * BETA_C), 0.5, 0.999999], dtype=torch.float64)
    masks, tail = _digits(p, DIGITS)
    rebuilt = sum(-m.double() * 2.0 ** -(j + 1) for j, m in enumerate(masks))
    rebuilt = rebuilt + tail.double() * 2.0 ** -(DIGITS + 63)
    assert torch.allclose(rebuilt, p, rtol=0, atol=1e-15)


def test_bit_counts_match_unpacked_bits() -> None:
    words = torch.randint(-(2**63), 2**63 - 1, (3, 37), dtype=torch.int64, generator=_gen(0))
    bits = (words[..., None] >> torch.arange(64)) & 1
    assert torch.equal(_bit_counts(words, 1), bits.sum(1))


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize(("shape", "coupling", "beta"), [((4, 6), 1.0, 0.4), ((4, 4), -1.0, 0.5)])
def test_energy_matches_enumeration(shape: tuple[int, int], coupling: float, beta: float) -> None:
    # (4, 4) with J < 0 runs the antiferromagnet through the sublattice gauge.
    model = square_lattice(shape, beta=beta, coupling=coupling)
    exact = thermodynamics(model)
    mc = _mc(model, seed=1, sweeps=500, chains=256)
    assert abs(float(mc.energy - exact.energy)) < 3.5 * float(mc.stderr["energy"])


@pytest.mark.usefixtures("backend")
def test_critical_8x8_energy_and_m2_match_the_transfer_matrix() -> None:
    model = square_lattice(8, beta=BETA_C, dtype=torch.float32)
    exact = thermodynamics(square_lattice(8, beta=BETA_C))
    m2_exact = float(exact.susceptibility.sum()) / (BETA_C * 64**2)
    assert m2_exact == pytest.approx(0.6469115750, abs=1e-9)  # published value
    mc = _mc(model, seed=2, sweeps=800, chains=512)
    assert abs(float(mc.energy) - float(exact.energy)) < 3.5 * float(mc.stderr["energy"])
    m2, err = float(mc.extras["magnetization_squared"]), float(mc.stderr["magnetization_squared"])
    assert abs(m2 - m2_exact) < 3.5 * err
    assert err < 0.01


@pytest.mark.usefixtures("backend")
def test_published_32x32_energy_at_beta_half() -> None:
    mc = _mc(
        square_lattice(32, beta=0.5), seed=3, sweeps=300, chains=128, burn_in=100, initial="up"
    )
    per_spin, err = float(mc.energy) / 1024, float(mc.stderr["energy"]) / 1024
    assert abs(per_spin - (-1.74556446)) < 3.5 * err
    assert err < 1e-3


@pytest.mark.usefixtures("backend")
def test_batched_temperatures_match_enumeration() -> None:
    betas = torch.tensor([0.3, 0.6], dtype=torch.float64)
    model = square_lattice(4, beta=betas)
    exact = thermodynamics(model)
    mc = _mc(model, seed=4, sweeps=600, chains=256)
    z = (mc.energy - exact.energy) / mc.stderr["energy"]
    assert mc.energy.shape == (2,)
    assert float(z.abs().max()) < 3.5


@pytest.mark.usefixtures("backend")
def test_acceptance_equals_the_stationary_metropolis_rate() -> None:
    # A colour class updated from equilibrium flips a fraction
    # E_π[(1/N) Σ_i (1 − ε) min(1, e^{−βΔE_i})]: lazy Metropolis, ε = 2^-4 for N = 16.
    model = square_lattice(4, beta=0.35)
    states = all_states(16)
    delta = 2.0 * states * model.local_field(states)
    rate = (1 - 2.0**-4) * torch.exp(-model.beta * delta).clamp(max=1.0).mean(-1)
    weights = torch.softmax(-model.beta * model.energy(states), 0)
    expected = float((weights * rate).sum())
    run = sample(model, 600, chains=256, generator=_gen(5), engine="multispin")
    acceptance = run.acceptance
    stderr = float(acceptance.std()) / math.sqrt(acceptance.numel())
    assert abs(float(acceptance.mean()) - expected) < 4 * stderr + 1e-3


@pytest.mark.usefixtures("backend")
def test_records_are_consistent_with_the_states() -> None:
    model = square_lattice((4, 6), beta=0.4)
    initial = (2 * torch.randint(0, 2, (70, 24), generator=_gen(6)) - 1).double()
    run = sample(
        model,
        300,
        burn_in=0,
        chains=70,
        initial=initial,
        snapshot_every=1,
        generator=_gen(7),
        engine="multispin",
    )
    assert run.final_state.shape == (70, 24)
    assert torch.allclose(run.energy[-1], model.energy(run.final_state))
    assert torch.allclose(run.magnetization[-1], run.final_state.mean(-1))
    assert run.snapshots is not None
    # 300 measurements: the per-site bit-sliced counters flush once on the way
    assert torch.allclose(run.mean_state, run.snapshots.mean(0))
    frozen = sample(model, 1, burn_in=0, chains=3, initial=initial[:3], engine="multispin")
    assert frozen.final_state.shape == (3, 24)


@pytest.mark.usefixtures("backend")
def test_grouping_sweeps_into_calls_changes_nothing() -> None:
    # measure_every = 6 runs the sweeps between measurements (and the 2 after the last one)
    # as single calls; the trajectory is the same as sweep by sweep.
    model = square_lattice((6, 4), beta=torch.tensor([0.35, 0.5]))
    one = sample(model, 20, burn_in=3, chains=70, generator=_gen(14), engine="multispin")
    grouped = sample(
        model, 20, burn_in=3, chains=70, generator=_gen(14), engine="multispin", measure_every=6
    )
    assert torch.equal(one.final_state, grouped.final_state)
    assert torch.equal(one.energy[5::6], grouped.energy)


@pytest.mark.usefixtures("backend")
def test_runs_are_reproducible() -> None:
    model = square_lattice(4, beta=0.4)
    a = sample(model, 20, chains=64, generator=_gen(8), engine="multispin")
    b = sample(model, 20, chains=64, generator=_gen(8), engine="multispin")
    assert torch.equal(a.energy, b.energy)


def test_unsupported_models_are_rejected() -> None:
    model = square_lattice(4)
    with pytest.raises(ValueError, match="engine must be one of"):
        sample(model, 5, engine="gpu")
    with pytest.raises(ValueError, match="algorithm='metropolis'"):
        sample(model, 5, algorithm="heat_bath", engine="multispin")
    with pytest.raises(ValueError, match="zero field"):
        sample(square_lattice(4, field=0.1), 5, engine="multispin")
    with pytest.raises(ValueError, match="even sides"):
        sample(square_lattice(5), 5, engine="multispin")
    with pytest.raises(ValueError, match="even sides"):
        sample(square_lattice(4, periodic=False), 5, engine="multispin")
    with pytest.raises(ValueError, match="SquareLattice"):
        sample(IsingModel(torch.zeros(3, 3)), 5, engine="multispin")


@pytest.mark.usefixtures("backend")
@pytest.mark.slow
def test_long_critical_8x8_run_has_no_bias_at_the_per_mille_level() -> None:
    # ~20x the statistics of the default test: a bias from the random bits or the
    # acceptance digits of order 1e-3 in <m^2> or E/N would show here.
    exact = thermodynamics(square_lattice(8, beta=BETA_C))
    m2_exact = float(exact.susceptibility.sum()) / (BETA_C * 64**2)
    mc = _mc(square_lattice(8, beta=BETA_C), seed=9, sweeps=4000, chains=2048)
    assert abs(float(mc.energy - exact.energy)) < 3.5 * float(mc.stderr["energy"])
    m2, err = float(mc.extras["magnetization_squared"]), float(mc.stderr["magnetization_squared"])
    assert abs(m2 - m2_exact) < 3.5 * err
    assert err < 1e-3


def test_results_unpacked_on_first_access_match_snapshots_and_survive_pickling() -> None:
    # The native engine unpacks final_state and mean_state when first read; reading them
    # directly, after pickling, or in either order gives the same values as the snapshots.
    import pickle

    _require_native()
    model = square_lattice((4, 6), beta=0.4)
    runs = [
        sample(model, 40, chains=70, generator=_gen(15), snapshot_every=1, engine="multispin")
        for _ in range(3)
    ]
    direct = runs[0]
    restored = pickle.loads(pickle.dumps(runs[1]))
    reverse = runs[2]
    mean_first = reverse.mean_state
    assert direct.snapshots is not None
    for run in (direct, restored):
        assert torch.equal(run.final_state, direct.snapshots[-1])
        assert torch.allclose(run.mean_state, direct.snapshots.mean(0))
    assert torch.equal(restored.mean_state, direct.mean_state)
    assert torch.equal(mean_first, direct.mean_state)
    assert torch.equal(reverse.final_state, direct.final_state)


def test_native_measurements_in_the_sweep_and_in_a_pass_agree_through_the_counter_widening() -> (
    None
):
    # Recorded sweeps measure the state in their last white half; other states are measured
    # by a pass of their own. Mixed, over 260 measurements (the per-site counters widen from
    # 8 to 16 planes after 248), both give the energy and magnetization of the unpacked state
    # exactly, and the site means equal the mean of the unpacked states.
    _require_native()
    model = square_lattice((4, 6), beta=0.45, coupling=torch.tensor([1.0, -1.0]))
    sweeper = MultispinIsing(model, "random", _gen(21), 70, backend="native")
    total = torch.zeros(70, 2, 24, dtype=model.dtype)
    for t in range(260):
        sweeper.sweep(1 + t % 2, t % 3 != 0)
        energy, magnetization = sweeper.measure()
        sweeper.accumulate()
        state = sweeper.full_state()
        total += state
        assert torch.equal(energy, model.energy(state))  # integers: exact
        assert torch.equal((magnetization * 24).round(), state.sum(-1))
    assert sweeper.counter_planes == 16
    assert torch.equal((sweeper.site_mean(260) * 260).round(), total)


def test_native_measurements_of_long_rows_match_the_unpacked_state() -> None:
    # Quarter rows of 260 words: the kernel counts whole blocks of 64 sites four words at a
    # time (vector counters, emptied every 255 blocks of 64 words) and the row's last partial
    # block word by word. Energies, magnetizations and flipped fractions measured in recorded
    # sweeps and by a pass of their own equal those of the unpacked states exactly. The cold
    # start of the antiferromagnet has every bond unsatisfied: its 1040 blocks of bond words
    # fill the vector counters four times over.
    _require_native()
    model = square_lattice((32, 520), beta=0.44, coupling=torch.tensor([1.0, -1.0]))
    sweeper = MultispinIsing(model, "up", _gen(22), 70, backend="native")
    energy, _ = sweeper.measure()
    assert torch.equal(energy, model.energy(sweeper.full_state()))
    assert torch.equal(energy[:, 1], torch.full((70,), 2.0 * model.num_spins, dtype=model.dtype))
    changed = torch.zeros(70, 2, dtype=model.dtype)
    for t in range(4):
        before = sweeper.full_state()
        sweeper.sweep(1, t % 2 == 0)
        energy, magnetization = sweeper.measure()
        sweeper.accumulate()
        state = sweeper.full_state()
        assert torch.equal(energy, model.energy(state))  # integers: exact
        assert torch.equal((magnetization * model.num_spins).round(), state.sum(-1))
        if t % 2 == 0:
            changed += (state != before).sum(-1)
    assert torch.allclose(sweeper.acceptance() * 2 * model.num_spins, changed)


def test_native_loop_in_one_call_equals_the_loop_call_by_call() -> None:
    # Without snapshots (or correlations, or a progress bar) sample() hands the whole loop to
    # the native engine's run(); 21 measurements 2 sweeps apart (two folds of the per-site
    # slots and five states left in them, one sweep after the last measurement) give the same
    # run as the loop of single calls that snapshots need, acceptance included.
    _require_native()
    model = square_lattice((4, 6), beta=torch.tensor([0.35, 0.5]), coupling=-1.0)
    kw = {"burn_in": 3, "chains": 70, "measure_every": 2, "engine": "multispin"}
    fused = sample(model, 43, generator=_gen(23), **kw)
    stepped = sample(model, 43, generator=_gen(23), snapshot_every=7, **kw)
    for name in ("energy", "magnetization", "final_state", "mean_state", "acceptance"):
        assert torch.equal(getattr(fused, name), getattr(stepped, name)), name


@pytest.mark.parametrize("records", [5, 21, 260])
def test_native_buffers_reused_across_runs_change_nothing(
    records: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The quarters, slots and counters of an engine that is gone are kept for the next one of
    # the same size and not cleared. 5 measurements use some slots only, 21 fold twice into the
    # counter, 260 also into the wide one. Runs on kept buffers filled with set bits, and two
    # runs alive at once (their results unpacked only after both ran), equal a run on buffers
    # that were never used before.
    from spinformer.physics.montecarlo.multispin import native

    _require_native()
    model = square_lattice((4, 6), beta=0.45, coupling=torch.tensor([1.0, -1.0]))
    kw = {"burn_in": 2, "chains": 70, "engine": "multispin"}
    names = ("energy", "magnetization", "final_state", "mean_state", "acceptance")
    pool = native._BufferPool(1 << 30)
    monkeypatch.setattr(native, "_POOL", pool)
    with pool.suspended():  # nothing taken or kept: fresh buffers
        fresh = sample(model, records, generator=_gen(24), **kw)
        expected = {name: getattr(fresh, name) for name in names}
        del fresh
        assert not pool.kept
    first = sample(model, records, generator=_gen(24), **kw)
    second = sample(model, records, generator=_gen(24), **kw)  # while the first is alive
    for run in (first, second):
        for name in names:
            assert torch.equal(getattr(run, name), expected[name]), name
    del first, second
    assert pool.kept  # the buffers of both runs are kept
    for buffer in pool.kept:
        buffer.fill_(-1)
    with pool.suspended():
        assert not pool.kept
    assert pool.kept
    reused = sample(model, records, generator=_gen(24), **kw)
    for name in names:
        assert torch.equal(getattr(reused, name), expected[name]), name


def test_buffer_pool_keeps_the_newest_buffers_within_its_limit() -> None:
    from spinformer.physics.montecarlo.multispin.native import _BufferPool

    pool = _BufferPool(3 * 8 * 16)  # three buffers of 16 words
    old, mid, new, other = (torch.empty(16, dtype=torch.int64) for _ in range(4))
    pool.give([old, mid, torch.empty(64, dtype=torch.int64)])  # the large one is not kept
    assert [b.data_ptr() for b in pool.kept] == [old.data_ptr(), mid.data_ptr()]
    handed = [new, other.view(4, 4)]
    pool.give(handed)
    assert not handed  # emptied: the engine holds nothing any more
    assert pool.held == 3 * 8 * 16  # the oldest released
    assert pool.take(16).data_ptr() == new.data_ptr()  # the newest of the shape
    assert pool.take(4, 4).data_ptr() == other.data_ptr()
    assert pool.take(16).data_ptr() == mid.data_ptr()
    assert pool.take(16).data_ptr() not in {b.data_ptr() for b in (old, mid, new, other)}
    assert pool.held == 0 and not pool.kept


def test_release_buffers_empties_the_pool_and_reports_the_bytes(monkeypatch) -> None:
    from spinformer.physics.montecarlo import release_buffers
    from spinformer.physics.montecarlo.multispin import native

    _require_native()
    pool = native._BufferPool(1 << 30)
    monkeypatch.setattr(native, "_POOL", pool)
    run = sample(square_lattice((4, 6), beta=0.45), 5, chains=64, engine="multispin",
                 generator=_gen(3))  # fmt: skip
    del run
    held = sum(buffer.nbytes for buffer in pool.kept)
    assert held > 0 and pool.held == held
    assert release_buffers() == held
    assert not pool.kept and pool.held == 0
    assert release_buffers() == 0
