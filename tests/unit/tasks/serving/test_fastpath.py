"""The server's pandas-free predict gives the scikit-learn pipeline's answers, and is refused when it would not.

Foreign data: Beijing PM2.5 (hourly, a text wind direction, missing targets), with nulls, unseen levels and
dates that do not parse sent as a server would receive them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lightgbm import LGBMRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline

from tasks.features import FeatureBuilder
from tasks.models.binary import PositiveProbability
from tasks.names import EXPECTED_COLUMN
from tasks.serving import app as served_app
from tasks.serving.app import ServedModel
from tasks.serving.fastpath import compile_model
from tests.unit.conftest import FIXTURES

INPUTS = {"DEWP": "long", "TEMP": "long", "PRES": "long", "cbwd": "string", "Iws": "double", "hour": "long"}


def _rows() -> tuple[pd.DataFrame, pd.Series]:
    data = pd.read_csv(FIXTURES / "beijing_pm25.csv.gz").dropna(subset=["pm2.5"])
    data["stamp"] = pd.to_datetime(data[["year", "month", "day", "hour"]]).dt.strftime("%Y-%m-%dT%H:00:00")
    return data[[*INPUTS, "stamp"]], data["pm2.5"]


def _builder() -> FeatureBuilder:
    return FeatureBuilder(
        numeric=["DEWP", "TEMP", "PRES", "Iws"],
        categorical={"cbwd": []},  # levels learned at fit
        cyclical={"hour": 24},
        unseen="other",
        bands={"Iws": [5.0, 50.0]},
        date_parts={"stamp": ["month", "dayofweek"]},
        custom=[
            {
                "name": "scaled",
                "transformer": "sklearn.preprocessing:StandardScaler",
                "columns": ["PRES", "Iws"],
                "params": {},
            }
        ],
    )


def _served(columns: dict[str, str], model: Any = None) -> ServedModel:
    return ServedModel("p", "1", "r", model, columns, frozenset(c for c in columns if c != "Iws"))


def _hostile(records: list[dict[str, Any]], nulls: bool = True) -> list[dict[str, Any]]:
    """Rows as a server takes them, with what callers send: an unseen level, an extreme value, and (``nulls``,
    for estimators that take missing values) a null and dates that do not parse."""
    rows = [dict(r) for r in records]
    rows[1]["cbwd"] = "calm-ish"  # never seen at fit: the explicit other level
    rows[4]["Iws"] = 1e6  # above every band edge
    if nulls:
        rows[0]["Iws"] = None
        rows[2]["stamp"] = "not a date"
        rows[3]["stamp"] = None
    return rows


@pytest.mark.parametrize(
    ("estimator", "kind"),
    [
        (LGBMRegressor(n_estimators=30, num_leaves=15, verbose=-1, n_jobs=1), "lightgbm booster"),
        (Ridge(), "estimator"),
        (PositiveProbability(LogisticRegression(max_iter=500), positive_label=1), "estimator"),
    ],
)
def test_the_compiled_predict_is_the_pipeline_s_for_every_kind_of_feature(estimator, kind):
    X, y = _rows()
    if isinstance(estimator, PositiveProbability):
        y = (y > y.median()).astype(int)
    pipeline = Pipeline([("features", _builder()), ("model", estimator)]).fit(X, y)
    compiled = compile_model(pipeline)
    assert compiled is not None and compiled.kind == kind
    assert set(compiled.source_columns) == {*INPUTS, "stamp"}
    served = _served(INPUTS | {"stamp": "string"})
    nulls = kind == "lightgbm booster"  # LightGBM takes missing values; Ridge and LogisticRegression refuse them
    for rows in (_hostile(X.head(50).to_dict("records"), nulls), X.tail(1).to_dict("records")):
        expected = pipeline.predict(served_app._frame(served, rows))
        with warnings.catch_warnings():  # e.g. "X does not have valid feature names": the estimator gets its names
            warnings.simplefilter("error")
            got = compiled.predict(served_app._columns(served, rows, compiled.source_columns), len(rows))
        assert got.dtype == np.float64 and got.shape == (len(rows),)
        np.testing.assert_array_equal(got, np.asarray(expected, dtype="float64"))


def test_the_feature_matrix_from_arrays_is_the_frame_s():
    X, y = _rows()
    builder = _builder().fit(X)
    served = _served(INPUTS | {"stamp": "string"})
    rows = _hostile(X.head(30).to_dict("records"))
    frame = builder.transform(served_app._frame(served, rows))
    matrix = builder.matrix(served_app._columns(served, rows), len(rows))
    np.testing.assert_array_equal(matrix, frame.to_numpy())
    assert frame.loc[1, "cbwd=__other__"] == 1.0 and np.isnan(frame.loc[2, "stamp_month"])
    with pytest.raises(ValueError, match=r"input rows lack columns \['hour'\]"):
        builder.matrix({c: np.zeros(2) for c in INPUTS if c != "hour"} | {"stamp": np.array(["x", "y"])}, 2)


def test_what_is_not_a_feature_pipeline_is_not_compiled():
    X, y = _rows()
    numeric = X[["DEWP", "TEMP"]]
    assert compile_model(LGBMRegressor(n_estimators=5, verbose=-1).fit(numeric, y)) is None
    assert compile_model(Pipeline([("model", Ridge())]).fit(numeric, y)) is None
    from sklearn.preprocessing import StandardScaler

    assert compile_model(Pipeline([("scale", StandardScaler()), ("model", Ridge())]).fit(numeric, y)) is None


def test_a_compiled_predict_that_differs_from_the_smoke_sample_is_not_used(tmp_path, monkeypatch, caplog):
    """The server checks the compiled predict on the version's holdout sample, as it checks the pyfunc."""
    X, y = _rows()
    columns = {c: k for c, k in INPUTS.items()}
    X = X[list(columns)]
    pipeline = Pipeline(
        [
            ("features", FeatureBuilder(["DEWP", "TEMP", "PRES", "Iws"], {"cbwd": []}, {"hour": 24})),
            ("model", LGBMRegressor(n_estimators=20, verbose=-1, n_jobs=1)),
        ]
    ).fit(X, y)
    sample = X.head(40).assign(**{EXPECTED_COLUMN: pipeline.predict(X.head(40))})
    path = tmp_path / "holdout_sample.parquet"
    sample.to_parquet(path)
    served = _served(columns, model=None)
    served.direct = pipeline
    good = served_app._compiled(served, str(path))
    assert good is not None and good.kind == "lightgbm booster"

    booster = pipeline.steps[-1][1].booster_
    real = booster.predict
    monkeypatch.setattr(booster, "predict", lambda m, **kw: real(m, **kw) + 0.5)  # a booster that drifts
    with caplog.at_level("WARNING"):
        assert served_app._compiled(served, str(path)) is None
    assert "compiled predict differs from pyfunc" in caplog.text
