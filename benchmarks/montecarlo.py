"""Checkerboard Metropolis throughput for the 2-D Ising model: spinformer vs a fair numpy baseline.

All variants run checkerboard Metropolis at β_c on an L×L torus in the same process, interleaved
repeat by repeat (the machine is shared), and report spin updates per nanosecond (flips/ns; for
multi-spin coding, replicas × sites × sweeps per second, the literature's convention) and the
ratio of medians to the baseline.

Baseline (numpy, one thread): the compact sublattice formulation a careful numpy user would
write -- each colour class stored as an (L, L/2) int8 array, neighbour sums from np.roll,
exactly one float32 uniform per updated site, the acceptance probability looked up in a
precomputed table of exp(−2βσΣn) for the nine values of σΣn, and the flip applied
arithmetically (s *= 1 − 2·accept). Its neighbour sums are checked against the plain roll-based
sum on the full lattice before timing.

spinformer:
- the multi-spin engine (64 replicas per int64 word, lazy Metropolis): sweeps of its native
  kernel (the CPU default) and of its torch-operations backend (the fallback without a C
  compiler, and the CUDA path), timed like the baseline: sweeps only, the state allocated;
- ``sample(..., engine="multispin")`` end to end -- construction, sweeps, a measurement
  (energy, magnetization, per-site sums, acceptance) every ``measure_every`` sweeps -- with
  ``measure_every`` 1 and 8, 2^32 flips per call; its ratio to the native kernel's sweeps of
  the same run is the cost of measuring. The (64, L²) final state and site means are unpacked
  on first access, so these runs do not pay for them; the variant "results read" reads both.
  The engine's large buffers (state, per-site slots and counters) are those of the previous
  call's engine, kept for reuse as in any loop of runs; the variant "fresh buffers" allocates
  them anew (the cost of a single run);
- one chain with the default engine (``engine="auto"``; Metropolis and heat bath, a measurement
  every sweep) against the baseline, and the tensor engine's one chain for reference. The
  default engine here is the compiled checkerboard, which also writes the final state and site
  means on the grid on first access (not read in these runs).
On a machine with CUDA the multispin engine is also timed on the GPU (torch backend).

    PYTHONPATH=src python benchmarks/montecarlo.py [--sizes 256 1024] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from spinformer.physics import ONSAGER_BETA_C as BETA_C
from spinformer.physics import IsingModel, SquareLattice, sample
from spinformer.physics.montecarlo.build import native_unavailable_reason
from spinformer.physics.montecarlo.multispin import MultispinIsing
from spinformer.physics.montecarlo.multispin import native as multispin_native


def _neighbour_sum(s: np.ndarray, other: np.ndarray, black: bool, out: np.ndarray) -> None:
    """Σ of the four neighbours of each site of ``s`` (compact (L, L/2) sublattice arrays).

    A black site (r, k) sits at column 2k + (r mod 2) of the full lattice, a white one at
    2k + 1 − (r mod 2); the side neighbour on the other sublattice is column k − 1 (black, even
    rows) or k + 1 (black, odd rows), and the mirror image for white sites.
    """
    shift = 1 if black else -1
    np.add(np.roll(other, 1, 0), np.roll(other, -1, 0), out=out)
    out += other
    out[0::2] += np.roll(other[0::2], shift, 1)
    out[1::2] += np.roll(other[1::2], -shift, 1)


def numpy_checkerboard_sweeps(
    black: np.ndarray, white: np.ndarray, beta: float, sweeps: int, rng: np.random.Generator
) -> None:
    """The fair numpy baseline (module docstring): one float32 uniform per site, table lookup."""
    table = np.exp(-2.0 * beta * np.arange(-4, 5)).astype(np.float32)  # index σΣn + 4
    field = np.empty_like(black)
    for _ in range(sweeps):
        for s, other, is_black in ((black, white, True), (white, black, False)):
            _neighbour_sum(s, other, is_black, field)
            field *= s
            field += 4
            accept = rng.random(s.shape, dtype=np.float32) < table.take(field)
            s *= 1 - 2 * accept.view(np.int8)


def _check_baseline_geometry(size: int, rng: np.random.Generator) -> None:
    grid = rng.choice(np.array([-1, 1], np.int8), size=(size, size))
    full = sum(np.roll(grid, step, axis) for axis in (0, 1) for step in (1, -1))
    rows, cols = np.indices(grid.shape)
    black_mask, white_mask = (rows + cols) % 2 == 0, (rows + cols) % 2 == 1
    black = grid[black_mask].reshape(size, size // 2)
    white = grid[white_mask].reshape(size, size // 2)
    out = np.empty_like(black)
    _neighbour_sum(black, white, True, out)
    assert np.array_equal(out, full[black_mask].reshape(size, size // 2))
    _neighbour_sum(white, black, False, out)
    assert np.array_equal(out, full[white_mask].reshape(size, size // 2))


def numpy_timer(size: int, sweeps: int) -> Callable[[], float]:
    rng = np.random.default_rng(0)
    _check_baseline_geometry(size, rng)
    black = rng.choice(np.array([-1, 1], np.int8), size=(size, size // 2))
    white = rng.choice(np.array([-1, 1], np.int8), size=(size, size // 2))
    numpy_checkerboard_sweeps(black, white, BETA_C, 1, rng)

    def run() -> float:
        start = time.perf_counter()
        numpy_checkerboard_sweeps(black, white, BETA_C, sweeps, rng)
        return size * size * sweeps / (time.perf_counter() - start) / 1e9

    return run


def _critical_model(size: int, dtype: torch.dtype, device: str) -> IsingModel:
    return IsingModel(
        torch.tensor(1.0, dtype=dtype, device=device),
        torch.zeros(size * size, dtype=dtype, device=device),
        beta=BETA_C,
        lattice=SquareLattice((size, size)),
    )


def sweep_timer(size: int, sweeps: int, backend: str, device: str = "cpu") -> Callable[[], float]:
    """Steady-state sweeps of the multi-spin engine (64 replicas), like the baseline's loop."""
    model = _critical_model(size, torch.float32, device)
    generator = torch.Generator(device=device).manual_seed(0)
    engine = MultispinIsing(model, "random", generator, 64, backend=backend)
    engine.sweep(record=False)

    def run() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        engine.sweep(record=False, count=sweeps)
        if device == "cuda":
            torch.cuda.synchronize()
        return 64 * size * size * sweeps / (time.perf_counter() - start) / 1e9

    return run


