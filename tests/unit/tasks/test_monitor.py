"""Monitoring on real served traffic against a real champion: drift, prediction drift against the champion's
holdout predictions, input quality, performance decay, the small report XCom carries, and failure cases."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tasks import stages
from tasks.errors import PermanentError
from tasks.monitor import (
    TWO_SAMPLE_CHI2,
    Assessment,
    MonitoringError,
    MonitoringWindowError,
    Reference,
    Served,
    attach_labels,
    collect,
    drift_report,
    load_reference,
    publish,
    reference_frame,
    served_window,
    window_dates,
)
from tasks.names import PREDICTION
from tasks.plan import judge_window
from tasks.prediction_log import read_window
from tasks.results import DriftReport, Registered
from tasks.serving.app import create_app
from tasks.settings import get_settings
from tasks.spec import load_spec
from tasks.storage import DataLayout
from tasks.tracking import client
from tests.unit.conftest import FIXTURES
from tests.unit.tasks.conftest import raw_rows

DROP = ["instant", "casual", "registered", "cnt"]


def test_window_is_the_event_days_before_the_interval_end():
    assert window_dates("2012-06-25T02:00:00+00:00", 3) == ["2012-06-22", "2012-06-23", "2012-06-24"]
    assert window_dates("2012-06-25T00:00:00+00:00", 1) == ["2012-06-24"]


def test_date_less_data_is_windowed_by_serving_time_up_to_the_window_end_so_today_is_checked_today():
    from datetime import UTC, datetime

    now = datetime(2026, 11, 26, 17, 30, tzinfo=UTC)
    spec = load_spec("adult_income")
    spec = spec.model_copy(update={"monitoring": spec.monitoring.model_copy(update={"window_days": 1})})
    days, start = served_window(spec, "2026-11-26T17:30:00+00:00", now)
    assert days == ["2026-11-25", "2026-11-26"] and start == datetime(2026, 11, 25, 17, 30, tzinfo=UTC)
    # dated data keeps event days before the interval end: a backfill looks at the same rows
    days, start = served_window(load_spec("bike_demand"), "2012-06-25T02:00:00+00:00", now)
    assert days[-1] == "2012-06-24" and len(days) == 7 and start is None


def test_a_window_ending_in_the_future_fails_fast_with_the_reason(data_root):
    with pytest.raises(MonitoringWindowError, match="in the future .* logical date up to now") as caught:
        stages.check_drift("adult_income", "2999-01-01T00:00:00+00:00", "m-future")
    assert isinstance(caught.value, PermanentError)  # failed at once, never retried or left waiting


def _date_less(spec: Any, with_id: bool) -> Any:
    """adult_income as a team with date-less data declares it: an ingestion-day partition and a row id."""
    if not with_id:
        return spec
    schema = spec.schema_.model_copy(
        update={"id_column": "row_id", "columns": {"row_id": "int", **spec.schema_.columns}}
    )
    return spec.model_copy(update={"schema_": schema})


@pytest.mark.parametrize("with_id", [True, False])
def test_label_join_on_date_less_data_equals_scikit_learn_or_refuses_naming_the_key(data_root, monkeypatch, with_id):
    """Regression (issue 14): joined on the batch day alone, ROC AUC read 0.295 for a model whose true one was 0.70."""
    from datetime import UTC, datetime

    from sklearn.metrics import roc_auc_score

    from tasks import registry
    from tasks.prediction_log import PredictionLogWriter

    spec = _date_less(load_spec("adult_income"), with_id)
    layout = DataLayout(data_root)
    rng = np.random.default_rng(7)
    landed = pd.DataFrame({"row_id": np.arange(400), "batch_date": ["2024-01-01"] * 200 + ["2024-01-02"] * 200})
    landed["income"] = np.where(rng.random(400) < 0.3, ">50K", "<=50K")
    for day, part in landed.groupby("batch_date"):
        target = layout.raw_partition(spec.name, str(day))
        target.parent.mkdir(parents=True, exist_ok=True)
        part.to_parquet(target)
    served = landed.sample(frac=0.6, random_state=1)  # served in another order than landed, 240 rows
    truth = (served["income"] == ">50K").to_numpy()
    scores = np.clip(truth * 0.3 + rng.random(len(served)) * 0.7, 0, 1)  # informative, not perfect
    rows = [
        {"row_id": int(i), "batch_date": d, "age": 40} for i, d in zip(served.row_id, served.batch_date, strict=True)
    ]
    writer = PredictionLogWriter(layout.prediction_log, {spec.name: None})  # date-less: placed by serving time
    writer.append("r1", spec.name, "1", rows, scores.tolist(), source="batch")
    writer.close()
    monkeypatch.setattr(registry, "champion", lambda settings, name: None)
    window_end = datetime.now(UTC).isoformat()
    result = collect(spec, get_settings(), layout, window_end)
    assert len(result.rows) == len(served)  # today's traffic, checked today
    if with_id:
        assert result.labels == "labels joined on ['row_id']"
        assert result.champion_on_labelled is not None
        assert result.champion_on_labelled["roc_auc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    else:
        assert result.champion_on_labelled is None and result.labelled.empty
        assert "labels not joined" in result.labels and "schema.id_column" in result.labels


def test_a_declared_key_that_is_not_unique_in_the_landed_rows_is_refused(data_root):
    spec = load_spec("bike_demand")
    layout = DataLayout(data_root)
    day = pd.DataFrame({"dteday": ["2012-06-01"] * 3, "hr": [0, 0, 1], "cnt": [5, 7, 9]})
    target = layout.raw_partition(spec.name, "2012-06-01")
    target.parent.mkdir(parents=True, exist_ok=True)
    day.to_parquet(target)
    rows, why = attach_labels(spec, layout, pd.DataFrame({"dteday": ["2012-06-01"], "hr": [1], "prediction": [8.0]}))
    assert "is not unique" in why and "['dteday', 'hr']" in why and rows["cnt"].isna().all()
    # an unserved key column is named
    rows, why = attach_labels(spec, layout, pd.DataFrame({"dteday": ["2012-06-01"], "prediction": [8.0]}))
    assert "lack the key column(s) ['instant']" in why


def test_rows_with_and_without_ids_and_batch_rows_each_join_their_label_and_unjoinable_ones_are_counted(
    data_root, monkeypatch
):
    """Regression: once some served rows carried the id, every row was joined on it, so rows without one (other
    callers, every batch-scored row) lost their labels and the metrics covered fewer rows, without a word."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    from tasks import registry
    from tasks.prediction_log import PredictionLogWriter
    from tasks.score import score_day

    spec = load_spec("bike_demand")
    layout = DataLayout(data_root)
    truth = raw_rows(FIXTURES, "2011-06-22", "2011-06-23")
    for day, part in truth.groupby("dteday"):
        target = layout.raw_partition(spec.name, str(day))
        target.parent.mkdir(parents=True, exist_ok=True)
        part.to_parquet(target)
    served = truth[truth.dteday == "2011-06-22"].reset_index(drop=True)
    inputs = served.drop(columns=DROP).to_dict("records")
    with_id = [r | {"instant": int(i)} for r, i in zip(inputs[:8], served.instant[:8], strict=True)]
    with_id[:4] = [{k: v for k, v in r.items() if k != "hr"} for r in with_id[:4]]  # the id alone joins these
    without_id = inputs[8:16]  # a caller that sends no id: the day and the hour join these
    keyless = [{k: v for k, v in r.items() if k != "hr"} for r in inputs[16:20]]  # no id, no hour: no key
    rng = np.random.default_rng(3)
    predictions = (served.cnt[:20] + rng.normal(0, 30, 20)).tolist()
    writer = PredictionLogWriter(layout.prediction_log, {spec.name: "dteday"})
    writer.append("r-ids", spec.name, "1", with_id, predictions[:8])
    writer.append("r-plain", spec.name, "1", without_id, predictions[8:16])
    writer.append("r-keyless", spec.name, "1", keyless, predictions[16:20])
    writer.close()

    class Noisy:  # batch scoring writes no id column: its rows join on the day and the hour
        def predict(self, frame: pd.DataFrame) -> np.ndarray:
            return frame["temp"].to_numpy() * 500.0

    score_day(spec, layout, Noisy(), "1", "2011-06-23")
    monkeypatch.setattr(registry, "champion", lambda settings, name: None)
    result = collect(spec, get_settings(), layout, "2011-06-24T00:00:00+00:00")
    batch = truth[truth.dteday == "2011-06-23"].sort_values("hr")
    expected_truth = [*served.cnt[:16], *batch.cnt]
    expected_pred = [*predictions[:16], *(batch.temp * 500.0)]
    assert len(result.rows) == 20 + len(batch) and len(result.labelled) == 16 + len(batch)
    by_request = result.rows.groupby("request_id")["cnt"]
    assert by_request.count().to_dict() == {"r-ids": 8, "r-plain": 8, "r-keyless": 0, "batch:2011-06-23:v1": len(batch)}
    labelled = result.labelled
    assert labelled["cnt"].tolist() == expected_truth
    metrics = result.champion_on_labelled
    assert metrics is not None
    assert metrics["rmse"] == pytest.approx(mean_squared_error(expected_truth, expected_pred) ** 0.5, rel=1e-12)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(expected_truth, expected_pred), rel=1e-12)
    assert metrics["r2"] == pytest.approx(r2_score(expected_truth, expected_pred), rel=1e-12)
    # the rows no key joins are counted, with the reason, not dropped silently
    assert result.label_join == {
        "rows_by_key": {"instant": 8, "dteday+hr": 8 + len(batch)},
        "not_joined_rows": 4,
        "not_joined_reason": result.label_join["not_joined_reason"],
    }
    assert "lack the key column(s) ['instant'] (schema.id_column) and ['hr']" in result.label_join["not_joined_reason"]
    assert "4 of " in result.labels and "rows not joined" in result.labels and "['instant'] (8 rows)" in result.labels


