"""Train: fit the spec's model and its baseline on the featurised window; log both to MLflow.

The logged model is ``Pipeline([FeatureBuilder, estimator])`` and takes the raw input columns, so the
MLflow signature is the contract the model server enforces.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.evaluate import target_values
from tasks.features import FeatureBuilder
from tasks.metrics import score_all
from tasks.settings import Settings
from tasks.spec import REPO_ROOT, ModelSpec, PipelineSpec
from tasks.tracking import start_tracking

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training could not start or produced no usable model."""


@dataclass(frozen=True)
class TrainResult:
    """References to the logged candidate and baseline."""

    run_id: str
    model_uri: str
    baseline_run_id: str
    baseline_model_uri: str
    family: str
    train_rows: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for XCom."""
        return asdict(self)


def make_estimator(model: ModelSpec, seed: int, spec: PipelineSpec | None = None) -> Any:
    """Instantiate an estimator of the spec's family with its hyperparameters.

    For a classification pipeline the family's classifier is wrapped in
    :class:`tasks.models.binary.PositiveProbability`, so the model predicts P(positive label).

    Raises:
        TrainingError: A hyperparameter is not accepted by the family's estimator.
    """
    params: dict[str, Any] = dict(model.params)
    classify = spec is not None and spec.task == "classification"
    try:
        estimator = _family(model.family, params, seed, classify)
    except TypeError as exc:
        raise TrainingError(f"{model.family} does not accept parameters {params}: {exc}") from exc
    if classify:
        from tasks.models.binary import PositiveProbability

        return PositiveProbability(estimator, spec.schema_.positive_label)  # type: ignore[union-attr]
    return estimator


def _family(family: str, params: dict[str, Any], seed: int, classify: bool) -> Any:
    if family == "lightgbm":
        import lightgbm as lgb

        # deterministic + row-wise histograms make a re-run reproduce the same model.
        cls = lgb.LGBMClassifier if classify else lgb.LGBMRegressor
        return cls(random_state=seed, deterministic=True, force_row_wise=True, verbose=-1, **params)
    if family == "ridge":
        from sklearn.linear_model import Ridge

        return Ridge(**params)
    if family == "logistic_regression":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        # features keep their raw scale (capital-gain reaches 99,999): standardise for the solver
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed, **params))
    if family == "torch":
        from tasks.models.torch_tabular import TorchTabularRegressor

        return TorchTabularRegressor(random_state=seed, **params)
    if family == "random_forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        return (RandomForestClassifier if classify else RandomForestRegressor)(random_state=seed, **params)
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    return (HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor)(random_state=seed, **params)


def code_version() -> str:
    """Git commit of the code that trains, or ``unknown`` outside a git checkout (logged, never guessed)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        log.warning("not a git checkout: code version recorded as 'unknown'")
        return "unknown"


def _fit_and_log(
    spec: PipelineSpec,
    model_spec: ModelSpec,
    features: pd.DataFrame,
    train_raw: pd.DataFrame,
    datasets: dict[str, Any],
    tags: dict[str, str],
    reference_rows: int | None,
) -> tuple[str, str]:
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature
    from sklearn.pipeline import Pipeline

    target = spec.schema_.target
    inputs = spec.schema_.input_columns
    estimator = make_estimator(model_spec, spec.training.seed, spec)
    estimator.fit(features.drop(columns=[target]), features[target])
    model = Pipeline([("features", FeatureBuilder.from_spec(spec.features)), ("model", estimator)])
    X_raw = train_raw[inputs]  # noqa: N806 - ML convention
    with mlflow.start_run(run_name=f"{spec.name}-{model_spec.family}") as run:
        mlflow.set_tags(tags | {"model_family": model_spec.family})
        mlflow.log_params({f"model.{k}": v for k, v in model_spec.params.items()})
        mlflow.log_params(
            {
                "model.family": model_spec.family,
                "seed": spec.training.seed,
                "window_days": spec.training.window_days,
                "holdout_days": spec.training.holdout_days,
                "train_rows": len(train_raw),
            }
        )
        source = from_pandas(train_raw, source=datasets["train_raw"], name=f"{spec.name}-train", targets=target)
        mlflow.log_input(source, context="training")
        predictions = model.predict(X_raw)
        y_train = target_values(spec, train_raw[target])
        mlflow.log_metrics(
            {f"train_{k}": v for k, v in score_all(spec.metric_names, y_train, predictions).items() if v is not None}
        )
        report = getattr(estimator, "training_report_", None)  # e.g. the torch family: device, epochs, step time
        if report:
            mlflow.log_metrics({f"fit.{k}": v for k, v in report.items() if isinstance(v, int | float)})
            mlflow.set_tags({f"fit.{k}": v for k, v in report.items() if isinstance(v, str)})
        info = mlflow.sklearn.log_model(
            sk_model=model,
            name="model",
            signature=infer_signature(X_raw, predictions),
            input_example=X_raw.head(5),
            serialization_format="cloudpickle",
        )
        if reference_rows:
            # The champion's reference sample for drift monitoring travels with its run.
            # with the model's own predictions on it: the reference for prediction drift
            sample = train_raw.tail(reference_rows).assign(prediction=predictions[-reference_rows:])
            ref_path = Path(datasets["train_raw"]).with_name("reference.parquet")
            sample.to_parquet(ref_path, index=False)
            mlflow.log_artifact(str(ref_path), artifact_path="reference")
        return run.info.run_id, info.model_uri


def train_model(
    spec: PipelineSpec, settings: Settings, datasets: dict[str, Any], lineage: dict[str, str] | None = None
) -> TrainResult:
    """Fit the spec's model and baseline and log them (params, metrics, signature, example, lineage).

    Args:
        spec: The pipeline.
        settings: Environment settings (tracking URI).
        datasets: Output of :func:`tasks.features.build_datasets` (``DatasetUris.to_dict()``).
        lineage: Extra tags, e.g. the Airflow DAG run id.

    Returns:
        Run ids and model URIs of the candidate and baseline.

    Raises:
        TrainingError: The featurised dataset is empty or lacks the target.
    """
    features = pd.read_parquet(datasets["train_features"])
    train_raw = pd.read_parquet(datasets["train_raw"])
    if features.empty or spec.schema_.target not in features.columns:
        raise TrainingError(f"featurised dataset {datasets['train_features']} is empty or has no target column")

    start_tracking(settings, spec.name)
    tags = {
        "pipeline": spec.name,
        "code_version": code_version(),
        "data.train_partitions": json.dumps(datasets["train_partitions"]),
        "data.holdout_partitions": json.dumps(datasets["holdout_partitions"]),
        **(lineage or {}),
    }
    run_id, model_uri = _fit_and_log(
        spec,
        spec.training.model,
        features,
        train_raw,
        datasets,
        tags | {"role": "candidate"},
        spec.monitoring.reference_rows,
    )
    baseline_run_id, baseline_uri = _fit_and_log(
        spec,
        spec.training.baseline,
        features,
        train_raw,
        datasets,
        tags | {"role": "baseline", "candidate_run_id": run_id},
        None,
    )
    log.info("trained %s (run %s) and baseline %s", spec.training.model.family, run_id, spec.training.baseline.family)
    return TrainResult(
        run_id=run_id,
        model_uri=model_uri,
        baseline_run_id=baseline_run_id,
        baseline_model_uri=baseline_uri,
        family=spec.training.model.family,
        train_rows=len(train_raw),
    )
