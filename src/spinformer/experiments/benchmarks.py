"""The ratios of ``benchmarks/``, measured quickly on the machine that builds the report.

The scripts in ``benchmarks/`` (attention, blocks) measure each spinformer module against a named
baseline in the same run, repeats interleaved so that load from other processes affects all cases
alike; this experiment does the same at small sizes so the report can show the ratios of the
machine it was built on (named with its CPU model, cores and torch version). Times are medians of
interleaved repeats; on a shared machine they are noisy, and the full-size scripts are the
reference.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Annotated

import torch
from torch import nn

from spinformer.experiments._plot import new_figure
from spinformer.experiments._registry import POSITIVE, ExperimentResult, register_experiment

__all__ = ["benchmark_ratios", "machine_description"]


BASELINES = ("torch MultiheadAttention", "TransformerBlock (baseline)")
"""The named baselines the ratios divide by (one per benchmark)."""


def machine_description() -> str:
    """CPU model, logical cores, torch version and threads of this machine, in one line."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )


def _median_times(cases: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _training_step(module: nn.Module, call: Callable[[], object]) -> Callable[[], None]:
    def step() -> None:
        result = call()
        tensors = result if isinstance(result, tuple) else (result,)
        sum(t.float().mean() for t in tensors if isinstance(t, torch.Tensor)).backward()
        module.zero_grad(set_to_none=True)

    return step


@register_experiment(
    title="Benchmark ratios on this machine",
    section="Benchmarks",
    order=90,
    report_config={"seq": 64, "dim": 64, "repeats": 5},
)
def benchmark_ratios(
    batch: Annotated[int, POSITIVE] = 8,
    seq: Annotated[int, POSITIVE] = 256,
    dim: Annotated[int, POSITIVE] = 256,
    heads: Annotated[int, POSITIVE] = 4,
    repeats: Annotated[int, POSITIVE] = 5,
    seed: int = 0,
) -> ExperimentResult:
    """Time ratios of spinformer's modules against torch's, measured in the same run.

    Attention (benchmarks/attention.py): BoltzmannAttention.from_torch of an
    nn.MultiheadAttention, without and with its thermodynamics (ln Z, F, U, S, C of every head
    and query), against that nn.MultiheadAttention, in inference and in training
    (forward + backward). Blocks (benchmarks/blocks.py): SpinTransformerBlock (naive mean field,
    solved to its fixed point) and FreeEnergyAttention (+MLP) against the pre-norm
    TransformerBlock, forward + backward. A ratio is a median time over the baseline's median
    time; run the scripts for full sizes, peak memory and more cases.
    """
    from spinformer.nn import (
        AttentionBlock,
        BoltzmannAttention,
        FreeEnergyAttention,
        SpinTransformerBlock,
        TransformerBlock,
    )

    if dim % heads:
        raise ValueError(f"dim must be a multiple of heads = {heads}, got {dim}")
    torch.manual_seed(seed)
    x = torch.randn(batch, seq, dim)
    mha = nn.MultiheadAttention(dim, heads, batch_first=True)
    ours = BoltzmannAttention.from_torch(mha)
    rows = []
    for mode in ("inference", "training"):
        training = mode == "training"
        mha.train(training)
        ours.train(training)
        calls: dict[str, Callable[[], object]] = {
            "torch MultiheadAttention": lambda: mha(x, x, x, need_weights=False)[0],
            "BoltzmannAttention": lambda: ours(x, need_weights=False)[0],
            "BoltzmannAttention + thermodynamics": lambda: (
                ours(x, need_weights=False, need_thermo=True)[2].entropy
            ),
        }
        cases: dict[str, Callable[[], None]] = {}
        for name, call in calls.items():
            if training:
                cases[name] = _training_step(ours if "Boltz" in name else mha, call)
            else:

                def infer(call: Callable[[], object] = call) -> None:
                    with torch.inference_mode():
                        call()

                cases[name] = infer
        medians = _median_times(cases, repeats)
        base = medians["torch MultiheadAttention"]
        rows += [
            {
                "benchmark": "attention",
                "mode": mode,
                "case": name,
                "median ms": 1e3 * value,
                "ratio": value / base,
            }
            for name, value in medians.items()
        ]
    blocks: dict[str, nn.Module] = {
        "TransformerBlock (baseline)": TransformerBlock(dim, heads),
        "SpinTransformerBlock naive, fixed point": SpinTransformerBlock(dim, heads, order=1),
        "FreeEnergyAttention (+MLP)": AttentionBlock(FreeEnergyAttention(dim, heads), dim),
    }
    cases = {
        name: _training_step(module, lambda module=module: module(x))
        for name, module in blocks.items()
    }
    medians = _median_times(cases, repeats)
    base = medians["TransformerBlock (baseline)"]
    rows += [
        {
            "benchmark": "blocks",
            "mode": "training",
            "case": name,
            "median ms": 1e3 * value,
            "ratio": value / base,
        }
        for name, value in medians.items()
    ]
    machine = machine_description()
    fig, ax = new_figure(width=6.4, height=3.4)
    shown = [r for r in rows if r["ratio"] != 1.0 or r["case"] not in BASELINES]
    labels = [f"{r['case']} ({r['mode']})" for r in shown]
    ratios = [r["ratio"] for r in shown]
    ax.barh(range(len(ratios)), ratios, color="C0")
    ax.axvline(1.0, color="k", ls="--", lw=1, label="baseline (torch attention / TransformerBlock)")
    ax.set_yticks(range(len(ratios)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time / baseline time")
    ax.set_title(f"B={batch}, N={seq}, D={dim}, H={heads}, fp32, CPU")
    ax.legend(fontsize=7)
    ratio = {f"{r['benchmark']} {r['mode']}: {r['case']}": r["ratio"] for r in rows}
    return ExperimentResult(
        metrics={
            "machine": machine,
            "attention inference ratio": ratio["attention inference: BoltzmannAttention"],
            "attention training ratio": ratio["attention training: BoltzmannAttention"],
            "spin block ratio": ratio["blocks training: SpinTransformerBlock naive, fixed point"],
        },
        tables={"ratios against the baseline of the same run": rows},
        figures={"ratios": fig},
        notes=[f"Measured on {machine}."],
    )
