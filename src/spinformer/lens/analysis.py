r"""Reading a pretrained transformer as a spin system, head by head, on real text.

One forward pass of the model (``transformers``) with a pre-hook on every attention module
captures each layer's input tokens :math:`x_j` (the spins). Everything else is batched tensor work
over (layer, head), with the functions of :mod:`spinformer.attention`:

* **couplings** (Bal, "Transformers are secretly collectives of spin systems", 2021):
  :math:`W_{QK} = W_K^\top W_Q` per head, its singular values, its asymmetry
  :math:`\lVert A\rVert/\lVert W_{QK}\rVert` and the field :math:`h = W_K^\top b_Q`
  (:func:`spinformer.attention.couplings`). With rotary position embeddings the score of query :math:`i` and key :math:`j` is
  :math:`x_j^\top W_K^\top R(i-j)\,W_Q x_i`: the coupling depends on the relative position,
  :math:`J(\Delta) = W_K^\top R(\Delta) W_Q` (Su et al., "RoFormer", 2021), of which the lens
  reports :math:`\lVert J(\Delta)\rVert_F` and :func:`relative_coupling` gives the matrix.
* **ensembles** (same source): every attention row is a Boltzmann distribution,
  recomputed from the captured tokens, W_Q, W_K, biases, rotations and the model's own β —
  :func:`spinformer.attention.ensemble` gives the weights and ln Z, F, U, S, C per token.
* **self-consistency** (Bal 2021; Ramsauer et al., "Hopfield Networks is All You Need", 2020):
  the head's mean-field map
  :math:`m \mapsto \sum_j x_j\,\mathrm{softmax}_j(\beta\,k_j\cdot q(m))` on the layer's tokens,
  iterated from the tokens (up to ``max_starts`` of them, evenly spaced), and its critical
  :math:`\beta_c`.

The self-consistent states, β_c and the phase label of each head are
:mod:`spinformer.lens.phases`. Ramsauer et al. classify heads by how many tokens a query
averages over: :math:`k_{90}`, the number of largest weights that hold 90 % of a row, with its
median over queries: ``global`` (≥ half the allowed keys), ``single`` (one token), ``subset`` (in between; their metastable states).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from spinformer.attention import couplings, ensemble, padding_mask
from spinformer.lens.loaders import LensModel, load
from spinformer.lens.phases import PHASES as PHASES
from spinformer.lens.phases import (
    HeadPhases,
    LensConfig,
    _labels,
    _map_nested,
    _phases_from_states,
)
from spinformer.lens.phases import head_phases as head_phases

__all__ = [
    "RAMSAUER_CLASSES",
    "LensResult",
    "analyze",
    "relative_coupling",
]

RAMSAUER_CLASSES = ("global", "subset", "single")
"""Ramsauer et al.'s classes of heads, by the median k₉₀ of their rows (module docstring)."""


