"""The same sweep gives identical rows on the local pool, on Ray and on Dask (when installed).

One local Ray instance (``ray.init(num_cpus=2)``, about 10 s) serves the whole module and is shut
down at its end; the Dask test starts its own ``LocalCluster``. Rows are compared on every column
but the wall time. Both run in the default suite (Ray: ~15-40 s with its start-up; Dask: ~10-20 s):
the sweep extra that `make test` installs brings both.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_sweep  # noqa: F401  (registers the closed-form probe experiment)

from spinformer.sweep import sweep

GRID = {"x": [0.5, 1.5, 2.5]}
FIXED = {"fail_at": 1.5}


def _without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


@pytest.fixture(scope="module")
def worker_path() -> Iterator[None]:
    """Workers started by Ray or Dask find this directory's probe and the sources under test."""
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    yield
    if previous is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = previous


@pytest.fixture(scope="module")
def local_rows(worker_path: None, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("local") / "run"
    return sweep("sweep_probe", GRID, seeds=2, fixed=FIXED, out=out, workers=2).rows


@pytest.fixture(scope="module")
def ray_instance(worker_path: None) -> Iterator[object]:
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_rows_identical_to_local(
    ray_instance: object, local_rows: list[dict], tmp_path: Path
) -> None:
    result = sweep("sweep_probe", GRID, seeds=2, fixed=FIXED, executor="ray", out=tmp_path / "r")
    assert _without_time(result.rows) == _without_time(local_rows)
    assert [r["status"] for r in result.rows].count("failed") == 2
    assert (tmp_path / "r" / "results.csv").read_text().count("\n") == 7


def test_dask_rows_identical_to_local(local_rows: list[dict], tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    result = sweep(
        "sweep_probe", GRID, seeds=2, fixed=FIXED, executor="dask", workers=2, out=tmp_path / "d"
    )
    assert _without_time(result.rows) == _without_time(local_rows)
