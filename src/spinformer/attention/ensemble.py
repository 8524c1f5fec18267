r"""Every attention row is a Boltzmann ensemble over the keys.

For query :math:`i` the states are the keys :math:`j`, with energy :math:`E_{ij} = -\omega_{ij}
= -q_i\cdot k_j` at inverse temperature :math:`\beta` (Bal, "Transformers are secretly
collectives of spin systems", 2021; W_QK = W_Kᵀ W_Q in the ``nn.Linear`` convention
q = x W_Qᵀ, so ω_ij = x_jᵀ W_QK x_i). The attention weights are
the Boltzmann probabilities and the usual thermodynamics follows row by row:

.. math::

    \alpha_{ij} = \frac{g_{ij}\,e^{-\beta E_{ij}}}{Z_i},\qquad
    \ln Z_i = \operatorname{logsumexp}_j(\beta\omega_{ij} + a_{ij}),\qquad
    F_i = -\beta^{-1}\ln Z_i,

.. math::

    U_i = \sum_j \alpha_{ij} E_{ij} = -\partial_\beta \ln Z_i,\qquad
    S_i = \beta(U_i - F_i) = -\sum_j \alpha_{ij}\ln(\alpha_{ij}/g_{ij}),\qquad
    C_i = \beta^2 \operatorname{Var}_{\alpha_i}(E) = \beta^2\,\partial_\beta^2 \ln Z_i,

and the magnetization of any per-key observable is :math:`\langle x\rangle_i = \sum_j \alpha_{ij}
x_j`; with :math:`x_j = k_j` it is :math:`\beta^{-1}\partial\ln Z_i/\partial q_i`.

Masks. A mask enters the exponent *after* the scale, exactly as in
:func:`torch.nn.functional.scaled_dot_product_attention`: an additive mask :math:`a_{ij}` is a
log-degeneracy :math:`g_{ij} = e^{a_{ij}}` of state :math:`j` that does not depend on β, and a
boolean mask (``True`` = the key takes part, SDPA's convention) is :math:`a \in \{0, -\infty\}`.
For boolean masks (and none) the entropy is the Shannon entropy of the weights,
:math:`S_i = -\sum_j \alpha_{ij}\ln\alpha_{ij}`. A row with no allowed key has no ensemble at all;
it is rejected with a ``ValueError`` rather than producing the NaN that softmax gives.

Numerics. Everything is computed from logits shifted by their row maximum, so the entropy and
heat capacity are free of the catastrophic cancellation of :math:`\beta U + \ln Z` and
:math:`\langle E^2\rangle - \langle E\rangle^2` and stay finite and accurate from β = 1e-6 to 1e6.
The same kernel (:func:`boltzmann_rows`) serves :class:`AttentionEnsemble` and the
``need_thermo`` path of :class:`spinformer.nn.BoltzmannAttention`; its fast path,
:func:`spinformer.attention.blocked.blocked_boltzmann_attention`, computes the same moments block
by block and turns them into ln Z, U, S, C with the same :func:`row_terms` and
:func:`row_thermodynamics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cached_property

import torch
from torch import Tensor

from spinformer._validation import as_tensor, check_beta, check_finite, describe

__all__ = [
    "AttentionEnsemble",
    "EnsembleThermodynamics",
    "boltzmann_rows",
    "causal_mask",
    "ensemble",
    "mask_bias",
    "padding_mask",
    "row_terms",
    "row_thermodynamics",
]


@dataclass(frozen=True)
class EnsembleThermodynamics:
    """Thermodynamics of every attention row; each field has shape (*batch, num_queries).

    ``beta`` is broadcast to the same shape. ``entropy`` is β(U − F) (the Shannon entropy of the
    weights for boolean masks), ``heat_capacity`` is β² Var(E).
    """

    log_partition: Tensor
    free_energy: Tensor
    energy: Tensor
    entropy: Tensor
    heat_capacity: Tensor
    beta: Tensor

    def detach(self) -> EnsembleThermodynamics:
        """A copy with every tensor detached from the autograd graph."""
        return EnsembleThermodynamics(
            **{f.name: getattr(self, f.name).detach() for f in fields(self)}
        )


def boltzmann_rows(
    logits: Tensor, bias: Tensor | None, beta: Tensor
) -> tuple[Tensor, EnsembleThermodynamics]:
    """Weights and thermodynamics of rows of ``logits`` = βω (unmasked) with additive ``bias``.

    The internal kernel behind :class:`AttentionEnsemble`; it trusts its inputs (validated
    masks, no fully masked rows). ``beta`` broadcasts to the batch shape ``logits.shape[:-1]``
    after a trailing unit dimension is added, i.e. has shape (*batch, 1) or (*batch, num_queries).
    Returns the weights (same shape as ``logits``) and the thermodynamics.
    """
    full = logits if bias is None else logits + bias
    if full.shape[-1] == 0:  # no states (only valid with no rows): amax has nothing to reduce
        row_max = full.new_zeros(*full.shape[:-1], 1)
    else:
        row_max = full.amax(dim=-1, keepdim=True).detach()
    shifted = full - row_max  # ln(g e^{βω}) - max: exactly 0 at the dominant key
    log_z_shift = torch.logsumexp(shifted, dim=-1, keepdim=True)  # in [0, ln N]
    weights = torch.exp(shifted - log_z_shift)
    # centred energies (times −β): βω_j − max, finite even where the bias is −inf
    centred = shifted if bias is None else logits - row_max
    mean_centred = _row_dot(weights, centred)  # ⟨βω⟩ − max
    deviation = centred - mean_centred.unsqueeze(-1)
    variance = _row_dot(weights, deviation * deviation)  # Var(βω) = β² Var(E)
    terms = row_terms(row_max.squeeze(-1), log_z_shift.squeeze(-1), mean_centred)
    return weights, row_thermodynamics(*terms, variance, beta)


def row_terms(
    row_max: Tensor, log_z_shift: Tensor, mean_centred: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(ln Z, β⟨ω⟩, S) of rows from the moments of their logits shifted by the row maximum.

    With ℓ = βω + a − max: ``log_z_shift`` = ln Σ_j e^ℓ and ``mean_centred`` = ⟨βω⟩ − max, so
    ln Z = max + ln Z', β⟨ω⟩ = max + (⟨βω⟩ − max) and S = ln Z − β⟨ω⟩ = ln Z' − (⟨βω⟩ − max),
    the last without the cancellation of two large terms. Shared by every row kernel.
    """
    log_partition = row_max + log_z_shift
    mean_logit = row_max + mean_centred  # β⟨ω⟩ = −βU
    entropy = log_z_shift - mean_centred  # ln Z − β⟨ω⟩ = β(U − F)
    return log_partition, mean_logit, entropy


