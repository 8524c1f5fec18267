"""Checkerboard Metropolis throughput for the 2-D Ising model: spinformer vs plain numpy.

Both run the same algorithm (checkerboard Metropolis at β_c on an L×L torus, one uniform random
number per site per sweep) in the same process; the figure of merit is spin updates per
nanosecond (flips/ns, as in the GPU Ising literature), and the ratio is median over repeats.
The torch CPU figure uses one thread by default (``--threads``), like numpy's baseline: on a
shared machine, oversubscribed OpenMP threads cost more than they give. On a machine with CUDA the torch figure is also measured on the GPU (same code: the model's
tensors live there).

    PYTHONPATH=src python benchmarks/montecarlo.py [--sizes 256 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from spinformer.physics import IsingModel, SquareLattice, sample

BETA_C = 0.5 * math.log(1.0 + math.sqrt(2.0))


def numpy_checkerboard_sweeps(spins: np.ndarray, beta: float, sweeps: int, rng) -> np.ndarray:
    """Plain numpy checkerboard Metropolis (the baseline)."""
    rows, cols = np.indices(spins.shape)
    masks = [(rows + cols) % 2 == c for c in (0, 1)]
    for _ in range(sweeps):
        for mask in masks:
            neighbours = (
                np.roll(spins, 1, 0) + np.roll(spins, -1, 0) + np.roll(spins, 1, 1)
                + np.roll(spins, -1, 1)
            )  # fmt: skip
            delta = 2.0 * spins * neighbours
            accept = (rng.random(spins.shape) < np.exp(-beta * delta)) & mask
            spins[accept] *= -1
    return spins


def time_numpy(size: int, sweeps: int, repeats: int) -> list[float]:
    rng = np.random.default_rng(0)
    spins = rng.choice([-1.0, 1.0], size=(size, size))
    numpy_checkerboard_sweeps(spins, BETA_C, 1, rng)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        numpy_checkerboard_sweeps(spins, BETA_C, sweeps, rng)
        rates.append(size * size * sweeps / (time.perf_counter() - start) / 1e9)
    return rates


def time_torch(
    size: int, sweeps: int, repeats: int, dtype: torch.dtype, device: str, chains: int = 1
) -> list[float]:
    model = IsingModel(
        torch.tensor(1.0, dtype=dtype, device=device),
        torch.zeros(size * size, dtype=dtype, device=device),
        beta=BETA_C,
        lattice=SquareLattice((size, size)),
    )
    generator = torch.Generator(device=device).manual_seed(0)
    sample(model, 1, burn_in=0, chains=chains, generator=generator)
    rates = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sample(model, sweeps, burn_in=0, chains=chains, generator=generator, measure_every=sweeps)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(size * size * chains * sweeps / (time.perf_counter() - start) / 1e9)
    return rates


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
    print(f"{'L':>6} {'variant':<28} {'flips/ns':>10} {'x numpy':>9}")
    for size in args.sizes:
        sweeps = max(2, (1 << 22) // (size * size))
        base = statistics.median(time_numpy(size, sweeps, args.repeats))
        print(f"{size:>6} {'numpy float64 (baseline)':<28} {base:>10.4f} {1.0:>9.2f}")
        variants = [
            ("torch float32", torch.float32, "cpu", 1),
            ("torch float64", torch.float64, "cpu", 1),
        ]
        if torch.cuda.is_available():
            variants.append(("torch float32 cuda", torch.float32, "cuda", 1))
            variants.append(("torch float32 cuda x16 chains", torch.float32, "cuda", 16))
        for name, dtype, device, chains in variants:
            rate = statistics.median(time_torch(size, sweeps, args.repeats, dtype, device, chains))
            print(f"{size:>6} {name:<28} {rate:>10.4f} {rate / base:>9.2f}")


if __name__ == "__main__":
    main()
