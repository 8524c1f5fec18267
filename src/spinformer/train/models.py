"""The model a training config selects: a :class:`~spinformer.nn.SpinTransformer` stack whose
block is the config's ``model`` key, everything else (embeddings, final norm, head) shared, so
a comparison between kinds changes one thing only.

``MODELS`` maps each kind to the ``SpinTransformerConfig`` fields it sets; ``"boltzmann"`` is the
reference block's attention replaced by :class:`~spinformer.nn.BoltzmannAttention` (attention
rows as Boltzmann ensembles at inverse temperature β, β = 1/√d_head unless learned) inside the
pre-norm residual :class:`~spinformer.nn.AttentionBlock` with its MLP.
"""

from __future__ import annotations

from torch import Tensor, nn

from spinformer.nn import (
    AttentionBlock,
    BlockState,
    BoltzmannAttention,
    SpinTransformer,
    SpinTransformerConfig,
)
from spinformer.train.config import ConfigError, TrainConfig
from spinformer.train.tasks import Task

__all__ = ["MODELS", "BoltzmannSelfAttention", "build_model", "parameter_count"]

#: config ``model`` -> the SpinTransformer block it runs.
MODELS: dict[str, str] = {
    "transformer": "transformer",
    "boltzmann": "transformer",  # blocks replaced by BoltzmannAttention blocks below
    "mean_field": "mean_field",
    "spin": "spin",
    "free_energy": "free_energy",
}


class BoltzmannSelfAttention(nn.Module):
    """:class:`BoltzmannAttention` as causal/non-causal self-attention with the block interface
    ``(x, padding_mask, return_state)`` of the spin modules (padding_mask True = real token)."""

    def __init__(self, d_model: int, n_heads: int, causal: bool, learn_beta: bool) -> None:
        super().__init__()
        self.causal = causal
        self.attention = BoltzmannAttention(d_model, n_heads, learn_beta=learn_beta)

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, BlockState]:
        key_padding = None if padding_mask is None else ~padding_mask.bool()
        out, _ = self.attention(
            x, key_padding_mask=key_padding, need_weights=False, is_causal=self.causal
        )
        return (out, BlockState(None, None)) if return_state else out


def build_model(config: TrainConfig, task: Task) -> SpinTransformer:
    """The stack for ``config.model`` on ``task`` (vocabulary, length and head from the task).

    A size the block rejects (e.g. ``d_model`` not a multiple of ``n_heads``) is a
    :class:`ConfigError` naming the model.
    """
    try:
        return _build(config, task)
    except ValueError as err:
        raise ConfigError(
            f"model {config.model!r} cannot be built from this config: {err}"
        ) from err


def _build(config: TrainConfig, task: Task) -> SpinTransformer:
    model_config = SpinTransformerConfig(
        vocab_size=task.vocab_size,
        max_len=task.seq_len,
        d_model=config.d_model,
        n_heads=config.n_heads,
        n_layers=config.n_layers,
        block=MODELS[config.model],  # type: ignore[arg-type]
        causal=task.head == "lm",
        head=task.head,
        num_classes=task.num_classes,
        beta=config.beta,
        learn_beta=config.learn_beta,
        order=config.order,
        steps=config.steps or None,
        ffn_mult=config.ffn_mult,
        onsager=config.onsager,
    )
    model = SpinTransformer(model_config)
    if config.model == "boltzmann":
        model.blocks = nn.ModuleList(
            AttentionBlock(
                BoltzmannSelfAttention(
                    config.d_model, config.n_heads, model_config.causal, config.learn_beta
                ),
                config.d_model,
                config.ffn_mult,
            )
            for _ in range(config.n_layers)
        )
    return model


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