def _serve(start: str, end: str) -> None:
    with TestClient(create_app(get_settings(), ["bike_demand"])) as client:
        assert client.app.state.service.wait_settled(120)  # the champion loads in the background
        rows = raw_rows(FIXTURES, start, end).drop(columns=DROP)
        for _, day in rows.groupby("dteday"):
            assert client.post("/predict", json={"instances": day.to_dict("records")}).status_code == 200


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return json.loads(open(report["summary_json"]).read())


def test_no_champion_means_no_check(data_root):
    report = stages.check_drift("bike_demand", "2012-06-25T02:00:00+00:00", "m0")
    assert report["status"] == "no_champion" and report["retrain"] is False and report["report_html"] is None
    assert (data_root / "monitoring" / "bike_demand" / "m0" / "summary.json").is_file()
    window = DriftReport.parse(report).window
    assert len(window) == load_spec("bike_demand").monitoring.window_days and window[-1] == "2012-06-24"


def test_drift_on_2012_traffic_requests_retrain_and_saves_reports(use_champion_store):
    _serve("2012-07-02", "2012-07-08")  # a hot week of 2012 against a June 2011 champion
    stages.replay("bike_demand", "2012-07-02", "2012-07-08")  # the labels land later
    for day in range(2, 9):
        stages.ingest_partition("bike_demand", f"2012-07-0{day}")
    report = stages.check_drift("bike_demand", "2012-07-09T02:00:00+00:00", "m1")
    assert report["status"] == "drift" and report["retrain"] is True and report["rows"] == 168
    assert {"temp", "atemp", "cnt"} <= set(report["drifted_columns"])
    assert report["violations"] == ["data_drift", "prediction_drift", "performance_decay"]
    assert "k=1 of n=1" in report["decision"]
    # XCom carries the verdict and where to look; the tables stay in summary.json
    assert set(report) == set(DriftReport.model_fields) and len(json.dumps(report)) < 2000
    summary = _summary(report)
    assert summary["labelled_rows"] == 168 and summary["target_drifted"]
    # the verdicts: every row against the profile logged at training; the HTML report: at most a bounded sample
    assert summary["reference_profile"] == "stored with the model" and summary["report_sample"]["of"] == 168
    assert summary["champion_on_labelled"]["mae"] > 0 and "temp" in summary["columns"]
    # the champion's RMSE on the labelled 2012 week is far above its own holdout RMSE: decay, a second violation
    decay = summary["performance_decay"]
    assert decay["metric"] == "rmse" and decay["served"] > decay["holdout"] and decay["violated"]
    # a hotter week: the champion predicts much higher demand than on its holdout (prediction drift)
    pred = summary["prediction_drift"]
    assert pred["method"] == "wasserstein" and pred["score"] >= pred["threshold"] == 0.1 and pred["drifted"]
    assert pred["reference"] == "holdout" and pred["reference_rows"] == 168 and "note" not in pred
    assert "prediction" not in summary["columns"]  # the drifted share is about inputs and target, not outputs
    attribution = summary["attribution_drift"]  # reported; no threshold in the spec, so never a violation
    assert 0 < attribution["distance"] <= 1 and attribution["drifted"] is False and attribution["threshold"] is None
    assert len(attribution["moved_most"]) == 5 and {"feature", "change"} <= set(attribution["moved_most"][0])
    layout = DataLayout(use_champion_store["root"])
    logged = [json.loads(line) for line in layout.decision_log("bike_demand").read_text().splitlines()]
    assert logged[-1]["window_end"] == "2012-07-09T02:00:00+00:00" and logged[-1]["retrain"] is True
    assert "<html" in layout.drift_html("bike_demand", "m1").read_text()[:2000].lower()
    assert report["summary_json"] == str(layout.drift_summary("bike_demand", "m1"))
    # the window's reports are kept on an MLflow run too (what check_drift's "Drift report" link opens) ...
    runs = _monitoring_runs("m1")
    assert len(runs) == 1 and runs[0].data.tags["violations"] == "data_drift,prediction_drift,performance_decay"
    assert runs[0].data.metrics["drift_share"] == report["drift_share"]
    artifacts = {a.path for a in client(get_settings()).list_artifacts(runs[0].info.run_id)}
    assert {"drift.html", "summary.json", "trend.html"} <= artifacts
    # ... and a re-run of the same Airflow run replaces them rather than adding a second record
    stages.check_drift("bike_demand", "2012-07-09T02:00:00+00:00", "m1")
    assert [r.info.run_id for r in _monitoring_runs("m1")] == [runs[0].info.run_id]


