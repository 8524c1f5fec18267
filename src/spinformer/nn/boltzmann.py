r"""``BoltzmannAttention``: ``nn.MultiheadAttention`` whose temperature and thermodynamics are visible.

Each head h and query i is a Boltzmann ensemble over the keys (Bal, "Transformers are secretly
collectives of spin systems", 2021; :mod:`spinformer.attention.ensemble`):
:math:`\alpha_{ij} = e^{\beta_h q_i\cdot k_j + a_{ij}}/Z_i` with masks :math:`a_{ij}`, and the
output is the out-projection of the magnetizations :math:`z_i = \sum_j \alpha_{ij} v_j =
W_V\langle x\rangle_i` (+ bias). The scale of the dot products is the inverse temperature
:math:`\beta` -- by default torch's :math:`1/\sqrt{d_\text{head}}` -- and here it is a value of its
own: a float, one per head, or learnable (``learn_beta``, as :math:`\ln\beta`: stays positive).

Drop-in. Parameter names, shapes, initialization, call signature, masks (boolean ``True`` =
excluded, or additive), ``need_weights``/``average_attn_weights``, ``is_causal``, unbatched
inputs and the return value are those of ``torch.nn.MultiheadAttention``; the state dict of one
loads into the other (plus our ``head_beta``/``log_beta``), and :meth:`BoltzmannAttention.from_torch`
copies a torch module. ``key`` and ``value`` default to the query (self-attention).
``add_bias_kv`` and ``add_zero_attn`` are not offered.

Cost. Without ``need_weights`` and ``need_thermo`` the forward pass is
``F.scaled_dot_product_attention`` with ``scale`` = β (a per-head or learnable β is folded into
the queries and the scale is 1), i.e. torch's fused attention. ``need_thermo=True`` returns,
additionally, the :class:`~spinformer.attention.EnsembleThermodynamics` (ln Z, F, U, S, C) of
every head and query. Without ``need_weights`` (and without dropout) they come with the output
from :func:`spinformer.attention.blocked_boltzmann_attention`, which forms the scores a
cache-sized block at a time and recomputes them in the backward pass, so no (B, H, L, S)
tensor is ever stored; with ``need_weights`` the weights are formed anyway and the
thermodynamics are computed from them (:func:`spinformer.attention.boltzmann_rows`). With
dropout in training mode the thermodynamics describe the Boltzmann distribution before dropout.

Deliberate differences from torch, all of them errors where torch returns a number that means
nothing: a query whose keys are all masked, or that has no key at all (S = 0; torch returns the
output bias), raises ``ValueError`` (torch returns NaN), and so do non-finite inputs, inputs whose
dtype is not the module's, and inputs so large that the output overflows. ``is_causal=True``
with an ``attn_mask`` is, in torch, a hint that the mask *is* the causal mask, and torch's
result depends on the code path when the hint is wrong (the fused path applies the causal mask,
the weights path the given one); here the hint is checked, so every path gives torch's result or
a ``ValueError``. ``is_causal=True`` alone applies the causal mask (torch requires the mask). These
checks cost one reduction per distinct input, one over the output and one over the merged mask,
each with a host sync (on a GPU).

Precision. With ``need_thermo`` and half-precision inputs the scores, weights and statistics are
accumulated in float32 and the thermodynamics are returned in float32: F = −ln Z/β at small β and
β² Var(E) of large scores are outside float16's range (±65504).

Loading. :meth:`~torch.nn.Module.load_state_dict` checks β (positive, finite) before anything is
copied and restores the previous state if any part of the load fails, so a rejected state dict
leaves the module as it was (including the cached β of the fused path).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinformer._validation import all_finite, as_tensor, check_beta, check_finite, describe
from spinformer.attention import (
    EnsembleThermodynamics,
    blocked_boltzmann_attention,
    boltzmann_rows,
)

__all__ = ["BoltzmannAttention"]


class BoltzmannAttention(nn.Module):
    """Multi-head attention as per-head Boltzmann ensembles at inverse temperature β.

    Args:
        embed_dim: model dimension D (of the queries and of the output).
        num_heads: number of heads H; must divide ``embed_dim``.
        dropout: dropout probability on the attention weights (training only).
        bias: add biases to the input and output projections.
        kdim, vdim: dimensions of keys and values (default ``embed_dim``).
        batch_first: inputs are (batch, seq, feature) (default, unlike torch's default).
        beta: inverse temperature: ``None`` (1/√d_head), a positive float, or a per-head
            tensor of shape (H,).
        learn_beta: make β a trainable parameter (stored as ``log_beta``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = True,
        beta: float | Tensor | None = None,
        learn_beta: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(
                f"num_heads must divide embed_dim, got embed_dim={embed_dim}, num_heads={num_heads}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        for name, value in (("kdim", self.kdim), ("vdim", self.vdim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = float(dropout)
        self.batch_first = batch_first
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        beta_heads = self._beta_heads(beta, factory)
        self.learn_beta = bool(learn_beta)
        if self.learn_beta:
            self.log_beta = nn.Parameter(beta_heads.log())
            self.register_buffer("head_beta", None)
        else:
            self.register_parameter("log_beta", None)
            self.register_buffer("head_beta", beta_heads)
        self._uniform_beta: float | None = None
        self._refresh_uniform_beta()
        self.register_load_state_dict_post_hook(_after_load)
        self._reset_parameters()

    # ----------------------------------------------------------------------------- parameters

    def _beta_heads(self, beta: float | Tensor | None, factory: dict[str, Any]) -> Tensor:
        dtype = factory["dtype"] or torch.get_default_dtype()
        if beta is None:
            return torch.full(
                (self.num_heads,),
                1.0 / math.sqrt(self.head_dim),
                dtype=dtype,
                device=factory["device"],
            )
        beta_t = as_tensor(beta, "beta", dtype=dtype, device=factory["device"]).detach()
        check_beta(beta_t)
        if beta_t.ndim > 1 or (beta_t.ndim == 1 and beta_t.shape[0] not in (1, self.num_heads)):
            raise ValueError(
                f"beta must be a float or have shape ({self.num_heads},), got {tuple(beta_t.shape)}"
            )
        return beta_t.expand(self.num_heads).clone()

    def _refresh_uniform_beta(self) -> None:
        """Cache β as a Python float when it is fixed and equal on all heads (no sync per call)."""
        if self.learn_beta or self.head_beta is None:
            self._uniform_beta = None
            return
        check_beta(self.head_beta, "head_beta")
        first = float(self.head_beta[0])
        self._uniform_beta = first if bool((self.head_beta == first).all()) else None

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)

    @property
    def beta(self) -> Tensor:
        """Inverse temperature per head, shape (H,) (differentiable when ``learn_beta``)."""
        return self.log_beta.exp() if self.learn_beta else self.head_beta

    def set_beta(self, beta: float | Tensor | None) -> None:
        """Set β (``None``: 1/√d_head) without touching the weights."""
        factory = {"device": self.out_proj.weight.device, "dtype": self.out_proj.weight.dtype}
        beta_heads = self._beta_heads(beta, factory)
        with torch.no_grad():
            if self.learn_beta:
                self.log_beta.copy_(beta_heads.log())
            else:
                self.head_beta.copy_(beta_heads)
        self._refresh_uniform_beta()

    @classmethod
    def from_torch(
        cls,
        module: nn.MultiheadAttention,
        beta: float | Tensor | None = None,
        learn_beta: bool = False,
        batch_first: bool | None = None,
    ) -> BoltzmannAttention:
        """A :class:`BoltzmannAttention` with ``module``'s weights (β default 1/√d_head, as torch).

        ``batch_first`` defaults to the torch module's own setting.
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise ValueError(
                f"module must be a torch.nn.MultiheadAttention, got {type(module).__name__}"
            )
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("module must not use add_bias_kv or add_zero_attn")
        for name, parameter in module.named_parameters():
            check_finite(parameter.detach(), f"module.{name}")
        weight = module.out_proj.weight
        new = cls(
            module.embed_dim,
            module.num_heads,
            dropout=module.dropout,
            bias=module.in_proj_bias is not None,
            kdim=module.kdim,
            vdim=module.vdim,
            batch_first=module.batch_first if batch_first is None else batch_first,
            beta=beta,
            learn_beta=learn_beta,
            device=weight.device,
            dtype=weight.dtype,
        )
        result = new.load_state_dict(module.state_dict(), strict=False)
        if result.unexpected_keys or set(result.missing_keys) - {"head_beta", "log_beta"}:
            raise ValueError(
                f"module's parameters do not match: missing {result.missing_keys},"
                f" unexpected {result.unexpected_keys}"
            )
        new.train(module.training)
        return new

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Check β in ``state_dict`` before torch copies anything into this module."""
        for key in ("head_beta", "log_beta"):
            value = state_dict.get(prefix + key)
            if isinstance(value, Tensor):
                name = f"state_dict[{prefix + key!r}]"
                if key == "head_beta":
                    check_beta(value.detach(), name)
                else:
                    check_finite(value.detach(), name)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """:meth:`torch.nn.Module.load_state_dict`, all or nothing: on any error the previous
        parameters and buffers are restored before the error propagates."""
        backup = {key: value.detach().clone() for key, value in self.state_dict().items()}
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except BaseException:
            super().load_state_dict(backup, strict=True, assign=assign)
            raise

    def extra_repr(self) -> str:
        beta = self._uniform_beta if self._uniform_beta is not None else "per-head"
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kdim={self.kdim},"
            f" vdim={self.vdim}, dropout={self.dropout}, beta={beta}, learn_beta={self.learn_beta},"
            f" batch_first={self.batch_first}"
        )

    # ----------------------------------------------------------------------------- forward

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values in the inputs' dtype (the parameters cast if it differs)."""
        e = self.embed_dim
        b = _cast(self.in_proj_bias, query.dtype)
        b_q, b_k, b_v = (None, None, None) if b is None else (b[:e], b[e : 2 * e], b[2 * e :])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight.to(query.dtype)
            if key is query and value is query:
                return F.linear(query, w, b).chunk(3, dim=-1)  # type: ignore[return-value]
            if key is value:
                b_kv = None if b is None else b[e:]
                k, v = F.linear(key, w[e:], b_kv).chunk(2, dim=-1)
                return F.linear(query, w[:e], b_q), k, v
            return (
                F.linear(query, w[:e], b_q),
                F.linear(key, w[e : 2 * e], b_k),
                F.linear(value, w[2 * e :], b_v),
            )
        return (
            F.linear(query, self.q_proj_weight.to(query.dtype), b_q),
            F.linear(key, self.k_proj_weight.to(query.dtype), b_k),
            F.linear(value, self.v_proj_weight.to(query.dtype), b_v),
        )

    def _check_causal_hint(self, attn_mask: Tensor, batch: int, tgt: int, src: int) -> None:
        """``is_causal`` with ``attn_mask``: torch's hint that the mask is the causal mask; check it.

        Torch's fused path applies the causal mask and its weights path the given mask, so a
        wrong hint would make the output depend on ``need_weights``.
        """
        if attn_mask.shape not in ((tgt, src), (batch * self.num_heads, tgt, src)):
            raise ValueError(
                f"attn_mask must have shape (target, source) = {(tgt, src)} or"
                f" (batch*num_heads, target, source) = {(batch * self.num_heads, tgt, src)},"
                f" got {tuple(attn_mask.shape)}"
            )
        excluded = ~torch.ones(tgt, src, dtype=torch.bool, device=attn_mask.device).tril()
        if attn_mask.dtype == torch.bool:
            expected = excluded
        else:
            expected = torch.zeros(tgt, src, dtype=attn_mask.dtype, device=attn_mask.device)
            expected = expected.masked_fill(excluded, float("-inf"))
        if not bool((attn_mask == expected).all()):
            raise ValueError(
                "is_causal=True says that attn_mask is the causal mask (torch's hint), but"
                " attn_mask is not the causal mask (True, or -inf, exactly above the diagonal);"
                " pass is_causal=False to apply attn_mask as given, or attn_mask=None with"
                " is_causal=True for the causal mask"
            )

    def _mask(
        self,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
        is_causal: bool,
        shape: tuple[int, int, int],
        dtype: torch.dtype,
        device: torch.device,
    ) -> Tensor | None:
        """MHA's masks (``True`` = excluded, or additive) → one additive (B, 1|H, L, S) bias."""
        batch, tgt, src = shape
        heads = self.num_heads
        bias: Tensor | None = None
        if key_padding_mask is not None:
            if key_padding_mask.shape != (batch, src):
                raise ValueError(
                    f"key_padding_mask must have shape (batch, source) = {(batch, src)},"
                    f" got {tuple(key_padding_mask.shape)}"
                )
            bias = _additive(key_padding_mask, "key_padding_mask", dtype, device)[:, None, None, :]
        if attn_mask is not None:
            if attn_mask.shape == (tgt, src):
                mask = _additive(attn_mask, "attn_mask", dtype, device)[None, None]
            elif attn_mask.shape == (batch * heads, tgt, src):
                mask = _additive(attn_mask, "attn_mask", dtype, device).view(batch, heads, tgt, src)
            else:
                raise ValueError(
                    f"attn_mask must have shape (target, source) = {(tgt, src)} or"
                    f" (batch*num_heads, target, source) = {(batch * heads, tgt, src)},"
                    f" got {tuple(attn_mask.shape)}"
                )
            bias = mask if bias is None else bias + mask
        elif is_causal:
            causal = torch.zeros(tgt, src, dtype=dtype, device=device).masked_fill(
                ~torch.ones(tgt, src, dtype=torch.bool, device=device).tril(), float("-inf")
            )
            bias = causal[None, None] if bias is None else bias + causal
        if bias is not None and bool((bias == float("-inf")).all(dim=-1).any()):
            raise ValueError(
                "the masks leave a query with no key to attend to (a fully masked row);"
                " torch would return NaN there"
            )
        return bias

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        need_thermo: bool = False,
    ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, EnsembleThermodynamics]:
        """Attention output and (optionally) weights, exactly as ``nn.MultiheadAttention``.

        Args mirror torch's: ``query`` (B, L, D) (or (L, D) unbatched; (L, B, D) when not
        ``batch_first``), ``key`` (B, S, kdim) and ``value`` (B, S, vdim) default to the query
        (value to the key), ``key_padding_mask`` (B, S), ``attn_mask`` (L, S) or (B·H, L, S),
        boolean (``True`` = not allowed) or additive; ``is_causal`` masks keys j > i (when an
        ``attn_mask`` is given it is torch's hint that the mask is the causal mask, and a
        ``ValueError`` if it is not). Empty batches or query sets give empty outputs, as in
        torch; a query with no key (S = 0) is an error.

        Returns ``(output, weights)`` with weights (B, L, S) averaged over heads, (B, H, L, S)
        with ``average_attn_weights=False``, or ``None`` without ``need_weights``; with
        ``need_thermo=True`` a third element, the thermodynamics of shape (B, H, L).
        """
        if key is None:
            key = query
        if value is None:
            value = key
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim not in (2, 3):
                raise ValueError(f"{name} must be a floating 2-D or 3-D tensor, got {describe(t)}")
        batched = query.ndim == 3
        if key.ndim != query.ndim or value.ndim != query.ndim:
            raise ValueError(
                f"query, key and value must all be batched or all unbatched, got {query.ndim}-D,"
                f" {key.ndim}-D and {value.ndim}-D"
            )
        if not batched:
            query, key, value = _unsqueeze_same(query, key, value)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = _transpose_same(query, key, value)
        dtype = self.out_proj.weight.dtype
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dtype != dtype:
                raise ValueError(
                    f"{name} must have the module's dtype {dtype}, got {t.dtype}; convert the"
                    f" input ({name}.to({dtype})) or the module (module.to({t.dtype}))"
                )
        batch, tgt, dim = query.shape
        src = key.shape[1]
        if dim != self.embed_dim:
            raise ValueError(f"query must have feature size embed_dim={self.embed_dim}, got {dim}")
        if key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            raise ValueError(
                f"key and value must have feature sizes kdim={self.kdim} and vdim={self.vdim},"
                f" got {key.shape[-1]} and {value.shape[-1]}"
            )
        if key.shape[:2] != (batch, src) or value.shape[:2] != (batch, src):
            raise ValueError(
                f"key and value must have shape (batch={batch}, source, ·) with the same source"
                f" length, got {tuple(key.shape)} and {tuple(value.shape)}"
            )
        if src == 0 and batch * tgt > 0:
            raise ValueError(
                "key and value must hold at least one token: with S = 0 every query has no key to"
                " attend to (a fully masked row; torch returns the output bias there)"
            )
        check_finite(query, "query")
        if key is not query:
            check_finite(key, "key")
        if value is not key and value is not query:
            check_finite(value, "value")
        if is_causal and attn_mask is not None:
            self._check_causal_hint(attn_mask, batch, tgt, src)
        # half precision: the statistics of need_thermo are accumulated in float32
        if need_thermo and dtype in (torch.float16, torch.bfloat16):
            query, key, value = _cast_same(query, key, value, torch.float32)
        q, k, v = self._project(query, key, value)
        heads, head_dim = self.num_heads, self.head_dim
        q = q.view(batch, tgt, heads, head_dim).transpose(1, 2)
        k = k.view(batch, src, heads, head_dim).transpose(1, 2)
        v = v.view(batch, src, heads, head_dim).transpose(1, 2)
        scale = self._uniform_beta
        if scale is None:
            q = q * self.beta.to(q.dtype).view(1, heads, 1, 1)
            scale = 1.0
        dropout_p = self.dropout if self.training else 0.0
        causal_hint = is_causal and key_padding_mask is None and not (need_weights or need_thermo)
        bias = self._mask(
            key_padding_mask,
            None if causal_hint else attn_mask,
            is_causal and not causal_hint,
            (batch, tgt, src),
            q.dtype,
            q.device,
        )
        thermo: EnsembleThermodynamics | None = None
        weights: Tensor | None = None
        if not (need_weights or need_thermo):
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=dropout_p, is_causal=causal_hint, scale=scale
            )
        else:
            beta = self.beta.to(q.dtype).view(heads, 1)
            if need_thermo and not need_weights and dropout_p == 0.0 and _no_grad(bias):
                out, thermo = blocked_boltzmann_attention(q, k, v, beta, bias, scale)
            else:
                logits = (q * scale if scale != 1.0 else q) @ k.transpose(-1, -2)
                if need_thermo:
                    weights, thermo = boltzmann_rows(logits, bias, beta)
                else:
                    weights = torch.softmax(logits if bias is None else logits + bias, dim=-1)
                del logits  # release the scores before the value product (peak memory)
                if dropout_p > 0.0:
                    weights = F.dropout(weights, p=dropout_p)
                out = weights @ v
        out = out.transpose(1, 2).reshape(batch, tgt, self.embed_dim)
        if out.dtype == dtype:
            out = self.out_proj(out)
        else:  # the float32 statistics path of a half-precision module
            out = F.linear(out, self.out_proj.weight.float(), _cast(self.out_proj.bias, out.dtype))
        if not all_finite(out.detach()):
            raise ValueError(
                f"query, key and value are too large for {dtype}: the attention output overflows"
                " (non-finite for finite inputs); rescale them or use a wider dtype"
            )
        out = out.to(dtype)
        returned: Tensor | None = None
        if need_weights and weights is not None:
            returned = weights.mean(dim=1) if average_attn_weights else weights
            returned = returned.to(dtype)
        if not batched:
            out = out.squeeze(0)
            returned = None if returned is None else returned.squeeze(0)
            if thermo is not None:
                thermo = _squeeze_thermo(thermo)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if thermo is not None:
            return out, returned, thermo
        return out, returned


