"""Training throughput of the K = 1 spin block against the vanilla TransformerBlock, same run.

Two SpinTransformer stacks that differ only in their block -- the reference TransformerBlock
(baseline) and the spin block of the best design with K = 1 (cosine couplings, per-head RMSNorm
on the spin radius, learned initial magnetization, stream as magnetizations, rotary positions)
-- train on the same random next-token batches with AdamW. Rounds are interleaved (each round
times a few optimizer steps of every model) so that load from other processes hits all alike;
the ratio printed is the median over rounds of spin tokens/s over vanilla tokens/s.
``--processes P`` repeats the whole measurement in P fresh processes and prints each one's
ratios and their median: the state of the C allocator differs from process to process (how
often glibc hands freed memory back to the system, so that the next step pays a page fault per
4 KiB it touches), and that moves the ratio by a few percent between runs of one process.

    PYTHONPATH=src python benchmarks/train.py            # charlm CPU preset shape, 1 thread
    PYTHONPATH=src python benchmarks/train.py --torch-rows  # + the best design without its
                                                            # compiled row kernel
    PYTHONPATH=src python benchmarks/train.py --device cuda --batch 64 --seq 256 --width 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from spinformer.nn import SpinTransformer, SpinTransformerConfig

MODELS = {
    "TransformerBlock (baseline)": {"block": "transformer"},
    "spin block K=1, best design": {"block": "spin", "steps": 1, "position": "rotary"},
    "spin block K=1, first design": {
        "block": "spin",
        "steps": 1,
        "coupling": "dot",
        "norm": "layer",
        "start": "zero",
        "residual": "add",
    },
    "spin block K=2, first design": {
        "block": "spin",
        "steps": 2,
        "coupling": "dot",
        "norm": "layer",
        "start": "zero",
        "residual": "add",
    },
}


TORCH_ROWS = "spin block K=1, best design, torch row math"


@contextlib.contextmanager
def _native(enabled: bool) -> Iterator[None]:
    """Run with the compiled row kernels on (as configured) or off (SPINFORMER_NATIVE=0)."""
    before = os.environ.get("SPINFORMER_NATIVE")
    if not enabled:
        os.environ["SPINFORMER_NATIVE"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SPINFORMER_NATIVE", None)
        else:
            os.environ["SPINFORMER_NATIVE"] = before


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--processes", type=int, default=1, help="repeat the measurement in this many processes"
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--torch-rows",
        action="store_true",
        help="also time the best design with SPINFORMER_NATIVE=0 (its row math as torch ops)",
    )
    args = parser.parse_args()
    if args.processes > 1:
        _repeat(args)
        return
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=generator)
    tokens = tokens.to(args.device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    runs = {}
    models = dict(MODELS)
    if args.torch_rows:
        models[TORCH_ROWS] = MODELS["spin block K=1, best design"]
    for name, choice in models.items():
        torch.manual_seed(0)
        config = SpinTransformerConfig(
            vocab_size=args.vocab,
            max_len=args.seq,
            d_model=args.width,
            n_heads=args.heads,
            n_layers=args.layers,
            **choice,
        )
        model = SpinTransformer(config).to(args.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        runs[name] = (model, optimizer)

    def train_steps(model, optimizer, steps: int) -> None:
        for _ in range(steps):
            logits = model(inputs)
            loss = F.cross_entropy(logits.reshape(-1, args.vocab), targets.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    for name, (model, optimizer) in runs.items():
        with _native(name != TORCH_ROWS):
            train_steps(model, optimizer, 2)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, optimizer) in runs.items():
            _sync(args.device)
            start = time.perf_counter()
            with _native(name != TORCH_ROWS):
                train_steps(model, optimizer, args.steps)
            _sync(args.device)
            seconds = time.perf_counter() - start
            rates[name].append(args.steps * args.batch * args.seq / seconds)
    base = rates["TransformerBlock (baseline)"]
    if args.json:
        ratios = {
            name: statistics.median(a / b for a, b in zip(rate, base, strict=True))
            for name, rate in rates.items()
        }
        print(json.dumps(ratios))
        return
    print(
        f"# training tokens/s: B={args.batch} N={args.seq} D={args.width} H={args.heads} "
        f"L={args.layers} {args.device}, {args.threads} thread(s); median of {args.rounds} "
        f"interleaved rounds of {args.steps} steps"
    )
    print("model | parameters | tokens/s | ratio to baseline")
    print("--- | --- | --- | ---")
    for name, rate in rates.items():
        ratio = statistics.median(a / b for a, b in zip(rate, base, strict=True))
        params = sum(p.numel() for p in runs[name][0].parameters())
        print(f"{name} | {params} | {statistics.median(rate):.0f} | {ratio:.3f}")


def _repeat(args: argparse.Namespace) -> None:
    """Run the measurement in ``args.processes`` fresh processes; print every ratio per model
    and their median."""
    command = [sys.executable, __file__, "--json", "--processes", "1"]
    for key, value in vars(args).items():
        if key in ("processes", "json") or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        command += [flag] if value is True else [flag, str(value)]
    runs = []
    for i in range(args.processes):
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"# process {i + 1}/{args.processes} done", file=sys.stderr)
    print(
        f"# training tokens/s ratio to baseline: B={args.batch} N={args.seq} D={args.width} "
        f"H={args.heads} L={args.layers} {args.device}, {args.threads} thread(s); {args.rounds} "
        f"interleaved rounds of {args.steps} steps in each of {args.processes} processes"
    )
    print("model | ratio per process | median")
    print("--- | --- | ---")
    for name in runs[0]:
        ratios = [run[name] for run in runs]
        listed = ", ".join(f"{r:.3f}" for r in ratios)
        print(f"{name} | {listed} | {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
