"""Typed stage results: frozen, strict, JSON for XCom, and loud about a wrong or stale upstream result."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tasks.errors import PermanentError
from tasks.results import (
    Check,
    Datasets,
    DriftReport,
    ExpectationFailure,
    Gated,
    GateDecision,
    ModelCardFiles,
    Promotion,
    Result,
    ResultError,
    Trained,
    TrainingPlan,
    Validation,
)

TRAINED = {
    "mlflow_run_id": "abc",
    "model_uri": "models:/m-1",
    "baseline_mlflow_run_id": "def",
    "baseline_model_uri": "models:/m-2",
    "family": "lightgbm",
    "train_rows": 504,
}


def test_a_result_round_trips_through_json_unchanged():
    decision = GateDecision(
        mode="enabled",
        passed=False,
        promote=False,
        primary_metric="rmse",
        champion_version="2",
        checks=[Check(name="max_rmse", passed=False, observed=170.5, threshold=150.0, reason="rmse 170.5 > max 150")],
        metrics={"candidate": {"rmse": 170.5, "r2": None}},
    )
    gated = Gated(
        decision=decision,
        model_card=ModelCardFiles(markdown="/d/card.md", html="/d/card.html"),
        summary=decision.summary(),
        report_uri="/d/gate.json",
    )
    wire = json.loads(json.dumps(gated.xcom()))  # what XCom and a pod manifest carry
    assert Gated.parse(wire) == gated and wire["decision"]["checks"][0]["observed"] == 170.5
    assert Gated.parse(gated) is gated


def test_a_stale_upstream_result_fails_naming_each_field():
    stale = {k: v for k, v in TRAINED.items() if k != "mlflow_run_id"} | {"run_id": "abc"}  # the old key
    with pytest.raises(ResultError) as err:
        Trained.parse(stale)
    message = str(err.value)
    assert message.startswith("Trained expected from the upstream stage, but it does not validate:")
    assert "mlflow_run_id: Field required" in message and "run_id: Extra inputs are not permitted" in message
    assert isinstance(err.value, PermanentError)  # no retry can fix a wrong shape


def test_wrong_types_and_values_are_refused():
    with pytest.raises(ResultError, match="train_rows: Input should be a valid integer"):
        Trained.parse(TRAINED | {"train_rows": "many"})
    with pytest.raises(ResultError, match="outcome: Input should be 'promoted'"):
        Promotion.parse({"name": "p", "version": "1", "promoted": True, "outcome": "won"})
    with pytest.raises(ResultError, match="status: Input should be 'drift'"):
        DriftReport.parse(
            {
                "pipeline": "p",
                "window_end": "2012-07-09",
                "window": [],
                "status": "fine",
                "rows": 0,
                "retrain": False,
                "decision": "",
                "reason": "",
                "summary_json": "s.json",
            }
        )
    with pytest.raises(ResultError, match=r"\(root\): Input should be a valid dictionary"):
        Datasets.parse(["not", "a", "dict"])


def test_results_are_immutable():
    plan = TrainingPlan(train=True, reason="forced", partitions=["2011-06-01"])
    with pytest.raises(ValidationError, match="frozen"):
        plan.train = False  # type: ignore[misc]
    assert TrainingPlan.model_config["extra"] == "forbid"


def test_every_result_is_strict_and_frozen():
    import tasks.results as results

    models = [v for v in vars(results).values() if isinstance(v, type) and issubclass(v, Result) and v is not Result]
    assert {m.__name__ for m in models} == {
        *("IngestedPartition", "Ingested", "ExpectationFailure", "QuarantinedPartition", "Validation"),
        *("TrainingPlan", "Datasets", "Trained", "Evaluation", "Check", "GateDecision", "Gated", "ModelCardFiles"),
        *("Registered", "Promotion", "Deployment", "Rollback", "DriftReport", "Scored", "ScoredPartition"),
        *("TrialBatch", "SearchedBatch"),
    }
    for model in models:
        assert model.model_config["frozen"] and model.model_config["extra"] == "forbid", model.__name__


def test_expectation_failures_describe_themselves_to_a_person():
    rows = ExpectationFailure(
        expectation="expect_column_values_to_be_between",
        column="hum",
        unexpected_count=6,
        element_count=24,
        examples=[1.7, 1.7, 1.7, 1.7],
        detail="expected {'min_value': 0, 'max_value': 1}",
    )
    assert rows.describe() == (
        "expect_column_values_to_be_between on column 'hum': 6 of 24 rows unexpected (e.g. [1.7, 1.7, 1.7]) "
        "expected {'min_value': 0, 'max_value': 1}"
    )
    table = ExpectationFailure(expectation="expect_table_row_count_to_be_between", detail="observed 0")
    assert table.describe() == "expect_table_row_count_to_be_between on table: observed 0"
    assert Validation(suite="s").valid == [] and Validation(suite="s").quarantined == []
