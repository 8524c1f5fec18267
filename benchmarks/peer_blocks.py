"""Spin-model blocks against the closest peer module and torch's pre-norm layer, in one run.

Times forward+backward (float32 by default) of

* ``torch layer``: ``nn.TransformerEncoderLayer(norm_first=True, batch_first=True)``, feed-forward
  width 4·D, dropout 0 (the spin blocks have none), the reference of every ratio;
* ``SpinTransformerBlock``: K = 1 and K = 4 steps of the naive (first-order) dynamics from
  m = 0, the naive fixed point and the second-order (TAP) fixed point, each at its default
  solver settings;
* ``FreeEnergyAttention``: the magnetizations −∂F/∂h of the steepest-descent free energy
  (a saddle-point solve per head and sequence, no peer counterpart), at its defaults;
* the peer: ``SpinModelTransformerModule`` of Bal's ``neqnn`` (the PyTorch spin-model
  transformer module accompanying Bal, "Spin-model transformers", 2023) at its defaults, with
  ``num_steps`` = 1, 4 and ``None`` (its fixed point; it has no second-order dynamics).

Each round runs every case once (interleaved), so load from other processes affects all cases
alike; the table shows medians over rounds, the ratio to the torch layer and, for our blocks,
the ratio to the peer at the same K. ``--only`` keeps the cases whose names contain one of the
given words (the torch layer always runs). A second table counts, for each fixed-point case,
the evaluations of the step map inside the forward solve and of the adjoint map (one
vector-Jacobian product each) inside the backward solve, with the final residual each solver
reports: ours the relative |f(z) − z|/|f(z)| per (batch, head) system (worst one shown), the
peer the largest per-site |f(m) − m| over the whole batch. Iteration counts, not only the cost
of one iteration, decide the fixed-point ratios. The peer is not a dependency: give the directory that
holds its ``neqnn`` package with ``--peer-path`` or ``SPINFORMER_PEER_PATH``; without it (or when
it does not import) the peer columns are skipped with a message and the rest still runs.

    PYTHONPATH=src python benchmarks/peer_blocks.py --peer-path /path/to/neqnn
    SPINFORMER_PEER_PATH=/path/to/neqnn PYTHONPATH=src python benchmarks/peer_blocks.py --threads 1
    PYTHONPATH=src python benchmarks/peer_blocks.py --tol 1e-5   # one tolerance for both solvers
    PYTHONPATH=src python benchmarks/peer_blocks.py --only "fixed point"   # fixed points only
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from spinformer.nn import FreeEnergyAttention, SpinTransformerBlock
from spinformer.solvers import _core as solver_core

PEER_ENV = "SPINFORMER_PEER_PATH"


@dataclass
class Case:
    """One timed module: how to build it, how to get its output tensor, its K."""

    build: Callable[[], nn.Module]
    output: Callable[[object], torch.Tensor]
    steps: str  # "1", "4", "fixed point", "fixed point 2nd", "free energy"; "" for the reference
    peer: bool = False


def _ours(args: argparse.Namespace) -> dict[str, Case]:
    d, h = args.width, args.heads
    extra = {} if args.tol is None else {"tol": args.tol}

    def tensor(out: object) -> torch.Tensor:
        return out  # type: ignore[return-value]

    return {
        "ours K=1": Case(lambda: SpinTransformerBlock(d, h, steps=1), tensor, "1"),
        "ours K=4": Case(lambda: SpinTransformerBlock(d, h, steps=4), tensor, "4"),
        "ours fixed point": Case(
            lambda: SpinTransformerBlock(d, h, order=1, **extra), tensor, "fixed point"
        ),
        "ours fixed point 2nd order": Case(
            lambda: SpinTransformerBlock(d, h, order=2, **extra), tensor, "fixed point 2nd"
        ),
        "ours free energy": Case(lambda: FreeEnergyAttention(d, h), tensor, "free energy"),
    }


def _peer(args: argparse.Namespace) -> tuple[dict[str, Case], str]:
    """The peer's cases, or none and the reason (no path, or the import failed)."""
    path = args.peer_path or os.environ.get(PEER_ENV)
    if not path:
        return {}, f"peer skipped: no --peer-path and {PEER_ENV} is not set"
    if not os.path.isdir(path):
        return {}, f"peer skipped: --peer-path / {PEER_ENV} must be a directory, got {path!r}"
    sys.path.insert(0, os.path.abspath(path))
    try:
        module = importlib.import_module("neqnn").SpinModelTransformerModule
    except Exception as error:  # any import problem of an optional comparison
        return {}, f"peer skipped: cannot import neqnn from {path!r} ({error})"
    d, h = args.width, args.heads
    extra = {} if args.tol is None else {"tol": args.tol}

    def output(out: object) -> torch.Tensor:
        return out.output  # type: ignore[attr-defined]

    cases = {
        "peer K=1": Case(lambda: module(dim=d, num_heads=h, num_steps=1), output, "1", True),
        "peer K=4": Case(lambda: module(dim=d, num_heads=h, num_steps=4), output, "4", True),
        "peer fixed point": Case(
            lambda: module(dim=d, num_heads=h, num_steps=None, **extra),
            output,
            "fixed point",
            True,
        ),
    }
    return cases, f"peer: neqnn.SpinModelTransformerModule from {path}"