def _after_load(module: BoltzmannAttention, incompatible_keys: Any) -> None:
    module._refresh_uniform_beta()


def _no_grad(bias: Tensor | None) -> bool:
    """The mask needs no gradient (the blocked kernel gives it none)."""
    return bias is None or not (torch.is_grad_enabled() and bias.requires_grad)


def _additive(mask: Tensor, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(
            mask.to(device), float("-inf")
        )
    if not mask.is_floating_point():
        raise ValueError(f"{name} must be a boolean or floating tensor, got dtype {mask.dtype}")
    if bool(torch.isnan(mask).any()) or bool((mask == float("inf")).any()):
        raise ValueError(f"{name} must not contain NaN or +inf entries")
    return mask.to(dtype=dtype, device=device)


def _cast(tensor: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if tensor is None else tensor.to(dtype)


def _cast_same(
    query: Tensor, key: Tensor, value: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """Cast to ``dtype``, keeping identical inputs identical (self-attention uses one projection)."""
    q = query.to(dtype)
    k = q if key is query else key.to(dtype)
    v = q if value is query else (k if value is key else value.to(dtype))
    return q, k, v


def _unsqueeze_same(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Add a batch dim, keeping identical inputs identical (self-attention uses one projection)."""
    q = query.unsqueeze(0)
    k = q if key is query else key.unsqueeze(0)
    v = q if value is query else (k if value is key else value.unsqueeze(0))
    return q, k, v


def _transpose_same(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    q = query.transpose(0, 1)
    k = q if key is query else key.transpose(0, 1)
    v = q if value is query else (k if value is key else value.transpose(0, 1))
    return q, k, v


def _squeeze_thermo(thermo: EnsembleThermodynamics) -> EnsembleThermodynamics:
    return EnsembleThermodynamics(
        log_partition=thermo.log_partition.squeeze(0),
        free_energy=thermo.free_energy.squeeze(0),
        energy=thermo.energy.squeeze(0),
        entropy=thermo.entropy.squeeze(0),
        heat_capacity=thermo.heat_capacity.squeeze(0),
        beta=thermo.beta.squeeze(0),
    )
