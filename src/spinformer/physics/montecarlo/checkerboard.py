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
from spinformer.physics.montecarlo.colourings import even_periodic_reason
from spinformer.physics.montecarlo.updates import lazy_digits

__all__ = ["CheckerboardSweeper", "checkerboard_supported"]

_LAG = 607


def checkerboard_supported(model: object, algorithm: str) -> str | None:
    """``None`` if the compiled checkerboard can sample ``model``, else what it needs."""
    if algorithm not in ("metropolis", "heat_bath"):
        return "algorithm 'metropolis' or 'heat_bath'"
    if not isinstance(model, IsingModel):
        return "an IsingModel"
    reason = even_periodic_reason(model.lattice)
    if reason is not None:
        return reason
    if model.device.type != "cpu":
        return f"a CPU model (got device {model.device})"
    field = model.field  # amin / amax: the fastest of the CPU reductions
    if bool((field.amin(-1) != field.amax(-1)).any()):
        return "a uniform field"
    if native_library() is None:
        return f"the native kernel ({native_unavailable_reason()})"
    return None


def _check(status: int) -> None:
    if status:
        raise MemoryError("the native checkerboard kernel could not allocate its buffers")


class CheckerboardSweeper:
    """Sweeper of the compiled checkerboard (chains × batch entries as independent planes)."""

    # sample() writes the final state and the site means on the grid only when they are read
    deferred_results = True

    def __init__(
        self,
        model: IsingModel,
        state: Tensor | str,
        algorithm: str,
        generator: torch.Generator | None,
        chains: int | None = None,
    ):
        """``state``: spins (chains, *batch, N), or ``"random"`` / ``"up"`` with ``chains`` (drawn
        as int8, the same draws as :func:`spinformer.physics.montecarlo.sampling.sample`'s)."""
        library = native_library()
        assert library is not None and model.lattice is not None
        self.native, self.model = library, model
        self.shape = model.lattice.shape
        self.n = model.num_spins
        bits = False  # the values to place are 0/1 draws, not spins
        if isinstance(state, str):
            lead = (int(chains or 1), *model.batch_shape)
            if state == "random":
                state = torch.randint(0, 2, (*lead, self.n), dtype=torch.int8, generator=generator)
                bits = True
            elif state == "up":
                state = torch.ones(*lead, self.n, dtype=torch.int8)
            else:
                raise ValueError(f"initial must be 'random', 'up' or a tensor, got {state!r}")
        self.chains = state.shape[0]
        self.lead = state.shape[:-1]  # (chains, *batch)
        self.planes = math.prod(self.lead)
        rows, half = self.shape[0], self.shape[1] // 2
        grid = state.to(torch.int8).contiguous()  # (chains, *batch, N) in site order
        self.black = torch.empty(self.planes, rows, half, dtype=torch.int8)
        self.white = torch.empty(self.planes, rows, half, dtype=torch.int8)
        library.spf_checkerboard_compact(
            grid.data_ptr(), self.planes, rows, half, self.black.data_ptr(),
            self.white.data_ptr(), bits,
        )  # fmt: skip
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
        # per-site sums as int8 (one byte a site per measurement, added in the measuring pass),
        # moved into float64 ``totals`` (allocated then) every 127 measurements, before they
        # could overflow
        self.sum_black = torch.zeros(self.black.shape, dtype=torch.int8)
        self.sum_white = torch.zeros(self.white.shape, dtype=torch.int8)
        self.pending = 0
        self.totals: Tensor | None = None  # (planes, N) float64 in site order
        self.values = torch.zeros(2, self.planes, dtype=torch.float64)  # E, mean spin
        self.counted_state = False

    def _run(self, kernel: str, *args: Tensor | int | None) -> None:
        """``spf_checkerboard_<kernel>``(black, white, planes, rows, half, batch, *args) of
        ``checkerboard.c``, tensors passed as pointers."""
        pointers = (a.data_ptr() if isinstance(a, Tensor) else a for a in args)
        status = getattr(self.native, f"spf_checkerboard_{kernel}")(
            self.black.data_ptr(),
            self.white.data_ptr(),
            self.planes,
            *self.black.shape[1:],
            self.batch,
            *pointers,
        )
        _check(status)

    def sweep(self, count: int = 1, record: bool = True) -> None:
        flips = self.flips if record else None
        self._run("sweeps", self.thresholds, self.rng_state, self.rng_pos, flips, count)
        self.recorded += count if record else 0
        self.counted_state = False

    def _count(self, accumulate: bool) -> None:
        sums = (self.sum_black, self.sum_white) if accumulate else (None, None)
        self._run("measure", self.bond, self.field, self.values, *sums)
        if accumulate:
            self.counted_state = True
            self.pending += 1
            if self.pending == 127:
                self._flush()

    def _flush(self) -> None:
        if self.totals is None:
            self.totals = torch.empty(self.planes, self.n, dtype=torch.float64)
            self._grid(self.sum_black, self.sum_white, self.totals)
        else:
            self._grid(self.sum_black, self.sum_white, self.totals, self.totals)
        self.sum_black.zero_()
        self.sum_white.zero_()
        self.pending = 0

    def measure(self) -> tuple[Tensor, Tensor]:
        """E = −J Σ_⟨ij⟩ σ_iσ_j − h Σ_i σ_i and the mean spin, from integer sums (the same pass
        adds the state to the per-site sums, see :meth:`accumulate`)."""
        self._count(accumulate=not self.counted_state)
        values = self.values.view(2, *self.lead).to(self.model.dtype)
        return values[0], values[1]

    def run(self, records: int, every: int, energy: Tensor, magnetization: Tensor) -> None:
        """The sampling loop in one kernel call: ``records`` times ``every`` recorded sweeps,
        then :meth:`measure` and :meth:`accumulate`, the series written to ``energy`` and
        ``magnetization`` ``(records, chains, *batch)``; the same states and numbers as the
        calls one by one."""
        if self.counted_state:  # the loop's states are new ones; this one is in the sums
            raise RuntimeError("run() starts from a state that is not yet measured")
        if self.totals is None and self.pending + records >= 127:
            self.totals = torch.zeros(self.planes, self.n, dtype=torch.float64)
        series = torch.empty(records, 2, self.planes, dtype=torch.float64)
        pending = torch.tensor([self.pending], dtype=torch.int64)
        self._run(
            "run", self.thresholds, self.rng_state, self.rng_pos, self.flips, every, records,
            self.bond, self.field, series, self.sum_black, self.sum_white, pending, self.totals,
        )  # fmt: skip
        self.pending = int(pending)
        self.recorded += records * every
        self.counted_state = True
        self.values.copy_(series[-1])
        energy.copy_(series[:, 0].view(energy.shape))
        magnetization.copy_(series[:, 1].view(magnetization.shape))

    def accumulate(self) -> None:
        """Add the state to the per-site sums, once per state."""
        if not self.counted_state:
            self._count(accumulate=True)

    def _grid(
        self,
        black: Tensor,
        white: Tensor,
        out: Tensor | None = None,
        add: Tensor | None = None,
        divisor: float = 1.0,
    ) -> Tensor:
        """(add + compact int8 values) / divisor as (chains, *batch, N) in site order, into
        ``out`` (float64 or float32; default: a new tensor of the model's dtype)."""
        if out is None:
            dtype = self.model.dtype if self.model.dtype == torch.float64 else torch.float32
            out = torch.empty(self.planes, self.n, dtype=dtype)
        status = self.native.spf_checkerboard_grid(
            black.data_ptr(),
            white.data_ptr(),
            self.planes,
            *black.shape[1:],
            None if add is None else add.data_ptr(),
            divisor,
            out.data_ptr(),
            out.dtype == torch.float64,
        )
        _check(status)
        return out.reshape(*self.lead, self.n).to(self.model.dtype)

    def full_state(self) -> Tensor:
        return self._grid(self.black, self.white)

    def site_mean(self, measurements: int) -> Tensor:
        return self._grid(self.sum_black, self.sum_white, add=self.totals, divisor=measurements)

    def acceptance(self) -> Tensor:
        flips = self.flips.reshape(self.lead).to(torch.float64)
        return (flips / (max(self.recorded, 1) * self.n)).to(self.model.dtype)
