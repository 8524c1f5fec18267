"""Build, cache and load the native Monte Carlo kernels with the system C compiler.

One shared library holds the multi-spin engine's kernel (``multispin/multispin.c``) and the
compiled checkerboard (``checkerboard.c``), which share their random number generator
(``lfg.h``). Building and caching are those of :mod:`spinformer._native`: plain C11/POSIX
built at first use, cached per source text, compiler and CPU; ``SPINFORMER_NATIVE=0`` switches
the native path off (the engine then runs the same algorithm as torch operations); ``CC``
names the compiler.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

from spinformer._native import build_library, native_disabled
from spinformer._native import compiler as _compiler

__all__ = [
    "advise_huge_pages",
    "multispin_library",
    "native_disabled",
    "native_library",
    "native_unavailable_reason",
]

_SOURCES = ("multispin/multispin.c", "checkerboard.c")
_HEADERS = ("lfg.h",)  # shared by the sources, found through -I
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_HUGE_PAGE = 2 << 20  # transparent huge pages of x86-64 and most arm64 Linux kernels
_MADV_HUGEPAGE = 14  # <sys/mman.h> on Linux


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    call.argtypes = [_PTR, ctypes.c_size_t, ctypes.c_int]
    call.restype = ctypes.c_int
    return call


def advise_huge_pages(address: int, size: int) -> None:
    """Ask Linux to back the not yet touched memory [address, address + size) with transparent
    huge pages (``madvise(MADV_HUGEPAGE)``, for the whole 2 MiB pages inside it).

    A fresh buffer of tens of megabytes otherwise costs one page fault per 4 KiB at its first
    touch (~100 ms for 64 MiB on a server CPU, several times the cost of writing it); with
    2 MiB pages, a fault per 2 MiB. Only the page size changes (contents, addresses and
    ownership stay); a no-op on other systems, where the kernel refuses, or for small sizes.
    """
    madvise = _madvise()
    start = -(-address // _HUGE_PAGE) * _HUGE_PAGE
    end = (address + size) // _HUGE_PAGE * _HUGE_PAGE
    if madvise is not None and end > start:
        madvise(start, end - start, _MADV_HUGEPAGE)  # refused (e.g. THP off): nothing changes


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    library, reason = build_library(
        "spinformer.physics.montecarlo", _SOURCES, _HEADERS, "montecarlo", _compiler()
    )
    if library is None:
        return None, reason
    sweeps = library.spf_multispin_sweeps
    sweeps.restype = ctypes.c_int
    sweeps.argtypes = [*[_PTR] * 4, *[_I64] * 3, *[_PTR] * 4, *[_I64] * 2, *[_PTR] * 7,
                       *[_I64] * 2, *[_PTR] * 3]  # fmt: skip
    measure = library.spf_multispin_measure
    measure.restype = ctypes.c_int
    measure.argtypes = [*[_PTR] * 4, *[_I64] * 4, *[_PTR] * 6, _I64, *[_PTR] * 4, _I64]
    values = library.spf_multispin_values
    values.restype = None
    values.argtypes = [_PTR, *[_I64] * 4, _PTR, _PTR, _PTR]
    values_into = library.spf_multispin_values_into
    values_into.restype = None
    values_into.argtypes = [_PTR, *[_I64] * 4, *[_PTR] * 4]
    unpack = library.spf_multispin_unpack
    unpack.restype = ctypes.c_int
    unpack.argtypes = [*[_PTR] * 4, *[_I64] * 8, _PTR, ctypes.c_double, ctypes.c_double, _PTR]
    unpack.argtypes += [_I64, _I64]
    library.spf_multispin_spill.restype = None
    library.spf_multispin_spill.argtypes = [_PTR, _PTR, *[_I64] * 4]
    split = library.spf_multispin_split
    split.restype = None
    split.argtypes = [_PTR, *[_I64] * 4, *[_PTR] * 5]
    library.spf_multispin_fold.restype = None
    library.spf_multispin_fold.argtypes = [_PTR, _PTR, _I64, _I64, _I64]
    single = library.spf_checkerboard_sweeps
    single.restype = ctypes.c_int
    single.argtypes = [_PTR, _PTR, *[_I64] * 4, *[_PTR] * 4, _I64]
    single_measure = library.spf_checkerboard_measure
    single_measure.restype = ctypes.c_int
    single_measure.argtypes = [_PTR, _PTR, *[_I64] * 4, *[_PTR] * 5]
    run = library.spf_checkerboard_run
    run.restype = ctypes.c_int
    run.argtypes = [_PTR, _PTR, *[_I64] * 4, *[_PTR] * 4, _I64, _I64, *[_PTR] * 7]
    compact = library.spf_checkerboard_compact
    compact.restype = None
    compact.argtypes = [_PTR, *[_I64] * 3, _PTR, _PTR, _I64]
    grid = library.spf_checkerboard_grid
    grid.restype = ctypes.c_int
    grid.argtypes = [_PTR, _PTR, *[_I64] * 3, _PTR, ctypes.c_double, _PTR, _I64]
    return library, None


def native_library() -> ctypes.CDLL | None:
    """The loaded kernels, or ``None`` when they are switched off or cannot be built here."""
    if native_disabled():
        return None
    return _load()[0]


multispin_library = native_library  # the name under which the multi-spin engine used it


def native_unavailable_reason() -> str | None:
    """Why :func:`native_library` returns ``None`` (``None`` when it does not)."""
    if native_disabled():
        return "SPINFORMER_NATIVE=0"
    return _load()[1]