@dataclass(frozen=True)
class LensResult:
    """Everything the lens measures on one text (or a padded batch of texts).

    Shapes: L layers, H heads, d head size, D model width, N tokens; per-text fields carry a
    leading batch axis B when a batch of texts was analysed.

    Attributes:
        name, family: the model and its adapter family.
        tokens: token strings (a list per text for a batch).
        input_ids: (B?, N); mask: (B?, N) bool, ``True`` for real tokens.
        beta: the heads' inverse temperature (L, H) (the scale the model uses).
        singular_values: spectrum of W_QK, descending (L, H, d).
        asymmetry: ‖A‖_F/‖W_QK‖_F (L, H).
        field_norm: ‖W_Kᵀ b_Q‖ (L, H).
        rope_coupling_norm: ‖J(Δ)‖_F for Δ = 0..N−1 (L, H, N), rotary models only.
        layer_inputs: the captured attention inputs (B?, L, N, D).
        attention: Boltzmann weights recomputed from the couplings (B?, L, H, N, N).
        log_partition, free_energy, energy, entropy, heat_capacity: per token (B?, L, H, N).
        num_keys: keys each query may attend to (B?, N).
        k_coverage: Ramsauer's k (90 % of a row's weight) per token (B?, L, H, N).
        ramsauer: index into :data:`RAMSAUER_CLASSES` per head (B?, L, H).
        magnetization: self-consistent state reached from each start token (B?, L, H, S, D).
        converged: (B?, L, H, S); mean_field_starts: the start positions (S,) of the (first)
            text; num_states, num_stable, critical_beta, phase: (B?, L, H).
        timings: seconds spent per stage.
    """

    name: str
    family: str
    causal: bool
    tokens: list[Any]
    input_ids: Tensor
    mask: Tensor
    beta: Tensor
    singular_values: Tensor
    asymmetry: Tensor
    field_norm: Tensor
    rope_coupling_norm: Tensor | None
    layer_inputs: Tensor
    attention: Tensor
    log_partition: Tensor
    free_energy: Tensor
    energy: Tensor
    entropy: Tensor
    heat_capacity: Tensor
    num_keys: Tensor
    k_coverage: Tensor
    ramsauer: Tensor
    magnetization: Tensor | None = None
    converged: Tensor | None = None
    mean_field_starts: Tensor | None = None
    num_states: Tensor | None = None
    num_stable: Tensor | None = None
    critical_beta: Tensor | None = None
    phase: Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return int(self.beta.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.beta.shape[1])

    @property
    def normalized_entropy(self) -> Tensor:
        """S_i / ln n_i (1 = uniform over the allowed keys); NaN where n_i = 1 or padded."""
        log_n = self.num_keys.to(self.entropy.dtype).log().unsqueeze(-2).unsqueeze(-2)
        valid = (self.num_keys > 1) & self.mask
        ratio = self.entropy / torch.where(log_n > 0, log_n, 1.0)
        return torch.where(valid.unsqueeze(-2).unsqueeze(-2), ratio, torch.nan)

    @property
    def beta_ratio(self) -> Tensor | None:
        """β/β_c per head (≥ 1: ordered); ``None`` without the mean-field part."""
        return None if self.critical_beta is None else self.beta / self.critical_beta

    @property
    def phase_labels(self) -> list[Any] | None:
        return None if self.phase is None else _labels(self.phase, PHASES)

    @property
    def ramsauer_labels(self) -> list[Any]:
        return _labels(self.ramsauer, RAMSAUER_CLASSES)

    def to_dict(self, include_large: bool = False) -> dict[str, Any]:
        """Plain (JSON-serialisable) dict of every number, for reports and ``results.json``.

        The (…, N, N) attention weights, the layer inputs and the (…, N, D) magnetizations are
        left out unless ``include_large`` (store those with safetensors, see
        :meth:`large_tensors`). Infinities and NaNs become ``None``.
        """
        large = set(self.large_tensors()) if not include_large else set()
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in large:
                continue
            value = getattr(self, f.name)
            out[f.name] = _plain(value)
        out["normalized_entropy"] = _plain(self.normalized_entropy)
        out["beta_ratio"] = _plain(self.beta_ratio)
        out["phase_labels"] = self.phase_labels
        out["ramsauer_labels"] = self.ramsauer_labels
        out["phases"] = list(PHASES)
        out["ramsauer_classes"] = list(RAMSAUER_CLASSES)
        return out

    def large_tensors(self) -> dict[str, Tensor]:
        """The big tensors (attention, layer inputs, magnetizations) by name."""
        names = ("attention", "layer_inputs", "magnetization")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or not value.is_floating_point():
            return value.tolist()
        return _map_nested(
            value.detach().double().tolist(), lambda v: v if math.isfinite(v) else None
        )
    return value


# ---------------------------------------------------------------------------------------------
# inputs, capture


