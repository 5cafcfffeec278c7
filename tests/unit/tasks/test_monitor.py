from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tasks import stages
from tasks.monitor import TWO_SAMPLE_CHI2, drift_report, served_inputs, window_days
from tasks.serving.app import create_app
from tasks.settings import get_settings
from tasks.storage import DataLayout
from tasks.tracking import client
from tests.conftest import SHARED
from tests.unit.tasks.conftest import raw_rows

pytestmark = pytest.mark.needs_data
DROP = ["instant", "casual", "registered", "cnt"]


def test_window_is_the_event_days_before_the_interval_end():
    assert window_days("2012-06-25T02:00:00+00:00", 3) == ["2012-06-22", "2012-06-23", "2012-06-24"]
    assert window_days("2012-06-25T00:00:00+00:00", 1) == ["2012-06-24"]


def _serve(start: str, end: str) -> None:
    with TestClient(create_app(get_settings(), ["bike_demand"])) as client:
        assert client.app.state.service.wait_settled(120)  # the champion loads in the background
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
    # a hotter week: the champion predicts much higher demand than on its reference sample (prediction drift)
    pred = summary["prediction_drift"]
    assert pred["method"] == "wasserstein" and pred["score"] >= pred["threshold"] == 0.1 and pred["drifted"]
    assert "prediction" not in summary["columns"]  # the drifted share is about inputs and target, not outputs
    assert summary["violations"] == ["data_drift", "prediction_drift", "performance_decay"]
    assert "k=1 of n=1" in summary["decision"]
    decisions = DataLayout(use_champion_store["root"]).root / "monitoring" / "bike_demand" / "decisions.jsonl"
    logged = [json.loads(line) for line in decisions.read_text().splitlines()]
    assert logged[-1]["window_end"] == "2012-07-09T02:00:00+00:00" and logged[-1]["retrain"] is True
    out = DataLayout(use_champion_store["root"]).monitoring_dir("bike_demand", "m1")
    assert "<html" in (out / "drift.html").read_text()[:2000].lower()
    assert json.loads((out / "summary.json").read_text())["drift_share"] == summary["drift_share"]
    # the window's reports are kept on an MLflow run too (what check_drift's "Drift report" link opens) ...
    runs = _monitoring_runs("m1")
    assert len(runs) == 1 and runs[0].data.tags["violations"] == "data_drift,prediction_drift,performance_decay"
    assert runs[0].data.metrics["drift_share"] == summary["drift_share"]
    artifacts = {a.path for a in client(get_settings()).list_artifacts(runs[0].info.run_id)}
    assert {"drift.html", "summary.json", "trend.html"} <= artifacts
    # ... and a re-run of the same Airflow run replaces them rather than adding a second record
    stages.monitor("bike_demand", "2012-07-09T02:00:00+00:00", "m1")
    assert [r.info.run_id for r in _monitoring_runs("m1")] == [runs[0].info.run_id]


def _monitoring_runs(run_key: str) -> list[Any]:
    settings = get_settings()
    experiment = client(settings).get_experiment_by_name(settings.experiment_name("bike_demand-monitoring"))
    assert experiment is not None
    return client(settings).search_runs([experiment.experiment_id], f"tags.run_key = '{run_key}'")


def test_stuck_served_input_is_a_data_quality_violation(use_champion_store):
    # a client bug sends windspeed as 0 for every row of a week the champion knows well
    with TestClient(create_app(get_settings(), ["bike_demand"])) as app:
        assert app.app.state.service.wait_settled(120)
        rows = raw_rows(SHARED, "2011-06-06", "2011-06-12").drop(columns=DROP).assign(windspeed=0.0)
        assert app.post("/predict", json={"instances": rows.to_dict("records")}).status_code == 200
    summary = stages.monitor("bike_demand", "2011-06-13T02:00:00+00:00", "m4")
    (breach,) = summary["input_quality"]["breaches"]
    assert breach.startswith("windspeed: constant (0.0) in all 168 served rows")
    assert "data_quality" in summary["violations"]
    assert summary["input_quality"]["columns"]["hum"]["missing_served"] == 0.0


