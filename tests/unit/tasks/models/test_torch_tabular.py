"""The PyTorch tabular regressor on real bike-demand rows: learns, reproduces itself, serves from the CPU."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from tasks.features import FeatureBuilder
from tasks.models.torch_tabular import TorchTabularRegressor, resolve_device
from tasks.spec import load_spec
from tests.unit.conftest import FIXTURES

SMALL = {"hidden_units": 32, "layers": 2, "batch_size": 64, "max_epochs": 40, "patience": 5, "device": "cpu"}


@pytest.fixture(scope="module")
def rows() -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    """Two weeks of June 2011 to train on, the next three days to judge (real rows, featurised)."""
    spec = load_spec("bike_demand")
    data = pd.read_csv(FIXTURES / "bike_sharing_hour.csv.gz")
    builder = FeatureBuilder.from_spec(spec.features)
    train = data[data.dteday.between("2011-06-01", "2011-06-14")]
    test = data[data.dteday.between("2011-06-15", "2011-06-17")]
    return builder.transform(train), train["cnt"].to_numpy(float), builder.transform(test), test["cnt"].to_numpy(float)


def test_it_learns_demand_far_better_than_the_mean(rows):
    x, y, x_test, y_test = rows
    params = SMALL | {"hidden_units": 64, "batch_size": 32, "max_epochs": 80, "patience": 10, "learning_rate": 3e-3}
    model = TorchTabularRegressor(**params).fit(x, y)
    rmse = float(np.sqrt(np.mean((model.predict(x_test) - y_test) ** 2)))
    baseline = float(np.sqrt(np.mean((y.mean() - y_test) ** 2)))
    assert rmse < 0.75 * baseline  # ~0.64 on this machine: two weeks of hours are little for a network
    report = model.training_report_
    assert report["device"] == "cpu" and 1 <= report["best_epoch"] <= report["epochs"] <= params["max_epochs"]


def test_the_same_seed_reproduces_the_same_model_and_another_seed_does_not(rows):
    x, y, x_test, _ = rows
    a = TorchTabularRegressor(**SMALL, random_state=7).fit(x, y).predict(x_test)
    b = TorchTabularRegressor(**SMALL, random_state=7).fit(x, y).predict(x_test)
    c = TorchTabularRegressor(**SMALL, random_state=8).fit(x, y).predict(x_test)
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_a_fitted_model_pickles_and_predicts_the_same_on_the_cpu(rows):
    x, y, x_test, _ = rows
    model = TorchTabularRegressor(**SMALL).fit(x, y)
    restored = pickle.loads(pickle.dumps(model))  # what MLflow's cloudpickle flavour does
    assert next(restored.network_.parameters()).device.type == "cpu"
    assert np.array_equal(restored.predict(x_test), model.predict(x_test))
    assert clone(model).get_params() == model.get_params()  # a scikit-learn estimator (Pipeline, clone)


def test_constant_columns_and_too_few_rows(rows):
    x, y, _, _ = rows
    model = TorchTabularRegressor(**SMALL).fit(x.assign(holiday=0.0), y)  # a column without variance
    assert np.isfinite(model.predict(x.head(5))).all()
    with pytest.raises(ValueError, match="at least 10 rows, got 9"):
        TorchTabularRegressor(**SMALL).fit(x.head(9), y[:9])


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda"}
