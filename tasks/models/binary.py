"""Binary classifiers served as scores: ``predict`` returns the probability of the positive class.

The served model's output is then one number per row for every pipeline (regression value or
probability), which is what the prediction log, the gate's metrics and drift monitoring expect.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone


class PositiveProbability(BaseEstimator):
    """Wrap a scikit-learn classifier; fit on raw labels, predict P(label == ``positive_label``)."""

    def __init__(self, estimator: Any, positive_label: Any) -> None:
        """``estimator``: any classifier with ``predict_proba``; ``positive_label``: the target value of class 1."""
        self.estimator = estimator
        self.positive_label = positive_label

    def fit(self, X: Any, y: Any) -> PositiveProbability:  # noqa: N803 - sklearn's signature
        """Fit a clone of the estimator on 0/1 labels (1 where ``y`` equals the positive label)."""
        labels = (np.asarray(y).astype(str) == str(self.positive_label)).astype(int)
        if labels.min() == labels.max():
            raise ValueError(f"training labels hold one class only (positive label {self.positive_label!r})")
        self.estimator_ = clone(self.estimator).fit(X, labels)
        self.classes_ = np.array([0, 1])
        return self

    def calibrate(self, X: Any, y: Any, method: str) -> PositiveProbability:  # noqa: N803 - sklearn's signature
        """Calibrate the fitted classifier's probabilities on held-out rows (isotonic or sigmoid).

        The fitted classifier is frozen (scikit-learn's ``FrozenEstimator``); :attr:`uncalibrated` keeps it
        (explanations are computed on its raw margin).
        """
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.frozen import FrozenEstimator

        labels = (np.asarray(y).astype(str) == str(self.positive_label)).astype(int)
        self.raw_estimator_ = self.estimator_
        self.estimator_ = CalibratedClassifierCV(FrozenEstimator(self.raw_estimator_), method=method).fit(X, labels)
        return self

    @property
    def uncalibrated(self) -> Any:
        """The fitted classifier before calibration (the same object when not calibrated)."""
        return getattr(self, "raw_estimator_", None) or self.estimator_

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803 - sklearn's signature
        """Probability of the positive class, one float per row."""
        return np.asarray(self.estimator_.predict_proba(X)[:, 1], dtype="float64")

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803 - sklearn's signature
        """Both class probabilities, scikit-learn style."""
        return np.asarray(self.estimator_.predict_proba(X))