def _monitoring_runs(run_id: str) -> list[Any]:
    settings = get_settings()
    experiment = client(settings).get_experiment_by_name(settings.experiment_name("bike_demand-monitoring"))
    assert experiment is not None
    return client(settings).search_runs([experiment.experiment_id], f"tags.`airflow.run_id` = '{run_id}'")


def test_stuck_served_input_is_a_data_quality_violation(use_champion_store):
    # a client bug sends windspeed as 0 for every row of a week the champion knows well
    with TestClient(create_app(get_settings(), ["bike_demand"])) as app:
        assert app.app.state.service.wait_settled(120)
        rows = raw_rows(FIXTURES, "2011-06-06", "2011-06-12").drop(columns=DROP).assign(windspeed=0.0)
        assert app.post("/predict", json={"instances": rows.to_dict("records")}).status_code == 200
    report = stages.check_drift("bike_demand", "2011-06-13T02:00:00+00:00", "m4")
    assert "data_quality" in report["violations"]
    quality = _summary(report)["input_quality"]
    (breach,) = quality["breaches"]
    assert breach.startswith("windspeed: constant (0.0) in all 168 served rows")
    assert quality["columns"]["hum"]["missing_served"] == 0.0


def test_categorical_drift_is_two_sample_so_a_large_window_of_the_same_population_is_not_drift():
    from evidently.legacy.calculations.stattests.chisquare_stattest import _chi_stat_test

    data = pd.read_csv(FIXTURES / "bike_sharing_hour.csv.gz")
    rng = np.random.default_rng(1)
    reference = data[["weathersit", "temp"]].iloc[rng.integers(0, len(data), 5000)].reset_index(drop=True)
    current = data[["weathersit", "temp"]].iloc[rng.integers(0, len(data), 200_000)].reset_index(drop=True)
    # Evidently's own chi-square takes the 5,000-row reference's proportions as exact: it calls its noise drift
    assert _chi_stat_test(reference.weathersit, current.weathersit, None, 0.05)[1]
    _, share, columns = drift_report(reference, current, ["temp"], ["weathersit"], 0.5, 0.05)
    assert columns["weathersit"]["method"] == TWO_SAMPLE_CHI2 and not columns["weathersit"]["drifted"]
    assert columns["weathersit"]["score"] > 0.05 and share == 0.0


