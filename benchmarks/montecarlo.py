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

spinformer, the multi-spin engine (64 replicas per int64 word, lazy Metropolis):
- sweeps of its native kernel (the CPU default) and of its torch-operations backend (the
  fallback without a C compiler, and the CUDA path), timed like the baseline: sweeps only, the
  state already allocated;
- ``sample(..., engine="multispin")`` end to end: construction, sweeps, one measurement and the
  (64, L²) final state and site means, with 2^32 flips per call;
- the tensor engine (float32, one chain) for reference.
On a machine with CUDA the multispin engine is also timed on the GPU (torch backend).

    PYTHONPATH=src python benchmarks/montecarlo.py [--sizes 256 1024] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from spinformer.physics import IsingModel, SquareLattice, sample
from spinformer.physics.montecarlo.build import native_unavailable_reason
from spinformer.physics.montecarlo.multispin import MultispinIsing

BETA_C = 0.5 * math.log(1.0 + math.sqrt(2.0))


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


def torch_timer(
    size: int, sweeps: int, dtype: torch.dtype, device: str, chains: int, engine: str
) -> Callable[[], float]:
    model = _critical_model(size, dtype, device)
    generator = torch.Generator(device=device).manual_seed(0)
    sample(model, 1, burn_in=0, chains=chains, generator=generator, engine=engine)

    def run() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sample(
            model,
            sweeps,
            burn_in=0,
            chains=chains,
            generator=generator,
            measure_every=sweeps,
            engine=engine,
        )
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
    print(f"{'L':>6} {'variant':<36} {'flips/ns':>10} {'x numpy':>9}")
    for size in args.sizes:
        flips = 1 << 22  # per repeat for the baseline and the one-chain tensor engine
        multispin_sweeps = max(8, (1 << 32) // (64 * size**2))
        variants: list[tuple[str, Callable[[], float]]] = [
            ("numpy int8/float32 (baseline)", numpy_timer(size, max(2, flips // size**2))),
        ]
        if unavailable is None:
            variants.append(
                ("multispin x64 native, sweeps", sweep_timer(size, multispin_sweeps, "native"))
            )
        variants += [
            (
                "multispin x64 torch ops, sweeps",
                sweep_timer(size, max(4, multispin_sweeps // 8), "torch"),
            ),
            (
                "multispin x64 sample() end to end",
                torch_timer(size, multispin_sweeps, torch.float32, "cpu", 64, "multispin"),
            ),
            (
                "tensor float32 x1 sample()",
                torch_timer(size, max(2, flips // size**2), torch.float32, "cpu", 1, "tensor"),
            ),
        ]
        if torch.cuda.is_available():
            gpu_sweeps = max(20, 64 * flips // (64 * size**2))
            variants.append(
                ("multispin x64 cuda, sweeps", sweep_timer(size, gpu_sweeps, "torch", "cuda"))
            )
            for chains in (64, 1024):
                variants.append(
                    (
                        f"multispin x{chains} cuda sample()",
                        torch_timer(size, gpu_sweeps, torch.float32, "cuda", chains, "multispin"),
                    )
                )
        rates: dict[str, list[float]] = {name: [] for name, _ in variants}
        for _ in range(args.repeats):  # interleaved: load changes hit every variant alike
            for name, run in variants:
                rates[name].append(run())
        base = statistics.median(rates[variants[0][0]])
        for name, _ in variants:
            rate = statistics.median(rates[name])
            print(f"{size:>6} {name:<36} {rate:>10.4f} {rate / base:>9.2f}")


if __name__ == "__main__":
    main()
