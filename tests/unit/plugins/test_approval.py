"""The promotion approval (plugins/mlops_airflow/approval.py): a required reason; every answer in the ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow.approval import PromotionApproval
from tasks.ledger import PromotionLedger
from tasks.settings import get_settings


@pytest.fixture
def approval(data_root, monkeypatch) -> PromotionApproval:
    from tasks import registry

    monkeypatch.setattr(registry, "champion", lambda settings, name: SimpleNamespace(version="3"))
    return PromotionApproval(task_id="approve_promotion", pipeline="bike_demand", subject="Promote?")


def _context() -> dict[str, Any]:
    ti = SimpleNamespace(xcom_pull=lambda task_ids: {"version": "4"} if task_ids == "register_model" else None)
    run = SimpleNamespace(dag_id="bike_demand_train", run_id="manual__1", triggering_user_name=None)
    return {"ti": ti, "dag_run": run}


def _answer(option: str, reason: str | None) -> dict[str, Any]:
    return {
        "chosen_options": [option],
        "params_input": {"reason": reason} if reason is not None else {},
        "responded_at": datetime(2026, 1, 1, tzinfo=UTC),
        "responded_by_user": {"id": "7", "name": "risk-officer"},
    }


def _ledger() -> list[Any]:
    return PromotionLedger(get_settings().ledger_uri).read("bike_demand")


def test_the_form_asks_for_a_reason_and_an_answer_is_recorded_with_who_and_why(approval):
    assert approval.params.get_param("reason").schema["minLength"] == 1
    approval.params.validate()  # what the task runner does at start: the unanswered form must pass
    assert approval.options == ["Approve", "Reject"]
    result = approval.execute_complete(_context(), _answer("Reject", "holdout too small for the spring shift"))
    assert result["chosen_options"] == ["Reject"]
    approval.execute_complete(_context(), _answer("Approve", "reviewed the model card"))
    declined, approved = _ledger()
    assert (declined.action, declined.from_version, declined.to_version) == ("declined", "3", "4")
    assert declined.reason == "holdout too small for the spring shift"
    assert declined.actor == "risk-officer (airflow user 7) via airflow:bike_demand_train/manual__1"
    assert (approved.action, approved.reason) == ("approved", "reviewed the model card")


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_an_answer_without_a_reason_fails_and_records_nothing(approval, reason):
    with pytest.raises(AirflowFailException, match="a reason is required"):
        approval.execute_complete(_context(), _answer("Approve", reason))
    assert _ledger() == []


def test_a_timeout_is_recorded_and_fails_the_run_without_a_retry(approval):
    event = {"error": "timed out", "error_type": "timeout"}
    with pytest.raises(AirflowFailException, match="timed out"):  # AirflowFailException: no retry asks again
        approval.execute_complete(_context(), event)
    (entry,) = _ledger()
    assert (entry.action, entry.to_version, entry.reason) == ("approval_timeout", "4", "nobody answered in time")
