r"""Real English text that ships with Python, and the token vectors the experiments build from it.

Every text here comes from CPython's ``pydoc_data.topics`` (the language reference entries that
``help()`` shows), so nothing is downloaded and every run sees the same words.

Token vectors (:func:`text_tokens`) are word vectors from co-occurrence statistics — the top
singular vectors of the positive pointwise mutual information

.. math:: \mathrm{PPMI}(a, b) = \max\Big(0, \ln \frac{n_{ab}\, n}{n_a n_b}\Big)

of words within ``window`` words of each other over the whole prose (Levy and Goldberg, "Neural
word embedding as implicit matrix factorization", 2014) — plus the sinusoidal positions of
Vaswani et al., "Attention is all you need" (2017), :func:`sinusoidal_positions`, each token
standardized as a transformer's layer norm would.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "pydoc_prose",
    "sentence_words",
    "sinusoidal_positions",
    "text_tokens",
    "topic_text",
]


def pydoc_prose() -> str:
    """The English prose of CPython's ``pydoc_data.topics``, every topic in sorted order."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def topic_text(names: Sequence[str]) -> str:
    """The ``pydoc_data.topics`` entries ``names`` (e.g. ``("if", "while", "for")``), joined."""
    from pydoc_data.topics import topics

    unknown = [name for name in names if name not in topics]
    if unknown:
        raise ValueError(f"names must be pydoc topics such as 'if' or 'for', got {unknown}")
    return "".join(topics[name] for name in names)


def sentence_words(topic: str, max_words: int) -> list[str]:
    """The first ``max_words`` alphabetic words of the ``topic`` entry (punctuation stripped)."""
    words = topic_text([topic]).replace("\n", " ").split()
    words = [w.strip(".,:;()*`\"'") for w in words]
    return [w for w in words if w.isalpha()][:max_words]


def sinusoidal_positions(num_tokens: int, dim: int) -> torch.Tensor:
    """PE[t, 2i] = sin(t/10000^{2i/D}), PE[t, 2i+1] = cos(t/10000^{2i/D}), float64 (N, D).

    The positional encoding of Vaswani et al. (2017); an odd D keeps the last sine column.
    """
    position = torch.arange(num_tokens, dtype=torch.float64)[:, None]
    frequency = torch.exp(-math.log(1e4) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    encoding = torch.zeros(num_tokens, dim, dtype=torch.float64)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return encoding


def text_tokens(
    num_tokens: int, dim: int, vocabulary: int = 1000, window: int = 2, topic: str = "if"
) -> tuple[torch.Tensor, list[str]]:
    """Token vectors for ``num_tokens`` consecutive words of real text (float64, (N, dim)).

    x_t = LN(v_{w_t}/std(v_{w_t}) + ½ PE_t): the word vector v (top ``dim`` singular vectors of
    the PPMI matrix of the ``vocabulary`` most common words, co-occurring within ±``window``
    words over :func:`pydoc_prose`, scaled by √σ) plus half the sinusoidal position, then
    standardized per token (zero mean, unit variance). The sentence is the start of the ``topic``
    entry, restricted to the vocabulary and repeated to length. Deterministic; no download.
    Returns the vectors and the words.
    """
    words = re.findall(r"[a-z]+", pydoc_prose().lower())
    counts = Counter(words)
    vocab = [w for w, _ in counts.most_common(vocabulary)]
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.array([index.get(w, -1) for w in words])
    cooc = np.zeros((len(vocab), len(vocab)))
    for shift in range(1, window + 1):
        a, b = ids[:-shift], ids[shift:]
        keep = (a >= 0) & (b >= 0)
        np.add.at(cooc, (a[keep], b[keep]), 1.0)
    cooc = cooc + cooc.T
    total = cooc.sum()
    row = cooc.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(cooc * total / (row * row.T))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
    u, s, _ = np.linalg.svd(ppmi, hermitian=True)
    vectors = torch.from_numpy(u[:, :dim] * np.sqrt(s[:dim]))
    sentence = [w for w in re.findall(r"[a-z]+", topic_text([topic]).lower()) if w in index]
    sentence = (sentence * (num_tokens // max(len(sentence), 1) + 1))[:num_tokens]
    x = vectors[[index[w] for w in sentence]]
    x = x / x.std(dim=-1, keepdim=True).clamp_min(1e-12) + 0.5 * sinusoidal_positions(
        num_tokens, dim
    )
    x = (x - x.mean(dim=-1, keepdim=True)) / x.std(dim=-1, keepdim=True)
    return x, sentence
