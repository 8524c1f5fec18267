"""Benchmark: sweep executors (local process pool, Ray, Dask) on the same points, in one run.

Two measurements per executor, after its start-up (timed separately):

* **throughput**: 2·T CPU-bound points (``hopfield_retrieval_point`` at N = 1500, α = 0.14) on
  ``--workers`` cores; the ratio wall / (Σ point time / workers) is 1.0 for perfect use of the
  cores (the points' own time is measured inside the workers);
* **overhead per point**: ``--small`` tiny points (N = 20); (workers·wall − Σ point time) / count.

    python benchmarks/sweep.py                    # local, plus ray and dask when installed
    python benchmarks/sweep.py --executors local --points 8
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

from spinformer.sweep import make_executor


def _tasks(count: int, num_spins: int, load: float) -> list:
    module = "spinformer.experiments.sweeps"
    return [
        (module, "hopfield_retrieval_point", {"num_spins": num_spins, "load": load, "starts": 4,
                                              "seed": seed})
        for seed in range(count)
    ]  # fmt: skip


def _run(executor, tasks) -> tuple[float, float]:
    start = time.perf_counter()
    busy = sum(row["wall_s"] for _, row in executor.run(tasks))
    return time.perf_counter() - start, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", nargs="+", default=["local", "ray", "dask"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--points", type=int, default=8, help="2·T CPU-bound points")
    parser.add_argument("--small", type=int, default=100, help="tiny points for the overhead")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for name in args.executors:
        if (
            name != "local"
            and importlib.util.find_spec({"ray": "ray"}.get(name, "distributed")) is None
        ):
            print(f"{name}: not installed, skipped")
            continue
        executor = make_executor(name, workers=args.workers)
        start = time.perf_counter()
        executor.start()
        _run(executor, _tasks(args.workers, 20, 0.1))  # warm the workers (imports)
        startup = time.perf_counter() - start
        try:
            wall, busy = _run(executor, _tasks(args.points, 1500, 0.14))
            ideal = busy / args.workers
            small_wall, small_busy = _run(executor, _tasks(args.small, 20, 0.1))
            overhead = (args.workers * small_wall - small_busy) / args.small
        finally:
            executor.close()
        print(
            f"{name:6s} start-up {startup:6.1f} s | {args.points} points: wall {wall:6.2f} s, "
            f"Σ point time / {args.workers} workers {ideal:6.2f} s, ratio {wall / ideal:5.2f} | "
            f"overhead per point {1000 * overhead:6.1f} ms ({args.small} tiny points)"
        )


if __name__ == "__main__":
    main()
