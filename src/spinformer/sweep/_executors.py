"""Executors: where the points of a sweep run, behind one small registry.

An executor takes a list of tasks — ``(module, experiment name, bound config)`` — and yields
``(task index, row)`` pairs *as the tasks finish*, in any order. Every executor runs the same
picklable function, :func:`run_point`, so an experiment never contains executor-specific code and
a point gives the same row wherever it runs.

- ``local``: a process pool on this machine (``concurrent.futures``), one point per core.
- ``ray``: core Ray tasks (no ``ray[tune]``) on a local instance started here, or on an existing
  cluster (``address``, or the ``RAY_ADDRESS`` environment variable Ray itself reads).
- ``dask``: tasks on a ``distributed`` scheduler (``address``), or a ``LocalCluster`` started here.

:meth:`Executor.start` connects (and fails with a ValueError: missing extra with its install
command, unreachable address) before any point runs; :meth:`Executor.close` cancels what is
still pending, so an interrupt stops the work.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import importlib.util
import math
import multiprocessing
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

__all__ = ["Executor", "Task", "available_executors", "make_executor", "register_executor"]

Task = tuple[str, str, dict[str, Any]]
"""``(module that registers the experiment, experiment name, bound config)``."""


def _json_scalar(value: Any) -> Any:
    """A metric as a JSON/CSV scalar (numbers stay numbers; non-finite floats as strings)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else str(number)


def run_point(module: str, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Run one sweep point: experiment ``name`` (registered by ``module``) on ``config``.

    Returns ``{"status": "ok" | "failed", "error", "metrics", "wall_s"}``; an exception inside
    the experiment becomes a ``failed`` row with its message, never an exception here. The
    worker uses one torch thread: a sweep's parallelism is across points.
    """
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        importlib.import_module(module)
        from spinformer.experiments import get_experiment

        result = get_experiment(name).run(config)
        metrics = {str(k): _json_scalar(v) for k, v in result.metrics.items()}
        status, error = "ok", ""
    except Exception as err:  # a failing point is recorded, the sweep goes on
        metrics = {}
        status = "failed"
        last = traceback.extract_tb(err.__traceback__)[-1:] or None
        where = f" (at {last[0].filename.rsplit(os.sep, 1)[-1]}:{last[0].lineno})" if last else ""
        error = f"{type(err).__name__}: {err}{where}"
    return {
        "status": status,
        "error": error,
        "metrics": metrics,
        "wall_s": time.perf_counter() - start,
    }


class Executor(Protocol):
    """Runs tasks and yields ``(index, row)`` as each finishes."""

    def start(self) -> None: ...

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, dict[str, Any]]]: ...

    def close(self) -> None: ...


def _check_reachable(address: str, what: str, timeout: float = 5.0) -> None:
    """Fail fast (ValueError) unless ``address``'s host:port accepts a TCP connection.

    Ray retries an unreachable GCS for minutes; a plain connect answers in at most ``timeout``.
    An address without an explicit port (``auto``, ``local``) is left to the engine.
    """
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ValueError(
            f"address: cannot reach the {what} at {address!r}: {err.strerror or err}"
        ) from None


def _require(module: str, executor: str, install: str) -> Any:
    if importlib.util.find_spec(module) is None:
        raise ValueError(
            f"executor {executor!r} needs the {module!r} package, which is not installed: "
            f"pip install {install}"
        )
    return importlib.import_module(module)


def _context() -> multiprocessing.context.BaseContext:
    """``forkserver`` with torch and the experiments preloaded (POSIX), else ``spawn``.

    The server imports the heavy modules once per process and forks each worker from that state,
    so a pool starts in well under a second after the first; plain ``fork`` of a process that may
    hold OpenMP threads is not safe, and ``spawn`` re-imports torch in every worker.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "spinformer.experiments"])
    return context


