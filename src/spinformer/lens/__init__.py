"""The physics lens on real pretrained transformers.

``load`` a model (``"minilm"``, ``"smollm2"``, a local Hugging Face directory of the BERT, GPT-2
or Llama family, or a loaded ``transformers`` model), then ``analyze`` it on text: per layer and
head, the couplings W_QK = W_Kᵀ W_Q, the head's β, the Boltzmann ensemble of every token, the
self-consistent states of its mean-field map, β_c and a phase label (see
:mod:`spinformer.lens.analysis` and :mod:`spinformer.lens.phases`). ``transformers`` is imported only when a model is loaded
(install the ``lens`` extra: ``pip install 'spinformer[lens]'``).
"""

from spinformer.lens.analysis import RAMSAUER_CLASSES, LensResult, analyze, relative_coupling
from spinformer.lens.loaders import FAMILIES, SOURCES, FamilyAdapter, LensModel, load
from spinformer.lens.phases import PHASES, HeadPhases, LensConfig, head_phases

__all__ = [
    "FAMILIES",
    "PHASES",
    "RAMSAUER_CLASSES",
    "SOURCES",
    "FamilyAdapter",
    "HeadPhases",
    "LensConfig",
    "LensModel",
    "LensResult",
    "analyze",
    "head_phases",
    "load",
    "relative_coupling",
]
