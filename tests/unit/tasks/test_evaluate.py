"""Evaluation on the real holdout: the same rows for every model, and what it keeps for the gate, the deploy
smoke test and prediction-drift monitoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.errors import PermanentError
from tasks.evaluate import SMOKE_ROWS, EvaluationError, evaluate_model, regression_metrics, target_values
from tasks.names import EXPECTED_COLUMN, PREDICTION
from tasks.results import Trained
from tasks.settings import get_settings
from tasks.spec import load_spec
from tasks.storage import DataLayout
from tasks.tracking import client


def test_regression_metrics_on_known_values_and_bad_input():
    got = regression_metrics([1, 2, 3, 4], [1, 2, 3, 6])
    assert got["rmse"] == pytest.approx(1.0) and got["mae"] == pytest.approx(0.5) and got["r2"] == pytest.approx(0.2)
    with pytest.raises(EvaluationError) as err:
        regression_metrics([1, 2], [1])
    assert isinstance(err.value, PermanentError)


def test_targets_are_numbers_and_the_positive_label_is_one():
    adult = load_spec("adult_income")
    assert target_values(adult, pd.Series([">50K", "<=50K", ">50K"])).tolist() == [1.0, 0.0, 1.0]
    assert target_values(load_spec("bike_demand"), pd.Series(["3", "40"])).tolist() == [3.0, 40.0]


def test_every_model_is_scored_on_the_same_holdout_rows(use_champion_store):
    e = use_champion_store["evaluation"]
    frame = pd.read_parquet(e["predictions_uri"])
    holdout = pd.read_parquet(use_champion_store["datasets"]["holdout"])
    assert len(frame) == len(holdout) == e["holdout_rows"] == 7 * 24
    assert list(frame.columns) == ["y", "candidate", "baseline"]  # no champion yet when it was evaluated
    assert frame["y"].tolist() == holdout["cnt"].astype(float).tolist()
    assert e["champion"] is None and e["champion_version"] is None and e["champion_error"] is None
    run = client(get_settings()).get_run(use_champion_store["trained"]["mlflow_run_id"])
    assert run.data.metrics["holdout_rmse"] == pytest.approx(e["candidate"]["rmse"])
    assert run.data.metrics["baseline_holdout_rmse"] == pytest.approx(e["baseline"]["rmse"])


def test_smoke_sample_holds_holdout_rows_with_the_candidates_offline_predictions(use_champion_store):
    e = use_champion_store["evaluation"]
    smoke = pd.read_parquet(e["smoke_sample_uri"])
    predictions = pd.read_parquet(e["predictions_uri"])
    assert len(smoke) == min(SMOKE_ROWS, e["holdout_rows"]) and "cnt" not in smoke.columns
    assert np.array_equal(smoke[EXPECTED_COLUMN].to_numpy(), predictions["candidate"].to_numpy()[: len(smoke)])
    assert (
        Path(e["smoke_sample_uri"])
        .relative_to(use_champion_store["root"])
        .as_posix()
        .endswith("runs/bike_demand/fixture/smoke/holdout_sample.parquet")
    )


def test_reference_predictions_are_the_candidates_holdout_predictions_not_in_sample(use_champion_store):
    import mlflow

    e = use_champion_store["evaluation"]
    reference = pd.read_parquet(e["reference_predictions_uri"])
    holdout_preds = pd.read_parquet(e["predictions_uri"])["candidate"]
    assert list(reference.columns) == [PREDICTION]
    assert np.array_equal(reference[PREDICTION].to_numpy(), holdout_preds.to_numpy())
    logged = mlflow.artifacts.download_artifacts(
        run_id=use_champion_store["trained"]["mlflow_run_id"], artifact_path="reference/predictions.parquet"
    )
    assert pd.read_parquet(logged).equals(reference)
    # and not the model's predictions on its own training rows (what the reference held before)
    model = mlflow.pyfunc.load_model(use_champion_store["trained"]["model_uri"])
    train = pd.read_parquet(use_champion_store["datasets"]["train_raw"])
    in_sample = model.predict(train[load_spec("bike_demand").schema_.input_columns])
    assert len(in_sample) != len(reference) or not np.allclose(in_sample, reference[PREDICTION])


def test_an_empty_holdout_is_a_permanent_error(use_champion_store, tmp_path):
    spec = load_spec("bike_demand")
    holdout = pd.read_parquet(use_champion_store["datasets"]["holdout"]).head(0)
    path = tmp_path / "holdout.parquet"
    holdout.to_parquet(path)
    trained = Trained.parse(use_champion_store["trained"])
    layout = DataLayout(use_champion_store["root"])
    with pytest.raises(EvaluationError, match="is empty"):
        evaluate_model(spec, get_settings(), layout, trained, str(path), "empty")
    assert not layout.run_dir("bike_demand", "empty").exists()  # nothing half-written


def test_a_holdout_the_candidate_cannot_read_is_a_permanent_error_naming_the_column(use_champion_store):
    # a column changed type upstream (humidity as "62%"): no retry can fix it, and nothing is half-written
    spec = load_spec("bike_demand")
    holdout = pd.read_parquet(use_champion_store["datasets"]["holdout"])
    trained = Trained.parse(use_champion_store["trained"])
    layout = DataLayout(use_champion_store["root"])
    path = layout.run_dir("bike_demand", "hum-as-text") / "holdout.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    holdout.assign(hum=holdout["hum"].astype(str) + "%").to_parquet(path)
    with pytest.raises(EvaluationError, match="the candidate .* cannot score the holdout: .*hum") as err:
        evaluate_model(spec, get_settings(), layout, trained, str(path), "hum-as-text")
    assert isinstance(err.value, PermanentError)
    assert not layout.holdout_predictions("bike_demand", "hum-as-text").exists()
