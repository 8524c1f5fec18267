"""Spin-model blocks against the pre-norm TransformerBlock, measured in the same run.

For each module: median forward+backward wall time over repeats (ratio to TransformerBlock),
peak memory of one forward+backward (CUDA: ``max_memory_allocated``; CPU: growth of the peak
resident set, each module measured in a fresh child process), bytes that autograd holds
between forward and backward (saved tensors: deterministic, the activation memory), and the
fixed-point iterations used per (batch, head) spin system.

Second table: the implicit (adjoint) backward against unrolled differentiation for a fixed
number of forward iterations K. The implicit backward keeps one application of the step,
so its saved memory is flat in K; the unrolled one grows linearly.

    PYTHONPATH=src python benchmarks/blocks.py                  # B=8, N=256, D=256, H=4, CPU
    PYTHONPATH=src python benchmarks/blocks.py --device cuda --batch 32 --seq 1024 --width 512
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch

from spinformer.nn import (
    AttentionBlock,
    FreeEnergyAttention,
    MeanFieldAttention,
    SpinTransformerBlock,
    TransformerBlock,
)
from spinformer.solvers import SolverWarning

MODULES = {
    "TransformerBlock (reference)": lambda d, h: TransformerBlock(d, h),
    "SpinTransformerBlock naive, fixed point": lambda d, h: SpinTransformerBlock(d, h, order=1),
    "SpinTransformerBlock TAP, fixed point": lambda d, h: SpinTransformerBlock(d, h, order=2),
    "SpinTransformerBlock naive, 4 steps": lambda d, h: SpinTransformerBlock(d, h, steps=4),
    "SpinTransformerBlock naive, fixed point, broyden": lambda d, h: SpinTransformerBlock(
        d, h, solver="broyden"
    ),
    "MeanFieldAttention TAP (+MLP)": lambda d, h: AttentionBlock(MeanFieldAttention(d, h), d),
    "FreeEnergyAttention (+MLP)": lambda d, h: AttentionBlock(FreeEnergyAttention(d, h), d),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _saved_bytes(fn) -> int:
    """Bytes of distinct tensors autograd saves for backward while running ``fn``."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def _build(name: str, args: argparse.Namespace):
    torch.manual_seed(0)
    module = MODULES[name](args.width, args.heads).to(device=args.device, dtype=module_dtype(args))
    x = torch.randn(args.batch, args.seq, args.width, device=args.device, dtype=module_dtype(args))
    return module, x


def module_dtype(args: argparse.Namespace) -> torch.dtype:
    return getattr(torch, args.dtype)


def _step(module, x):
    out, state = module(x, return_state=True)
    out.square().mean().backward()
    module.zero_grad(set_to_none=True)
    return state


def measure_memory(name: str, args: argparse.Namespace) -> dict:
    """Peak memory of the first forward+backward (fresh process on CPU) and saved bytes."""
    warnings.simplefilter("ignore", SolverWarning)
    module, x = _build(name, args)
    _step(module, x[:1, :8].contiguous())  # one-time library initialisation at a tiny size
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state = _step(module, x)
    _sync(args.device)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) * 1024
    iterations = getattr(state, "iterations", None)
    converged = getattr(state, "converged", None)
    return {
        "module": name,
        "peak_mib": peak / 2**20,
        "saved_mib": _saved_bytes(lambda: module(x)) / 2**20,
        "iterations": float(iterations.float().mean()) if iterations is not None else None,
        "converged": float(converged.float().mean()) if converged is not None else None,
    }


def measure_times(names: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Round-robin timing: every round times each module once, so load changes hit all alike.

    Returns the median time per module and the median over rounds of the per-round ratio to
    the first module (the reference).
    """
    warnings.simplefilter("ignore", SolverWarning)
    built = {name: _build(name, args) for name in names}
    for module, x in built.values():
        _step(module, x)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name, (module, x) in built.items():
            _sync(args.device)
            start = time.perf_counter()
            _step(module, x)
            _sync(args.device)
            times[name].append(time.perf_counter() - start)
    reference = times[names[0]]
    return {
        name: {
            "time_s": statistics.median(t),
            "time_ratio": statistics.median(a / b for a, b in zip(t, reference, strict=True)),
        }
        for name, t in times.items()
    }


def iterations_memory(args: argparse.Namespace) -> list[dict]:
    device, dtype = args.device, getattr(torch, args.dtype)
    warnings.simplefilter("ignore", SolverWarning)
    rows = []
    x = torch.randn(args.batch, args.seq, args.width, device=device, dtype=dtype)
    for k in args.iterations:
        row = {"K": k}
        for implicit in (True, False):
            torch.manual_seed(0)
            block = SpinTransformerBlock(
                args.width, args.heads, solver="picard", tol=1e-30, max_iter=k, implicit=implicit
            ).to(device=device, dtype=dtype)
            label = "implicit" if implicit else "unrolled"
            row[f"{label}_saved_mib"] = _saved_bytes(lambda b=block: b(x)) / 2**20
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                block(x).square().mean().backward()
                torch.cuda.synchronize()
                row[f"{label}_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        rows.append(row)
    return rows


def _print_table(rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    print(" | ".join(columns))
    print(" | ".join("---" for _ in columns))
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        print(" | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--iterations", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--skip", nargs="*", default=[], help="module names to leave out")
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure_memory(args.only, args)))
        return
    print(
        f"# blocks: B={args.batch} N={args.seq} D={args.width} H={args.heads} "
        f"{args.device} {args.dtype}; time = median of {args.repeats} round-robin rounds"
    )
    names = [name for name in MODULES if name not in args.skip]
    rows = []
    for name in names:
        if args.device == "cpu":  # a fresh process per module so that peak RSS is its own
            child = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--only", name],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        else:
            rows.append(measure_memory(name, args))
    timing = measure_times(names, args)
    for row in rows:
        row.update(timing[row["module"]])
    _print_table(rows)
    print("\n# implicit vs unrolled backward: memory vs forward iterations K")
    _print_table(iterations_memory(args))


if __name__ == "__main__":
    main()
