"""The text data module: pydoc prose, positions and the token vectors built from them."""

from __future__ import annotations

import math

import pytest
import torch

from spinformer.data import (
    pydoc_prose,
    sentence_words,
    sinusoidal_positions,
    text_tokens,
    topic_text,
)


def test_sinusoidal_positions_closed_form():
    pe = sinusoidal_positions(5, 6)
    assert pe.shape == (5, 6) and pe.dtype == torch.float64
    assert torch.equal(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64))
    for t in range(5):
        for i in range(3):
            angle = t / 1e4 ** (2 * i / 6)
            assert float(pe[t, 2 * i]) == pytest.approx(math.sin(angle), abs=1e-15)
            assert float(pe[t, 2 * i + 1]) == pytest.approx(math.cos(angle), abs=1e-15)
    assert sinusoidal_positions(3, 5).shape == (3, 5)  # odd D: the last column is a sine


def test_text_tokens_are_standardized_and_deterministic():
    x, words = text_tokens(12, 8)
    assert x.shape == (12, 8) and len(words) == 12 and all(w.isalpha() for w in words)
    assert torch.allclose(x.mean(-1), torch.zeros(12, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(x.std(-1), torch.ones(12, dtype=torch.float64), atol=1e-12)
    again, _ = text_tokens(12, 8)
    assert torch.equal(x, again)


def test_texts_come_from_the_pydoc_topics():
    from pydoc_data.topics import topics

    assert topic_text(("if", "for")) == topics["if"] + topics["for"]
    assert topics["if"] in pydoc_prose()
    words = sentence_words("assignment", 5)
    assert len(words) == 5 and all(w.isalpha() for w in words)
    with pytest.raises(ValueError, match="names must be pydoc topics"):
        topic_text(("no such topic",))
