"""The task pages' extra links (plugins/mlops_airflow/links.py): the URL a person clicks is the one the task pushed.

Airflow 3 resolves links on the worker when a task finishes (``task_runner.finalize`` calls
``get_link(operator=task, ti_key=ti)`` with the runtime task instance) and stores each under its
``xcom_key``. The runtime task instance needs a supervisor; ``_FinishedTask`` stands in for it with the
same ``task_id`` / ``xcom_pull`` surface over the XComs the task pushed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, BaseOperatorLink

from mlops_airflow import blocks
from mlops_airflow.links import MODEL_CARD_KEY, DriftReportLink, ModelCardLink
from tasks.results import DriftReport
from tasks.settings import get_settings
from tasks.tracking import artifact_url

RUN_ID = "0123456789abcdef0123456789abcdef"


class _FinishedTask:
    """What ``get_link`` reads of a finished task instance: its id and the XComs it pushed."""

    def __init__(self, task_id: str, xcoms: dict[str, Any]) -> None:
        self.task_id = task_id
        self.xcoms = xcoms
        self.pulled: list[tuple[Any, str]] = []

    def xcom_pull(self, task_ids: Any = None, key: str = "return_value") -> Any:
        self.pulled.append((task_ids, key))
        return self.xcoms.get(key) if task_ids == self.task_id else None


def _report(**fields: Any) -> dict[str, Any]:
    base = {
        "pipeline": "bike_demand",
        "window_end": "2011-06-28",
        "window": ["2011-06-27", "2011-06-28"],
        "status": "drift",
        "rows": 48,
        "retrain": True,
        "decision": "retrain",
        "reason": "3 of 12 columns drifted",
        "summary_json": "/data/monitoring/bike_demand/run/summary.json",
    }
    return DriftReport.parse(base | fields).xcom()  # the shape check_drift returns, validated


def test_the_model_card_link_is_the_url_the_gate_pushed(data_root, monkeypatch):
    monkeypatch.setenv("MLP_MLFLOW_UI_URL", "http://mlflow.example:5000/")
    get_settings.cache_clear()
    url = artifact_url(get_settings(), RUN_ID, "model_card/model_card.html", experiment_id="3")
    gate = _FinishedTask("gate_model", {MODEL_CARD_KEY: url, "return_value": {"model_card_url": "not this"}})
    assert ModelCardLink().get_link(None, ti_key=gate) == (
        f"http://mlflow.example:5000/#/experiments/3/runs/{RUN_ID}/artifactPath/model_card/model_card.html"
    )
    assert gate.pulled == [("gate_model", "model_card_url")]  # its own task's XCom, under the gate's key


def test_the_model_card_link_is_empty_when_nothing_was_pushed_or_outside_a_task_instance():
    assert ModelCardLink().get_link(None, ti_key=_FinishedTask("gate_model", {})) == ""
    assert ModelCardLink().get_link(None, ti_key=_FinishedTask("gate_model", {MODEL_CARD_KEY: None})) == ""
    assert ModelCardLink().get_link(None, ti_key=object()) == ""  # a bare key has no XCom to read


def test_the_drift_report_link_is_the_report_url_of_the_returned_summary():
    url = f"http://mlflow.example:5000/#/experiments/4/runs/{RUN_ID}/artifactPath/drift/report.html"
    check = _FinishedTask("check_drift", {"return_value": _report(report_url=url)})
    assert DriftReportLink().get_link(None, ti_key=check) == url
    assert check.pulled == [("check_drift", "return_value")]


def test_the_drift_report_link_is_empty_without_a_ui_address_or_a_summary():
    for returned in (_report(), None, "not a summary", ["a", "list"]):  # report_url None: MLflow has no UI address
        assert DriftReportLink().get_link(None, ti_key=_FinishedTask("check_drift", {"return_value": returned})) == ""
    assert DriftReportLink().get_link(None, ti_key=object()) == ""


def test_link_names_and_the_xcom_keys_airflow_stores_them_under():
    """The e2e test and the UI read the resolved links back under these keys."""
    assert (ModelCardLink().name, ModelCardLink().xcom_key) == ("Model card", "_link_ModelCardLink")
    assert (DriftReportLink().name, DriftReportLink().xcom_key) == ("Drift report", "_link_DriftReportLink")
    assert all(isinstance(link, BaseOperatorLink) for link in (ModelCardLink(), DriftReportLink()))


def test_the_blocks_put_each_link_on_its_task():
    with DAG("links", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC), catchup=False) as dag:
        blocks.train_and_register("bike_demand", force=True)
        blocks.monitor("bike_demand")
    links = {t.task_id: [type(x) for x in t.operator_extra_links] for t in dag.tasks if t.operator_extra_links}
    assert links == {"gate_model": [ModelCardLink], "check_drift": [DriftReportLink]}
