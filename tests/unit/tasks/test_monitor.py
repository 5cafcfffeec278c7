from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tasks import stages
from tasks.monitor import served_inputs, window_days
from tasks.serving.app import create_app
from tasks.settings import get_settings
from tasks.storage import DataLayout
from tests.conftest import SHARED
from tests.unit.tasks.conftest import raw_rows

pytestmark = pytest.mark.needs_data
DROP = ["instant", "casual", "registered", "cnt"]


def test_window_is_the_event_days_before_the_interval_end():
    assert window_days("2012-06-25T02:00:00+00:00", 3) == ["2012-06-22", "2012-06-23", "2012-06-24"]
    assert window_days("2012-06-25T00:00:00+00:00", 1) == ["2012-06-24"]


def _serve(start: str, end: str) -> None:
    with TestClient(create_app(get_settings(), ["bike_demand"])) as client:
        rows = raw_rows(SHARED, start, end).drop(columns=DROP)
        for _, day in rows.groupby("dteday"):
            assert client.post("/predict", json={"instances": day.to_dict("records")}).status_code == 200


def test_no_champion_means_no_check(data_root):
    summary = stages.monitor("bike_demand", "2012-06-25T02:00:00+00:00", "m0")
    assert summary["status"] == "no_champion" and summary["retrain"] is False
    assert (data_root / "monitoring" / "bike_demand" / "m0" / "summary.json").is_file()


def test_drift_on_2012_traffic_requests_retrain_and_saves_reports(use_champion_store):
    _serve("2012-07-02", "2012-07-08")  # a hot week of 2012 against a June 2011 champion
    stages.replay("bike_demand", "2012-07-02", "2012-07-08")  # the labels land later
    for day in range(2, 9):
        stages.ingest("bike_demand", f"2012-07-0{day}")
    summary = stages.monitor("bike_demand", "2012-07-09T02:00:00+00:00", "m1")
    assert summary["status"] == "drift" and summary["retrain"] is True
    assert summary["rows"] == 168 and summary["labelled_rows"] == 168
    assert {"temp", "atemp", "cnt"} <= set(summary["drifted_columns"]) and summary["target_drifted"]
    assert summary["champion_on_labelled"]["mae"] > 0
    # the champion's RMSE on the labelled 2012 week is far above its own holdout RMSE: decay, a second violation
    decay = summary["performance_decay"]
    assert decay["metric"] == "rmse" and decay["served"] > decay["holdout"] and decay["violated"]
    assert summary["violations"] == ["data_drift", "performance_decay"] and "k=1 of n=1" in summary["decision"]
    decisions = DataLayout(use_champion_store["root"]).root / "monitoring" / "bike_demand" / "decisions.jsonl"
    logged = [json.loads(line) for line in decisions.read_text().splitlines()]
    assert logged[-1]["window_end"] == "2012-07-09T02:00:00+00:00" and logged[-1]["retrain"] is True
    out = DataLayout(use_champion_store["root"]).monitoring_dir("bike_demand", "m1")
    assert "<html" in (out / "drift.html").read_text()[:2000].lower()
    assert json.loads((out / "summary.json").read_text())["drift_share"] == summary["drift_share"]


def test_same_season_traffic_does_not_drift(use_champion_store):
    _serve("2011-06-13", "2011-06-19")  # days the champion trained on
    summary = stages.monitor("bike_demand", "2011-06-20T02:00:00+00:00", "m2")
    assert summary["status"] == "no_drift" and summary["retrain"] is False
    # season is constant in June on both sides: no test, and the summary stays strict JSON (XCom, REST)
    assert summary["columns"]["season"]["score"] is None and not summary["columns"]["season"]["drifted"]
    json.dumps(summary, allow_nan=False)


def test_too_few_served_rows_is_reported_not_judged(use_champion_store):
    summary = stages.monitor("bike_demand", "2010-01-02T02:00:00+00:00", "m3")
    assert summary["status"] == "insufficient_data" and "min_rows" in summary["reason"]
    assert served_inputs(DataLayout(use_champion_store["root"]).prediction_log, "bike_demand", "dteday", []).empty