def test_same_season_traffic_does_not_drift(use_champion_store):
    _serve("2011-06-13", "2011-06-19")  # days the champion trained on
    report = stages.check_drift("bike_demand", "2011-06-20T02:00:00+00:00", "m2")
    assert report["status"] == "no_drift" and report["retrain"] is False and report["violations"] == []
    summary = _summary(report)
    # season is constant in June on both sides: nothing can drift, and the summary stays strict JSON (XCom, REST)
    assert not summary["columns"]["season"]["drifted"]
    json.dumps(summary, allow_nan=False)
    # the champion predicts this week as it predicted its own holdout week: no prediction drift, clean inputs
    assert summary["prediction_drift"]["drifted"] is False and summary["prediction_drift"]["score"] < 0.1
    assert summary["input_quality"]["breaches"] == []


def test_too_few_served_rows_is_reported_not_judged(use_champion_store):
    report = stages.check_drift("bike_demand", "2010-01-02T02:00:00+00:00", "m3")
    assert report["status"] == "insufficient_data" and "min_rows" in report["reason"]
    assert read_window(DataLayout(use_champion_store["root"]).prediction_log, "bike_demand", []).empty


def test_input_quality_names_a_stuck_text_column_and_missing_values(spec):
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


def test_input_quality_counts_values_outside_a_columns_declared_categories(spec):
    from tasks.monitor import input_quality

    reference = pd.DataFrame({"weathersit": [1, 2, 3, 4] * 50})
    served = pd.DataFrame({"weathersit": [1, 2, 7, 9, None] * 40})  # 7 and 9 are not declared levels
    quality = input_quality(spec, reference, served, [], ["weathersit"])
    assert quality["columns"]["weathersit"]["unseen_levels"] == 80