class LocalExecutor:
    """A process pool of ``workers`` processes (default: the number of usable cores)."""

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        if address is not None:
            raise ValueError("address is only for the 'ray' and 'dask' executors, got for 'local'")
        self.workers = workers or len(os.sched_getaffinity(0))
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def start(self) -> None:
        self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=_context())

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, dict[str, Any]]]:
        assert self._pool is not None, "start() first"
        futures = {self._pool.submit(run_point, *task): i for i, task in enumerate(tasks)}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor:
    """Core Ray tasks; a local instance of ``workers`` CPUs unless ``address`` names a cluster.

    An instance already initialised in this process (``ray.is_initialized()``) is used as it is
    and left running; one started here is shut down by :meth:`close`.
    """

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.ray = _require("ray", "ray", "'ray'")
        self.workers = workers
        self.address = address
        self._owned = False
        self._refs: list[Any] = []

    def start(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address:
            _check_reachable(address, "Ray cluster")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            kwargs["num_cpus"] = self.workers or len(os.sched_getaffinity(0))
        try:
            ray.init(address=self.address, **kwargs)
        except Exception as err:  # ConnectionError, or Ray's own errors for a bad address
            where = self.address or os.environ.get("RAY_ADDRESS") or "a local instance"
            raise ValueError(
                f"address: cannot connect to the Ray cluster at {where}: {err}"
            ) from None
        self._owned = True

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, dict[str, Any]]]:
        ray = self.ray
        remote = ray.remote(num_cpus=1)(run_point)
        refs = [remote.remote(*task) for task in tasks]
        self._refs = refs
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield index[ref], ray.get(ref)

    def close(self) -> None:
        for ref in self._refs:
            with contextlib.suppress(Exception):  # already finished
                self.ray.cancel(ref, force=True)
        self._refs = []
        if self._owned:
            self.ray.shutdown()
            self._owned = False


class DaskExecutor:
    """Tasks on a ``distributed`` scheduler at ``address``, or a local cluster of ``workers``."""

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.distributed = _require("distributed", "dask", "'dask[distributed]'")
        self.workers = workers
        self.address = address
        self._client: Any = None
        self._cluster: Any = None
        self._futures: list[Any] = []

    def start(self) -> None:
        distributed = self.distributed
        try:
            if self.address is not None:
                _check_reachable(self.address, "Dask scheduler")
                self._client = distributed.Client(self.address, timeout="5s")
            else:
                self._cluster = distributed.LocalCluster(
                    n_workers=self.workers or len(os.sched_getaffinity(0)),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
                self._client = distributed.Client(self._cluster)
        except (OSError, TimeoutError) as err:
            self.close()
            raise ValueError(
                f"address: cannot connect to the Dask scheduler at {self.address}: {err}"
            ) from None

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, dict[str, Any]]]:
        distributed = self.distributed
        futures = [
            self._client.submit(
                run_point, *task, pure=False, key=f"spinformer-point-{i}-{time.time_ns()}"
            )
            for i, task in enumerate(tasks)
        ]
        self._futures = futures
        index = {future.key: i for i, future in enumerate(futures)}
        for future in distributed.as_completed(futures):
            yield index[future.key], future.result()

    def close(self) -> None:
        if self._client is not None and self._futures:
            self._client.cancel(self._futures)
        self._futures = []
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


_EXECUTORS: dict[str, Callable[..., Executor]] = {}


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Register ``factory(workers=..., address=...) -> Executor`` under ``name``."""
    _EXECUTORS[name] = factory


def available_executors() -> list[str]:
    """The registered executor names (their extras may still be missing)."""
    return sorted(_EXECUTORS)


def make_executor(name: str, workers: int | None = None, address: str | None = None) -> Executor:
    """The executor ``name``; ValueError for an unknown name or a missing extra."""
    if name not in _EXECUTORS:
        raise ValueError(f"executor must be one of {available_executors()}, got {name!r}")
    return _EXECUTORS[name](workers=workers, address=address)


register_executor("local", LocalExecutor)
register_executor("ray", RayExecutor)
register_executor("dask", DaskExecutor)
