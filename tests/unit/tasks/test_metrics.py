"""Holdout metrics against scikit-learn, vectorised over bootstrap resamples, undefined cases as NaN/None."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from tasks import metrics as m
from tasks.spec import CLASSIFICATION_METRICS, REGRESSION_METRICS

RNG = np.random.default_rng(7)
N = 4000
Y = (RNG.random(N) < 0.3).astype(float)
GOOD = np.clip(0.3 + 0.45 * (Y - 0.3) + RNG.normal(0, 0.18, N), 0.001, 0.999)  # AUC ~0.95


def test_classification_metrics_match_scikit_learn_with_and_without_weights():
    w = RNG.poisson(1.0, N).astype(float)
    p = GOOD.round(2)  # ties exercise the tie handling of AUC and AP
    for weights in (None, w):
        assert m.roc_auc(Y, p, weights) == pytest.approx(sk.roc_auc_score(Y, p, sample_weight=weights))
        assert m.pr_auc(Y, p, weights) == pytest.approx(sk.average_precision_score(Y, p, sample_weight=weights))
        assert m.log_loss(Y, GOOD, weights) == pytest.approx(sk.log_loss(Y, GOOD, sample_weight=weights))
        assert m.f1(Y, p, weights) == pytest.approx(sk.f1_score(Y, p >= 0.5, sample_weight=weights))


def test_regression_metrics_match_scikit_learn():
    y = RNG.normal(100, 30, 500)
    p = y + RNG.normal(0, 10, 500)
    w = RNG.poisson(1.0, 500).astype(float)
    assert m.rmse(y, p) == pytest.approx(np.sqrt(sk.mean_squared_error(y, p)))
    assert m.mae(y, p, w) == pytest.approx(sk.mean_absolute_error(y, p, sample_weight=w))
    assert m.r2(y, p, w) == pytest.approx(sk.r2_score(y, p, sample_weight=w))


def test_metrics_vectorise_over_bootstrap_resamples():
    weights = m.poisson_weights(N, 5, seed=3)
    batch = m.roc_auc(Y, GOOD, weights)
    assert batch.shape == (5,)
    assert batch[2] == pytest.approx(sk.roc_auc_score(Y, GOOD, sample_weight=weights[2]))
    assert m.r2(Y, GOOD, weights)[4] == pytest.approx(sk.r2_score(Y, GOOD, sample_weight=weights[4]))


def test_poisson_weights_are_seeded():
    assert np.array_equal(m.poisson_weights(50, 3, seed=1), m.poisson_weights(50, 3, seed=1))
    assert not np.array_equal(m.poisson_weights(50, 3, seed=1), m.poisson_weights(50, 3, seed=2))


def test_calibration_error_is_zero_for_calibrated_bins_and_large_when_off():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1], dtype=float)
    p = np.array([0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75])  # 25 % and 75 % positives: calibrated
    assert m.calibration_error(y, p) == pytest.approx(0.0)
    assert m.calibration_error(y, 1 - p) == pytest.approx(0.5)


def test_undefined_metrics_are_none_not_errors():
    ones = np.ones(10)
    scores = m.score_all(CLASSIFICATION_METRICS, ones, np.full(10, 0.9))
    assert scores["roc_auc"] is None and scores["pr_auc"] is not None
    assert m.score_all(REGRESSION_METRICS, ones, ones)["r2"] is None
    assert m.score_all(REGRESSION_METRICS, np.array([]), np.array([])) == {"rmse": None, "mae": None, "r2": None}


def test_improvement_follows_the_metric_direction():
    assert m.improvement("rmse", 8.0, 10.0) == pytest.approx(0.2)  # lower is better
    assert m.improvement("roc_auc", 0.88, 0.80) == pytest.approx(0.1)  # higher is better
    assert m.improvement("mae", 0.5, 0.0) == pytest.approx(-0.5)  # reference ~0: absolute difference


def test_f1_threshold_moves_the_verdict():
    y = np.array([1.0, 1.0, 0.0, 0.0])
    p = np.array([0.6, 0.4, 0.3, 0.2])
    assert m.score("f1", y, p, threshold=0.5) == pytest.approx(2 / 3)
    assert m.score("f1", y, p, threshold=0.35) == pytest.approx(1.0)