def _inputs(lens: LensModel, text_or_ids: Any) -> tuple[Tensor, Tensor, list[list[str]], bool]:
    """(ids (B, N), mask (B, N) bool, tokens per text, batched?) with right padding."""
    batched = True
    if isinstance(text_or_ids, str):
        texts: list[Any] = [text_or_ids]
        batched = False
    elif isinstance(text_or_ids, Tensor):
        if text_or_ids.is_floating_point() or text_or_ids.ndim not in (1, 2):
            raise ValueError(
                "text_or_ids must be text, a list of texts, or integer token ids of shape (N,)"
                f" or (B, N), got a tensor of dtype {text_or_ids.dtype} and shape"
                f" {tuple(text_or_ids.shape)}"
            )
        batched = text_or_ids.ndim == 2
        texts = [row.tolist() for row in text_or_ids.reshape(-1, text_or_ids.shape[-1])]
    elif isinstance(text_or_ids, Sequence) and len(text_or_ids) > 0:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in text_or_ids):
            texts, batched = [list(text_or_ids)], False
        elif all(isinstance(t, str) for t in text_or_ids):
            texts = list(text_or_ids)
        else:
            raise ValueError("text_or_ids must be text, a list of texts, or a list of token ids")
    else:
        raise ValueError(
            "text_or_ids must be text, a list of texts, or integer token ids, got"
            f" {type(text_or_ids).__name__}"
        )
    vocab = int(getattr(lens.model.config, "vocab_size", 0)) or None
    encoded, tokens = [], []
    for item in texts:
        if isinstance(item, str):
            if not item.strip():
                raise ValueError("text_or_ids must contain non-empty text")
            ids, strings = lens.encode(item)
        else:
            ids = [int(i) for i in item]
            strings = lens.token_strings(ids)
        if not ids:
            raise ValueError("text_or_ids must give at least one token")
        if vocab is not None and (min(ids) < 0 or max(ids) >= vocab):
            raise ValueError(f"token ids must lie in [0, {vocab}), got {min(ids)}..{max(ids)}")
        if len(ids) > lens.context_length:
            raise ValueError(
                f"the text has {len(ids)} tokens, more than the context of model"
                f" {lens.name!r} ({lens.context_length} tokens)"
            )
        encoded.append(ids)
        tokens.append(strings)
    n = max(len(ids) for ids in encoded)
    ids_t = torch.full((len(encoded), n), lens.pad_token_id, dtype=torch.long)
    lengths = torch.tensor([len(ids) for ids in encoded])
    for row, ids in enumerate(encoded):
        ids_t[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    mask = padding_mask(lengths, n).squeeze(-2)
    return ids_t, mask, tokens, batched


def _capture(lens: LensModel, ids: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Any]]:
    """One forward pass; each layer's attention input and its keyword arguments (RoPE tables)."""
    inputs: list[Tensor | None] = []
    extras: list[Any] = []
    modules = lens.family.layers(lens.model)
    slots: dict[int, int] = {id(m): i for i, m in enumerate(modules)}
    inputs = [None] * len(modules)
    extras = [None] * len(modules)

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        slot = slots[id(module)]
        hidden = args[0] if args else kwargs["hidden_states"]
        inputs[slot] = hidden.detach()
        extras[slot] = kwargs.get("position_embeddings")

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        with torch.no_grad():
            kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask.long()}
            if lens.family.causal:
                kwargs["use_cache"] = False
            lens.model(**kwargs)
    finally:
        for handle in handles:
            handle.remove()
    if any(t is None for t in inputs):
        raise RuntimeError("a layer's attention module was not called in the forward pass")
    return inputs, extras  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# analysis


def _rotation_matrices(lens: LensModel, num: int, dtype: torch.dtype) -> Tensor:
    """R_Δ (N, d, d) with k_j^R·q_i^R = k_jᵀ R_{i−j} q_i, from the model's own tables."""
    family = lens.family
    assert family.rope_tables is not None and family.rotate is not None
    cos, sin = family.rope_tables(lens.model, torch.arange(num))
    cos, sin = cos.to(dtype), sin.to(dtype)
    d = cos.shape[-1]
    eye = torch.eye(d, dtype=dtype)
    # rows of M(p) = rotate(e_c) = (R(p) e_c)ᵀ, so M(p) = R(p)ᵀ
    rot_t = family.rotate(eye.expand(num, d, d), cos[:, None, :], sin[:, None, :])
    # R_Δ = R(0)ᵀ R(Δ) (exact, including any amplitude scaling of the tables)
    return rot_t[0] @ rot_t.transpose(-1, -2)


def _rope_coupling_norm(lens: LensModel, w_q: Tensor, w_k: Tensor, num: int) -> Tensor:
    """‖J(Δ)‖_F = tr(G_K R_Δ G_Q R_Δᵀ)^½ for Δ = 0..num−1, (L, H, num), without forming R_Δ.

    The adapter's rotation is x ↦ x cos + P x sin with per-coordinate tables (P the fixed
    pairing rotation), and position 0 has sin = 0, so R_Δ = R(0)ᵀ R(Δ) = D_c + D_s P with
    c = cos₀ cos_Δ, s = cos₀ sin_Δ. With G = W Wᵀ (d×d, symmetric), tr(G_K D_x M D_y) =
    Σ_ab (G_K ∘ M)_ab x_a y_b, and R G_Q Rᵀ expands into four such terms.
    """
    family = lens.family
    assert family.rope_tables is not None and family.rotate is not None
    cos, sin = family.rope_tables(lens.model, torch.arange(num))
    cos, sin = cos.to(w_q.dtype), sin.to(w_q.dtype)
    c, s = cos[0] * cos, cos[0] * sin  # (N, d)
    d = cos.shape[-1]
    eye = torch.eye(d, dtype=w_q.dtype)
    pairing = family.rotate(eye, torch.zeros(d, dtype=w_q.dtype), torch.ones(d, dtype=w_q.dtype)).T
    gram_q = w_q @ w_q.transpose(-1, -2)
    gram_k = w_k @ w_k.transpose(-1, -2)

    def term(matrix: Tensor, left: Tensor, right: Tensor) -> Tensor:
        return ((left @ (gram_k * matrix)) * right).sum(dim=-1)

    square = (
        term(gram_q, c, c)
        + term(gram_q @ pairing.T, c, s)
        + term(pairing @ gram_q, s, c)
        + term(pairing @ gram_q @ pairing.T, s, s)
    )
    return square.clamp_min(0).sqrt()


