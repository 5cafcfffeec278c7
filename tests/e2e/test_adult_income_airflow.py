"""The second pipeline end to end through Airflow: UCI Adult, built from its spec and suite alone.

Replays real Adult rows into daily partitions (Great Expectations quarantines a corrupted day on arrival),
trains through ``adult_income_train`` (LightGBM classifier vs logistic regression, gate with slice checks on sex and
race, model card, registry, ledger, blue/green deploy), serves it beside bike demand from one server,
retrains on new days (challenger vs champion on the same holdout), then restores v1 with the ``rollback`` DAG.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tasks.settings import get_settings
from tests.conftest import REPO, SHARED, write_spec
from tests.e2e.conftest import airflow_stack

pytestmark = [pytest.mark.e2e, pytest.mark.needs_data]
P = "adult_income"
DAYS = [f"2024-01-{d:02d}" for d in range(1, 11)]  # 2,000 real rows a day; 2024-01-02 arrives corrupted


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, airflow_db: None) -> Any:
    """Both specs (adult trimmed to an 8-day window), a fresh data root, one server for both pipelines."""
    tmp = tmp_path_factory.mktemp("adult")
    specs = write_spec(tmp / "specs")  # bike demand, served beside adult (it has no champion here)
    raw = yaml.safe_load((REPO / "config" / "pipelines" / f"{P}.yaml").read_text())
    raw["training"] |= {"window_days": 8, "holdout_days": 2, "min_partitions": 6}
    # a retrain on two newer days may be a little better or worse: accept it unless measurably worse
    raw["gate"]["champion"] = {"max_regression": 0.02, "bootstrap_samples": 300}
    raw["gate"]["slices"]["max_gap"] = 0.10  # a 2-day holdout has ~120 rows of its smallest judged group
    (specs / f"{P}.yaml").write_text(yaml.safe_dump(raw))
    with airflow_stack(tmp, specs, []) as stack:  # serves every spec: adult and bike
        yield stack


def _states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _xcom(run: Any, task_id: str, key: str) -> Any:
    ti = next(t for t in run.get_task_instances() if t.task_id == task_id)
    return ti.xcom_pull(task_ids=task_id, key=key)


def _callers_rows(n: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Real rows from the original test split, as a caller sends them (no target, no sensitive columns)."""
    import pandas as pd

    data = pd.read_csv(SHARED / "adult.csv.gz", dtype=str, keep_default_na=False).tail(n)
    y = (data["income"] == ">50K").to_numpy(dtype=float)
    inputs = data.drop(columns=["income", "split", "fnlwgt", "sex", "race"])
    rows = []
    for record in inputs.to_dict("records"):
        row: dict[str, Any] = {k: (None if v == "?" else v) for k, v in record.items()}
        for col in ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week"):
            row[col] = int(row[col])
        rows.append(row)
    return rows, y


