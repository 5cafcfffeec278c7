"""Explanations on real rows (the committed UCI Adult cut): additivity, raw-input terms, global importance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.explain import ExplainError, contributions, global_importance, plot_importance, top_contributions
from tasks.features import FeatureBuilder
from tasks.spec import load_spec
from tasks.train import make_estimator
from tests.unit.conftest import FIXTURES
from tests.unit.tasks.test_search import adult_spec


@pytest.fixture(scope="module")
def rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    data = pd.read_csv(FIXTURES / "adult.csv.gz", na_values=["?"], keep_default_na=False)
    return data.iloc[:3000], data.iloc[3000:3300].reset_index(drop=True)


def _fit(family: dict, calibration: str | None, train: pd.DataFrame):
    from sklearn.pipeline import Pipeline

    from tasks.spec import ModelSpec

    spec = adult_spec(model=family, calibration=calibration)
    builder = FeatureBuilder.from_spec(spec.features)
    estimator = make_estimator(ModelSpec(**family), 0, spec)
    features = builder.transform(train)
    estimator.fit(features.iloc[:2400], train["income"].iloc[:2400])
    if calibration:
        estimator.calibrate(features.iloc[2400:], train["income"].iloc[2400:], calibration)
    model = Pipeline([("features", builder), ("model", estimator)])
    model.explain_background_ = train[spec.schema_.input_columns].head(50)
    return spec, model


def test_tree_shap_sums_to_the_raw_margin_before_calibration(rows):
    train, holdout = rows
    spec, model = _fit({"family": "lightgbm", "params": {"n_estimators": 50}}, "isotonic", train)
    X = holdout[spec.schema_.input_columns]  # noqa: N806
    result = contributions(model, X)
    assert result.space == "raw_margin"
    assert list(result.values.columns) == spec.features.source_columns  # raw input columns, not one-hot features
    lgbm = model.named_steps["model"].uncalibrated  # the model before its isotonic calibration
    margin = lgbm.predict(model.named_steps["features"].transform(X), raw_score=True)
    np.testing.assert_allclose(result.values.sum(axis=1) + result.expected, margin, rtol=1e-6, atol=1e-6)
    calibrated = model.predict(X)
    assert not np.allclose(1 / (1 + np.exp(-margin)), calibrated)  # explained: the margin, not the calibrated score


def test_other_tree_families_and_model_agnostic_explanations_add_up(rows):
    train, holdout = rows
    X = holdout[load_spec("adult_income").schema_.input_columns].head(20)  # noqa: N806
    _, forest = _fit({"family": "random_forest", "params": {"n_estimators": 10, "max_depth": 6}}, None, train)
    result = contributions(forest, X)
    assert result.space == "raw_margin"
    np.testing.assert_allclose(result.values.sum(axis=1) + result.expected, forest.predict(X), atol=1e-6)
    _, linear = _fit({"family": "logistic_regression", "params": {"C": 1.0}}, None, train)
    result = contributions(linear, X)
    assert result.space == "prediction"  # permutation SHAP on the probability, over the kept background
    np.testing.assert_allclose(result.values.sum(axis=1) + result.expected, linear.predict(X), atol=1e-6)


def test_top_k_reason_codes_and_global_importance(rows, tmp_path):
    train, holdout = rows
    spec, model = _fit({"family": "lightgbm", "params": {"n_estimators": 50}}, None, train)
    X = holdout[spec.schema_.input_columns].head(3)  # noqa: N806
    reasons = top_contributions(model, X, 3)
    assert len(reasons) == 3 and all(len(r) == 3 for r in reasons)
    first = reasons[0]
    assert [abs(c["contribution"]) for c in first] == sorted((abs(c["contribution"]) for c in first), reverse=True)
    assert all(c["value"] == (X.iloc[0][c["feature"]] if pd.notna(X.iloc[0][c["feature"]]) else None) for c in first)
    importance, space = global_importance(model, holdout[spec.schema_.input_columns])
    assert space == "raw_margin" and list(importance.values()) == sorted(importance.values(), reverse=True)
    assert next(iter(importance)) in {"marital-status", "relationship", "capital-gain", "age", "education-num"}
    png = plot_importance(importance, "adult", tmp_path / "importance.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_that_is_not_the_pipeline_is_refused():
    with pytest.raises(ExplainError, match="expected Pipeline"):
        contributions(object(), pd.DataFrame({"a": [1]}))


def test_attribution_drift_reports_the_columns_whose_share_moved_and_violates_only_with_a_threshold(rows):
    from tasks.explain import attribution_drift

    train, holdout = rows
    spec, model = _fit({"family": "lightgbm", "params": {"n_estimators": 50}}, None, train)
    inputs = spec.schema_.input_columns
    reference, same = train[inputs].iloc[:1500], train[inputs].iloc[1500:3000]
    calm = attribution_drift(model, reference, same, threshold=0.2)
    assert calm["distance"] < 0.1 and calm["drifted"] is False and len(calm["moved_most"]) == 5
    shifted = same.assign(**{"capital-gain": 15024})  # every served row now reports a large capital gain
    moved = attribution_drift(model, reference, shifted, threshold=0.2)
    assert moved["moved_most"][0]["feature"] == "capital-gain" and moved["moved_most"][0]["change"] > 0
    assert moved["distance"] > 0.2 and moved["drifted"] is True
    assert attribution_drift(model, reference, shifted, threshold=None)["drifted"] is False  # report only


def test_a_custom_transformer_s_contribution_is_shared_by_the_raw_columns_it_reads(monkeypatch):
    """features.custom outputs read several raw columns: their contribution is split evenly among them, so
    contributions stay per raw input column and still add up."""
    from pathlib import Path

    from tasks.explain import raw_index

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "fixtures"))
    step = {"name": "feels", "transformer": "team_features.ratios:RatioFeature", "columns": ["atemp", "hum"]}
    builder = FeatureBuilder(["temp"], {}, {}, custom=[step | {"params": {}}])
    builder.fit(pd.DataFrame({"temp": [0.1, 0.2], "atemp": [0.3, 0.4], "hum": [0.5, 0.6]}))
    assert builder.feature_names == ["temp", "feels_ratio"]
    columns, matrix = raw_index(builder)
    assert columns == ["temp", "atemp", "hum"]
    np.testing.assert_array_equal(matrix, [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
