r"""The multi-spin engine as torch operations: any device (the CUDA path), and the CPU fallback.

Every quarter is updated in row chunks of about 2^15 words so that its random block (13 words
per word: 12 acceptance digits and a tail) stays cache-sized; the random words come from the
tempered additive lagged Fibonacci generator :math:`x_n = x_{n-607} + x_{n-273} \bmod 2^{64}`
(Knuth, TAOCP vol. 2, §3.2.2) in many lanes, three vectorised additions per block. The word
logic is that of :mod:`spinformer.physics.montecarlo.multispin.common`.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from spinformer.physics.montecarlo.multispin.common import (
    DIGITS,
    LAGS,
    MAX63,
    Acceptance,
    MultispinEngine,
)

__all__ = ["TorchMultispin"]

_CHUNK_WORDS = 1 << 15


class _LaggedFibonacci:
    """Tempered additive lagged Fibonacci generator in ``lanes`` independent streams.

    ``block()`` returns ``r × lanes`` fresh words (r = 607): three vectorised additions
    (the recurrence in chunks of s = 273 rows) and the tempering y = x ⊕ (x ≫ 32), a
    logical shift.
    """

    def __init__(self, lanes: int, generator: torch.Generator | None, device: torch.device):
        r, _ = LAGS
        state = torch.randint(
            -(2**63), 2**63 - 1, (r, lanes), dtype=torch.int64, device=device, generator=generator
        )
        state[0] |= 1  # an odd word in each lane's state gives the maximal period
        self.state, self.spare = state, torch.empty_like(state)
        self.out = torch.empty_like(state)

    def block(self) -> Tensor:
        r, s = LAGS
        x, new = self.state, self.spare
        torch.add(x[:s], x[r - s :], out=new[:s])
        torch.add(x[s : 2 * s], new[:s], out=new[s : 2 * s])
        torch.add(x[2 * s :], new[s : r - s], out=new[2 * s :])
        self.state, self.spare = new, x
        torch.bitwise_right_shift(new, 32, out=self.out)  # arithmetic shift on int64:
        self.out &= 0xFFFFFFFF  # keep the high half only (else bit 63 would cancel)
        return self.out.bitwise_xor_(new)


class TorchMultispin(MultispinEngine):
    """The multi-spin engine's sweeps as torch operations (any device)."""

    def _setup(self, acceptance: Acceptance, generator: torch.Generator | None) -> None:
        """Acceptance digits as operations or masks, and generator lanes for the row chunks."""
        batch = self.batch_shape
        d1, q1, d0, q0 = acceptance
        self.uniform = q1.ndim == 0
        view = (*batch, 1, 1)
        if self.uniform:  # scalar β, J: the digits select the operation
            self.d1 = [bool(d) for d in d1]
            self.d0 = [bool(d) for d in d0]
            self.q1, self.q0 = int(q1), int(q0)
        else:
            self.m1 = [d.reshape(view).bool() for d in d1]
            self.m0 = [d.reshape(view).bool() for d in d0]
            self.q1, self.q0 = q1.reshape(view), q0.reshape(view)
        quarter = (self.groups, *batch, self.rows // 2, self.cols // 2)
        row_words = math.prod(quarter) // quarter[-2]
        # update a quarter in row chunks of about _CHUNK_WORDS words: the random block of
        # a chunk (13 words per word) then stays cache-sized on large lattices
        self.chunk_rows = max(1, min(quarter[-2], _CHUNK_WORDS // row_words))
        draws = (DIGITS + 1) * row_words * self.chunk_rows
        self.rng = _LaggedFibonacci(-(-draws // LAGS[0]), generator, self.model.device)

    def _accept_masks(self, digits: Tensor) -> tuple[Tensor, Tensor]:
        """A₁ = [u < p₁], A₀ = [u < p₀] (all 64 lanes) from (DIGITS + 1, *quarter) words."""
        tail = digits[DIGITS] & MAX63
        a1 = (tail - self.q1).bitwise_right_shift_(63)  # −1 where v < q
        a0 = (tail - self.q0).bitwise_right_shift_(63)
        for j in range(DIGITS - 1, -1, -1):  # last digit first
            r = digits[j]
            if self.uniform:
                (a1.bitwise_or_ if self.d1[j] else a1.bitwise_and_)(r)
                (a0.bitwise_or_ if self.d0[j] else a0.bitwise_and_)(r)
            else:
                a1 = torch.where(self.m1[j], r | a1, r & a1)
                a0 = torch.where(self.m0[j], r | a0, r & a0)
        return a1, a0

    def _update(self, target: Tensor, neighbours: tuple[Tensor, ...], digits: Tensor) -> Tensor:
        a, b, c, d = self._unsatisfied(target, *neighbours)
        any_ab = a | b
        a &= b
        any_cd = c | d
        c &= d
        a |= c
        torch.bitwise_and(any_ab, any_cd, out=b)
        a |= b  # k ≥ 2
        if self.lazy_digits:  # k ≥ 2 moves are declined when u's first digits are all 1
            a &= functools.reduce(torch.bitwise_or, digits[: self.lazy_digits])
        any_ab |= any_cd  # k ≥ 1
        a1, a0 = self._accept_masks(digits)
        any_ab &= a1
        a |= any_ab
        a |= a0  # flip mask
        target ^= a
        return a

    def sweep(self, count: int = 1, record: bool = True) -> None:
        for _ in range(count):
            self._torch_sweep()
        if not record:
            self.last_flips = None

    def _torch_sweep(self) -> None:
        flips = []
        for name in ("be", "bo", "we", "wo"):  # black quarters first, then white
            target = getattr(self, name)
            neighbours = self._neighbours(name)
            for start in range(0, target.shape[-2], self.chunk_rows):
                rows = slice(start, start + self.chunk_rows)
                chunk = target[..., rows, :]
                block = self.rng.block().reshape(-1)[: (DIGITS + 1) * chunk.numel()]
                digits = block.view(DIGITS + 1, *chunk.shape)
                flips.append(
                    self._update(chunk, tuple(n[..., rows, :] for n in neighbours), digits)
                )
        self.last_flips = tuple(flips)
