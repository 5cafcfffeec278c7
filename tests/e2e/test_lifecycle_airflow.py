"""End to end through Airflow: the bike-demand DAGs (ingest, train, score, monitor) on a slice of the real data.

Runs each DAG with ``dag.test()`` against a real (SQLite) Airflow metadata DB, a real MLflow store and a
real model server process. The spec is the shipped one with a shorter window, so the test stays fast.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasks.settings import get_settings
from tests.conftest import SHARED, write_spec
from tests.e2e.conftest import airflow_stack

pytestmark = [pytest.mark.e2e, pytest.mark.needs_data]
DROP = ["instant", "casual", "registered", "cnt"]
# A 20-day window with a 4-day holdout: long enough that the real gate passes honestly in both years.
TRAIN_DAYS = [f"2011-06-{d:02d}" for d in range(1, 21)]  # 2011-06-05 arrives corrupted
LABEL_DAYS = [f"2012-07-{d:02d}" for d in range(1, 21)]  # labels of a full window: the retrain uses 2012 only
SERVED_DAYS = LABEL_DAYS[-3:]  # the monitor's 3-day window before 2012-07-21


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, session_state: Path, airflow_db: None) -> Any:
    """Airflow metadata DB migrated, a trimmed spec, a fresh data root and a running model server."""
    tmp = tmp_path_factory.mktemp("e2e")
    # landing timeout: a missing file fails the sensor in ~36 s instead of waiting 12 h
    write_spec(tmp / "specs", landing_timeout_hours=0.01)
    with airflow_stack(tmp, tmp / "specs", ["--pipelines", "bike_demand"]) as stack:
        yield stack


def _states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _day(d: str) -> datetime:
    return datetime.fromisoformat(d).replace(tzinfo=UTC)


def _ingest(dags: dict[str, Any], day: str) -> Any:
    """Run ingestion for ``day`` (``dag.test()`` sets no partition key: the run's logical date names the day)."""
    return dags["bike_demand_ingest"].test(logical_date=_day(day))


def test_bike_demand_lifecycle_through_airflow(stack: dict[str, Any]) -> None:
    from tasks import stages

    dags, url, root = stack["dags"], stack["url"], stack["root"]
    stages.replay("bike_demand", TRAIN_DAYS[0], TRAIN_DAYS[-1], corrupt=["2011-06-05"])

    # ingest: one DAG run per day; each validates its partition; the corrupt day is quarantined on arrival
    for day in TRAIN_DAYS:
        run = _ingest(dags, day)
        states = _states(run)
        if day == "2011-06-05":
            assert str(run.state) == "failed" and states["report_quarantine"] == "failed", states  # it says so
            assert states["publish_partitions"] == "skipped", states  # and training hears nothing of it
        else:
            assert str(run.state) == "success", (day, states)
    quarantined = root / "quarantine" / "bike_demand" / "dt=2011-06-05"
    assert list(quarantined.glob("*/reasons.json")) and list(quarantined.glob("*/part.parquet"))
    assert "2011-06-05" in next(quarantined.glob("*/reasons.json")).read_text()
    assert not (root / "raw" / "bike_demand" / "dt=2011-06-05" / "part.parquet").exists()  # its history stays
    assert len(list((root / "raw" / "bike_demand").glob("dt=*/part.parquet"))) == len(TRAIN_DAYS) - 1

    # train: the good days go all the way through
    run = dags["bike_demand_train"].test()
    states = _states(run)
    for task_id in (
        "validate_data",
        "report_quarantine",
        "build_features",
        "train_model",
        "evaluate_model",
        "gate_model",
        "register_model",
        "promote_model",
        "deploy_model",
    ):
        assert states[task_id] == "success", states

    from mlflow import MlflowClient

    settings = get_settings()
    registry = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    v1 = registry.get_model_version_by_alias("bike_demand", "champion")
    assert "2011-06-05" not in v1.tags["data.train_partitions"] + v1.tags["data.holdout_partitions"]
    assert httpx.get(f"{url}/health").json()["version"] == str(v1.version)

    # serve real 2012 rows; the model server answers and logs them
    import pandas as pd

    data = pd.read_csv(SHARED / "bike_sharing_hour.csv.gz")
    for day in SERVED_DAYS:
        rows = data[data.dteday == day].drop(columns=DROP).to_dict("records")
        reply = httpx.post(f"{url}/predict", json={"instances": rows}, timeout=30)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["predictions"]) == len(rows) and reply.json()["model_version"] == str(v1.version)

    # labels land; the nightly monitor sees 2012 drift and requests a retrain through the Asset
    stages.replay("bike_demand", LABEL_DAYS[0], LABEL_DAYS[-1])
    for day in LABEL_DAYS:
        assert str(_ingest(dags, day).state) == "success"

    # batch scoring: the score DAG scores one day of the window with the champion, into scores/ (what the raw
    # Asset event does for each new partition); the monitor counts those rows beside the served ones
    scored_day = SERVED_DAYS[-1]
    run = dags["bike_demand_score"].test(run_conf={"partition": scored_day})
    assert _states(run) == {"resolve_champion": "success", "score_partitions": "success"}, _states(run)
    scored = root / "scores" / "bike_demand" / f"dt={scored_day}"
    assert json.loads((scored / "scored.json").read_text())["model_version"] == str(v1.version)
    n_scored = len(pd.read_parquet(root / "raw" / "bike_demand" / f"dt={scored_day}" / "part.parquet"))
    assert len(pd.read_parquet(scored / f"v{v1.version}.parquet")) == n_scored

    end = _day(LABEL_DAYS[-1]) + timedelta(days=1, hours=2)
    run = dags["bike_demand_monitor"].test(logical_date=end)
    assert _states(run) == {"check_drift": "success", "drift_detected": "success", "request_retrain": "success"}
    reports = list((root / "monitoring" / "bike_demand").glob("*/drift.html"))
    assert reports and list((root / "monitoring" / "bike_demand").glob("*/summary.json"))
    summary = json.loads(next((root / "monitoring" / "bike_demand").glob("*/summary.json")).read_text())
    assert summary["rows_by_source"]["batch"] == n_scored and summary["rows_by_source"]["served"] > 0
    # the task links to the report kept on the window's MLflow run
    check = next(t for t in run.get_task_instances() if t.task_id == "check_drift")
    report_url = check.xcom_pull(task_ids="check_drift", key="_link_DriftReportLink")
    assert report_url.startswith("http://localhost:5000/#/experiments/") and report_url.endswith("/drift.html")
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == "ml://bike_demand/retrain")
        ).all()
        assert events and events[-1].extra["drifted_columns"]

    # the retrain (the scheduler would start it from that event; here the same DAG, forced) -> new champion
    run = dags["bike_demand_train"].test(run_conf={"force": True})
    assert _states(run)["deploy_model"] == "success", _states(run)
    v2 = registry.get_model_version_by_alias("bike_demand", "champion")
    assert int(v2.version) > int(v1.version)
    assert str(registry.get_model_version_by_alias("bike_demand", "previous").version) == str(v1.version)
    assert httpx.get(f"{url}/health").json()["version"] == str(v2.version)