def test_adult_income_lifecycle_through_airflow(stack: dict[str, Any]) -> None:
    from mlflow import MlflowClient
    from sklearn.metrics import roc_auc_score

    from tasks import stages
    from tasks.ledger import PromotionLedger

    dags, url, root = stack["dags"], stack["url"], stack["root"]
    settings = get_settings()
    registry = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    from tasks.validate import ValidationFailedError

    stages.replay(P, DAYS[0], DAYS[-1], corrupt=["2024-01-02"])
    for day in DAYS[:8]:  # the stage CLI's ingest: checked, staged, validated, promoted
        if day == "2024-01-02":  # the corrupted day is quarantined on arrival and never reaches raw/
            with pytest.raises(ValidationFailedError, match="age"):
                stages.ingest_partition(P, day)
        else:
            stages.ingest_partition(P, day)
    reasons = next((root / "quarantine" / P / "dt=2024-01-02").glob("*/reasons.json")).read_text()
    assert "age" in reasons and "education-num" in reasons
    assert not (root / "raw" / P / "dt=2024-01-02" / "part.parquet").exists()

    # train: the seven valid days go through gate, registry and deploy; training never saw the bad one
    run = dags[f"{P}_train"].test()
    states = _states(run)
    for task_id in (
        "validate_data",
        "report_quarantine",
        "train_model",
        "evaluate_model",
        "gate_model",
        "register_model",
        "deploy_model",
    ):
        assert states[task_id] == "success", states
    v1 = registry.get_model_version_by_alias(P, "champion")
    assert v1.version == 1 and v1.tags["gate.check.slice_gap_sex"] == "pass"
    gated = _xcom(run, "gate_model", "return_value")
    decision = gated["decision"]
    assert {c["name"] for c in decision["checks"]} >= {
        "min_roc_auc",
        "beats_baseline",
        "beats_champion",
        "slice_gap_race",
    }
    assert decision["metrics"]["candidate"]["roc_auc"] > decision["metrics"]["baseline"]["roc_auc"] > 0.85

    # the model card: on disk, on the MLflow run, as the version's description, linked from the gate task
    card_url = _xcom(run, "gate_model", "_link_ModelCardLink")
    assert card_url.startswith("http://localhost:5000/#/experiments/") and v1.run_id in card_url
    html = Path(gated["model_card"]["html"]).read_text()
    assert "slice_gap_sex" in html and "Amer-Indian-Eskimo" in html and "Ethical considerations" in html
    assert "model_card/model_card.html" in {a.path for a in registry.list_artifacts(v1.run_id, "model_card")}
    assert registry.get_model_version(P, "1").description.startswith(f"# Model card: {P}")

    # one server, two pipelines: adult answers probabilities, bike (no champion here) answers 503
    rows, y = _callers_rows(400)
    reply = httpx.post(f"{url}/models/{P}/predict", json={"instances": rows}, timeout=30)
    assert reply.status_code == 200, reply.text
    scores = np.array(reply.json()["predictions"])
    assert ((scores >= 0) & (scores <= 1)).all() and roc_auc_score(y, scores) > 0.85
    assert httpx.post(f"{url}/models/bike_demand/predict", json={"instances": [{}]}).status_code == 503
    assert httpx.get(f"{url}/health").json()["model"] == "bike_demand"  # POST /predict stays bike demand's
    bad = httpx.post(f"{url}/models/{P}/predict", json={"instances": [rows[0] | {"age": "forty"}]})
    assert bad.status_code == 422 and "instances[0].age: expected long" in bad.json()["detail"]

    # two more days land through the ingest DAG; a forced retrain is judged against champion v1
    for day in DAYS[8:]:
        ingest = dags[f"{P}_ingest"].test(logical_date=datetime.fromisoformat(day).replace(tzinfo=UTC))
        assert str(ingest.state) == "success", _states(ingest)
    run = dags[f"{P}_train"].test(run_conf={"force": True})
    assert _states(run)["deploy_model"] == "success", _states(run)
    champion_check = next(
        c for c in _xcom(run, "gate_model", "return_value")["decision"]["checks"] if c["name"] == "beats_champion"
    )
    assert "champion v1" in champion_check["reason"] and "CI" in champion_check["reason"]
    assert registry.get_model_version_by_alias(P, "champion").version == 2
    assert httpx.get(f"{url}/health").json()["models"][P]["version"] == "2"

    # the rollback DAG restores v1 and redeploys it; the ledger tells the story
    run = dags["rollback"].test(run_conf={"pipeline": P, "reason": "e2e: v2 complaints"})
    assert _states(run) == {"rollback_model": "success", "deploy_model": "success"}
    assert registry.get_model_version_by_alias(P, "champion").version == 1
    assert registry.get_model_version_by_alias(P, "previous").version == 2
    assert httpx.get(f"{url}/health").json()["models"][P]["version"] == "1"
    entries = PromotionLedger(settings.ledger_uri).read(P)
    ledger = [(e.action, e.from_version, e.to_version) for e in entries]
    assert ledger == [
        ("promote", None, "1"),
        ("serve", None, "1"),  # the model server's own record of each deploy
        ("promote", "1", "2"),
        ("serve", "1", "2"),
        ("rollback", "2", "1"),
        ("serve", "2", "1"),
    ]
    rollback, served = entries[-2:]
    assert rollback.actor.startswith("airflow:rollback/") and rollback.reason == "e2e: v2 complaints"
    assert served.actor == f"{rollback.actor} via admin token" and "champion alias" in served.reason
