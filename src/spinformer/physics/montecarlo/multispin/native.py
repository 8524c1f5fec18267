"""The multi-spin engine's fused native kernel (``multispin.c``): sweeps and measurements in C.

Sweeps run with POSIX threads over (word plane, quarter row) tasks, one generator stream per
task, so results do not depend on the thread count. A measurement counts per replica the
unsatisfied bonds (every bond once), the down spins (white spins through the gauge) and the
flipped spins of the last sweep with bit-sliced counters, and stores the down spins for the
per-site bit-sliced counters. After recorded sweeps (those that precede measurements) all of it
happens in the white half of the last sweep, row by row while the rows are in cache; otherwise
it is one pass over the packed words.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Iterator

import torch
from torch import Tensor

from spinformer.physics.montecarlo.build import (
    advise_huge_pages,
    native_library,
    native_unavailable_reason,
)
from spinformer.physics.montecarlo.multispin.common import (
    DIGITS,
    LAGS,
    Acceptance,
    MultispinEngine,
)

__all__ = ["NativeMultispin", "release_buffers"]

_NATIVE_COUNTER_PLANES = 8  # the folds' counter: 8 planes of four words, one cache line per word
_WIDE_COUNTER_PLANES = 16  # where the counter goes every 248 measurements
_SLOTS = 8
_SLOT_PAD = 8  # must match SLOT_PAD in multispin.c


def _empty(*shape: int, dtype: torch.dtype = torch.int64) -> Tensor:
    """An uninitialised CPU tensor, on huge pages where it is large (see
    :func:`~spinformer.physics.montecarlo.build.advise_huge_pages`)."""
    out = torch.empty(shape, dtype=dtype)
    advise_huge_pages(out.data_ptr(), out.nbytes)
    return out


class _BufferPool:
    """Large uninitialised buffers of engines that are gone, kept for the next engines of the
    same size (a run of ``sample`` after another). A fresh buffer of tens of megabytes costs a
    page fault and the kernel's zeroing per (huge) page at its first touch -- at L = 1024 the
    64 MiB of slots of a run cost 25-65 ms of system time, a few sweeps -- and none of these
    buffers is read before it is written, so a used one serves as well. At most ``limit``
    bytes are kept, the oldest buffers released first; buffers are handed back only when the
    engine that held them is collected, so no two live engines share one."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.kept: list[Tensor] = []  # oldest first
        self.lock = threading.RLock()  # re-entrant: an engine may be collected inside take()

    def take(self, *shape: int) -> Tensor:
        """A kept buffer of ``shape`` (int64), the newest, or a fresh one (:func:`_empty`)."""
        with self.lock:
            for at in range(len(self.kept) - 1, -1, -1):
                if self.kept[at].shape == shape:
                    buffer = self.kept.pop(at)
                    self.held -= buffer.nbytes
                    return buffer
        return _empty(*shape)

    def give(self, buffers: list[Tensor]) -> None:
        """Keep ``buffers`` (emptied) for :meth:`take`, the oldest kept ones released while
        more than ``limit`` bytes are held."""
        with self.lock:
            for buffer in buffers:
                if buffer.nbytes <= self.limit:
                    self.kept.append(buffer)
                    self.held += buffer.nbytes
            buffers.clear()
            while self.held > self.limit:
                self.held -= self.kept.pop(0).nbytes

    def clear(self) -> None:
        """Release every kept buffer."""
        with self.lock:
            self.kept, self.held = [], 0

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Inside: no buffer is taken from the pool or kept in it (every engine allocates its
        own, as in a single run); the kept ones are there again after."""
        with self.lock:
            kept = self.kept, self.held, self.limit
            self.kept, self.held, self.limit = [], 0, 0
        try:
            yield
        finally:
            with self.lock:
                self.kept, self.held, self.limit = kept


# the slots and counter of a 64-chain L = 1024 run are 64 MiB each
_POOL = _BufferPool(320 << 20)


def release_buffers() -> int:
    """Release the large buffers that finished multi-spin runs keep for the next run of the
    same size (at most 320 MiB; e.g. 144 MiB after a 64-chain L = 1024 run that measured
    every 8th sweep), and return how many bytes were held. Runs started afterwards allocate
    fresh buffers; results never depend on which buffers a run gets."""
    with _POOL.lock:
        held = _POOL.held
        _POOL.clear()
    return held


class NativeMultispin(MultispinEngine):
    """The multi-spin engine on the fused native kernel (CPU only).

    Its large buffers (the quarters, the slots and counters of the per-site sums) are taken
    from those of engines that are gone, when their sizes match (:class:`_BufferPool`), and
    handed back when it is collected."""

    # sample() unpacks the final state and the site means only when they are read
    deferred_results = True

    def _ready(self) -> None:
        """The measurements' state and the kernel's buffers."""
        super()._ready()
        self.totals: Tensor | None = None  # (chains, *batch, N): Σ σ_i of flushed counters
        batch = max(1, math.prod(self.batch_shape))
        # per replica: unsatisfied bonds, down spins, flips of the last sweep
        self.counts = torch.zeros(3, self.groups * 64, batch, dtype=torch.int64)
        # energy, magnetization, summed flipped fraction per replica (float64)
        self.values = torch.zeros(3, self.groups * 64, batch, dtype=torch.float64)
        self.value_view = self.values.view(3, self.groups * 64, *self.batch_shape)
        scale = 2.0 * self.abs_bond.to(torch.float64).expand(self.batch_shape)
        self.scale = scale.reshape(-1).contiguous()
        self.gauge_words = self.gauge.reshape(-1).contiguous()
        self.counted_state = False
        self.flip_buffers: tuple[Tensor, ...] | None = None
        # the last sweep's flips per replica, counted by the kernel; its flip masks are kept
        # (``last_flips``) only when asked, for tests
        self.flip_counts = torch.zeros(self.groups * batch * 64, dtype=torch.int64)
        self.flips_counted = False
        self.keep_flip_masks = False
        self.measured = False  # the last sweep counted the state and wrote its slot

    def _take(self, *shape: int) -> Tensor:
        """A large int64 buffer from the pool, handed back when this engine is collected."""
        buffer = _POOL.take(*shape)
        self.pooled.append(buffer)
        return buffer

    def _setup(self, acceptance: Acceptance, generator: torch.Generator | None) -> None:
        """Per-batch acceptance digits and one generator stream per (plane, quarter row);
        refused (RuntimeError) where the kernel cannot run."""
        model = self.model
        library = native_library() if model.device.type == "cpu" else None
        if library is None:
            reason = (
                f"device {model.device}"
                if model.device.type != "cpu"
                else native_unavailable_reason()
            )
            raise RuntimeError(f"the native multispin kernel cannot run: {reason}")
        self.native = library
        # the large buffers (quarters, slots, counters) come from a pool of those of finished
        # engines, and go back to it when this one is collected
        self.pooled: list[Tensor] = []
        weakref.finalize(self, _POOL.give, self.pooled).atexit = False
        self.native_digits = (
            torch.stack(acceptance.d1, -1).reshape(-1, DIGITS).contiguous(),
            torch.stack(acceptance.d0, -1).reshape(-1, DIGITS).contiguous(),
            acceptance.q1.reshape(-1).contiguous(),
            acceptance.q0.reshape(-1).contiguous(),
        )
        streams = self.groups * math.prod(self.batch_shape) * (self.rows // 2)
        r, _ = LAGS
        state = torch.randint(
            -(2**63), 2**63 - 1, (streams, r), dtype=torch.int64, generator=generator
        )
        state[:, 0] |= 1  # an odd word in each stream's state gives the maximal period
        self.native_state = state
        self.native_position = torch.full((streams,), r, dtype=torch.int64)  # refill first

    def _load(self, state: Tensor | str, generator: torch.Generator | None) -> None:
        """As :meth:`MultispinEngine._load`, the quarters split from the words (gauge applied)
        by the kernel in one pass, into one pooled buffer; a hot start is drawn into a pooled
        buffer, handed back at once."""
        planes = self.groups * max(1, math.prod(self.batch_shape))
        h, w = self.rows // 2, self.cols // 2
        scratch = None
        if isinstance(state, str) and state != "up":
            scratch = _POOL.take(planes * self.n)
        shape = (self.groups, *self.batch_shape, self.n)
        words = self._words(state, generator, None if scratch is None else scratch.view(shape))
        words = words.contiguous()
        quarters = self._take(4, planes * h * w)
        gauge = self.gauge.reshape(-1).contiguous()
        self.native.spf_multispin_split(
            words.data_ptr(), planes, h, w, gauge.numel(), gauge.data_ptr(),
            *(quarters[q].data_ptr() for q in range(4)),
        )  # fmt: skip
        if scratch is not None:
            _POOL.give([scratch])
        view = (self.groups, *self.batch_shape, h, w)
        self.be, self.bo, self.we, self.wo = (quarters[q].view(view) for q in range(4))

    def sweep(self, count: int = 1, record: bool = True) -> None:
        """``count`` sweeps; with ``record`` the last one also counts its flips and measures
        the state it leaves (bit counts and the slot of the per-site sums, see
        :meth:`measure`) while its rows are in cache."""
        quarters = (self.be, self.bo, self.we, self.wo)
        measure = record and count > 0
        keep = record and self.keep_flip_masks
        if keep and self.flip_buffers is None:
            self.flip_buffers = tuple(torch.empty_like(q) for q in quarters)
        flips = self.flip_buffers if keep else None
        d1, d0, q1, q0 = self.native_digits
        status = self.native.spf_multispin_sweeps(
            *(q.data_ptr() for q in quarters),
            self.be.numel() // (self.be.shape[-2] * self.be.shape[-1]),
            self.be.shape[-2],
            self.be.shape[-1],
            d1.data_ptr(),
            d0.data_ptr(),
            q1.data_ptr(),
            q0.data_ptr(),
            q1.numel(),
            self.lazy_digits,
            self.native_state.data_ptr(),
            self.native_position.data_ptr(),
            *((f.data_ptr() for f in flips) if flips else (None,) * 4),
            self.flip_counts.data_ptr() if record else None,
            count,
            torch.get_num_threads(),
            self.counts.data_ptr() if measure else None,
            self.gauge_words.data_ptr(),
            self._free_slot().data_ptr() if measure else None,
        )
        if status:
            raise MemoryError("the native multispin kernel could not allocate its buffers")
        self.last_flips = flips
        self.flips_counted = record
        self.counted_state = False
        self.measured = measure

    def run(self, records: int, every: int, energy: Tensor, magnetization: Tensor) -> None:
        """The sampling loop: ``records`` times ``every`` recorded sweeps, :meth:`measure` and
        :meth:`accumulate`, the series written to ``energy`` and ``magnetization``
        ``(records, chains, *batch)``; the same states and numbers as the calls one by one,
        with the sweep's arguments built once and the values written in place by the kernel
        (no tensor operation per measurement)."""
        if self.keep_flip_masks or self.flip_buffers is not None:  # tests: call by call
            for t in range(records):
                self.sweep(every, True)
                energy[t], magnetization[t] = self.measure()
                self.accumulate()
            return
        lanes = self.counts.shape[1] * self.counts.shape[2]
        series = torch.empty(records, 2, lanes, dtype=torch.float64)
        d1, d0, q1, q0 = self.native_digits
        plane_words = self.be.shape[-2] * self.be.shape[-1]
        head = (
            *(q.data_ptr() for q in (self.be, self.bo, self.we, self.wo)),
            self.be.numel() // plane_words, *self.be.shape[-2:], d1.data_ptr(), d0.data_ptr(),
            q1.data_ptr(), q0.data_ptr(), q1.numel(), self.lazy_digits,
            self.native_state.data_ptr(), self.native_position.data_ptr(), None, None, None,
            None, self.flip_counts.data_ptr(), every, torch.get_num_threads(),
            self.counts.data_ptr(), self.gauge_words.data_ptr(),
        )  # fmt: skip
        values = (
            self.counts.data_ptr(), self.counts.shape[2] * self.groups, *self.be.shape[-2:],
            self.gauge_words.numel(), self.scale.data_ptr(),
        )  # fmt: skip
        accepted, flips = self.values[2].data_ptr(), self.flip_counts.data_ptr()
        out, step = series.data_ptr(), 2 * lanes * series.element_size()
        sweeps, values_into = (
            self.native.spf_multispin_sweeps,
            self.native.spf_multispin_values_into,
        )
        for t in range(records):
            if sweeps(*head, self._free_slot().data_ptr()):
                raise MemoryError("the native multispin kernel could not allocate its buffers")
            values_into(*values, out + t * step, accepted, flips)
            self.unfolded += 1
        self.measurements += records
        self.accepted_sweeps += records
        self.last_flips, self.flips_counted, self.measured = None, True, True
        self.counted_state = True
        self.values[:2] = series[-1].view(self.values[:2].shape)
        view = series.view(records, 2, self.groups * 64, *self.batch_shape)[:, :, : self.chains]
        energy.copy_(view[:, 0])
        magnetization.copy_(view[:, 1])

    def acceptance(self) -> Tensor:
        """Mean flipped fraction per chain, estimated on the sweeps that preceded measurements."""
        flipped = self.value_view[2, : self.chains]
        return (flipped / max(self.accepted_sweeps, 1)).to(self.model.dtype)

    def _new_counter(self) -> None:
        """8 slots of (4, *quarter) recent states (see ``multispin.c``), and no counter yet:
        the slots are folded into 8 counter planes per site word (in groups of four words,
        ``multispin.c``) when a ninth state needs a slot, or when the sums are read, so that a
        run of at most 8 measurements never allocates or folds a counter. Every 248
        measurements the counter is added into a wide counter of 16 planes (the counts then
        have ``counter_planes`` = 16), which is moved into ``totals`` before it could
        overflow; the folds always go into the 8 planes (one cache line per site word).
        Nothing is cleared: every slot is written before it is folded (unused ones zeroed
        first), and the first fold into an empty counter overwrites it. The slots are
        touched (page faults) only as they are used; kept ones (:class:`_BufferPool`) are
        not cleared either."""
        self.counter_planes = _NATIVE_COUNTER_PLANES
        self.counter_empty = True
        self.folded = 0  # states in the counter
        self.wide: Tensor | None = None
        self.wide_count = 0  # states in the wide counter
        self.unfolded = 0  # states in the slots, which fill from slot 0
        # slot-major, each slot padded by _SLOT_PAD words (a stride off the page size)
        self.slots = self._take(_SLOTS, 4 * self.be.numel() + _SLOT_PAD)

    def _free_slot(self) -> Tensor:
        """The slot for the next state, the slots folded first when all are in use."""
        if self.unfolded == _SLOTS:
            self._fold()
        return self.slots[self.unfolded]

    def _fold(self) -> None:
        """Fold the states in the slots into the per-site counters (allocated at the first
        fold; emptied into the wide counter before it could overflow)."""
        if self.unfolded < _SLOTS:  # the fold adds all slots: the unused ones zero
            self.slots[self.unfolded :].zero_()
        if self.counter is None:
            self.counter = self._take(self.be.numel(), _NATIVE_COUNTER_PLANES, 4)
            self.counter_empty = True
        elif not self.counter_empty and self.folded + _SLOTS >= 2**_NATIVE_COUNTER_PLANES:
            self._spill()
        self.native.spf_multispin_fold(
            self.slots.data_ptr(),
            self.counter.data_ptr(),
            4 * self.be.numel(),
            _NATIVE_COUNTER_PLANES,
            self.counter_empty,
        )
        self.counter_empty = False
        self.folded += self.unfolded
        self.unfolded = 0

    def _count(self, counters: bool, flips: bool = True) -> None:
        """One kernel pass: energy and magnetization per replica into ``values`` (and the
        last sweep's flipped fraction added to ``values[2]``, with ``flips``) from bit counts;
        with ``counters`` the down spins also enter the per-site sums."""
        quarters = (self.be, self.bo, self.we, self.wo)
        flips = flips and self.flips_counted
        if counters:
            self._free_slot()
        status = self.native.spf_multispin_measure(
            *(q.data_ptr() for q in quarters),
            self.counts.shape[2] * self.groups,
            self.be.shape[-2],
            self.be.shape[-1],
            self.gauge_words.numel(),
            self.gauge_words.data_ptr(),
            *(None,) * 4,
            self.slots.data_ptr() if counters else None,
            self.unfolded,
            self.counts.data_ptr(),
            self.scale.data_ptr(),
            self.values.data_ptr(),
            self.flip_counts.data_ptr() if flips else None,
            torch.get_num_threads(),
        )
        if status:
            raise MemoryError("the native multispin kernel could not allocate its buffers")

    def measure(self) -> tuple[Tensor, Tensor]:
        """Energy E = −|J|(2N − 2·unsatisfied) and magnetization 1 − 2·down/N from bit counts;
        the same pass adds the state to the per-site counters (see :meth:`accumulate`). After
        a recorded sweep the counts are the sweep's own, so no pass is needed."""
        if self.measured:
            flips = self.flip_counts.data_ptr() if self.flips_counted else None
            self.native.spf_multispin_values(
                self.counts.data_ptr(),
                self.counts.shape[2] * self.groups,
                self.be.shape[-2],
                self.be.shape[-1],
                self.gauge_words.numel(),
                self.scale.data_ptr(),
                self.values.data_ptr(),
                flips,
            )
        else:
            self._count(counters=not self.counted_state)
        if not self.counted_state:
            self.counted_state = True
            self._counted()
        values = self.value_view[:2, : self.chains].to(self.model.dtype, copy=True)
        energy, magnetization = values
        if self.flips_counted:
            self.accepted_sweeps += 1
        return energy, magnetization

    def accumulate(self) -> None:
        """Add the current spins to the per-site counters, once per state (:meth:`measure`
        already does it in its pass)."""
        if not self.counted_state:
            if not self.measured:  # else the sweep wrote the state's slot
                self._count(counters=True, flips=False)
            self.counted_state = True
            self._counted()

    def _unpack(self, words: tuple[Tensor, ...], planes: int, stride: int, offset: int,
                gauge: Tensor, a: float, scale: float, grouped: bool = False) -> Tensor:  # fmt: skip
        """(chains, *batch, N): a + scale·count, count from ``planes`` bit planes per site
        (site words ``stride`` apart, the planes from ``offset``; ``grouped``: ``words[0]``
        is the counter, in groups of four site words)."""
        dtype = self.model.dtype if self.model.dtype == torch.float64 else torch.float32
        out = _empty(self.chains, *self.batch_shape, self.n, dtype=dtype)
        status = self.native.spf_multispin_unpack(
            *(q.data_ptr() for q in words),
            planes,
            stride,
            offset,
            self.groups,
            self.gauge_words.numel(),
            self.rows // 2,
            self.cols // 2,
            self.chains,
            gauge.data_ptr(),
            a,
            scale,
            out.data_ptr(),
            out.dtype == torch.float64,
            self.be.numel() if grouped else 0,
        )
        if status:
            raise MemoryError("the native multispin kernel could not allocate its buffers")
        return out.to(self.model.dtype)

    def full_state(self) -> Tensor:
        """The spins σ = 1 − 2·(bit) of every replica, unpacked by the kernel."""
        quarters = (self.be, self.bo, self.we, self.wo)
        return self._unpack(quarters, 1, 1, 0, self.gauge_words, 1.0, -2.0)

    def _spill(self) -> None:
        """Add the counter into the wide counter (allocated at the first spill; moved into
        ``totals`` first when it could overflow) and empty it."""
        empty = self.wide is None or self.wide_count == 0
        if self.wide is None:
            self.wide = self._take(self.be.numel(), _WIDE_COUNTER_PLANES, 4)
            self.counter_planes = _WIDE_COUNTER_PLANES
        elif self.wide_count + self.folded >= 2**_WIDE_COUNTER_PLANES:
            sums = self._unpack_counter(self.wide, _WIDE_COUNTER_PLANES, self.wide_count, 1.0)
            self.totals = sums if self.totals is None else self.totals + sums
            self.wide_count, empty = 0, True
        self.native.spf_multispin_spill(
            self.counter.data_ptr(),
            self.wide.data_ptr(),
            4 * self.be.numel(),
            _NATIVE_COUNTER_PLANES,
            _WIDE_COUNTER_PLANES,
            empty,
        )
        self.wide_count += self.folded
        self.counter_empty = True
        self.folded = 0

    def _unpack_counter(self, counter: Tensor, planes: int, count: int, divisor: float) -> Tensor:
        """(Σ σ_i over the ``count`` states in ``counter``) / divisor."""
        zero = torch.zeros_like(self.gauge_words)
        used = max(1, count.bit_length())  # the planes above hold zeros
        return self._unpack(
            (counter,) * 4, used, planes, 0, zero, count / divisor, -2.0 / divisor, grouped=True
        )

    def _counter_sums(self, divisor: float) -> Tensor:
        """(Σ σ_i over the states in the counters) / divisor; empties them."""
        if self.wide_count:  # one unpacking: the counter joins the wide one
            if not self.counter_empty:
                self._spill()
            sums = self._unpack_counter(self.wide, _WIDE_COUNTER_PLANES, self.wide_count, divisor)
            self.wide_count = 0
            return sums
        if self.counter is None or self.counter_empty:
            return torch.zeros(self.chains, *self.batch_shape, self.n, dtype=self.model.dtype)
        sums = self._unpack_counter(self.counter, _NATIVE_COUNTER_PLANES, self.folded, divisor)
        self.counter_empty = True
        self.folded = 0
        return sums

    def _counted(self) -> None:
        self.unfolded += 1
        self.measurements += 1

    def site_mean(self, measurements: int) -> Tensor:
        if self.unfolded:
            self._fold()
        if self.totals is None:  # the usual case: unpacked straight into the mean
            return self._counter_sums(float(measurements))
        return (self.totals + self._counter_sums(1.0)) / measurements
