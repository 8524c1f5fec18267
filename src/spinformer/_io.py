"""Atomic output files and the directories spinformer owns.

Everything spinformer writes (``spinformer run --out``, ``spinformer report --out``) goes through
this module, which gives three guarantees:

1. **Each file is replaced atomically.** Its bytes go to a temporary file in the *same* directory,
   are flushed to disk, and ``os.replace`` puts it in place (a POSIX rename within one filesystem
   is atomic). A reader, an interrupt or a crash sees the old complete file or the new complete
   one, never a half-written one, and the directory itself is never moved away.
2. **spinformer only deletes or replaces what it wrote.** An output directory carries a manifest,
   ``.spinformer-manifest.json``, listing the files spinformer wrote into it. spinformer writes into
   a new or empty directory or into one with a manifest, and refuses any other non-empty directory,
   anything that is not a directory, and an output whose file name is taken by a file the manifest
   does not list. Of the previous output, it removes only the files the manifest lists and the new
   output no longer has; files a user put there are never touched.
3. **Concurrent writers are safe.** A writer holds an exclusive ``flock`` on the directory while it
   puts its files in place, so two processes writing one directory both succeed and the directory
   ends up holding one complete, consistent output (the last one). The renames of one output run
   with SIGINT deferred (main thread), so Ctrl-C never leaves half of one output and half of the
   previous one; before that point an interrupt leaves the previous output untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere writers are not serialised (each file is still replaced atomically)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["MANIFEST_NAME", "atomic_write", "check_output_dir", "file_sha256", "write_output_dir"]

MANIFEST_NAME = ".spinformer-manifest.json"
"""The file that marks a directory as spinformer output and lists the files spinformer wrote."""

_TEMP_PREFIX = ".spinformer-tmp-"

_UMASK = os.umask(0)
os.umask(_UMASK)


def _new_file_mode(path: Path) -> int:
    """Permissions for a replaced file: the old file's, else the default for a new file."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def _stage(path: Path, data: bytes | str, created: list[Path] | None = None) -> Path:
    """Write ``data`` to a flushed temporary file next to ``path``; return the temporary path.

    The temporary path is appended to ``created`` as soon as it exists, so that a caller
    interrupted at any later point can remove it.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=path.parent)
    staged = Path(name)
    if created is not None:
        created.append(staged)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(staged, _new_file_mode(path))
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return staged


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Replace the file ``path`` by ``data`` (str is written as UTF-8) atomically.

    The bytes are written to a temporary file in ``path``'s directory, flushed, and renamed over
    ``path`` with ``os.replace``; on any error or interrupt the temporary file is removed and
    ``path`` is left as it was. Missing parent directories are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = _stage(target, data)
    try:
        os.replace(staged, target)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return target


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes as hex, read in 4 MiB blocks (model weights are large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_plain_name(name: str) -> bool:
    return (
        bool(name)
        and name not in (".", "..", MANIFEST_NAME)
        and "/" not in name
        and os.sep not in name
        and not name.startswith(_TEMP_PREFIX)
    )


def _foreign_entries(directory: Path) -> list[str]:
    """Entries of ``directory`` unless it is spinformer's (has a manifest) or empty."""
    entries = [e for e in os.listdir(directory) if not e.startswith(_TEMP_PREFIX)]
    return [] if MANIFEST_NAME in entries else sorted(entries)


