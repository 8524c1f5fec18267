r"""Multi-spin coded checkerboard Metropolis for the uniform-bond 2-D Ising torus.

Multi-spin coding (Jacobs & Rebbi, J. Comput. Phys. 41, 203, 1981; Block, Virnau & Preis,
Comput. Phys. Commun. 181, 1549, 2010) stores 64 replicas of the lattice in the bits of one
int64 word per site (bit set = spin down), so every bitwise operation updates 64 spins. For a
site with :math:`k` unsatisfied bonds among its four (antiparallel neighbours when
:math:`J > 0`) a flip costs :math:`\Delta E = 2|J|(4 - 2k)`, so lazy Metropolis (acceptance
:math:`(1-\epsilon)\min(1, e^{-\beta\Delta E})`, :math:`\epsilon = 2^{-\lambda}`, see
:func:`lazy_digits`) flips with probability :math:`1 - \epsilon` when :math:`k \ge 2`, with
:math:`p_1 = (1-\epsilon)e^{-4\beta|J|}` when :math:`k = 1` and with
:math:`p_0 = (1-\epsilon)e^{-8\beta|J|}` when :math:`k = 0`. The four "unsatisfied" bits
:math:`a, b, c, d = \sigma \oplus n_j` give, with full-adder logic,
:math:`[k \ge 2] = ab \lor cd \lor (a \lor b)(c \lor d)` and :math:`[k \ge 1] = a \lor b \lor c
\lor d`, and the flip mask is :math:`([k\ge2] \land K) \lor ([k\ge1] \land A_1) \lor A_0` with
:math:`A_i = [u < p_i]` and :math:`K = [u < 1 - \epsilon]` (:math:`u`'s first :math:`\lambda` digits
not all 1; :math:`A_0 \subseteq A_1 \subseteq K` because all three compare the same
:math:`u`). An antiferromagnet (:math:`J < 0`) is sampled as the ferromagnet of the gauge
:math:`\sigma \to -\sigma` on the white sublattice.

**Acceptance without floating point.** Every replica draws its own uniform
:math:`u = 0.u_1u_2\ldots u_t\,v` whose first :math:`t` binary digits are the bits of
:math:`t` random words (bit-sliced: digit :math:`j` of all 64 replicas is one word). The
comparison :math:`u < p` for a constant :math:`p = 0.p_1p_2\ldots p_t + 2^{-t}q` runs from
the last digit to the first, :math:`\ell \leftarrow \bar u_j \lor \ell` if :math:`p_j = 1`
and :math:`\ell \leftarrow \bar u_j \land \ell` if :math:`p_j = 0`, one bitwise operation per
digit, started from :math:`\ell = [v < q]`. The tail :math:`v` is a 63-bit uniform drawn once
per site word, shared by its 64 replicas, so each replica's test is exact (to
:math:`2^{-(t+63)}` beyond the float64 value of :math:`p`), and each replica is an exact lazy
Metropolis chain. Replicas of one word are
coupled only when two of them tie with :math:`p` in all :math:`t = 12` digits at the same site
and sweep (probability :math:`2^{-24}` per pair and update), which the error analysis can
ignore; they are independent otherwise, so the 64 replicas are treated as 64 chains.

**Random bits.** An additive lagged Fibonacci generator
:math:`x_n = x_{n-607} + x_{n-273} \bmod 2^{64}` (Knuth, TAOCP vol. 2, §3.2.2; lags of a
primitive trinomial, period :math:`\ge 2^{63}(2^{607}-1)` with an odd seed word), run in
many independent lanes seeded from the torch generator, costs one vectorised addition per
64 random bits -- torch's CPU generator costs 5-7 ns per word, which would dominate. The
low bit of an additive generator is a linear feedback shift register (the generator family
that fails cluster-algorithm tests, Ferrenberg, Landau & Wong, PRL 69, 3382, 1992), so every
output is tempered, :math:`y = x \oplus (x \gg 32)`, mixing the carry-dependent high half
into every bit; large lags are the regime in which additive generators reproduce exact
Ising results (Coddington, Int. J. Mod. Phys. C 5, 547, 1994). The tests check energies and
:math:`\langle m^2\rangle` against transfer-matrix values.

**Two backends, one algorithm.** :class:`NativeMultispin` runs every sweep as one fused C
kernel (``multispin.c``, built once with the system C compiler and cached; see
:mod:`spinformer.physics.montecarlo.multispin.build`): one generator stream per (word plane,
quarter row) and POSIX threads over rows (``torch.get_num_threads()`` of them, results
independent of the count). Each word then stays in registers for its whole update instead of
passing through ~60 separate tensor operations, and measurements (energy from the unsatisfied
bonds, magnetization, per-site sums, flip counts) are taken in the last sweep. Elsewhere
(CUDA), or when no compiler is available or ``SPINFORMER_NATIVE=0``, :class:`TorchMultispin`
runs the same word logic, acceptance digits and generator recurrence as torch operations. Both
are deterministic given the torch generator, agree bit for bit where no random bit is used,
and are checked against the same exact values.

Throughput is counted, as in the literature, as replicas × sites × sweeps per second.
Measurement counts bits per replica with bit-sliced counters (a ripple-carry increment per word
and a flush every few hundred words), so it costs a few word operations per site rather than 64.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor

from spinformer.physics.models import IsingModel
from spinformer.physics.montecarlo.colourings import even_periodic_reason
from spinformer.physics.montecarlo.updates import lazy_digits

__all__ = ["DIGITS", "Acceptance", "MultispinEngine", "multispin_supported"]

DIGITS = 12  # bit-sliced digits of each replica's uniform before the shared 63-bit tail
LAGS = (607, 273)
MAX63 = (1 << 63) - 1
COUNTER_PLANES = 8  # per-site bit-sliced counters flush every 2^8 - 1 measurements


def multispin_supported(model: IsingModel) -> str | None:
    """``None`` if the multi-spin engine can sample ``model``, else the reason it cannot."""
    reason = even_periodic_reason(model.lattice)
    if reason is not None:
        return reason
    field = model.field  # amin / amax: the fastest of the CPU reductions
    if bool(field.amin() != 0) or bool(field.amax() != 0):
        return "zero field (h = 0)"
    return None


def _digits(p: Tensor, digits: int) -> tuple[list[Tensor], Tensor]:
    """Binary digits of p ∈ [0, 1] (p = 1 → 0.111…): per digit an int64 mask 0/−1, and the tail.

    Returns ([d_1, …, d_t], Q) with d_j = −p_j and Q = ⌊frac(p 2^t) 2^63⌋, so that
    p = Σ p_j 2^{-j} + 2^{-t} Q/2^63 up to 2^{-(t+63)}.
    """
    p64 = p.to(torch.float64).clamp(0.0, 1.0)
    scaled = torch.floor(p64 * 2.0**digits)  # exact: a power-of-two scaling
    one = scaled >= 2.0**digits  # p = 1: every digit 1 and a full tail
    integer = torch.where(one, scaled - 1.0, scaled).to(torch.int64)
    masks = [-((integer >> (digits - j)) & 1) for j in range(1, digits + 1)]
    frac = p64 * 2.0**digits - scaled
    tail = torch.clamp(torch.floor(frac * 2.0**63), max=float(2**63 - 1024)).to(torch.int64)
    tail = torch.where(one, torch.full_like(tail, MAX63), tail)
    return masks, tail


class Acceptance(NamedTuple):
    """The binary digits of p₁ and p₀ (see :func:`_digits`): digit masks and tails."""

    d1: list[Tensor]
    q1: Tensor
    d0: list[Tensor]
    q0: Tensor


def _bit_counts(words: Tensor, lead: int) -> Tensor:
    """Per-bit population counts: (*lead dims, 64) int64 summed over all trailing dims.

    A bit-sliced adder tree: pairs of bit-sliced numbers are added with ripple carries until
    one word remains per leading index; about ten word operations per input word.
    """
    flat = words.reshape(*words.shape[:lead], -1)
    shifts = torch.arange(64, device=words.device)
    if flat.numel() <= 2**14:  # small: unpacking is cheaper than the tree's many calls
        return ((flat.unsqueeze(-1) >> shifts) & 1).sum(-2)
    planes = [flat]
    while planes[0].shape[-1] > 1:
        size = planes[0].shape[-1]
        if size % 2:
            planes = [torch.nn.functional.pad(p, (0, 1)) for p in planes]
            size += 1
        half = size // 2
        carry: Tensor | None = None
        summed = []
        for plane in planes:
            a, b = plane[..., :half], plane[..., half:]
            x = a ^ b
            if carry is None:
                summed.append(x)
                carry = a & b
            else:
                summed.append(x ^ carry)
                carry = (a & b) | (x & carry)
        assert carry is not None
        planes = [*summed, carry]
    counts = torch.zeros(*words.shape[:lead], 64, dtype=torch.int64, device=words.device)
    for j, plane in enumerate(planes):
        counts += ((plane >> shifts) & 1) << j
    return counts


def _pack(bits: Tensor) -> Tensor:
    """(64, ...) bool → (...) int64 words, lane i in bit i."""
    shifts = torch.arange(64, device=bits.device).reshape(64, *([1] * (bits.ndim - 1)))
    return (bits.to(torch.int64) << shifts).sum(0)


def _add_bits(out: Tensor, words: Tensor, scale: float, chunk: int = 1 << 12) -> None:
    """out[g, i, ...] += scale · (bit i of words[g, ...]) for contiguous ``out`` (G, 64, ...).

    ``chunk`` words at a time, so the unpacked (G, 64, chunk) bits stay cache-sized.
    """
    groups = words.shape[0]
    flat_out = out.view(groups, 64, -1)
    flat = words.reshape(groups, -1)
    lanes = torch.arange(64, device=words.device)[:, None]
    for start in range(0, flat.shape[1], chunk):
        bits = (flat[:, None, start : start + chunk] >> lanes) & 1
        flat_out[:, :, start : start + chunk].add_(bits, alpha=scale)


def _quarters_to_grid(be: Tensor, bo: Tensor, we: Tensor, wo: Tensor) -> Tensor:
    """Four (..., L/2, W/2) quarters → (..., N) in row-major site order."""
    top = torch.stack((be, we), dim=-1)  # even rows: (2k) black, (2k+1) white
    bottom = torch.stack((wo, bo), dim=-1)
    grid = torch.stack((top, bottom), dim=-3)  # (..., L/2, 2, W/2, 2)
    return grid.reshape(*grid.shape[:-4], -1)


class MultispinEngine(ABC):
    """Sweeper of the multi-spin engine: the packed layout, measurements and per-site sums.

    Layout: four sublattice quarters (black/white × even/odd rows), each
    ``(G, *batch, L/2, W/2)`` int64 with G = ⌈chains/64⌉ words per site. Black (r + c even)
    site (2i, 2k) is BE[i, k] and (2i+1, 2k+1) is BO[i, k]; white (2i, 2k+1) is WE[i, k] and
    (2i+1, 2k) is WO[i, k]. Lanes beyond ``chains`` are simulated and dropped. Subclasses (the
    backends) implement the sweeps.
    """

    def __init__(
        self,
        model: IsingModel,
        state: Tensor | str,
        generator: torch.Generator | None,
        chains: int | None = None,
        lazy: int | None = None,
    ):
        """``state``: spins (chains, *batch, N), or ``"random"`` / ``"up"`` with ``chains``.

        ``lazy``: every move is declined with probability ``2**-lazy`` (default
        :func:`lazy_digits` of the number of sites); 0 gives plain Metropolis, which is
        reducible on small tori (deterministic tests use it).
        """
        lattice = model.lattice
        assert lattice is not None
        lazy = lazy_digits(lattice.num_sites) if lazy is None else lazy
        if not 0 <= lazy <= DIGITS:
            raise ValueError(f"lazy must be in [0, {DIGITS}], got {lazy}")
        self.lazy_digits = lazy
        self.model = model
        self.chains = state.shape[0] if isinstance(state, Tensor) else int(chains or 1)
        self.rows, self.cols = lattice.shape
        self.n = lattice.num_sites
        self.groups = -(-self.chains // 64)
        batch = model.batch_shape
        self.batch_shape = batch
        bond = model.couplings.expand(batch) if batch else model.couplings
        self.abs_bond = bond.abs()
        # gauge mask: −1 where J < 0 (white spins stored flipped), per batch entry
        self.gauge = -(bond < 0).to(torch.int64).reshape(*batch, 1, 1)
        beta = model.beta.expand(batch) if batch else model.beta
        boltzmann = torch.exp(-4.0 * beta.to(torch.float64) * self.abs_bond.to(torch.float64))
        keep = 1.0 - 2.0**-lazy if lazy else 1.0
        p1, p0 = keep * boltzmann, keep * boltzmann * boltzmann  # keep = 0.11…1 in binary
        self._setup(Acceptance(*_digits(p1, DIGITS), *_digits(p0, DIGITS)), generator)
        self._load(state, generator)
        self._ready()

    def _ready(self) -> None:
        """The measurements' state, once the layout is known (last step of ``__init__``;
        backends add their buffers)."""
        self.last_flips: tuple[Tensor, ...] | None = None
        self.accepted = torch.zeros(
            self.chains, *self.batch_shape, dtype=torch.float64, device=self.model.device
        )
        self.accepted_sweeps = 0
        self.counter_planes = COUNTER_PLANES
        self.counter = self._new_counter()
        self.pending = 0
        self.site_down: Tensor | None = None  # (G, 64, *batch, N), allocated at the first flush
        self.measurements = 0

    def _new_counter(self) -> Tensor:
        """Per-site bit-sliced counters of down spins, (planes, G, *batch, N) words."""
        shape = (self.counter_planes, self.groups, *self.batch_shape, self.n)
        return torch.zeros(shape, dtype=torch.int64, device=self.be.device)

    @abstractmethod
    def _setup(self, acceptance: Acceptance, generator: torch.Generator | None) -> None:
        """Prepare the acceptance digits and the random streams of the backend."""

    @abstractmethod
    def sweep(self, count: int = 1, record: bool = True) -> None:
        """``count`` sweeps; ``record`` keeps the last one's flip masks for the acceptance of
        the next measure. The result does not depend on how sweeps are grouped into calls."""

    # -- layout ---------------------------------------------------------------------------

    def _words(
        self, state: Tensor | str, generator: torch.Generator | None, out: Tensor | None = None
    ) -> Tensor:
        """(G, *batch, N) words of spins (chains, *batch, N) ±1, or of a hot / cold start (a
        hot start drawn into ``out`` when given)."""
        shape = (self.groups, *self.batch_shape, self.n)
        if isinstance(state, str):
            if state == "up":
                return torch.zeros(shape, dtype=torch.int64, device=self.model.device)
            # hot start: every bit (spin) independently ±1
            return torch.randint(
                -(2**63), 2**63 - 1, shape, dtype=torch.int64, device=self.model.device,
                generator=generator, out=out,
            )  # fmt: skip
        down = state < 0
        pad = self.groups * 64 - self.chains
        if pad:
            down = torch.cat([down, down[:1].expand(pad, *down.shape[1:])])
        down = down.reshape(self.groups, 64, *down.shape[1:]).movedim(1, 0)
        return _pack(down)  # (G, *batch, N)

    def _load(self, state: Tensor | str, generator: torch.Generator | None) -> None:
        """Pack spins (chains, *batch, N) ±1, or draw a hot / cold start, into the quarters."""
        words = self._words(state, generator)
        grid = words.reshape(*words.shape[:-1], self.rows // 2, 2, self.cols // 2, 2)
        be, bo = grid[..., :, 0, :, 0], grid[..., :, 1, :, 1]
        we, wo = grid[..., :, 0, :, 1], grid[..., :, 1, :, 0]
        self.be, self.bo = be.contiguous(), bo.contiguous()
        self.we, self.wo = (we ^ self.gauge).contiguous(), (wo ^ self.gauge).contiguous()

    def _grid_words(self) -> Tensor:
        """(G, *batch, N) words of the physical spins (gauge undone)."""
        return _quarters_to_grid(self.be, self.bo, self.we ^ self.gauge, self.wo ^ self.gauge)

    def _lanes(self, per_word: Tensor) -> Tensor:
        """(G, *batch, 64, ...) → (chains, *batch, ...)."""
        moved = per_word.movedim(len(self.batch_shape) + 1, 1)
        flat = moved.reshape(self.groups * 64, *moved.shape[2:])
        return flat[: self.chains]

    def _per_chain(self, words_like: Tensor) -> Tensor:
        """(G, 64, *batch, N) → (chains, *batch, N)."""
        return words_like.reshape(self.groups * 64, *words_like.shape[2:])[: self.chains]

    def full_state(self) -> Tensor:
        words = self._grid_words()
        spins = torch.ones(
            self.groups, 64, *words.shape[1:], dtype=self.model.dtype, device=words.device
        )
        _add_bits(spins, words, -2.0)
        return self._per_chain(spins)

    # -- dynamics -------------------------------------------------------------------------

    @staticmethod
    def _unsatisfied(
        target: Tensor, n1: Tensor, n2: Tensor, n3: Tensor, n4: Tensor
    ) -> tuple[Tensor, ...]:
        # n2, n4 are fresh (rolled) tensors: reused in place
        return target ^ n1, n2.bitwise_xor_(target), target ^ n3, n4.bitwise_xor_(target)

    def _neighbours(self, quarter: str) -> tuple[Tensor, ...]:
        rows, cols = -2, -1
        be, bo, we, wo = self.be, self.bo, self.we, self.wo
        if quarter == "be":
            return wo, torch.roll(wo, 1, rows), we, torch.roll(we, 1, cols)
        if quarter == "bo":
            return we, torch.roll(we, -1, rows), wo, torch.roll(wo, -1, cols)
        if quarter == "we":
            return bo, torch.roll(bo, 1, rows), be, torch.roll(be, -1, cols)
        return be, torch.roll(be, -1, rows), bo, torch.roll(bo, 1, cols)

    # -- measurement ----------------------------------------------------------------------

    def measure(self) -> tuple[Tensor, Tensor]:
        lead = 1 + len(self.batch_shape)
        dtype = self.model.dtype
        bonds = [
            torch.stack(self._unsatisfied(self.be, *self._neighbours("be"))),
            torch.stack(self._unsatisfied(self.bo, *self._neighbours("bo"))),
        ]
        unsatisfied = sum(_bit_counts(b.movedim(0, lead), lead) for b in bonds)
        words = self._grid_words()
        down = _bit_counts(words, lead)
        energy = -self.abs_bond * (2.0 * self.n - 2.0 * self._lanes(unsatisfied).to(dtype))
        magnetization = 1.0 - 2.0 * self._lanes(down).to(dtype) / self.n
        if self.last_flips is not None:
            flipped = sum(_bit_counts(f, lead) for f in self.last_flips)
            self.accepted += self._lanes(flipped).to(torch.float64) / self.n
            self.accepted_sweeps += 1
        return energy, magnetization

    def accumulate(self) -> None:
        """Add the current spins to per-site bit-sliced counters (flushed every 255 calls)."""
        carry = self._grid_words()
        for j in range(COUNTER_PLANES):
            plane = self.counter[j].clone()
            self.counter[j] ^= carry
            carry = plane & carry
        self._counted()

    def _counted(self) -> None:
        self.pending += 1
        self.measurements += 1
        if self.pending == 2**self.counter_planes - 1:
            self._flush()

    def _counter_plane(self, j: int) -> Tensor:
        """Plane j of the per-site counters of down spins as (G, *batch, N) words."""
        return self.counter[j]

    def _flush(self) -> None:
        if self.site_down is None:
            shape = (self.groups, 64, *self.batch_shape, self.n)
            self.site_down = torch.zeros(shape, dtype=self.model.dtype, device=self.be.device)
        for j in range(self.pending.bit_length()):  # planes above stay zero
            _add_bits(self.site_down, self._counter_plane(j), float(2**j))
        self.counter.zero_()
        self.pending = 0

    def site_mean(self, measurements: int) -> Tensor:
        """Σ_t σ_i(t) / measurements per chain and site (σ = 1 − 2·down)."""
        self._flush()
        assert self.site_down is not None
        down = self._per_chain(self.site_down)
        return torch.add(torch.full_like(down, self.measurements), down, alpha=-2.0) / measurements

    def acceptance(self) -> Tensor:
        """Mean flipped fraction per chain, estimated on the sweeps that preceded measurements."""
        return (self.accepted / max(self.accepted_sweeps, 1)).to(self.model.dtype)
