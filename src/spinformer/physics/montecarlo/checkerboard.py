r"""The compiled checkerboard: Metropolis and heat-bath sweeps of Ising chains in C.

For the Ising model on an even periodic square lattice with a uniform field, a site with spin
:math:`s` and neighbour sum :math:`n \in \{-4, -2, 0, 2, 4\}` flips with a probability that
takes ten values per temperature: lazy Metropolis, :math:`(1-\epsilon)\min(1,
e^{-2\beta s(Jn + h)})` (:func:`spinformer.physics.montecarlo.updates.lazy_digits`), or the
heat bath, :math:`P(s' = +1) = 1/(1 + e^{-2\beta(Jn + h)})`. ``checkerboard.c`` keeps the
spins as int8 in the compact two-sublattice layout of the tensor engine, updates every site
with one table look-up and one 32-bit uniform of a tempered lagged Fibonacci stream per chain
(acceptance probabilities exact to 2^-32),
and measures :math:`\sum_{\langle ij\rangle}\sigma_i\sigma_j` and :math:`\sum_i\sigma_i` exactly
in integers, so :math:`E = -J\sum_{\langle ij\rangle}\sigma_i\sigma_j - h\sum_i\sigma_i`. It
serves one chain (or a few) where the tensor engine's per-call overhead dominates and the
multi-spin engine would simulate 64 replicas to use one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from spinformer.physics.models import IsingModel
from spinformer.physics.montecarlo.build import native_library, native_unavailable_reason
from spinformer.physics.montecarlo.colourings import from_compact, to_compact
from spinformer.physics.montecarlo.updates import lazy_digits

__all__ = ["CheckerboardSweeper", "checkerboard_supported"]

_LAG = 607


def checkerboard_supported(model: object, algorithm: str) -> str | None:
    """``None`` if the compiled checkerboard can sample ``model``, else what it needs."""
    if algorithm not in ("metropolis", "heat_bath"):
        return "algorithm 'metropolis' or 'heat_bath'"
    if not isinstance(model, IsingModel):
        return "an IsingModel"
    lattice = model.lattice
    if lattice is None:
        return "a SquareLattice model (got dense couplings)"
    rows, cols = lattice.shape
    if not lattice.periodic or rows % 2 or cols % 2:
        return f"a periodic lattice with even sides (got shape {lattice.shape})"
    if model.device.type != "cpu":
        return f"a CPU model (got device {model.device})"
    if bool((model.field != model.field[..., :1]).any()):
        return "a uniform field"
    if native_library() is None:
        return f"the native kernel ({native_unavailable_reason()})"
    return None


class CheckerboardSweeper:
    """Sweeper of the compiled checkerboard (chains × batch entries as independent planes)."""

    def __init__(
        self, model: IsingModel, state: Tensor, algorithm: str, generator: torch.Generator | None
    ):
        library = native_library()
        assert library is not None and model.lattice is not None
        self.native, self.model = library, model
        self.shape = model.lattice.shape
        self.n = model.num_spins
        self.chains = state.shape[0]
        self.lead = state.shape[:-1]  # (chains, *batch)
        black, white = to_compact(state.reshape(*self.lead, *self.shape))
        self.planes = math.prod(self.lead)
        rows, half = black.shape[-2:]
        self.black = black.to(torch.int8).reshape(self.planes, rows, half).contiguous()
        self.white = white.to(torch.int8).reshape(self.planes, rows, half).contiguous()
        batch = model.batch_shape
        beta = model.beta.expand(batch).to(torch.float64).reshape(-1)
        bond = model.couplings.expand(batch).to(torch.float64).reshape(-1)
        field = model.field[..., 0].expand(batch).to(torch.float64).reshape(-1)
        self.bond, self.field = bond.contiguous(), field.contiguous()
        spins = torch.tensor([-1.0, 1.0], dtype=torch.float64)[:, None]
        sums = torch.arange(-4.0, 5.0, 2.0, dtype=torch.float64)[None, :]
        local = bond[:, None, None] * sums + field[:, None, None]  # (B, 1, 5)
        beta = beta[:, None, None]
        if algorithm == "metropolis":
            keep = 1.0 - 2.0 ** -lazy_digits(self.n)
            flip = keep * torch.exp(-2.0 * beta * spins * local).clamp(max=1.0)
        else:  # heat bath: P(flip) = P(s' = -s) = 1 / (1 + e^{2β s h_loc})
            flip = torch.sigmoid(-2.0 * beta * spins * local)
        self.thresholds = torch.floor(flip * 2.0**32).to(torch.int64).contiguous()  # (B, 2, 5)
        self.batch = beta.shape[0]
        rng = torch.randint(
            -(2**63), 2**63 - 1, (self.planes, _LAG), dtype=torch.int64, generator=generator
        )
        rng[:, 0] |= 1  # an odd word in each stream's state gives the maximal period
        self.rng_state = rng
        self.rng_pos = torch.full((self.planes,), _LAG, dtype=torch.int64)  # refill first
        self.flips = torch.zeros(self.planes, dtype=torch.int64)
        self.recorded = 0
        # per-site sums as int8 (one byte a site per measurement: the pass that adds them is
        # memory-bound), moved into ``totals`` every 127 measurements, before they could overflow
        self.sum_black = torch.zeros(self.black.shape, dtype=torch.int8)
        self.sum_white = torch.zeros(self.white.shape, dtype=torch.int8)
        self.pending = 0
        self.totals = torch.zeros(*self.lead, self.n, dtype=torch.float64)
        self.values = torch.zeros(2, self.planes, dtype=torch.float64)  # E, mean spin
        self.counted_state = False

    def sweep(self, count: int = 1, record: bool = True) -> None:
        status = self.native.spf_checkerboard_sweeps(
            self.black.data_ptr(),
            self.white.data_ptr(),
            self.planes,
            *self.black.shape[1:],
            self.batch,
            self.thresholds.data_ptr(),
            self.rng_state.data_ptr(),
            self.rng_pos.data_ptr(),
            self.flips.data_ptr() if record else None,
            count,
        )
        if status:
            raise MemoryError("the native checkerboard kernel could not allocate its buffers")
        self.recorded += count if record else 0
        self.counted_state = False

    def _count(self, accumulate: bool) -> None:
        status = self.native.spf_checkerboard_measure(
            self.black.data_ptr(),
            self.white.data_ptr(),
            self.planes,
            *self.black.shape[1:],
            self.batch,
            self.bond.data_ptr(),
            self.field.data_ptr(),
            self.values.data_ptr(),
            self.sum_black.data_ptr() if accumulate else None,
            self.sum_white.data_ptr() if accumulate else None,
        )
        if status:
            raise MemoryError("the native checkerboard kernel could not allocate its buffers")
        if accumulate:
            self.counted_state = True
            self.pending += 1
            if self.pending == 127:
                self._flush()

    def _flush(self) -> None:
        self.totals += self._grid(self.sum_black, self.sum_white).to(torch.float64)
        self.sum_black.zero_()
        self.sum_white.zero_()
        self.pending = 0

    def measure(self) -> tuple[Tensor, Tensor]:
        """E = −J Σ_⟨ij⟩ σ_iσ_j − h Σ_i σ_i and the mean spin, from integer sums (the same pass
        adds the state to the per-site sums, see :meth:`accumulate`)."""
        self._count(accumulate=not self.counted_state)
        values = self.values.view(2, *self.lead).to(self.model.dtype)
        return values[0], values[1]

    def accumulate(self) -> None:
        """Add the state to the per-site sums, once per state."""
        if not self.counted_state:
            self._count(accumulate=True)

    def _grid(self, black: Tensor, white: Tensor) -> Tensor:
        rows, half = black.shape[-2:]
        grid = from_compact(
            black.reshape(*self.lead, rows, half), white.reshape(*self.lead, rows, half)
        )
        return grid.reshape(*self.lead, self.n).to(self.model.dtype)

    def full_state(self) -> Tensor:
        return self._grid(self.black, self.white)

    def site_mean(self, measurements: int) -> Tensor:
        self._flush()
        return (self.totals / measurements).to(self.model.dtype)

    def acceptance(self) -> Tensor:
        flips = self.flips.reshape(self.lead).to(torch.float64)
        return (flips / (max(self.recorded, 1) * self.n)).to(self.model.dtype)
