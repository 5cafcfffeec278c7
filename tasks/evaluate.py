"""Evaluate on the time-based holdout: score the candidate, the baseline and the current champion.

:func:`evaluate_model` scores all three on the same holdout rows, as the model server would load them,
and keeps every row's prediction (``predictions.parquet``), so the gate (:mod:`tasks.gate`) can bootstrap
the comparison and slice it by the spec's sensitive columns. It also logs, with the candidate's run, what
later stages compare against: a sample of holdout rows with their offline predictions (the deploy smoke
test) and the candidate's predictions on the whole holdout (the reference of prediction drift).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tasks import metrics as m
from tasks.errors import PermanentError
from tasks.names import (
    EXPECTED_COLUMN,
    IMPORTANCE_JSON,
    IMPORTANCE_PLOT,
    PREDICTION,
    REFERENCE_PREDICTIONS,
    ROLE_PREFIXES,
    SMOKE_SAMPLE,
)
from tasks.results import Evaluation, Trained

if TYPE_CHECKING:
    from tasks.settings import Settings
    from tasks.spec import PipelineSpec
    from tasks.storage import DataLayout

log = logging.getLogger(__name__)

SMOKE_ROWS = 200
EXPLAIN_ROWS = 500
"""Holdout rows the global explanation (mean |SHAP|) is computed on (seeded sample)."""


class EvaluationError(PermanentError, RuntimeError):
    """The holdout is empty, or predictions and targets do not line up: re-running cannot fix it."""


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """RMSE, MAE and R2 of one prediction vector, with the input checked (a convenience over :mod:`tasks.metrics`).

    Raises:
        EvaluationError: The arrays are empty or differ in length.
    """
    y_true = np.asarray(y_true, dtype="float64")
    y_pred = np.asarray(y_pred, dtype="float64")
    if y_true.size == 0 or y_true.shape != y_pred.shape:
        raise EvaluationError(f"cannot score {y_pred.shape} predictions against {y_true.shape} targets")
    r2 = m.r2(y_true, y_pred)
    return {"rmse": float(m.rmse(y_true, y_pred)), "mae": float(m.mae(y_true, y_pred)), "r2": float(np.nan_to_num(r2))}


def target_values(spec: PipelineSpec, column: pd.Series) -> np.ndarray:
    """The target as numbers: as-is for regression, 1.0 for the positive label (else 0.0) for classification."""
    if spec.task == "classification":
        return (column.astype(str) == str(spec.schema_.positive_label)).to_numpy(dtype="float64")
    return pd.to_numeric(column).to_numpy(dtype="float64")


def _champion_predictions(
    settings: Settings,
    spec: PipelineSpec,
    X: pd.DataFrame,  # noqa: N803 - ML convention
) -> tuple[str | None, Any, str | None]:
    """The current champion's version and its predictions on ``X`` (or why it could not predict)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from tasks.registry import champion

    current = champion(settings, spec.registered_model_name)
    if current is None:
        return None, None, None
    try:
        model = mlflow.pyfunc.load_model(f"models:/{spec.registered_model_name}/{current.version}")
        return current.version, np.asarray(model.predict(X), dtype="float64"), None
    except (MlflowException, ValueError, KeyError, TypeError) as exc:
        log.warning("champion v%s cannot score this holdout: %s", current.version, exc)
        return current.version, None, f"{type(exc).__name__}: {exc}"


