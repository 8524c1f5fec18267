"""Benchmark: BoltzmannAttention against torch.nn.MultiheadAttention, measured in the same run.

Times (median of interleaved repeats) and peak memory of

* ``torch``: ``nn.MultiheadAttention(batch_first=True)`` with ``need_weights=False``;
* ``boltzmann``: ``BoltzmannAttention.from_torch`` of it with ``need_weights=False`` (SDPA path);
* ``boltzmann+thermo``: the same with ``need_thermo=True`` (ln Z, F, U, S, C of every head and
  query);
* ``torch weights`` / ``boltzmann weights``: both with ``need_weights=True`` (torch's default),
  where both materialize the attention matrix;

in inference (eval, ``torch.inference_mode``; torch uses its fused native kernel there) and in
training (forward + backward). Ratios are against ``torch`` of the same mode. Targets: ≤ 1.05x
without thermodynamics, ≤ 1.2x with them (inference and training). Repeats are interleaved case
by case so that load from other processes affects all cases alike; the medians are still noisy
on a shared machine.

    python benchmarks/attention.py                      # B=8, N=512, D=512, H=8, fp32, CPU
    python benchmarks/attention.py --device cuda        # on a GPU
    python benchmarks/attention.py --seq 128 --repeats 5
    python benchmarks/attention.py --threads 1          # one intra-op thread
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from spinformer.nn import BoltzmannAttention


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_cuda(fn: Callable[[], object], device: torch.device) -> float:
    """Peak bytes allocated on the GPU while ``fn`` runs, above what was allocated before."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - base)


def _peak_memory_cpu(case: str, mode: str, argv: list[str]) -> float:
    """Peak resident-set growth (bytes) of one step of ``case``, in a fresh process."""
    command = [sys.executable, __file__, *argv, "--memory-probe", f"{mode}:{case}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(output.strip().splitlines()[-1])


def _max_rss() -> float:
    """Peak resident set of this process image in bytes.

    ``VmHWM`` is reset by ``exec`` (``ru_maxrss`` is not: it inherits the parent's peak).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    parser.add_argument("--modes", default="inference,training")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    argv = [a for a in sys.argv[1:] if not a.startswith("--memory-probe")]

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(args.dim, args.heads, batch_first=True, device=device, dtype=dtype)
    ours = BoltzmannAttention.from_torch(mha)
    x = torch.randn(args.batch, args.seq, args.dim, device=device, dtype=dtype)
    if args.memory_probe is None:
        print(
            f"B={args.batch} N={args.seq} D={args.dim} H={args.heads} {args.dtype} on {device}"
            f" ({torch.get_num_threads()} threads, torch {torch.__version__})"
        )

    modes = args.modes.split(",")
    if args.memory_probe is not None:
        modes = [args.memory_probe.split(":")[0]]
    for mode in modes:
        training = mode == "training"
        mha.train(training)
        ours.train(training)

        def run_torch() -> object:
            return mha(x, x, x, need_weights=False)[0]

        def run_ours() -> object:
            return ours(x, need_weights=False)[0]

        def run_thermo() -> object:
            out, _, thermo = ours(x, need_weights=False, need_thermo=True)
            return out, thermo.entropy, thermo.heat_capacity

        def run_torch_weights() -> object:
            return mha(x, x, x, need_weights=True)

        def run_ours_weights() -> object:
            return ours(x, need_weights=True)

        cases: dict[str, Callable[[], object]] = {
            "torch": run_torch,
            "boltzmann": run_ours,
            "boltzmann+thermo": run_thermo,
            "torch weights": run_torch_weights,
            "boltzmann weights": run_ours_weights,
        }

        def step(fn: Callable[[], object], training: bool = training) -> None:
            if training:
                result = fn()
                tensors = result if isinstance(result, tuple) else (result,)
                loss = sum(t.float().mean() for t in tensors if t is not None)  # type: ignore[union-attr]
                loss.backward()
                mha.zero_grad(set_to_none=True)
                ours.zero_grad(set_to_none=True)
            else:
                with torch.inference_mode():
                    fn()

        if args.memory_probe is not None:
            before = _max_rss()
            step(cases[args.memory_probe.split(":")[1]])
            print(_max_rss() - before)
            return
        for _ in range(args.warmup):
            for fn in cases.values():
                step(fn)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, fn in cases.items():
                _sync(device)
                start = time.perf_counter()
                step(fn)
                _sync(device)
                times[name].append(time.perf_counter() - start)
        if device.type == "cuda":
            memory = {n: _peak_memory_cuda(lambda f=f: step(f), device) for n, f in cases.items()}
        else:
            memory = {n: _peak_memory_cpu(n, mode, argv) for n in cases}
        base_time = statistics.median(times["torch"])
        base_mem = memory["torch"]
        print(f"\n{mode} ({'forward+backward' if training else 'forward'}), {args.repeats} repeats")
        print(
            f"{'case':<18}{'median ms':>11}{'min ms':>9}{'ratio':>8}{'peak MiB':>10}{'mem ratio':>10}"
        )
        for name in cases:
            median = statistics.median(times[name])
            ratio_mem = memory[name] / base_mem if base_mem > 0 else float("nan")
            print(
                f"{name:<18}{1e3 * median:>11.2f}{1e3 * min(times[name]):>9.2f}"
                f"{median / base_time:>8.3f}{memory[name] / 2**20:>10.1f}{ratio_mem:>10.2f}"
            )


if __name__ == "__main__":
    main()