def row_thermodynamics(
    log_partition: Tensor, mean_logit: Tensor, entropy: Tensor, variance: Tensor, beta: Tensor
) -> EnsembleThermodynamics:
    """F = −ln Z/β, U = −β⟨ω⟩/β and the rest of :class:`EnsembleThermodynamics` of rows.

    ``variance`` is Var(βω) = β² Var(E) = C; ``beta`` broadcasts to the row shape.
    """
    beta_b = torch.broadcast_to(beta, log_partition.shape)
    return EnsembleThermodynamics(
        log_partition=log_partition,
        free_energy=-log_partition / beta_b,
        energy=-mean_logit / beta_b,
        entropy=entropy,
        heat_capacity=variance,
        beta=beta_b,
    )


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_j a_ij b_ij over the last dim without an elementwise temporary (batched GEMV)."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).squeeze(-1).squeeze(-1)


def causal_mask(
    num_queries: int, num_keys: int | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Boolean (num_queries, num_keys) mask, ``True`` where key j ≤ query i (SDPA's ``is_causal``)."""
    num_keys = num_queries if num_keys is None else num_keys
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: Tensor, num_keys: int) -> Tensor:
    """Boolean (batch, 1, num_keys) mask, ``True`` for the first ``lengths[b]`` keys of sample b."""
    lengths = torch.as_tensor(lengths)
    if lengths.ndim != 1 or lengths.is_floating_point():
        raise ValueError(f"lengths must be a 1-D integer tensor, got shape {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > num_keys).any()):
        raise ValueError(f"lengths must lie in [1, {num_keys}], got {lengths.tolist()}")
    keys = torch.arange(num_keys, device=lengths.device)
    return (keys[None, :] < lengths[:, None]).unsqueeze(-2)


def mask_bias(
    mask: Tensor | None,
    shape: tuple[int, ...] | torch.Size,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
    is_causal: bool = False,
    name: str = "mask",
) -> Tensor | None:
    """Validate ``mask`` against scores of ``shape`` (*batch, Nq, Nk) and return its additive form.

    Boolean masks use SDPA's convention (``True`` = allowed) and become {0, −inf}; float masks
    are added as they are (−inf allowed, NaN and +inf not). ``is_causal`` adds
    :func:`causal_mask`. Raises if the mask does not broadcast to ``shape`` or leaves a row with
    no allowed key. Returns ``None`` when there is nothing to add.
    """
    bias: Tensor | None = None
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(mask).__name__}")
        try:
            torch.broadcast_shapes(mask.shape, tuple(shape))
        except RuntimeError as err:
            raise ValueError(
                f"{name} must broadcast to the score shape {tuple(shape)}, got {tuple(mask.shape)}"
            ) from err
        if mask.ndim > len(shape):
            raise ValueError(
                f"{name} must broadcast to the score shape {tuple(shape)}, got {tuple(mask.shape)}"
            )
        if mask.dtype == torch.bool:
            bias = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(
                ~mask.to(device), float("-inf")
            )
        elif mask.is_floating_point():
            if bool(torch.isnan(mask).any()) or bool((mask == float("inf")).any()):
                raise ValueError(f"{name} must not contain NaN or +inf entries")
            bias = mask.to(dtype=dtype, device=device)
        else:
            raise ValueError(f"{name} must be a boolean or floating tensor, got dtype {mask.dtype}")
    if is_causal:
        causal = torch.zeros(shape[-2], shape[-1], dtype=dtype, device=device).masked_fill(
            ~causal_mask(shape[-2], shape[-1], device), float("-inf")
        )
        bias = causal if bias is None else bias + causal
    if bias is not None and bool((torch.atleast_1d(bias) == float("-inf")).all(dim=-1).any()):
        raise ValueError(f"{name} leaves a query with no key to attend to (a fully masked row)")
    return bias


class _RowObservable:
    """A field of the rows' :class:`EnsembleThermodynamics`, read as an attribute of the ensemble."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, ensemble: AttentionEnsemble | None, owner: type | None = None) -> Tensor:
        if ensemble is None:  # looked up on the class: the descriptor itself (its docstring)
            return self  # type: ignore[return-value]
        return getattr(ensemble._rows[1], self.name)


@dataclass(frozen=True)
class AttentionEnsemble:
    """The Boltzmann ensembles of a batch of attention rows (see the module docstring).

    Attributes:
        scores: ω_ij = q_i·k_j, shape (*batch, num_queries, num_keys); energies are E = −ω.
        beta: inverse temperature, shape (*batch, 1) (broadcast against the rows).
        bias: additive mask (log-degeneracies, −inf = excluded) broadcastable to ``scores``,
            or ``None``.

    Observables are computed on first access and cached.
    """

    scores: Tensor
    beta: Tensor
    bias: Tensor | None = None

    @cached_property
    def _rows(self) -> tuple[Tensor, EnsembleThermodynamics]:
        return boltzmann_rows(self.beta.unsqueeze(-1) * self.scores, self.bias, self.beta)

    @property
    def energies(self) -> Tensor:
        """E_ij = −ω_ij."""
        return -self.scores

    @property
    def weights(self) -> Tensor:
        """α_ij, the Boltzmann probabilities (= attention weights)."""
        return self._rows[0]

    log_partition = _RowObservable("ln Z_i, shape (*batch, num_queries).")
    free_energy = _RowObservable("F_i = −ln Z_i / β.")
    energy = _RowObservable("U_i = Σ_j α_ij E_ij.")
    entropy = _RowObservable("S_i = β(U_i − F_i).")
    heat_capacity = _RowObservable("C_i = β² Var_α(E).")

    def thermodynamics(self) -> EnsembleThermodynamics:
        """All row observables in one result."""
        return self._rows[1]

    def magnetization(self, x: Tensor) -> Tensor:
        """⟨x⟩_i = Σ_j α_ij x_j for per-key vectors ``x`` of shape (*batch, num_keys, D)."""
        if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[-2] != self.scores.shape[-1]:
            raise ValueError(
                f"x must have shape (..., num_keys={self.scores.shape[-1]}, D), got "
                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
            )
        return self.weights.to(x.dtype) @ x


def ensemble(
    q: Tensor,
    k: Tensor,
    beta: Tensor | float,
    mask: Tensor | None = None,
    is_causal: bool = False,
) -> AttentionEnsemble:
    """The Boltzmann ensemble of every query over the keys, E_ij = −q_i·k_j.

    Args:
        q: queries, shape (*batch, num_queries, d).
        k: keys, shape (*batch, num_keys, d) (batch dims broadcast with ``q``'s).
        beta: inverse temperature > 0, a float or a tensor broadcastable to the batch shape
            (e.g. shape (H,) for per-head β with batch (B, H)).
        mask: boolean (``True`` = allowed, SDPA's convention) or additive float mask,
            broadcastable to (*batch, num_queries, num_keys): padding (…, 1, num_keys), causal,
            or arbitrary.
        is_causal: also mask keys j > i.

    >>> q = torch.zeros(1, 3, dtype=torch.float64)
    >>> round(float(ensemble(q, torch.randn(4, 3, dtype=torch.float64), 1.0).entropy), 12)
    1.386294361120
    """
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim < 2:
            raise ValueError(
                f"{name} must be a floating tensor of shape (..., N, d), got {describe(t)}"
            )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same head dimension, got {q.shape[-1]} and {k.shape[-1]}"
        )
    check_finite(q, "q")
    check_finite(k, "k")
    try:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    except RuntimeError as err:
        raise ValueError(
            f"q and k batch shapes must broadcast, got {tuple(q.shape[:-2])} and {tuple(k.shape[:-2])}"
        ) from err
    dtype = torch.promote_types(q.dtype, k.dtype)
    beta_t = as_tensor(beta, "beta", dtype=dtype, device=q.device)
    check_beta(beta_t)
    try:
        beta_b = torch.broadcast_to(beta_t, batch) if beta_t.ndim <= len(batch) else None
    except RuntimeError:
        beta_b = None
    if beta_b is None:
        raise ValueError(
            f"beta must broadcast to the batch shape {tuple(batch)}, got shape {tuple(beta_t.shape)}"
        )
    scores = q.to(dtype) @ k.to(dtype).transpose(-1, -2)
    if scores.shape[-1] == 0 and math.prod(scores.shape[:-1]) > 0:
        raise ValueError(
            "k must hold at least one key: with no keys every query has no key to attend to"
            " (an empty ensemble, like a fully masked row)"
        )
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(
            f"q and k are too large for {dtype}: the scores q·k overflow; rescale them or use"
            " float64"
        )
    bias = mask_bias(mask, scores.shape, dtype, scores.device, is_causal=is_causal)
    return AttentionEnsemble(scores=scores, beta=beta_b.unsqueeze(-1), bias=bias)