# ---- the reference ----


def test_reference_predictions_join_the_inputs_sample_without_touching_it():
    inputs = pd.DataFrame({"temp": np.linspace(0, 1, 10)})
    short = reference_frame(Reference(inputs, pd.Series([5.0, 6.0, 7.0]), "holdout"))
    assert short["temp"].equals(inputs["temp"]) and short["prediction"].tolist()[:3] == [5.0, 6.0, 7.0]
    assert short["prediction"].isna().sum() == 7  # Evidently drops them, column by column
    long = reference_frame(Reference(inputs, pd.Series(np.arange(100.0)), "holdout"), seed=1)
    assert len(long) == 10 and long["prediction"].notna().all() and long["prediction"].is_unique
    assert reference_frame(Reference(inputs, pd.Series(np.arange(100.0)), "holdout"), seed=1).equals(long)
    assert reference_frame(Reference(inputs, None, "none")) is inputs


def test_prediction_drift_is_judged_against_the_reference_predictions():
    rng = np.random.default_rng(2)
    inputs = pd.DataFrame({"temp": rng.random(3000)})
    current = pd.DataFrame({"temp": rng.random(1000), "prediction": rng.normal(100, 10, 1000)})
    alike = reference_frame(Reference(inputs, pd.Series(rng.normal(100, 10, 400)), "holdout"))
    shifted = reference_frame(Reference(inputs, pd.Series(rng.normal(160, 10, 400)), "holdout"))
    _, _, same = drift_report(alike, current, ["temp"], [], 0.5, 0.05, 0.1)
    _, share, moved = drift_report(shifted, current, ["temp"], [], 0.5, 0.05, 0.1)
    assert not same["prediction"]["drifted"] and moved["prediction"]["drifted"] and share == 0.0