@contextlib.contextmanager
def _counting(log: list[tuple[int, float]]):
    """Record (map evaluations, final residual) of every Anderson solve, ours and the peer's."""
    ours = solver_core._SOLVERS["anderson"]

    def counted(solve, wrap):
        def run(fn, *args, **kwargs):
            calls = [0]

            def fn_counted(z):
                calls[0] += 1
                return fn(z)

            out = solve(fn_counted, *args, **kwargs)
            log.append((calls[0], wrap(out)))
            return out

        return run

    solver_core._SOLVERS["anderson"] = counted(ours, lambda out: float(out.residual.max()))
    peer = sys.modules.get("neqnn.fixed_point")
    peer_anderson = getattr(peer, "anderson", None)
    if peer is not None:
        peer.anderson = counted(peer_anderson, lambda out: float(out.residual))
    try:
        yield
    finally:
        solver_core._SOLVERS["anderson"] = ours
        if peer is not None:
            peer.anderson = peer_anderson


def _evaluations(cases: dict[str, Case], modules: dict[str, nn.Module], x: torch.Tensor) -> None:
    """Print the step-map and adjoint-map evaluations of one forward+backward per fixed point."""
    print(f"\n{'fixed point':<28}{'forward evals':>14}{'residual':>11}{'adjoint evals':>15}"
          f"{'residual':>11}")  # fmt: skip
    for name, case in cases.items():
        if not case.steps.startswith("fixed point"):
            continue
        log: list[tuple[int, float]] = []
        with _counting(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            case.output(modules[name](x)).float().square().mean().backward()
        modules[name].zero_grad(set_to_none=True)
        x.grad = None
        cells = [f"{n:>14d}{r:>11.2g}" if i == 0 else f"{n:>15d}{r:>11.2g}"
                 for i, (n, r) in enumerate(log[:2])]  # fmt: skip
        print(f"{name:<28}{''.join(cells)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--tol", type=float, default=None, help="fixed-point tolerance of both")
    parser.add_argument("--peer-path", default=None, help=f"directory holding neqnn ({PEER_ENV})")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated words: run the cases whose names contain one (e.g. 'fixed point')",
    )
    args = parser.parse_args()
    for name in ("batch", "seq", "width", "heads", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be a non-negative integer, got {args.warmup}")
    if args.tol is not None and not args.tol > 0:
        parser.error(f"--tol must be positive, got {args.tol}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    d, h = args.width, args.heads
    cases: dict[str, Case] = {
        "torch layer": Case(
            lambda: nn.TransformerEncoderLayer(
                d, h, dim_feedforward=4 * d, dropout=0.0, batch_first=True, norm_first=True
            ),
            lambda out: out,  # type: ignore[arg-type,return-value]
            "",
        )
    }
    cases.update(_ours(args))
    peer_cases, peer_note = _peer(args)
    cases.update(peer_cases)
    if args.only:
        words = [w.strip() for w in args.only.split(",") if w.strip()]
        cases = {n: c for n, c in cases.items() if not c.steps or any(w in n for w in words)}
        peer_cases = {n: c for n, c in peer_cases.items() if n in cases}

    modules: dict[str, nn.Module] = {}
    for name, case in cases.items():
        torch.manual_seed(0)
        modules[name] = case.build().to(device=device, dtype=dtype).train()
    torch.manual_seed(1)
    x = torch.randn(args.batch, args.seq, d, device=device, dtype=dtype, requires_grad=True)

    def step(name: str) -> None:
        out = cases[name].output(modules[name](x))
        out.float().square().mean().backward()
        modules[name].zero_grad(set_to_none=True)
        x.grad = None

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    print(
        f"B={args.batch} N={args.seq} D={d} H={h} {args.dtype} on {device}, forward+backward"
        f" ({torch.get_num_threads()} threads, torch {torch.__version__}), {args.rounds}"
        f" interleaved rounds"
    )
    print(peer_note)
    tol = "each module's default" if args.tol is None else f"{args.tol:g}"
    print(f"fixed-point tolerance: {tol}")
    times: dict[str, list[float]] = {name: [] for name in cases}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(args.warmup):
            for name in cases:
                step(name)
        for _ in range(args.rounds):
            for name in cases:
                sync()
                start = time.perf_counter()
                step(name)
                sync()
                times[name].append(time.perf_counter() - start)
    unconverged = sorted({str(w.message).split(";")[0] for w in caught})

    median = {name: statistics.median(t) for name, t in times.items()}
    peer_at = {case.steps: name for name, case in cases.items() if case.peer}
    print(
        f"\n{'module':<28}{'median ms':>11}{'min ms':>9}{'x torch layer':>15}{'x peer, same K':>16}"
    )
    for name, case in cases.items():
        vs_torch = median[name] / median["torch layer"]
        peer = peer_at.get(case.steps)
        if case.peer or not case.steps:
            vs_peer = ""
        elif peer is None:
            vs_peer = "-" if not peer_cases else "(no peer)"
        else:
            vs_peer = f"{median[name] / median[peer]:.2f}"
        print(
            f"{name:<28}{1e3 * median[name]:>11.1f}{1e3 * min(times[name]):>9.1f}"
            f"{vs_torch:>15.2f}{vs_peer:>16}"
        )
    for message in unconverged:
        print(f"warning during timing: {message}")
    _evaluations(cases, modules, x)


if __name__ == "__main__":
    main()
