"""Binary classifiers served as scores, on real UCI Adult rows: P(positive label) per row, loud on one class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tasks.features import FeatureBuilder
from tasks.models.binary import PositiveProbability
from tasks.spec import ModelSpec, load_spec
from tasks.train import make_estimator
from tests.unit.conftest import FIXTURES


@pytest.fixture(scope="module")
def adult() -> tuple[pd.DataFrame, pd.Series]:
    spec = load_spec("adult_income")
    data = pd.read_csv(FIXTURES / "adult.csv.gz", dtype=str, keep_default_na=False)
    for col, kind in spec.schema_.columns.items():
        if kind != "str" and col in data.columns:
            data[col] = pd.to_numeric(data[col].replace("?", np.nan))
    features = FeatureBuilder.from_spec(spec.features).transform(data)
    return features, data["income"]


@pytest.mark.parametrize("family", ["lightgbm", "logistic_regression"])
def test_scores_are_probabilities_of_the_positive_label(adult, family):
    x, labels = adult
    spec = load_spec("adult_income")
    model = make_estimator(ModelSpec(family=family, params={}), 0, spec).fit(x[:4000], labels[:4000])
    scores = model.predict(x[4000:])
    positive = (labels[4000:] == ">50K").to_numpy()
    assert scores.shape == (2000,) and ((scores >= 0) & (scores <= 1)).all()
    assert roc_auc_score(positive, scores) > 0.85  # real signal, the right way round
    assert np.allclose(model.predict_proba(x[4000:])[:, 1], scores) and list(model.classes_) == [0, 1]


def test_the_positive_label_decides_the_direction(adult):
    x, labels = adult
    spec = load_spec("adult_income")
    base = make_estimator(ModelSpec(family="logistic_regression", params={}), 0, spec).estimator
    up = PositiveProbability(base, ">50K").fit(x[:4000], labels[:4000]).predict(x[4000:])
    down = PositiveProbability(base, "<=50K").fit(x[:4000], labels[:4000]).predict(x[4000:])
    assert np.allclose(up + down, 1.0, atol=1e-6)


def test_training_labels_with_one_class_are_refused(adult):
    x, labels = adult
    with pytest.raises(ValueError, match="one class only .*positive label '>50K '"):
        PositiveProbability(make_estimator(ModelSpec(family="ridge"), 0), ">50K ").fit(x[:100], labels[:100])
