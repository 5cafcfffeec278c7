"""Extra links from Airflow tasks to what they produced (shown on the task instance page).

Airflow 3 resolves a task's links on the worker when the task finishes and keeps them as XCom, so a link
here only reads the XCom the task pushed; failed tasks keep their links too.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink

MODEL_CARD_KEY = "model_card_url"


def _pull(ti_key: Any, key: str) -> Any:
    """The XCom the task pushed under ``key`` (None outside a task instance)."""
    pull = getattr(ti_key, "xcom_pull", None)
    return pull(task_ids=ti_key.task_id, key=key) if pull is not None else None


class ModelCardLink(BaseOperatorLink):
    """The candidate's model card (MLflow UI, or the HTML file when no MLflow UI address is configured)."""

    name = "Model card"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        """The URL the gate task pushed under ``model_card_url`` (empty when it pushed none)."""
        return str(_pull(ti_key, MODEL_CARD_KEY) or "")


class DriftReportLink(BaseOperatorLink):
    """The monitoring window's Evidently report, kept on its MLflow run (``report_url`` in the task's result)."""

    name = "Drift report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        """``report_url`` from the check's returned summary (empty when MLflow has no UI address)."""
        summary = _pull(ti_key, "return_value")
        return str(summary.get("report_url") or "") if isinstance(summary, dict) else ""
