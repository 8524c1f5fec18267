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


def measure(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device, dtype = args.device, getattr(torch, args.dtype)
    module = MODULES[name](args.width, args.heads).to(device=device, dtype=dtype)
    x = torch.randn(args.batch, args.seq, args.width, device=device, dtype=dtype)

    def step():
        out, state = module(x, return_state=True)
        out.square().mean().backward()
        return state

    warnings.simplefilter("ignore", SolverWarning)
    step()  # warm-up
    step()
    module.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state = step()
    _sync(device)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) * 1024
    times = []
    for _ in range(args.repeats):
        module.zero_grad(set_to_none=True)
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    saved = _saved_bytes(lambda: module(x))
    iterations = getattr(state, "iterations", None)
    converged = getattr(state, "converged", None)
    return {
        "module": name,
        "time_s": statistics.median(times),
        "peak_mib": peak / 2**20,
        "saved_mib": saved / 2**20,
        "iterations": float(iterations.float().mean()) if iterations is not None else None,
        "converged": float(converged.float().mean()) if converged is not None else None,
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
        print(json.dumps(measure(args.only, args)))
        return
    print(
        f"# blocks: B={args.batch} N={args.seq} D={args.width} H={args.heads} "
        f"{args.device} {args.dtype}, median of {args.repeats}"
    )
    rows = []
    for name in MODULES:
        if name in args.skip:
            continue
        if args.device == "cpu":  # a fresh process per module so that peak RSS is its own
            child = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--only", name],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        else:
            rows.append(measure(name, args))
    reference = rows[0]["time_s"]
    for r in rows:
        r["time_ratio"] = r["time_s"] / reference
    _print_table(rows)
    print("\n# implicit vs unrolled backward: memory vs forward iterations K")
    _print_table(iterations_memory(args))


if __name__ == "__main__":
    main()