def _run_with(settings: Any, artifacts: dict[str, pd.DataFrame], tmp_path: Any) -> Registered:
    import mlflow

    from tasks.tracking import start_tracking

    start_tracking(settings, "bike_demand")
    with mlflow.start_run() as run:
        for path, frame in artifacts.items():
            local = tmp_path / path.split("/")[-1]
            frame.to_parquet(local)
            mlflow.log_artifact(str(local), artifact_path=path.rsplit("/", 1)[0])
    return Registered(name="bike_demand", version="3", mlflow_run_id=run.info.run_id)


def test_an_old_champions_in_sample_reference_is_read_with_a_note(data_root, tmp_path):
    old = pd.DataFrame({"temp": [0.1, 0.2, 0.3], "cnt": [1, 2, 3], "prediction": [1.5, 2.5, 3.5]})
    champion = _run_with(get_settings(), {"reference/reference.parquet": old}, tmp_path)
    reference = load_reference(get_settings(), champion)
    assert reference.kind == "in-sample" and list(reference.inputs.columns) == ["temp", "cnt"]
    assert reference.predictions.tolist() == [1.5, 2.5, 3.5] and "in-sample" in reference.note
    assert "champion v3 predates holdout reference predictions" in reference.note


def test_a_champion_without_any_reference_is_a_permanent_error(data_root, tmp_path):
    champion = _run_with(get_settings(), {}, tmp_path)
    with pytest.raises(MonitoringError, match="champion v3 .* has no reference sample") as err:
        load_reference(get_settings(), champion)
    assert isinstance(err.value, PermanentError)


def test_inputs_without_holdout_predictions_compare_inputs_only(data_root, tmp_path):
    inputs = pd.DataFrame({"temp": [0.1, 0.2], "cnt": [1, 2]})
    champion = _run_with(get_settings(), {"reference/inputs.parquet": inputs}, tmp_path)
    reference = load_reference(get_settings(), champion)
    assert reference.predictions is None and "prediction drift not compared" in reference.note


# ---- publishing ----


def test_an_unreachable_tracking_store_costs_the_link_not_the_report(data_root, monkeypatch, caplog):
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    get_settings.cache_clear()
    spec = load_spec("bike_demand")
    end = "2012-07-09T02:00:00+00:00"
    served = Served(end, window_dates(end, 3), None, pd.DataFrame(), pd.DataFrame())
    assessment = Assessment("no_champion", "no champion to compare against")
    verdict = judge_window(spec.monitoring.trigger, [], end, [], None, {}, "no_champion")
    report = publish(spec, get_settings(), DataLayout(data_root), "m9", served, assessment, verdict)
    assert report.report_url is None and "could not keep the monitoring reports on MLflow" in caplog.text
    summary = json.loads(DataLayout(data_root).drift_summary("bike_demand", "m9").read_text())
    assert summary["status"] == "no_champion" and "report_url" not in summary
    assert DataLayout(data_root).decision_log("bike_demand").is_file()  # the decision is kept whatever MLflow does
    get_settings.cache_clear()


