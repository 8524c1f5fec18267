r"""Reading a pretrained transformer as a spin system, head by head, on real text.

One forward pass of the model (``transformers``) with a pre-hook on every attention module
captures each layer's input tokens :math:`x_j` (the spins). Everything else is batched tensor work
over (layer, head), with the functions of :mod:`spinformer.attention`:

* **couplings** (seed 000, "Transformers transformed"): :math:`W_{QK} = W_K^\top W_Q` per head, its
  singular values, its asymmetry :math:`\lVert A\rVert/\lVert W_{QK}\rVert` and the field
  :math:`h = W_K^\top b_Q` (:func:`spinformer.attention.couplings`). With rotary position
  embeddings the score of query :math:`i` and key :math:`j` is
  :math:`x_j^\top W_K^\top R(i-j)\,W_Q x_i`: the coupling depends on the relative position,
  :math:`J(\Delta) = W_K^\top R(\Delta) W_Q` (Su et al., "RoFormer", 2021), of which the lens
  reports :math:`\lVert J(\Delta)\rVert_F` and :func:`relative_coupling` gives the matrix.
* **ensembles** (seed 000, "Back to Boltzmann"): every attention row is a Boltzmann distribution,
  recomputed from the captured tokens, W_Q, W_K, biases, rotations and the model's own β —
  :func:`spinformer.attention.ensemble` gives the weights and ln Z, F, U, S, C per token.
* **self-consistency** (seed 000, "How Boltzmann factors appear"; Ramsauer et al., "Hopfield
  Networks is All You Need", 2020): the head's mean-field map
  :math:`m \mapsto \sum_j x_j\,\mathrm{softmax}_j(\beta\,k_j\cdot q(m))` on the layer's tokens,
  iterated from the tokens (up to ``max_starts`` of them, evenly spaced), and its critical
  :math:`\beta_c`.

The mean-field map in query–key coordinates. The map sees :math:`m` only through the query
:math:`q(m) = W_Q m + b_Q`, and the biases of the keys only shift a row. With the head's states
:math:`y_j = (q_j, k_j) \in \mathbb{R}^{2d}` (queries and keys of the actual tokens) and the
coupling :math:`W' = \begin{pmatrix}0 & 0\\ I & 0\end{pmatrix}`, one has
:math:`y_j^\top W' (q, k) = k_j\cdot q`, and the linear map
:math:`L: m \mapsto (W_Q m + b_Q, W_K m + b_K)` sends the map of the tokens onto the map of the
states, :math:`L f(m) = f'(L m)`; fixed points correspond one to one (:math:`m = \sum_j \alpha_j
x_j`), and the Jacobians :math:`\beta\,\mathrm{Cov}(x) W_K^\top W_Q` and
:math:`\beta L\,\mathrm{Cov}(x) L^\top W'` have the same non-zero eigenvalues (eig(AB) = eig(BA)).
So :func:`spinformer.attention.self_consistent` runs unchanged on 2d-dimensional states instead
of D-dimensional ones (d = head size), biases included. β_c goes one step further, to the query
alone (:func:`spinformer.attention.critical_beta_qk`): the map
:math:`q \mapsto \sum_j q_j\,\mathrm{softmax}_j(\beta k_j\cdot q)` has the Jacobian
:math:`\beta\,\mathrm{Cov}_\alpha(q, k)`, a d×d matrix with the same non-zero spectrum, so
each continuation step is a d-dimensional solve and a d×d eigenproblem for all heads at once. For rotary models this is the coupling at :math:`\Delta = 0` (R(0) = I): the lens
treats the content couplings as the spin system and the rotation as a position-dependent
modulation, reported separately. For a causal model the system holds all the tokens of the text
(the ensemble of the last position).

Phase of a head (criterion). With :math:`\beta` the head's own inverse temperature, :math:`\beta_c`
where the high-temperature branch (continued from the token mean at small β) loses stability, and
the distinct stable attractors reached by iterating the map from the start tokens:

* ``ordered`` (retrieval): :math:`\beta \ge \beta_c` — the high-temperature solution is unstable
  at the head's temperature; the iteration falls into condensed states;
* ``metastable``: :math:`\beta < \beta_c` but more than one stable fixed point coexist;
* ``high-temperature`` (averaging): :math:`\beta < \beta_c` and one stable fixed point.

For tokens :math:`\pm v` with :math:`|v|^2 = 2` and :math:`W_{QK} = I` this is the pitchfork at
:math:`\beta_c = 1/2` (``high-temperature`` below, ``ordered`` above). Ramsauer et al. classify
heads by how many tokens a query averages over: :math:`k_{90}`, the number of largest weights
that hold 90 % of a row, with its median over queries: ``global`` (≥ half the allowed keys),
``single`` (one token), ``subset`` (in between; their metastable states).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from spinformer.attention import (
    couplings,
    critical_beta_qk,
    ensemble,
    mean_field_jacobian,
    padding_mask,
    self_consistent,
    spectral_radius,
)
from spinformer.lens.loaders import LensModel, load

__all__ = [
    "PHASES",
    "RAMSAUER_CLASSES",
    "HeadPhases",
    "LensConfig",
    "LensResult",
    "analyze",
    "head_phases",
    "relative_coupling",
]

PHASES = ("high-temperature", "metastable", "ordered")
RAMSAUER_CLASSES = ("global", "subset", "single")


@dataclass(frozen=True)
class LensConfig:
    """Numerical settings of the mean-field part of :func:`analyze`.

    Attributes:
        mean_field: compute self-consistent states, β_c and phases (the costly part).
        max_starts: the map is iterated from at most this many tokens, evenly spaced along the
            text (all of them when the text is shorter).
        max_iter: Picard iterations of the mean-field map from each start token.
        tol: residual tolerance of the fixed points, relative to the token radius.
        num_betas, bisection_steps: :func:`spinformer.attention.critical_beta`'s continuation
            grid and bisection refinements.
        max_states: stability (spectral radius) is checked at the attractors of the
            ``max_states`` largest basins of each head.
        distinct_tol: states closer than this times the token radius are the same state.
        coverage: the weight mass that defines k (Ramsauer's k for 90 %).
    """

    mean_field: bool = True
    max_starts: int = 32
    max_iter: int = 100
    tol: float = 1e-7
    num_betas: int = 8
    bisection_steps: int = 8
    max_states: int = 2
    distinct_tol: float = 1e-3
    coverage: float = 0.9

    def __post_init__(self) -> None:
        for name in ("max_starts", "max_iter", "num_betas", "bisection_steps", "max_states"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_betas < 2:
            raise ValueError(f"num_betas must be >= 2, got {self.num_betas}")
        for name in ("tol", "distinct_tol"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive float, got {value!r}")
        if not (0 < self.coverage < 1):
            raise ValueError(f"coverage must lie in (0, 1), got {self.coverage!r}")


# ---------------------------------------------------------------------------------------------
# phases of heads


@dataclass(frozen=True)
class HeadPhases:
    """Self-consistent states, β_c and phase of a batch of heads (see the module docstring).

    Attributes:
        magnetization: the state m = Σ_j α_j x_j reached from each start (*batch, S, D).
        converged: whether each iteration converged (*batch, S).
        starts: token positions the iterations started from (S,).
        num_states: distinct converged states per head (*batch).
        num_stable: stable ones (ρ < 1) among the ``max_states`` largest basins (*batch).
        critical_beta: β_c of the high-temperature branch (*batch); ``inf`` if none was found.
        beta: the head's inverse temperature (*batch).
        phase: index into :data:`PHASES` (*batch).
    """

    magnetization: Tensor
    converged: Tensor
    starts: Tensor
    num_states: Tensor
    num_stable: Tensor
    critical_beta: Tensor
    beta: Tensor
    phase: Tensor

    @property
    def labels(self) -> list[Any]:
        """Phase names, nested like ``phase``."""
        return _labels(self.phase, PHASES)


def _labels(codes: Tensor, names: tuple[str, ...]) -> list[Any]:
    return _map_nested(codes.tolist(), lambda c: names[int(c)])


def _map_nested(value: Any, fn: Any) -> Any:
    if isinstance(value, list):
        return [_map_nested(v, fn) for v in value]
    return fn(value)


def _phases_from_states(
    x: Tensor, q: Tensor, k: Tensor, beta: Tensor, config: LensConfig
) -> HeadPhases:
    """Core: tokens x (*batch, N, D), unrotated queries/keys (*batch, N, d), β (*batch)."""
    if q.shape[-2] < 2 * q.shape[-1]:
        try:
            return _phases(x, q, k, beta, config, reduce=True)
        except torch.linalg.LinAlgError:
            # LAPACK's eigensolver occasionally fails to converge on the small reduced
            # Jacobians of real heads; the full 2d×2d problem has the same spectrum
            pass
    return _phases(x, q, k, beta, config, reduce=False)


def _phases(
    x: Tensor, q: Tensor, k: Tensor, beta: Tensor, config: LensConfig, reduce: bool
) -> HeadPhases:
    d = q.shape[-1]
    full_states = torch.cat([q, k], dim=-1)
    full_coupling = full_states.new_zeros(2 * d, 2 * d)
    full_coupling[d:, :d] = torch.eye(d, dtype=q.dtype, device=q.device)
    num_tokens = full_states.shape[-2]
    if reduce:
        # fewer tokens than coordinates: work in an orthonormal basis Q of their span (exact:
        # the map never leaves it, scores are yᵀ Q Qᵀ W' Q Qᵀ m, and the Jacobian keeps its
        # non-zero spectrum), so the eigenproblems are N×N instead of 2d×2d
        basis = torch.linalg.qr(full_states.transpose(-1, -2)).Q  # (…, 2d, N)
        states = full_states @ basis
        coupling = basis.transpose(-1, -2) @ full_coupling @ basis
    else:
        basis, states, coupling = None, full_states, full_coupling
    starts = torch.linspace(0, num_tokens - 1, min(config.max_starts, num_tokens))
    starts = starts.round().long().unique()
    solved = self_consistent(
        states,
        coupling,
        beta,
        init=states[..., starts, :],
        method="picard",
        tol=config.tol,
        max_iter=config.max_iter,
        implicit=False,
        warn=False,
    )
    reduced = solved.magnetization.detach()
    fixed = reduced if basis is None else reduced @ basis.transpose(-1, -2)  # (q(m), k(m))
    converged = solved.converged
    radius = states.norm(dim=-1).amax(dim=-1).clamp_min(torch.finfo(states.dtype).tiny)
    scale = config.distinct_tol * radius
    n = fixed.shape[-2]
    pair_ok = converged.unsqueeze(-1) & converged.unsqueeze(-2)
    close = (torch.cdist(fixed, fixed) <= scale[..., None, None]) & pair_ok
    index = torch.arange(n, device=states.device)
    first = torch.where(close.any(dim=-1), close.to(torch.uint8).argmax(dim=-1), index)
    is_rep = converged & (first == index)
    basin = (first.unsqueeze(-1) == index).logical_and(converged.unsqueeze(-1)).sum(dim=-2)
    basin = torch.where(is_rep, basin, 0)
    top = min(config.max_states, n)
    sizes, reps = basin.topk(top, dim=-1)
    rep_states = reduced.gather(-2, reps.unsqueeze(-1).expand(*reps.shape, reduced.shape[-1]))
    with torch.no_grad():
        rho = spectral_radius(mean_field_jacobian(rep_states, states, coupling, beta))
    num_stable = ((rho < 1) & (sizes > 0)).sum(dim=-1)
    # β_c in query coordinates: d×d Jacobians β Cov_α(q, k), d-dimensional solves
    crit = critical_beta_qk(
        full_states[..., :d],
        full_states[..., d:],
        num_betas=config.num_betas,
        bisection_steps=config.bisection_steps,
        tol=config.tol,
        max_iter=config.max_iter,
    )
    beta_b = torch.broadcast_to(beta, crit.beta.shape)
    phase = torch.where(
        beta_b >= crit.beta,
        2,
        torch.where(num_stable > 1, 1, 0),
    )
    # back to token space: m = Σ_j α_j x_j with α the weights at the fixed point
    weights = torch.softmax(beta_b[..., None, None] * (fixed[..., :d] @ k.transpose(-1, -2)), -1)
    return HeadPhases(
        magnetization=weights @ x,
        converged=converged,
        starts=starts,
        num_states=is_rep.sum(dim=-1),
        num_stable=num_stable,
        critical_beta=crit.beta,
        beta=beta_b,
        phase=phase,
    )


def head_phases(
    x: Tensor,
    w_q: Tensor,
    w_k: Tensor,
    beta: Tensor | float,
    b_q: Tensor | None = None,
    b_k: Tensor | None = None,
    config: LensConfig | None = None,
) -> HeadPhases:
    """Self-consistent states, β_c and phase of heads (W_Q, W_K) on tokens x.

    Args:
        x: tokens (*batch, N, D).
        w_q, w_k: one head's query and key maps (*batch, d, D) (``nn.Linear`` layout).
        beta: the heads' inverse temperature, broadcastable to the batch shape.
        b_q, b_k: biases (*batch, d) or ``None``.
        config: numerical settings (:class:`LensConfig`).

    >>> v = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    >>> eye = torch.eye(2, dtype=torch.float64)
    >>> [head_phases(v, eye, eye, b).labels for b in (0.4, 0.6)]
    ['high-temperature', 'ordered']
    """
    config = LensConfig() if config is None else config
    for name, t in (("x", x), ("w_q", w_q), ("w_k", w_k)):
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim < 2:
            raise ValueError(f"{name} must be a floating tensor with at least 2 dims, got {t!r}")
    if w_q.shape[-2:] != w_k.shape[-2:] or w_q.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"w_q and w_k must both have shape (..., d, {x.shape[-1]}), got {tuple(w_q.shape)}"
            f" and {tuple(w_k.shape)}"
        )
    dtype = x.dtype
    q = torch.einsum("...cd,...nd->...nc", w_q.to(dtype), x)
    k = torch.einsum("...cd,...nd->...nc", w_k.to(dtype), x)
    for name, b, t in (("b_q", b_q, q), ("b_k", b_k, k)):
        if b is None:
            continue
        if not isinstance(b, Tensor) or b.shape[-1] != t.shape[-1]:
            raise ValueError(f"{name} must have shape (..., {t.shape[-1]}), got {b!r}")
    if b_q is not None:
        q = q + b_q.to(dtype).unsqueeze(-2)
    if b_k is not None:
        k = k + b_k.to(dtype).unsqueeze(-2)
    beta_t = torch.as_tensor(beta, dtype=dtype, device=x.device)
    if not bool((beta_t > 0).all()) or not bool(torch.isfinite(beta_t).all()):
        raise ValueError(f"beta must be positive and finite, got {beta!r}")
    try:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], x.shape[:-2], beta_t.shape)
    except RuntimeError as err:
        raise ValueError(
            f"x, w_q, w_k and beta batch shapes must broadcast, got {tuple(x.shape[:-2])},"
            f" {tuple(w_q.shape[:-2])}, {tuple(w_k.shape[:-2])} and {tuple(beta_t.shape)}"
        ) from err
    q, k = q.expand(*batch, *q.shape[-2:]), k.expand(*batch, *k.shape[-2:])
    x_b = x.expand(*batch, *x.shape[-2:])
    return _phases_from_states(x_b, q, k, torch.broadcast_to(beta_t, batch), config)


# ---------------------------------------------------------------------------------------------
# the lens result


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
