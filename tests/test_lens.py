"""The lens on small local Hugging Face models of every family, the constructed pitchfork head,
and bad input. Needs ``transformers`` (the ``lens`` extra) except where noted."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch

from spinformer.lens import LensConfig, analyze, head_phases, load, relative_coupling

HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(
    not HAVE_TRANSFORMERS, reason="needs transformers: pip install 'spinformer[lens]'"
)
FAST = LensConfig(mean_field=False)


def _save(model, path):
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Random-weight BERT, GPT-2 (fused QKV) and Llama (RoPE, 4 query / 2 key heads) dirs."""
    if not HAVE_TRANSFORMERS:
        pytest.skip("needs transformers: pip install 'spinformer[lens]'")
    import transformers

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=32, max_position_embeddings=24,
        )
    )  # fmt: skip
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=4, n_positions=24)
    )
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=24,
        )
    )  # fmt: skip
    return {
        "bert": _save(bert, root / "bert"),
        "gpt2": _save(gpt2, root / "gpt2"),
        "llama": _save(llama, root / "llama"),
    }


def _reference_attention(lens, ids, mask=None):
    kwargs = {"input_ids": ids, "output_attentions": True}
    if mask is not None:
        kwargs["attention_mask"] = mask.long()
    if lens.family.causal:
        kwargs["use_cache"] = False
    with torch.no_grad():
        out = lens.model(**kwargs)
    return torch.stack(out.attentions, dim=1).double()


# ---------------------------------------------------------------------------------------------
# the constructed head (no transformers needed)


def test_pitchfork_head_phase_on_both_sides_of_half():
    """Tokens ±v, |v|² = 2, W_QK = I: β_c = 1/2; m = ±s v with s = tanh(2βs) above it."""
    v = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    patient = LensConfig(max_iter=3000)  # critical slowing down near β_c
    below = head_phases(v, eye, eye, 0.45, config=patient)
    above = head_phases(v, eye, eye, 0.7, config=patient)
    assert below.labels == "high-temperature" and above.labels == "ordered"
    assert head_phases(v, eye, eye, 0.55).labels == "ordered"
    # N = 2 < 2d = 4 runs in the span of the states, N = 4 = 2d (each token twice, the same
    # Boltzmann weights) in the full query-key coordinates: same β_c
    doubled = head_phases(v.repeat(2, 1), eye, eye, 0.55)
    assert doubled.labels == "ordered"
    assert float(doubled.critical_beta) == pytest.approx(0.5, rel=1e-2)
    assert float(below.critical_beta) == pytest.approx(0.5, rel=1e-2)
    assert int(above.num_stable) == 2 and int(below.num_states) == 1
    s = 0.9  # s = tanh(2βs) at β = 0.7 by fixed-point iteration of the scalar equation
    for _ in range(500):
        s = math.tanh(1.4 * s)
    expected = s * v
    assert torch.allclose(above.magnetization, expected, atol=1e-5)
    assert torch.allclose(below.magnetization, torch.zeros_like(v), atol=1e-4)


def test_pitchfork_with_biases_and_factored_maps_matches():
    """A rank-2 head W_Q = A, W_K = A⁻ᵀ in D = 2 has W_QK = I: same β_c, same phases."""
    v = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    a = torch.tensor([[2.0, 1.0], [0.5, 1.5]], dtype=torch.float64)
    w_k = torch.linalg.inv(a).T
    b_k = torch.tensor([0.3, -0.7], dtype=torch.float64)  # key bias: a constant per row
    phases = head_phases(v, a, w_k, torch.tensor([0.45, 0.7], dtype=torch.float64), b_k=b_k)
    assert phases.labels == ["high-temperature", "ordered"]
    assert torch.allclose(
        phases.critical_beta, torch.full((2,), 0.5, dtype=torch.float64), rtol=1e-2
    )


def test_importing_spinformer_does_not_import_transformers():
    code = "import sys, spinformer, spinformer.lens, spinformer.cli; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_iter"):
        LensConfig(max_iter=0)
    with pytest.raises(ValueError, match="coverage"):
        LensConfig(coverage=1.5)


# ---------------------------------------------------------------------------------------------
# every family against transformers' eager attention


@needs_transformers
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_attention_equals_transformers_for_every_family(tiny_dirs, family):
    lens = load(tiny_dirs[family])
    assert lens.family.name == family
    ids = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 7:] = False
    result = analyze(lens, ids[0], config=FAST)
    reference = _reference_attention(lens, ids[:1])[0]
    assert result.attention.shape == reference.shape
    assert torch.allclose(result.attention, reference, atol=1e-6)
    batch = analyze(lens, ids.where(mask, lens.pad_token_id), config=FAST)
    assert batch.attention.shape[0] == 2
    # padding: our mask from the right-padded ids; the reference gets the same mask
    ref_batch = _reference_attention(lens, batch.input_ids, batch.mask)
    assert torch.allclose(batch.attention[0], ref_batch[0], atol=1e-6)
    valid = batch.mask[1]
    assert torch.allclose(batch.attention[1][..., valid, :], ref_batch[1][..., valid, :], atol=1e-6)


