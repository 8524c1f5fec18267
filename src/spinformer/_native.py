"""Build, cache and load native kernels with the system C compiler.

The kernels are plain C11/POSIX sources shipped inside the package (no Python or torch headers),
so building one takes about a second. Each shared library is cached per source and header text,
compiler, flags and CPU under ``$SPINFORMER_CACHE_DIR`` (default ``$XDG_CACHE_HOME/spinformer``,
else ``~/.cache/spinformer``), written to a temporary name and renamed into place, so concurrent
processes never load a half-written file. ``SPINFORMER_NATIVE=0`` switches every native path off
(the callers then run the same computation as torch operations); ``CC`` names the compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

__all__ = ["BASE_FLAGS", "build_library", "compiler", "native_disabled"]

BASE_FLAGS = ("-O3", "-std=c11", "-shared", "-fPIC", "-pthread")


def native_disabled() -> bool:
    """True when ``SPINFORMER_NATIVE`` is set to ``0`` (read at every call)."""
    return os.environ.get("SPINFORMER_NATIVE", "1").strip() == "0"


def _cache_dir() -> Path:
    explicit = os.environ.get("SPINFORMER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "spinformer"


def compiler() -> str | None:
    """The C compiler: ``$CC`` if set, else the first of cc, gcc, clang on the path."""
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


def _compile(
    cc: str,
    files: dict[str, bytes],
    sources: Sequence[str],
    target: Path,
    flags: Sequence[str] = (),
) -> str | None:
    """Compile the ``sources`` among ``files`` (package-relative name → text; headers in the top
    folder) to ``target`` atomically, with the optional ``flags`` if the compiler takes them;
    ``None`` on success, else the compiler's complaint."""
    target.parent.mkdir(parents=True, exist_ok=True)
    error = ""
    with tempfile.TemporaryDirectory(prefix="spinformer-build-") as folder:
        for name, text in files.items():  # a copy: works from any installed layout
            path = Path(folder, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text)
        paths = [str(Path(folder, name)) for name in sources]
        attempts = [(*flags, "-march=native"), tuple(flags), ("-march=native",), ()]
        for extra in dict.fromkeys(attempts):  # the portable build if the native one fails
            fd, staging = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            try:
                done = subprocess.run(
                    [cc, *BASE_FLAGS, *extra, "-I", folder, "-o", staging, *paths, "-lm"],
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


def build_library(
    package: str,
    sources: Sequence[str],
    headers: Sequence[str],
    name: str,
    cc: str | None,
    flags: Sequence[str] = (),
) -> tuple[ctypes.CDLL | None, str | None]:
    """(the loaded library, ``None``) built from the ``sources`` and ``headers`` (paths relative
    to ``package``) with the compiler ``cc`` (and the optional ``flags``, left out if it refuses
    them) and cached as ``<name>-<key>.so``, or (``None``, why not)."""
    if cc is None:
        return None, "no C compiler found (set CC, or install cc/gcc/clang)"
    folder = resources.files(package)
    files = {path: (folder / path).read_bytes() for path in (*sources, *headers)}
    key = hashlib.sha256(
        b"\0".join(
            [
                *(path.encode() + b"\0" + text for path, text in files.items()),
                cc.encode(),
                " ".join((*BASE_FLAGS, *flags)).encode(),
                platform.machine().encode(),
                _cpu_signature().encode(),
            ]
        )
    ).hexdigest()[:20]
    target = _cache_dir() / f"{name}-{key}.so"
    if not target.exists():
        try:
            error = _compile(cc, files, sources, target, flags)
        except OSError:  # cache directory not writable: build in a private temp dir
            target = Path(tempfile.mkdtemp(prefix="spinformer-")) / target.name
            error = _compile(cc, files, sources, target, flags)
        if error is not None:
            return None, f"compiling {', '.join(sources)} with {cc} failed: {error}"
    try:
        return ctypes.CDLL(str(target)), None
    except OSError as exc:
        return None, f"loading {target} failed: {exc}"