def relative_coupling(model: Any, layer: int, head: int, delta: int) -> Tensor:
    """J(Δ) = W_Kᵀ R(Δ) W_Q (D×D) of one head of a rotary model: x_jᵀ J(i − j) x_i = k_j^R·q_i^R.

    (Biases left out, as in W_QK.) For a model without rotary embeddings J(Δ) = W_QK for all Δ.
    """
    lens = load(model)
    weights = lens.layer_weights()
    if not (0 <= layer < len(weights)):
        raise ValueError(f"layer must lie in [0, {len(weights)}), got {layer}")
    w = weights[layer]
    num_heads = int(w.beta.shape[0])
    if not (0 <= head < num_heads):
        raise ValueError(f"head must lie in [0, {num_heads}), got {head}")
    if isinstance(delta, bool) or not isinstance(delta, int) or delta < 0:
        raise ValueError(f"delta must be a non-negative integer, got {delta!r}")
    d = w.w_q.shape[0] // num_heads
    w_q = w.w_q[head * d : (head + 1) * d].double()
    w_k = w.w_k[head * d : (head + 1) * d].double()
    if not lens.family.rotary:
        return w_k.T @ w_q
    rotation = _rotation_matrices(lens, delta + 1, torch.float64)[delta]
    return w_k.T @ rotation @ w_q


def _k_coverage(weights: Tensor, coverage: float) -> Tensor:
    """Number of largest weights of each row needed to reach ``coverage`` of its mass."""
    ordered = weights.sort(dim=-1, descending=True).values
    below = (ordered.cumsum(dim=-1) < coverage).sum(dim=-1)
    return (below + 1).clamp_max(weights.shape[-1])