def test_the_html_report_is_a_labelled_sample_while_the_verdicts_use_every_row(tmp_path):
    from scipy.stats import ks_2samp

    from tasks.drift_stats import ReferenceProfile
    from tasks.monitor import _label_report, drift_statistics, sample_report, window_statistics

    rng = np.random.default_rng(5)
    reference = pd.DataFrame({"temp": rng.normal(0.5, 0.1, 500)})
    current = pd.DataFrame({"temp": rng.normal(0.52, 0.1, 3000)})
    share, columns = drift_statistics(
        window_statistics(ReferenceProfile.of(reference, []), current, ["temp"], 700), 0.05
    )
    expected = ks_2samp(reference["temp"], current["temp"]).pvalue
    assert columns["temp"]["score"] == pytest.approx(expected) and share == float(expected < 0.05)
    snapshot, drawn = sample_report(reference, current, ["temp"], [], 0.5, 0.05, rows=200)
    assert (drawn["rows"], drawn["of"]) == (200, 3000) and "sample of 200 of the window's 3,000 served" in drawn["note"]
    page = tmp_path / "drift.html"
    snapshot.save_html(str(page))
    _label_report(page, drawn["note"])
    text = page.read_text()
    assert text.index('id="mlp-report-sample"') > text.index("<body") and "computed on every row" in text