def test_categorical_drift_is_two_sample_so_a_large_window_of_the_same_population_is_not_drift():
    import numpy as np
    import pandas as pd
    from evidently.legacy.calculations.stattests.chisquare_stattest import _chi_stat_test

    data = pd.read_csv(SHARED / "bike_sharing_hour.csv.gz")
    rng = np.random.default_rng(1)
    reference = data[["weathersit", "temp"]].iloc[rng.integers(0, len(data), 5000)].reset_index(drop=True)
    current = data[["weathersit", "temp"]].iloc[rng.integers(0, len(data), 200_000)].reset_index(drop=True)
    # Evidently's own chi-square takes the 5,000-row reference's proportions as exact: it calls its noise drift
    assert _chi_stat_test(reference.weathersit, current.weathersit, None, 0.05)[1]
    _, share, columns = drift_report(reference, current, ["temp"], ["weathersit"], 0.5, 0.05)
    assert columns["weathersit"]["method"] == TWO_SAMPLE_CHI2 and not columns["weathersit"]["drifted"]
    assert columns["weathersit"]["score"] > 0.2 and share == 0.0


def test_same_season_traffic_does_not_drift(use_champion_store):
    _serve("2011-06-13", "2011-06-19")  # days the champion trained on
    summary = stages.monitor("bike_demand", "2011-06-20T02:00:00+00:00", "m2")
    assert summary["status"] == "no_drift" and summary["retrain"] is False
    # season is constant in June on both sides: nothing can drift, and the summary stays strict JSON (XCom, REST)
    assert not summary["columns"]["season"]["drifted"]
    json.dumps(summary, allow_nan=False)
    # the champion predicts this week as it predicted its own training days: no prediction drift, clean inputs
    assert summary["prediction_drift"]["drifted"] is False and summary["prediction_drift"]["score"] < 0.1
    assert summary["input_quality"]["breaches"] == [] and summary["violations"] == []


def test_too_few_served_rows_is_reported_not_judged(use_champion_store):
    summary = stages.monitor("bike_demand", "2010-01-02T02:00:00+00:00", "m3")
    assert summary["status"] == "insufficient_data" and "min_rows" in summary["reason"]
    assert served_inputs(DataLayout(use_champion_store["root"]).prediction_log, "bike_demand", "dteday", []).empty


def test_input_quality_names_a_stuck_text_column_and_missing_values(spec):
    import numpy as np
    import pandas as pd

    from tasks.monitor import input_quality

    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"job": [f"j{i % 12}" for i in range(600)], "hum": rng.random(600)})
    hum = np.where(np.arange(200) < 60, np.nan, 0.5 + rng.random(200) / 2)  # 30 % missing
    served = pd.DataFrame({"job": ["j3"] * 200, "hum": hum})
    quality = input_quality(spec, reference, served, ["hum"], ["job"])
    assert quality["breaches"] == [
        "hum: 30.0% missing in served rows vs 0.0% in the reference",
        "job: constant ('j3') in all 200 served rows, 12 values in the reference",
    ]
    assert quality["columns"]["hum"]["out_of_range"] == 0.0


def test_an_unreachable_tracking_store_costs_the_link_not_the_report(data_root, monkeypatch, caplog):
    from tasks.monitor import _publish
    from tasks.spec import load_spec
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    get_settings.cache_clear()
    out = DataLayout(data_root).monitoring_dir("bike_demand", "m9")
    out.mkdir(parents=True)
    (out / "drift.html").write_text("<html>report</html>")
    summary = {"window_end": "2012-07-09T02:00:00+00:00", "status": "drift", "report_html": str(out / "drift.html")}
    _publish(load_spec("bike_demand"), get_settings(), "m9", summary, out)
    assert "report_url" not in summary and "could not keep the monitoring reports on MLflow" in caplog.text
    assert json.loads((out / "summary.json").read_text())["status"] == "drift"
    assert (out / "drift.html").read_text() == "<html>report</html>"
    get_settings.cache_clear()