@needs_transformers
def test_thermodynamics_are_the_ensemble_identities_of_the_attention(tiny_dirs):
    """ln Z from the model's own q·k (logsumexp), S = −Σ α ln α and C = Var_α(ln α) from the
    model's own attention weights: all independent of the lens's path."""
    lens = load(tiny_dirs["bert"])
    ids = torch.randint(0, 50, (1, 9), generator=torch.Generator().manual_seed(5))
    result = analyze(lens, ids[0], config=FAST)
    alpha = _reference_attention(lens, ids)[0]  # (L, H, N, N)
    log_alpha = alpha.log()
    entropy = -(alpha * log_alpha).sum(-1)
    mean = (alpha * log_alpha).sum(-1, keepdim=True)
    heat = (alpha * (log_alpha - mean) ** 2).sum(-1)
    assert torch.allclose(result.entropy, entropy, atol=1e-6)
    assert torch.allclose(result.heat_capacity, heat, atol=1e-5)
    with torch.no_grad():
        hidden = lens.model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer, module in enumerate(lens.family.layers(lens.model)):
        x = hidden[layer][0].double()
        q = module.query.double()(x).reshape(9, 4, 4).transpose(0, 1)
        k = module.key.double()(x).reshape(9, 4, 4).transpose(0, 1)
        module.float()
        log_z = torch.logsumexp(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # β = 1/√4
        assert torch.allclose(result.log_partition[layer], log_z, atol=1e-5)
    assert torch.allclose(result.free_energy * result.beta[..., None], -result.log_partition)
    lhs = result.entropy
    rhs = result.beta[..., None] * (result.energy - result.free_energy)
    assert torch.allclose(lhs, rhs, atol=1e-9)


@needs_transformers
def test_asymmetry_of_a_symmetrised_head_is_zero(tiny_dirs):
    lens = load(tiny_dirs["bert"])
    before = analyze(lens, torch.arange(1, 8), config=FAST).asymmetry
    module = lens.family.layers(lens.model)[1]
    with torch.no_grad():
        module.key.weight.copy_(module.query.weight)  # W_QK = W_Qᵀ W_Q: symmetric, every head
    after = analyze(lens, torch.arange(1, 8), config=FAST).asymmetry
    assert bool((before > 0.1).all())
    assert torch.allclose(after[1], torch.zeros(4, dtype=torch.float64), atol=1e-7)
    assert torch.allclose(after[0], before[0])


@needs_transformers
def test_rope_relative_coupling_reproduces_rotated_scores(tiny_dirs):
    """x_jᵀ J(i − j) x_i equals transformers' own rotated q_i·k_j (no biases in Llama)."""
    import transformers.models.llama.modeling_llama as llama

    lens = load(tiny_dirs["llama"])
    ids = torch.arange(3, 12)[None]
    result = analyze(lens, ids[0], config=FAST)
    layer, head = 1, 3  # key head 1 under grouped-query sharing
    module = lens.family.layers(lens.model)[layer]
    x = result.layer_inputs[layer].float()
    torch.set_grad_enabled(False)
    q = module.q_proj(x).reshape(9, 4, 8).transpose(0, 1)[None]
    k = module.k_proj(x).reshape(9, 2, 8).transpose(0, 1)[None]
    cos, sin = lens.model.model.rotary_emb(x[None], torch.arange(9)[None])
    q_r, k_r = llama.apply_rotary_pos_emb(q, k, cos, sin)
    scores = (q_r[0, head] @ k_r[0, head // 2].T).double()  # (i, j)
    x64 = x.double()
    for i, j in [(5, 2), (8, 0), (4, 4)]:
        coupling = relative_coupling(lens, layer, head, i - j)
        assert float(x64[j] @ coupling @ x64[i]) == pytest.approx(float(scores[i, j]), abs=1e-4)
    norms = torch.stack([relative_coupling(lens, layer, head, dd).norm() for dd in range(9)])
    torch.set_grad_enabled(True)
    assert result.rope_coupling_norm.shape == (2, 4, 9)
    assert torch.allclose(result.rope_coupling_norm[layer, head], norms, rtol=1e-6)


@needs_transformers
def test_loaded_model_object_and_json_export(tiny_dirs):
    import transformers

    model = transformers.AutoModel.from_pretrained(tiny_dirs["bert"], attn_implementation="eager")
    result = analyze(model, [4, 5, 6, 7, 8, 9], config=LensConfig(max_iter=50, num_betas=4))
    plain = json.loads(json.dumps(result.to_dict()))
    assert plain["family"] == "bert" and len(plain["phase_labels"]) == 2
    assert "attention" not in plain and len(plain["entropy"][0][0]) == 6
    labels = {label for row in plain["phase_labels"] for label in row}
    assert labels <= {"high-temperature", "metastable", "ordered"}


# ---------------------------------------------------------------------------------------------
# bad input


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'gpt5'.*minilm, smollm2"):
        load("gpt5")


def test_missing_transformers_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real(name, *a),
    )
    with pytest.raises(ImportError, match=r"spinformer\[lens\]"):
        load(tmp_path)


def test_directory_without_weights_or_config(tmp_path):
    with pytest.raises(ValueError, match=r"no config\.json"):
        load(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="has no weights"):
        load(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "nowhere")


@needs_transformers
def test_unsupported_architecture_names_the_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "opt"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"model_type 'opt'.*bert, gpt2, llama"):
        load(tmp_path)


def test_checksum_mismatch(tmp_path):
    from spinformer.lens import loaders

    path = tmp_path / "weights.bin"
    path.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="checksum mismatch"):
        loaders._check_sha256(path, loaders.MINILM_SHA256, "weights")


@needs_transformers
def test_text_longer_than_context_and_bad_ids(tiny_dirs):
    lens = load(tiny_dirs["bert"])  # context 24
    with pytest.raises(ValueError, match=r"25 tokens, more than the context .* \(24 tokens\)"):
        analyze(lens, list(range(1, 26)), config=FAST)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 50\)"):
        analyze(lens, [1, 2, 99], config=FAST)
    with pytest.raises(ValueError, match="text_or_ids"):
        analyze(lens, torch.ones(3), config=FAST)
    with pytest.raises(ValueError, match="no tokenizer"):
        analyze(lens, "text without a tokenizer", config=FAST)
