"""The model a training config selects: a :class:`~spinformer.nn.SpinTransformer` stack whose
block is the config's ``model`` key, everything else (embeddings, final norm, head) shared, so
a comparison between kinds changes one thing only.

``MODELS`` are the block kinds of the stack's registry; ``"boltzmann"`` is the reference
block's attention replaced by :class:`~spinformer.nn.BoltzmannAttention` (attention rows as
Boltzmann ensembles at inverse temperature β, β = 1/√d_head unless learned) inside the pre-norm
residual :class:`~spinformer.nn.AttentionBlock` with its MLP.
"""

from __future__ import annotations

from torch import nn

from spinformer.nn import SpinTransformer, SpinTransformerConfig
from spinformer.nn.blocks import BoltzmannSelfAttention
from spinformer.nn.model import BLOCK_FACTORIES
from spinformer.train.config import ConfigError, TrainConfig
from spinformer.train.tasks import Task

__all__ = ["MODELS", "BoltzmannSelfAttention", "build_model", "parameter_count"]

#: config ``model`` values: the block kinds of :data:`spinformer.nn.model.BLOCK_FACTORIES`.
MODELS: tuple[str, ...] = tuple(BLOCK_FACTORIES)


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


#: Training-config fields that configure the model under the same name.
_MODEL_FIELDS = (
    "d_model", "n_heads", "n_layers", "beta", "learn_beta", "order", "ffn_field", "ffn_mult",
    "onsager", "coupling", "norm", "start", "residual", "position",
)  # fmt: skip


def _build(config: TrainConfig, task: Task) -> SpinTransformer:
    model_config = SpinTransformerConfig(
        vocab_size=task.vocab_size,
        max_len=task.seq_len,
        block=config.model,
        causal=task.head == "lm",
        head=task.head,
        num_classes=task.num_classes,
        steps=config.steps or None,
        **{name: getattr(config, name) for name in _MODEL_FIELDS},
    )
    return SpinTransformer(model_config)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
