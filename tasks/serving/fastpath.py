"""The served model's predict without pandas: a request's columns -> features -> the estimator's own predict.

A logged model is ``Pipeline([FeatureBuilder, estimator])``. Called through scikit-learn on a one-row request,
framing the rows, the pipeline's calls and LightGBM's scikit-learn wrapper (which re-reads its parameters and
converts the frame on every call) cost ~1.5 ms for ~0.06 ms of trees. :func:`compile_model` returns a callable
that computes the same features with :meth:`tasks.features.FeatureBuilder.matrix` (the code training ran) from
the request's columns as numpy arrays and hands the matrix to the estimator: a LightGBM regressor's booster
directly (``Booster.predict``, with the server's thread limit), any other estimator through its ``predict``.

The server uses it only after it reproduced the version's smoke sample (:func:`tasks.serving.app.load_version`
checks it as it checks the pyfunc); anything it does not recognise gets None and keeps the scikit-learn path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CompiledModel:
    """Features from raw columns, then the estimator: ``predict(columns, rows)`` -> one float per row."""

    source_columns: tuple[str, ...]  # the raw input columns the features read (the server builds only these)
    _features: Any
    _estimate: Callable[[np.ndarray], Any]
    kind: str  # "lightgbm booster" or "estimator": what the matrix goes to (the health entry says)

    def predict(self, columns: Mapping[str, Any], rows: int) -> np.ndarray:
        """One float64 per row of ``columns`` (raw input name -> array of ``rows`` values)."""
        return np.asarray(self._estimate(self._features.matrix(columns, rows)), dtype="float64")


def compile_model(raw: Any) -> CompiledModel | None:
    """The pandas-free predict of ``raw`` (a fitted ``Pipeline([FeatureBuilder, estimator])``), else None."""
    from sklearn.pipeline import Pipeline

    from tasks.features import FeatureBuilder

    if not isinstance(raw, Pipeline) or len(raw.steps) != 2:
        return None
    features, estimator = raw.steps[0][1], raw.steps[1][1]
    if not isinstance(features, FeatureBuilder) or not hasattr(estimator, "predict"):
        return None
    source = tuple(features.source_columns)
    booster = _lightgbm_regressor_booster(estimator)
    if booster is not None:
        threads = estimator.get_params(deep=False).get("n_jobs")
        num_threads = threads if isinstance(threads, int) and threads > 0 else 0  # 0: LightGBM's default
        estimate = lambda m: booster.predict(m, num_threads=num_threads)  # noqa: E731 - one call, named for the reader
        return CompiledModel(source, features, estimate, "lightgbm booster")
    # any other estimator was fitted on the feature frame (a wrapper such as PositiveProbability hands it to the
    # estimator inside, which checks the names): it gets them, a frame over the matrix, no copy
    import pandas as pd

    names = list(features.feature_names)
    return CompiledModel(
        source, features, lambda m: estimator.predict(pd.DataFrame(m, columns=names, copy=False)), "estimator"
    )


def _lightgbm_regressor_booster(estimator: Any) -> Any:
    """The fitted booster of a LightGBM regressor (whose ``predict`` is the booster's), else None."""
    try:
        from lightgbm import LGBMRegressor
    except ImportError:  # pragma: no cover - LightGBM is a dependency; a model without it keeps its own predict
        return None
    if type(estimator) is not LGBMRegressor or not getattr(estimator, "fitted_", False):
        return None
    return estimator.booster_