def _write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    from tasks.storage import atomic_path

    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def _predict(role: str, uri: str, X: pd.DataFrame) -> np.ndarray:  # noqa: N803 - ML convention
    """The model's predictions; loading may meet an outage (retried), predicting on these rows is deterministic.

    Raises:
        EvaluationError: The model cannot score the holdout rows (e.g. a column no longer matches its signature).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(uri)
    try:
        return np.asarray(model.predict(X), dtype="float64")
    except (MlflowException, ValueError, KeyError, TypeError) as exc:
        raise EvaluationError(f"the {role} ({uri}) cannot score the holdout: {type(exc).__name__}: {exc}") from exc


def evaluate_model(
    spec: PipelineSpec, settings: Settings, layout: DataLayout, trained: Trained, holdout_uri: str, run_id: str
) -> Evaluation:
    """Score candidate, baseline and the current champion on the holdout, as the server would load them.

    Writes, under ``runs/<p>/<run_id>/``: every row's prediction (``predictions.parquet``, with the
    sensitive columns, for the gate), the smoke sample and the reference predictions; logs the holdout
    metrics (``holdout_*``, ``baseline_holdout_*``, ``champion_holdout_*``), ``smoke/holdout_sample.parquet``
    and ``reference/predictions.parquet`` to the candidate's run.

    Raises:
        EvaluationError: The holdout is empty, or the candidate or baseline cannot score it or returns a different
            number of predictions (a champion that cannot score it is reported, and fails the gate's check).
    """
    import mlflow

    from tasks.tracking import start_tracking

    holdout = pd.read_parquet(holdout_uri)
    if holdout.empty:
        raise EvaluationError(f"holdout {holdout_uri} is empty")
    start_tracking(settings, spec.name)
    X = holdout[spec.schema_.input_columns]  # noqa: N806 - ML convention
    y = target_values(spec, holdout[spec.schema_.target])
    preds = {
        "candidate": _predict("candidate", trained.model_uri, X),
        "baseline": _predict("baseline", trained.baseline_model_uri, X),
    }
    champion, champion_preds, champion_error = _champion_predictions(settings, spec, X)
    if champion_preds is not None:
        preds["champion"] = champion_preds
    for role, p in preds.items():
        if p.shape != y.shape:
            raise EvaluationError(f"the {role} returned {p.shape[0]} predictions for {y.shape[0]} holdout rows")
    scores = {role: m.score_all(spec.metric_names, y, p, spec.gate.decision_threshold) for role, p in preds.items()}

    frame = pd.DataFrame({"y": y, **preds})
    for col in spec.schema_.sensitive:  # a numeric column with slice bands is grouped by band, not by value
        rule = spec.gate.slices.rule(col) if spec.gate.slices else None
        groups = holdout[col].map(rule.group) if rule and rule.bands else holdout[col].astype(str)
        frame[f"group:{col}"] = groups.to_numpy()
    predictions = _write_parquet(frame, layout.holdout_predictions(spec.name, run_id))
    smoke = X.head(SMOKE_ROWS).assign(**{EXPECTED_COLUMN: preds["candidate"][:SMOKE_ROWS]})
    smoke_path = _write_parquet(smoke, layout.smoke_sample(spec.name, run_id))
    reference = pd.DataFrame({PREDICTION: preds["candidate"]})  # out of sample, as served predictions are
    reference_path = _write_parquet(reference, layout.reference_predictions(spec.name, run_id))

    importance, space, plot = _explain(spec, layout, trained, X, run_id)
    with mlflow.start_run(run_id=trained.mlflow_run_id):
        for role, prefix in ROLE_PREFIXES.items():
            mlflow.log_metrics({f"{prefix}{k}": v for k, v in scores.get(role, {}).items() if v is not None})
        mlflow.log_artifact(str(smoke_path), artifact_path=str(Path(SMOKE_SAMPLE).parent))
        mlflow.log_artifact(str(reference_path), artifact_path=str(Path(REFERENCE_PREDICTIONS).parent))
        mlflow.log_dict({"space": space, "mean_abs_contribution": importance}, IMPORTANCE_JSON)
        if plot is not None:
            mlflow.log_artifact(str(plot), artifact_path=str(Path(IMPORTANCE_PLOT).parent))
    log.info(
        "holdout (%d rows): candidate %s, baseline %s, champion v%s %s",
        len(holdout),
        scores["candidate"],
        scores["baseline"],
        champion,
        scores.get("champion"),
    )
    return Evaluation(
        candidate=scores["candidate"],
        baseline=scores["baseline"],
        champion=scores.get("champion"),
        champion_version=champion,
        champion_error=champion_error,
        holdout_rows=len(holdout),
        predictions_uri=str(predictions),
        smoke_sample_uri=str(smoke_path),
        reference_predictions_uri=str(reference_path),
        importance=importance,
        importance_space=space,
        importance_plot=str(plot) if plot else None,
    )


def _explain(
    spec: PipelineSpec,
    layout: DataLayout,
    trained: Trained,
    X: pd.DataFrame,  # noqa: N803 - ML convention
    run_id: str,
) -> tuple[dict[str, float], str, Path | None]:
    """Global SHAP importance of the candidate on a seeded holdout sample, and its plot."""
    import mlflow

    from tasks.explain import global_importance, plot_importance

    model = mlflow.sklearn.load_model(trained.model_uri)
    sample = X.sample(min(len(X), EXPLAIN_ROWS), random_state=spec.training.seed)
    importance, space = global_importance(model, sample)
    title = f"{spec.name}: {trained.family}, {len(sample)} holdout rows ({space.replace('_', ' ')})"
    plot = plot_importance(importance, title, layout.explanations(spec.name, run_id, Path(IMPORTANCE_PLOT).name))
    return importance, space, plot
