"""Trainable torch modules that are spin systems; thin layers over ``spinformer.attention``.

Each module returns the ordinary output by default and, with ``return_state=True``, the physics:
thermodynamics of the attention ensembles, or a :class:`BlockState` with magnetizations,
couplings, fixed-point evidence and (where an equilibrium free energy exists) free energies.
"""

from spinformer.nn._spin import BlockState
from spinformer.nn.blocks import AttentionBlock, SpinTransformerBlock, TransformerBlock
from spinformer.nn.boltzmann import BoltzmannAttention
from spinformer.nn.meanfield import FreeEnergyAttention, MeanFieldAttention
from spinformer.nn.model import SpinTransformer, SpinTransformerConfig

__all__ = [
    "AttentionBlock",
    "BlockState",
    "BoltzmannAttention",
    "FreeEnergyAttention",
    "MeanFieldAttention",
    "SpinTransformer",
    "SpinTransformerBlock",
    "SpinTransformerConfig",
    "TransformerBlock",
]