def _probe_writable(directory: Path, name: str, target: Path) -> None:
    """Raise unless a file can be created in ``directory`` (tried, then removed at once)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=directory)
    except OSError as err:
        raise ValueError(
            f"{name} {str(target)!r} is not writable: {err.strerror or err} ({directory})"
        ) from None
    os.close(fd)
    Path(probe).unlink(missing_ok=True)


def _unlisted_targets(
    directory: Path, file_names: Iterable[str], listed: Iterable[str]
) -> list[str]:
    """Names among ``file_names`` that exist in ``directory`` but spinformer did not write."""
    known = set(listed)
    return sorted(f for f in file_names if f not in known and os.path.lexists(directory / f))


def _refuse_unlisted(name: str, directory: Path, unlisted: list[str]) -> None:
    if unlisted:
        raise ValueError(
            f"{name} {str(directory)!r} holds {', '.join(unlisted)}, which spinformer did not "
            f"write ({MANIFEST_NAME} does not list it) and would have to replace; move it away "
            "or choose another directory"
        )


def check_output_dir(
    path: str | os.PathLike[str], name: str = "out_dir", file_names: Iterable[str] = ()
) -> Path:
    """Check, before any work and without writing anything, that ``path`` can take an output.

    ``path`` must be a new directory under a writable one, an empty directory, or a directory
    spinformer wrote (it has a manifest). ``name`` is the argument or option named in the error.
    ``file_names``, the files the output will have where known in advance, must not exist there
    unless the manifest lists them.

    Raises:
        ValueError: ``path`` is an existing file, a non-empty directory spinformer did not write,
            holds one of ``file_names`` that spinformer did not write, or cannot be created or
            written.
    """
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            raise ValueError(
                f"{name} must be a directory, but {str(target)!r} is an existing file; "
                "spinformer never replaces files it did not write: choose a new or empty directory"
            )
        foreign = _foreign_entries(target)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ValueError(
                f"{name} {str(target)!r} is a non-empty directory that spinformer did not write "
                f"(no {MANIFEST_NAME}; it holds {shown}); spinformer never deletes or replaces "
                "files it did not write: choose a new or empty directory (an output of a "
                "spinformer version without manifests must be removed by hand once)"
            )
        _refuse_unlisted(
            name, target, _unlisted_targets(target, file_names, _read_manifest(target))
        )
        _probe_writable(target, name, target)
        return target
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(
            f"{name} {str(target)!r} cannot be created: {str(ancestor)!r} is not a directory"
        )
    _probe_writable(ancestor, name, target)
    return target


def _read_manifest(directory: Path) -> list[str]:
    """The file names the manifest lists (only plain names; unreadable manifest: none)."""
    try:
        listed = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(listed, list):
        return []
    return [f for f in listed if isinstance(f, str) and _is_plain_name(f)]


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``directory`` (flock on the directory itself; no lock file)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold back SIGINT (main thread only); one that arrived is re-raised to the old handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        signal.raise_signal(signal.SIGINT)


def _manifest_bytes(files: list[str], command: str) -> str:
    from spinformer import __version__

    record = {
        "written_by": f"spinformer {__version__}",
        "command": command,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    return json.dumps(record, indent=2) + "\n"


def write_output_dir(
    path: str | os.PathLike[str],
    files: Mapping[str, bytes | str],
    command: str,
    name: str = "out_dir",
) -> list[Path]:
    """Write ``files`` (file name -> content) into the spinformer output directory ``path``.

    The directory is created if needed and checked as in :func:`check_output_dir`. Every file is
    staged next to its target first; then, under the directory lock and with SIGINT deferred, each
    is renamed into place, the files of the previous output that this one no longer has (those the
    manifest lists, nothing else) are removed, and the manifest is rewritten. ``command`` is
    recorded in the manifest.

    Returns the paths written. Raises ValueError for a bad ``path`` or file name (nothing written).
    """
    for file_name in files:
        if not _is_plain_name(file_name):
            raise ValueError(f"output file names must be plain file names, got {file_name!r}")
    directory = check_output_dir(path, name)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}
    temporaries: list[Path] = []
    committing = False
    try:
        for file_name, data in files.items():
            staged[file_name] = _stage(directory / file_name, data, temporaries)
        with _directory_lock(directory):
            foreign = _foreign_entries(directory)
            if foreign:  # someone else filled it since the check
                raise ValueError(
                    f"{name} {str(directory)!r} is a non-empty directory that spinformer did not "
                    "write; choose a new or empty directory"
                )
            previous = _read_manifest(directory)
            new = list(files)
            _refuse_unlisted(name, directory, _unlisted_targets(directory, new, previous))
            with _sigint_deferred():
                committing = True
                claim = sorted(set(previous) | set(new))  # a crash from here on stays listed
                atomic_write(directory / MANIFEST_NAME, _manifest_bytes(claim, command))
                for file_name in new:
                    os.replace(staged[file_name], directory / file_name)
                for stale in sorted(set(previous) - set(new)):
                    stale_path = directory / stale
                    if stale_path.is_symlink() or stale_path.is_file():
                        stale_path.unlink(missing_ok=True)
                atomic_write(directory / MANIFEST_NAME, _manifest_bytes(sorted(new), command))
            with contextlib.suppress(OSError):  # make the renames durable where supported
                fd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    except BaseException:
        for leftover in temporaries:  # those already renamed into place are gone
            leftover.unlink(missing_ok=True)
        if created and not committing:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only succeeds while it is still empty
        raise
    return [directory / file_name for file_name in files]
