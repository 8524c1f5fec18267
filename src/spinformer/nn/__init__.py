"""Trainable torch modules that are spin systems; thin layers over ``spinformer.attention``."""

from spinformer.nn.boltzmann import BoltzmannAttention

__all__ = ["BoltzmannAttention"]