def sample_timer(
    size: int,
    sweeps: int,
    chains: int,
    device: str = "cpu",
    measure_every: int | None = None,
    read: bool = False,
    fresh: bool = False,
    **options: str,
) -> Callable[[], float]:
    """``sample`` end to end (float32): one measurement every ``measure_every`` sweeps
    (``None``: a single one at the end); ``read``: the final state and site means are read;
    ``fresh``: no buffers of earlier engines are kept for reuse."""
    model = _critical_model(size, torch.float32, device)
    generator = torch.Generator(device=device).manual_seed(0)
    every = sweeps if measure_every is None else measure_every
    sample(model, every, burn_in=0, chains=chains, generator=generator, **options)

    def run() -> float:
        if not fresh:
            return timed()
        with multispin_native._POOL.suspended():
            return timed()

    def timed() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run = sample(
            model,
            sweeps,
            burn_in=0,
            chains=chains,
            generator=generator,
            measure_every=every,
            **options,
        )
        if read:
            run.final_state, run.mean_state  # noqa: B018 (unpacked on first access)
        if device == "cuda":
            torch.cuda.synchronize()
        return size * size * chains * sweeps / (time.perf_counter() - start) / 1e9

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (numpy's loop is single-threaded)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; numpy {np.__version__}")
    print(
        "baseline: numpy compact checkerboard Metropolis, int8 spins, one float32 uniform per "
        "site, exp(-2 beta dE) table lookup"
    )
    unavailable = native_unavailable_reason()
    print(f"native multispin kernel: {'available' if unavailable is None else unavailable}")
    print(f"{'L':>6} {'variant':<54} {'flips/ns':>10} {'x numpy':>9}")
    summary: list[tuple[str, float, float | None]] = []
    for size in args.sizes:
        flips = 1 << 24  # per repeat for the baseline and the one-chain runs
        multispin_sweeps = max(8, (1 << 32) // (64 * size**2))
        single_sweeps = max(2, flips // size**2)
        baseline = "numpy int8/float32 (baseline)"
        kernel = "multispin x64 native, sweeps"
        variants: list[tuple[str, Callable[[], float]]] = [
            (baseline, numpy_timer(size, single_sweeps)),
        ]
        if unavailable is None:
            variants.append((kernel, sweep_timer(size, multispin_sweeps, "native")))
        variants += [
            (
                "multispin x64 torch ops, sweeps",
                sweep_timer(size, max(4, multispin_sweeps // 8), "torch"),
            ),
            (
                "multispin x64 sample(), 1 measurement",
                sample_timer(size, multispin_sweeps, 64, engine="multispin"),
            ),
        ]
        for every in (1, 8):
            variants.append(
                (
                    f"multispin x64 sample(), measure_every={every}",
                    sample_timer(
                        size, multispin_sweeps, 64, measure_every=every, engine="multispin"
                    ),
                )
            )
        variants.append(
            (
                "multispin x64 sample(), measure_every=8, fresh buffers",
                sample_timer(
                    size, multispin_sweeps, 64, measure_every=8, fresh=True, engine="multispin"
                ),
            )
        )
        variants.append(
            (
                "multispin x64 sample(), measure_every=8, results read",
                sample_timer(
                    size, multispin_sweeps, 64, measure_every=8, read=True, engine="multispin"
                ),
            )
        )
        for algorithm in ("metropolis", "heat_bath"):
            variants.append(
                (
                    f"x1 sample() default engine, {algorithm}",
                    sample_timer(size, single_sweeps, 1, measure_every=1, algorithm=algorithm),
                )
            )
        variants.append(
            (
                "x1 sample() engine='tensor', metropolis",
                sample_timer(size, max(2, single_sweeps // 8), 1, measure_every=1, engine="tensor"),
            )
        )
        if torch.cuda.is_available():
            gpu_sweeps = max(20, 64 * flips // (64 * size**2))
            variants.append(
                ("multispin x64 cuda, sweeps", sweep_timer(size, gpu_sweeps, "torch", "cuda"))
            )
            for chains in (64, 1024):
                variants.append(
                    (
                        f"multispin x{chains} cuda sample()",
                        sample_timer(size, gpu_sweeps, chains, "cuda", engine="multispin"),
                    )
                )
        rates: dict[str, list[float]] = {name: [] for name, _ in variants}
        for _ in range(args.repeats):  # interleaved: load changes hit every variant alike
            for name, run in variants:
                rates[name].append(run())
        median = {name: statistics.median(values) for name, values in rates.items()}
        for name, _ in variants:
            print(
                f"{size:>6} {name:<54} {median[name]:>10.4f} {median[name] / median[baseline]:>9.2f}"
            )
        if kernel in median:
            for every, suffix, target in (
                (1, "", 0.5),
                (8, "", 0.8),
                (8, ", fresh buffers", None),
                (8, ", results read", None),
            ):
                name = f"multispin x64 sample(), measure_every={every}{suffix}"
                summary.append(
                    (
                        f"L={size}: sample(engine='multispin', measure_every={every}){suffix} / "
                        "native kernel",
                        median[name] / median[kernel],
                        target,
                    )
                )
        for algorithm in ("metropolis", "heat_bath"):
            name = f"x1 sample() default engine, {algorithm}"
            summary.append(
                (
                    f"L={size}: one chain, default engine, {algorithm} / numpy baseline",
                    median[name] / median[baseline],
                    3.0,
                )
            )
    print("\nratios (medians of the same run) and the targets of the performance issue:")
    for what, ratio, target in summary:
        verdict = "" if target is None else f"  (target >= {target:.2f}: "
        verdict += "" if target is None else ("met)" if ratio >= target else "missed)")
        print(f"  {what} = {ratio:.2f}{verdict}")


if __name__ == "__main__":
    main()