def _served_window(rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A reference and a served window with ties, missing values, a category the reference never saw (late in
    the window) and predictions: what a chunk boundary could disturb."""
    rng = np.random.default_rng(seed)
    reference = pd.DataFrame(
        {
            "temp": rng.normal(0.5, 0.1, 800).round(2),
            "hr": rng.integers(0, 24, 800),
            "weathersit": rng.choice([1, 2, 3], 800, p=[0.6, 0.3, 0.1]),
            PREDICTION: rng.gamma(2.0, 80.0, 800),
        }
    )
    current = pd.DataFrame(
        {
            "temp": rng.normal(0.53, 0.12, rows).round(2),
            "hr": rng.integers(0, 24, rows).astype("float64"),
            "weathersit": rng.choice([1, 2, 3], rows, p=[0.5, 0.35, 0.15]),
            PREDICTION: rng.gamma(2.1, 80.0, rows),
        }
    )
    current.loc[rng.choice(rows, rows // 50, replace=False), "temp"] = np.nan
    current.loc[rows - 700 :: 3, "weathersit"] = 4  # unseen in the reference, only in the last chunks
    return reference, current


def test_statistics_and_verdicts_from_chunks_of_1000_equal_those_from_one_chunk_exactly():
    from scipy.stats import ks_2samp

    from tasks.drift_stats import ReferenceProfile
    from tasks.monitor import drift_statistics, frame_chunks, window_pass

    reference, current = _served_window(5_300, 11)
    profile = ReferenceProfile.of(reference.drop(columns=[PREDICTION]), ["weathersit"]).with_predictions(
        reference[PREDICTION]
    )
    columns = ["temp", "hr", "weathersit"]
    whole, _ = window_pass(profile, [current], columns)
    chunked, _ = window_pass(profile, frame_chunks(current, 1_000), columns)
    assert [len(c) for c in frame_chunks(current, 1_000)] == [1_000] * 5 + [300]
    for col in ("temp", "hr"):
        assert chunked.ks(col) == whole.ks(col)  # exact: the same counts, the same arithmetic
    assert chunked.chi2("weathersit") == whole.chi2("weathersit")
    assert chunked.prediction_distance() == whole.prediction_distance()
    assert drift_statistics(chunked, 0.05, 0.1) == drift_statistics(whole, 0.05, 0.1)
    assert all(chunked.quality(c) == whole.quality(c) for c in columns)
    # and they are scipy's figures on the same rows
    expected = ks_2samp(reference["temp"], current["temp"].dropna())
    assert whole.ks("temp") == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue))


def test_the_report_sample_is_the_same_rows_whatever_the_chunk_size():
    from tasks.drift_stats import ReferenceProfile
    from tasks.monitor import ReportSample, frame_chunks, sample_report, window_pass

    reference, current = _served_window(3_000, 12)
    samples = [ReportSample(250, seed=7).add(current)]
    for size in (1_000, 333, 1):
        sample = ReportSample(250, seed=7)
        for chunk in frame_chunks(current, size):
            sample.add(chunk)
        samples.append(sample)
    profile = ReferenceProfile.of(reference.drop(columns=[PREDICTION]), ["weathersit"])
    _, in_pass = window_pass(profile, frame_chunks(current, 700), ["temp"], sample_rows=250, seed=7)
    samples.append(in_pass)
    first = samples[0].frame
    assert len(first) == 250 and first.index.tolist() == list(range(250))
    for sample in samples[1:]:
        assert sample.seen == 3_000
        pd.testing.assert_frame_equal(sample.frame, first)
    picked = current.reset_index(drop=True).merge(first, how="inner")  # rows of the window, in window order
    assert len(picked) >= 250 and first[PREDICTION].isin(current[PREDICTION]).all()
    assert not ReportSample(250, seed=8).add(current).frame.equals(first)  # the seed decides which rows
    everything = ReportSample(5_000, seed=7)
    for chunk in frame_chunks(current, 1_000):
        everything.add(chunk)
    pd.testing.assert_frame_equal(everything.frame, current)  # a window under the bound is shown whole
    _, drawn = sample_report(reference, in_pass, ["temp", "hr"], ["weathersit"], 0.5, 0.05)
    assert (drawn["rows"], drawn["of"]) == (250, 3_000) and "sample of 250 of the window's 3,000" in drawn["note"]


def test_window_pass_over_read_window_chunks_gives_the_same_verdicts_and_sample_whatever_the_chunk_size(tmp_path):
    """``window_pass`` fed the log's chunks directly (``collect`` reads the window whole with ``read_window``)."""
    from tasks.drift_stats import ReferenceProfile
    from tasks.monitor import drift_statistics, window_pass
    from tasks.prediction_log import PredictionLogWriter, read_window_chunks

    data = pd.read_csv(FIXTURES / "bike_sharing_hour.csv.gz")
    reference = data[data.dteday.between("2011-06-01", "2011-06-30")].drop(columns=DROP)
    served = data[data.dteday >= "2012-01-01"].drop(columns=DROP)  # every 2012 row of the fixture cut
    store = tmp_path / "predictions.sqlite"
    writer = PredictionLogWriter(store, {"bike_demand": "dteday"})
    records = served.to_dict("records")
    for i in range(0, len(records), 100):
        batch = records[i : i + 100]
        writer.append(f"r{i}", "bike_demand", "3", batch, [float(r["temp"]) * 300 for r in batch])
    writer.close()
    days = sorted(served.dteday.unique())
    columns = ["temp", "hum", "windspeed", "hr", "season", "weathersit"]
    profile = ReferenceProfile.of(reference[columns], ["season", "weathersit"]).with_predictions(reference.temp * 290)
    results = []
    for chunk_rows in (len(served), 1_000):
        stats, sample = window_pass(
            profile, read_window_chunks(store, "bike_demand", days, chunk_rows=chunk_rows), columns, 200, 3
        )
        results.append((drift_statistics(stats, 0.05, 0.1), sample.frame, stats.rows))
    assert results[0][2] == results[1][2] == len(served) > 1_000
    assert results[0][0] == results[1][0]
    pd.testing.assert_frame_equal(results[0][1], results[1][1])