def analyze(
    model: Any,
    text_or_ids: str | Sequence[str] | Sequence[int] | Tensor,
    *,
    config: LensConfig | None = None,
    dtype: torch.dtype = torch.float64,
) -> LensResult:
    """Read every head of a pretrained transformer as a spin system on real text.

    Args:
        model: anything :func:`spinformer.lens.load` accepts (``"minilm"``, ``"smollm2"``, a
            local Hugging Face directory, a ``transformers`` model, a :class:`LensModel`).
        text_or_ids: a text, a list of texts (padded on the right into a batch), or token ids
            (N,) / (B, N).
        config: settings of the mean-field part (:class:`LensConfig`).
        dtype: floating dtype of the lens computation (the model runs in its own).

    Returns:
        A :class:`LensResult` (see the module docstring for the physics and the phase criterion).
    """
    config = LensConfig() if config is None else config
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    lens = load(model)
    ids, mask, tokens, batched = _inputs(lens, text_or_ids)
    captured, extras = _capture(lens, ids, mask)
    timings["forward"] = time.perf_counter() - start
    start = time.perf_counter()
    family = lens.family
    layer_weights = lens.layer_weights()
    num_layers = len(layer_weights)
    num_heads = int(layer_weights[0].beta.shape[0])
    x = torch.stack(captured, dim=1).to(dtype)  # (B, L, N, D)
    layer_couplings = [
        couplings(w.w_q.to(dtype), w.w_k.to(dtype), num_heads, w.b_q, w.b_k, w.beta.to(dtype))
        for w in layer_weights
    ]
    w_q = torch.stack([c.w_q for c in layer_couplings])  # (L, H, d, D)
    w_k = torch.stack([c.w_k for c in layer_couplings])
    d = w_q.shape[-2]
    zeros = w_q.new_zeros(num_layers, num_heads, d)
    b_q = torch.stack([zeros[0] if c.b_q is None else c.b_q for c in layer_couplings])
    b_k = torch.stack([zeros[0] if c.b_k is None else c.b_k for c in layer_couplings])
    beta = torch.stack([c.beta for c in layer_couplings])  # (L, H)
    singular_values = torch.stack([c.singular_values[..., :d] for c in layer_couplings])
    asymmetry = torch.stack([c.asymmetry for c in layer_couplings])
    field_norm = torch.stack([c.field.norm(dim=-1) for c in layer_couplings])
    timings["couplings"] = time.perf_counter() - start
    start = time.perf_counter()

    q = torch.einsum("lhcd,blnd->blhnc", w_q, x) + b_q[None, :, :, None, :]
    k = torch.einsum("lhcd,blnd->blhnc", w_k, x) + b_k[None, :, :, None, :]
    q_r, k_r = q, k
    n = ids.shape[-1]
    rope_norm = None
    if family.rotate is not None:
        cos = torch.stack([e[0] for e in extras], dim=1).to(dtype)[:, :, None]  # (B, L, 1, N, d)
        sin = torch.stack([e[1] for e in extras], dim=1).to(dtype)[:, :, None]
        q_r, k_r = family.rotate(q, cos, sin), family.rotate(k, cos, sin)
        rope_norm = _rope_coupling_norm(lens, w_q, w_k, n)
    key_mask = mask[:, None, None, None, :] if not bool(mask.all()) else None
    ens = ensemble(q_r, k_r, beta, mask=key_mask, is_causal=family.causal)
    weights = ens.weights
    thermo = ens.thermodynamics()
    positions = torch.arange(n)
    lengths = mask.sum(dim=-1, keepdim=True)
    num_keys = torch.minimum(positions + 1, lengths) if family.causal else lengths.expand(-1, n)
    k_cov = _k_coverage(weights, config.coverage)
    valid_q = mask[:, None, None, :]
    k_med = torch.where(valid_q, k_cov.to(dtype), torch.nan).nanmedian(dim=-1).values
    frac = torch.where(valid_q, k_cov.to(dtype) / num_keys[:, None, None, :], torch.nan)
    frac_med = frac.nanmedian(dim=-1).values
    ramsauer = torch.where(frac_med >= 0.5, 0, torch.where(k_med <= 1, 2, 1))
    timings["ensembles"] = time.perf_counter() - start
    start = time.perf_counter()

    phases: list[HeadPhases] = []
    if config.mean_field:
        for row in range(ids.shape[0]):  # texts differ in length; heads and layers are batched
            length = int(lengths[row])
            phases.append(
                _phases_from_states(
                    x[row, :, None, :length].expand(-1, num_heads, -1, -1),
                    q[row, :, :, :length],
                    k[row, :, :, :length],
                    beta,
                    config,
                )
            )
    timings["mean_field"] = time.perf_counter() - start

    def batch_out(t: Tensor) -> Tensor:
        return t if batched else t[0]

    def stack_phases(name: str, pad_value: float | bool) -> Tensor | None:
        if not phases:
            return None
        axis = {"magnetization": -2, "converged": -1}.get(name)
        parts = []
        size = max(getattr(p, name).shape[axis] for p in phases) if axis is not None else 0
        for p in phases:
            t = getattr(p, name)
            if axis is not None and t.shape[axis] < size:  # shorter texts of a batch: pad starts
                pad_shape = list(t.shape)
                pad_shape[axis] = size - t.shape[axis]
                t = torch.cat([t, torch.full(pad_shape, pad_value, dtype=t.dtype)], dim=axis)
            parts.append(t)
        return batch_out(torch.stack(parts))

    return LensResult(
        name=lens.name,
        family=family.name,
        causal=family.causal,
        tokens=tokens if batched else tokens[0],
        input_ids=batch_out(ids),
        mask=batch_out(mask),
        beta=beta,
        singular_values=singular_values,
        asymmetry=asymmetry,
        field_norm=field_norm,
        rope_coupling_norm=rope_norm,
        layer_inputs=batch_out(x),
        attention=batch_out(weights),
        log_partition=batch_out(thermo.log_partition),
        free_energy=batch_out(thermo.free_energy),
        energy=batch_out(thermo.energy),
        entropy=batch_out(thermo.entropy),
        heat_capacity=batch_out(thermo.heat_capacity),
        num_keys=batch_out(num_keys),
        k_coverage=batch_out(k_cov),
        ramsauer=batch_out(ramsauer),
        magnetization=stack_phases("magnetization", math.nan),
        converged=stack_phases("converged", False),
        mean_field_starts=phases[0].starts if phases else None,
        num_states=stack_phases("num_states", 0),
        num_stable=stack_phases("num_stable", 0),
        critical_beta=stack_phases("critical_beta", math.nan),
        phase=stack_phases("phase", 0),
        timings=timings,
    )
