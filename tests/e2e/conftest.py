"""What every end-to-end module needs: its own specs and data root, a model server, and the DAGs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tasks.settings import get_settings
from tests.conftest import REPO, free_port, wait_healthy


@contextmanager
def airflow_stack(tmp: Path, specs: Path, serve: list[str]) -> Iterator[dict[str, Any]]:
    """Point the settings at ``specs`` and a fresh data root, start ``python -m tasks serve *serve``, parse the DAGs.

    Yields ``url`` (the model server), ``dags`` (dag_id -> DAG, for ``dag.test()``), ``root`` and ``log``.
    Everything set here, including the MLflow URIs MLflow writes into ``os.environ``, is undone on exit.
    """
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(var, raising=False)
        mp.setenv("MLP_PIPELINES_DIR", str(specs))
        mp.setenv("MLP_DATA_ROOT", str(tmp / "data"))
        mp.setenv("MLP_SERVING_URL", f"http://127.0.0.1:{port}")
        get_settings.cache_clear()
        from tasks.tracking import ensure_store

        ensure_store(get_settings())
        log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            [sys.executable, "-m", "tasks", "serve", *serve, "--port", str(port)],
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, timeout_s=120)
            from airflow.dag_processing.dagbag import DagBag

            bag = DagBag(dag_folder=str(REPO / "dags"))
            assert bag.import_errors == {}
            yield {"url": url, "dags": bag.dags, "root": tmp / "data", "log": tmp / "server.log"}
        finally:
            server.terminate()
            server.wait(10)
            log.close()
            get_settings.cache_clear()
