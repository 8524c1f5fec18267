"""Build, cache and load the native Monte Carlo kernels with the system C compiler.

One shared library holds the multi-spin engine's kernel (``multispin/multispin.c``) and the
compiled checkerboard (``checkerboard.c``), which share their random number generator
(``lfg.h``). The kernels are plain C11/POSIX (no Python or torch headers), so building it takes well under a
second. The shared library is cached per source and header text, compiler, flags and CPU under
``$SPINFORMER_CACHE_DIR`` (default ``$XDG_CACHE_HOME/spinformer``, else
``~/.cache/spinformer``), written to a temporary name and renamed into place, so concurrent
processes never load a half-written file. ``SPINFORMER_NATIVE=0`` switches the native path off
(the engine then runs the same algorithm as torch operations); ``CC`` names the compiler.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

__all__ = [
    "advise_huge_pages",
    "multispin_library",
    "native_disabled",
    "native_library",
    "native_unavailable_reason",
]

_SOURCES = ("multispin/multispin.c", "checkerboard.c")
_HEADERS = ("lfg.h",)  # shared by the sources, found through -I
_BASE_FLAGS = ("-O3", "-std=c11", "-shared", "-fPIC", "-pthread")
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


def native_disabled() -> bool:
    """True when ``SPINFORMER_NATIVE`` is set to ``0`` (read at every call)."""
    return os.environ.get("SPINFORMER_NATIVE", "1").strip() == "0"


def _cache_dir() -> Path:
    explicit = os.environ.get("SPINFORMER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "spinformer"


def _compiler() -> str | None:
    named = os.environ.get("CC")
    if named:
        return shutil.which(named)
    return next((found for cc in ("cc", "gcc", "clang") if (found := shutil.which(cc))), None)


def _cpu_signature() -> str:
    """The CPU feature flags (-march=native builds are only valid on a matching CPU)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _compile(cc: str, files: dict[str, bytes], target: Path) -> str | None:
    """Compile the ``files`` (package-relative name → text; headers in the top folder) to
    ``target`` atomically; ``None`` on success, else the compiler's complaint."""
    target.parent.mkdir(parents=True, exist_ok=True)
    error = ""
    with tempfile.TemporaryDirectory(prefix="spinformer-build-") as folder:
        for name, text in files.items():  # a copy: works from any installed layout
            path = Path(folder, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text)
        sources = [str(Path(folder, name)) for name in _SOURCES]
        for extra in (("-march=native",), ()):  # the portable build if the native one fails
            fd, staging = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            try:
                done = subprocess.run(
                    [cc, *_BASE_FLAGS, *extra, "-I", folder, "-o", staging, *sources],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if done.returncode == 0:
                    os.replace(staging, target)
                    return None
                error = done.stderr.strip()[-500:]
            except (OSError, subprocess.SubprocessError) as exc:
                error = str(exc)
            finally:
                if os.path.exists(staging):
                    os.unlink(staging)
    return error or "the compiler failed"


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set CC, or install cc/gcc/clang)"
    package = resources.files("spinformer.physics.montecarlo")
    files = {name: (package / name).read_bytes() for name in (*_SOURCES, *_HEADERS)}
    key = hashlib.sha256(
        b"\0".join(
            [
                *(name.encode() + b"\0" + text for name, text in files.items()),
                cc.encode(),
                " ".join(_BASE_FLAGS).encode(),
                platform.machine().encode(),
                _cpu_signature().encode(),
            ]
        )
    ).hexdigest()[:20]
    target = _cache_dir() / f"montecarlo-{key}.so"
    if not target.exists():
        try:
            error = _compile(cc, files, target)
        except OSError:  # cache directory not writable: build in a private temp dir
            target = Path(tempfile.mkdtemp(prefix="spinformer-")) / target.name
            error = _compile(cc, files, target)
        if error is not None:
            return None, f"compiling {', '.join(_SOURCES)} with {cc} failed: {error}"
    try:
        library = ctypes.CDLL(str(target))
    except OSError as exc:
        return None, f"loading {target} failed: {exc}"
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
