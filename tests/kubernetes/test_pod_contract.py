"""Pod contract: the DAGs in kubernetes mode, each rendered pod run as a local process against real stores.

The train DAG (with the torch model family, whose training pod asks for a GPU) and the monitor DAG run
through ``dag.test()`` with ``ML_ENV=prod``. The provider's real ``KubernetesPodOperator`` builds every pod;
the local kubelet runs its command with its environment (the MLflow URI arriving through the Secret) and
its shared-store volume: in the project image built from docker/Dockerfile (``podman run``, the pod's user
and fsGroup) where containers run, so the image is proven to hold what every stage needs; as a local
process elsewhere. The stages downstream of each pod consume what the pod wrote to the shared
store, so this proves the pods produce what the next stage needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.stack import Engine
from tasks.settings import Settings, get_settings
from tests.conftest import REPO, SHARED, free_port, wait_healthy, write_spec
from tests.containers import TEST_IMAGE, build_project_image, engine_if_any
from tests.kubernetes.kubelet import LocalKubelet

pytestmark = [pytest.mark.e2e, pytest.mark.needs_data]
DAYS = [f"2011-06-{d:02d}" for d in range(1, 21)]
DROP = ["instant", "casual", "registered", "cnt"]
TORCH = {
    "family": "torch",
    "params": {"hidden_units": 256, "layers": 3, "batch_size": 64, "patience": 25, "dropout": 0.05},
}


@pytest.fixture(scope="module")
def task_image() -> Iterator[tuple[Engine, str] | None]:
    """The project image, built here, and the engine to run it; None where no container runs (not in CI)."""
    engine = engine_if_any()
    if engine is None:
        yield None
        return
    build_project_image(engine, TEST_IMAGE)  # kept as the build cache (tests/containers.py says why)
    yield engine, TEST_IMAGE


@pytest.fixture
def model_server(prod_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLP_SERVING_URL", url)
    monkeypatch.setenv("MLP_SERVING_DEPLOYMENT", "")  # one server process here, not a Deployment to roll out
    monkeypatch.setenv("MLP_PIPELINES_DIR", str(write_spec(tmp_path / "specs", model=TORCH)))
    get_settings.cache_clear()
    from tasks.tracking import ensure_store

    ensure_store(get_settings())
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "tasks", "serve", "--pipelines", "bike_demand", "--port", str(port)],
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(url, timeout_s=120)
            yield url
        finally:
            server.terminate()
            server.wait(10)


def _states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


@pytest.mark.timeout(2400)  # a cold run builds the image in the fixture first (minutes)
def test_pods_carry_the_pipeline_from_validation_to_monitoring(
    airflow_db: None,
    kubelet: LocalKubelet,
    model_server: str,
    task_image: tuple[Engine, str] | None,
    tmp_path: Path,
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from tasks import stages

    settings = get_settings()
    assert settings.execution_mode == "kubernetes"
    kubelet.image_env["MLP_PIPELINES_DIR"] = os.environ["MLP_PIPELINES_DIR"]  # an image built with the test's spec
    if task_image:  # each pod is a container of the real image; the test's folders (specs) at their own paths
        engine, kubelet.image = task_image
        kubelet.engine, kubelet.engine_env = [engine.name], engine.env
        kubelet.host_mounts = [tmp_path]
    stages.replay("bike_demand", DAYS[0], DAYS[-1])
    for day in DAYS:
        stages.ingest_partition("bike_demand", day)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}

    run = bag.dags["bike_demand_train"].test()
    states = _states(run)
    assert all(s == "success" for s in states.values()), states
    pod_stages = [p.spec.containers[0].args[0] for p in kubelet.created]
    assert pod_stages == ["validate_data", "build_features", "train_model", "evaluate_model"]
    assert all(r["returncode"] == 0 for r in kubelet.runs)
    assert sorted(kubelet.deleted) == sorted(p.metadata.name for p in kubelet.created), "pods must be deleted"
    train_pod = kubelet.created[2]
    assert train_pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"  # torch asks for a GPU
    for r in kubelet.runs:  # the tracking URI reached every pod through the Secret only
        assert r["env"]["MLFLOW_TRACKING_URI"] == settings.mlflow_tracking_uri
        assert r["env"]["MLP_DATA_ROOT"] == str(settings.data_root)  # the pod's /data, where the worker sees it
        assert (r["command"][:2] == [kubelet.engine[0], "run"]) if task_image else r["command"][0] == sys.executable

    # each pod's outcome came back as a manifest in the shared store
    manifests = sorted((settings.data_root / "runs" / "bike_demand").glob("*/results/*.json"))
    assert [m.name for m in manifests] == [
        "build_features.try1.json",
        "evaluate_model.try1.json",
        "train_model.try1.json",
        "validate_data.try1.json",
    ]
    trained = json.loads(next(m for m in manifests if m.name.startswith("train")).read_text())
    assert trained["ok"] and trained["result"]["family"] == "torch"

    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    champion = client.get_model_version_by_alias("bike_demand", "champion")
    assert champion.run_id == trained["result"]["mlflow_run_id"]
    fit = client.get_run(champion.run_id).data
    assert fit.tags["fit.device"] == "cpu" and fit.metrics["fit.epochs"] >= 1  # no GPU here: device="auto" -> CPU
    assert httpx.get(f"{model_server}/health").json()["version"] == str(champion.version)

    # serve a few days, then the monitor's pod compares them with the champion's reference sample
    import pandas as pd

    data = pd.read_csv(SHARED / "bike_sharing_hour.csv.gz")
    for day in DAYS[-3:]:
        rows = data[data.dteday == day].drop(columns=DROP).to_dict("records")
        assert httpx.post(f"{model_server}/predict", json={"instances": rows}, timeout=30).status_code == 200
    end = datetime.fromisoformat(DAYS[-1]).replace(tzinfo=UTC) + timedelta(days=1, hours=2)
    run = bag.dags["bike_demand_monitor"].test(logical_date=end)
    states = _states(run)
    assert states["check_drift"] == "success", states
    monitor_pod = kubelet.created[-1]
    assert monitor_pod.spec.containers[0].args[0] == "check_drift" and monitor_pod.metadata.name in kubelet.deleted
    summaries = list((settings.data_root / "monitoring" / "bike_demand").glob("*/summary.json"))
    summary = json.loads(summaries[0].read_text())
    assert summary["rows"] == 72 and summary["champion_version"] == str(champion.version)
