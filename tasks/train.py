"""Train: fit the spec's model and its baseline on the featurised window; log both to MLflow.

The logged model is ``Pipeline([FeatureBuilder, estimator])`` and takes the raw input columns, so the
MLflow signature is the contract the model server enforces. The code of the spec's own transformers
(``features.custom``) is logged with it (``code_paths``), so a server without that code on its path loads it.
"""

from __future__ import annotations

import json
import logging
import subprocess
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.errors import PermanentError
from tasks.evaluate import target_values
from tasks.explain import BACKGROUND_ROWS
from tasks.features import FeatureBuilder, custom_code
from tasks.metrics import score_all
from tasks.names import (
    FIT_PREFIX,
    MODEL_ARTIFACT,
    REFERENCE_INPUTS,
    REFERENCE_PROFILE,
    TAG_CALIBRATION,
    TAG_CANDIDATE_RUN,
    TAG_CODE_VERSION,
    TAG_HOLDOUT_PARTITIONS,
    TAG_MODEL_FAMILY,
    TAG_PIPELINE,
    TAG_ROLE,
    TAG_TRAIN_PARTITIONS,
    TAG_VALIDATION_SPLIT,
    TRAIN_PREFIX,
)
from tasks.results import Datasets, Trained
from tasks.spec import REPO_ROOT, ModelSpec, PipelineSpec
from tasks.tracking import start_tracking

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tasks.search import Selection, Split
    from tasks.settings import Settings
    from tasks.storage import DataLayout

log = logging.getLogger(__name__)


class TrainingError(PermanentError, RuntimeError):
    """Training cannot start or produce a usable model from this spec and data (retrying cannot help)."""


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


def _final_fit(spec: PipelineSpec, model_spec: ModelSpec, features: pd.DataFrame, split: Split | None) -> Any:
    """Fit the chosen family on the whole training window.

    When calibrating: fit on the fit rows and calibrate on the validation rows (the calibrator never sees rows
    the model was fitted on).
    """
    target = spec.schema_.target
    X, y = features.drop(columns=[target]), features[target]  # noqa: N806 - ML convention
    estimator = make_estimator(model_spec, spec.training.seed, spec)
    method = spec.training.calibration
    if split is None or method is None:
        return estimator.fit(X, y)
    estimator.fit(X.iloc[split.fit], y.iloc[split.fit])
    estimator.calibrate(X.iloc[split.validation], y.iloc[split.validation], method)
    return estimator


def _fit_and_log(
    spec: PipelineSpec,
    model_spec: ModelSpec,
    features: pd.DataFrame,
    train_raw: pd.DataFrame,
    datasets: Datasets,
    tags: dict[str, str],
    reference: Path | None,
    choose: Callable[[str], tuple[Selection, Split]] | None = None,
    resume_run_id: str | None = None,
) -> tuple[str, str, Selection | None]:
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature
    from sklearn.pipeline import Pipeline

    target = spec.schema_.target
    inputs = spec.schema_.input_columns
    X_raw = train_raw[inputs]  # noqa: N806 - ML convention
    # resume: the candidate's run that plan_search opened for the mapped trial batches (they nest under it)
    name = None if resume_run_id else f"{spec.name}-{model_spec.family}"
    with mlflow.start_run(run_id=resume_run_id, run_name=name) as run:
        selection, split = choose(run.info.run_id) if choose else (None, None)
        if selection is not None and split is not None:
            model_spec = selection.best
            mlflow.set_tags({"mlflow.runName": f"{spec.name}-{model_spec.family}", TAG_VALIDATION_SPLIT: split.how})
            if spec.training.calibration:
                mlflow.set_tag(TAG_CALIBRATION, spec.training.calibration)
        estimator = _final_fit(spec, model_spec, features, split)
        model = Pipeline([("features", FeatureBuilder.from_spec(spec.features).fit(X_raw)), ("model", estimator)])
        # the model-agnostic explainer's background (tree models need none): a seeded sample of training inputs
        model.explain_background_ = X_raw.sample(min(len(X_raw), BACKGROUND_ROWS), random_state=spec.training.seed)
        mlflow.set_tags(tags | {TAG_MODEL_FAMILY: model_spec.family})
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
        source = from_pandas(train_raw, source=datasets.train_raw, name=f"{spec.name}-train", targets=target)
        mlflow.log_input(source, context="training")
        predictions = model.predict(X_raw)
        y_train = target_values(spec, train_raw[target])
        scores = score_all(spec.metric_names, y_train, predictions)
        mlflow.log_metrics({f"{TRAIN_PREFIX}{k}": v for k, v in scores.items() if v is not None})
        report = getattr(estimator, "training_report_", None)  # e.g. the torch family: device, epochs, step time
        if report:
            mlflow.log_metrics({f"{FIT_PREFIX}{k}": v for k, v in report.items() if isinstance(v, int | float)})
            mlflow.set_tags({f"{FIT_PREFIX}{k}": v for k, v in report.items() if isinstance(v, str)})
        code_paths, custom_requirements = custom_code(spec.features)  # features.custom travels with the model
        info = mlflow.sklearn.log_model(
            sk_model=model,
            name=MODEL_ARTIFACT,
            signature=infer_signature(X_raw, predictions),
            input_example=X_raw.head(5),
            serialization_format="cloudpickle",
            pip_requirements=model_requirements(model_spec.family) + custom_requirements,
            code_paths=code_paths or None,
        )
        if reference is not None:
            # the reference of input and target drift travels with the run that may become champion;
            # prediction drift compares with the candidate's holdout predictions, logged at evaluation
            mlflow.log_artifact(str(reference), artifact_path=REFERENCE_INPUTS.rsplit("/", 1)[0])
            # its distinct values and counts per column: the monitor's decision statistics in one pass
            profile = _reference_profile(spec, reference)
            mlflow.log_artifact(str(profile), artifact_path=REFERENCE_PROFILE.rsplit("/", 1)[0])
        return run.info.run_id, info.model_uri, selection


_FAMILY_PACKAGES = {"lightgbm": ("lightgbm",), "torch": ("torch",)}


def model_requirements(family: str) -> list[str]:
    """The packages a saved model imports when it loads, pinned to the versions that trained it.

    Stated rather than inferred: MLflow's inference loads the model in a subprocess and watches its imports,
    about 16 s per model on a 2-core machine, for the same answer. The pipeline's own code (``tasks``) ships
    in the serving image, not from an index.
    """
    from importlib.metadata import version

    names = ("mlflow", "cloudpickle", "numpy", "pandas", "scikit-learn", *_FAMILY_PACKAGES.get(family, ()))
    return [f"{name}=={version(name)}" for name in names]


def _reference_profile(spec: PipelineSpec, reference: Path) -> Path:
    """``reference/profile.json`` beside the reference sample: what the monitor compares every served row with."""
    from tasks.drift_stats import ReferenceProfile
    from tasks.storage import write_text

    profile = ReferenceProfile.of(pd.read_parquet(reference), spec.features.categorical)
    text = json.dumps(profile.to_json(), default=str)  # compact: a few numbers per distinct reference value
    return write_text(reference.with_name(REFERENCE_PROFILE.rsplit("/", 1)[1]), text)


def _reference_sample(spec: PipelineSpec, train_raw: pd.DataFrame, path: Path) -> Path:
    """The last ``monitoring.reference_rows`` training rows (inputs and target), written atomically."""
    from tasks.storage import atomic_path

    keep = list(dict.fromkeys([*spec.schema_.input_columns, spec.schema_.target]))
    with atomic_path(path) as tmp:
        train_raw[keep].tail(spec.monitoring.reference_rows).to_parquet(tmp, index=False)
    return path


def train_model(
    spec: PipelineSpec,
    settings: Settings,
    layout: DataLayout,
    datasets: Datasets,
    run_id: str,
    lineage: dict[str, str] | None = None,
    search_run_id: str | None = None,
) -> Trained:
    """Fit the spec's model and baseline and log them (params, metrics, signature, example, lineage).

    The candidate's run also gets the training sample monitoring compares served inputs with
    (``reference/inputs.parquet``, also kept under ``runs/<p>/<run_id>/``).

    Args:
        spec: The pipeline.
        settings: Environment settings (tracking URI).
        layout: Data root layout (where the reference sample is kept).
        datasets: The ``build_features`` stage's result.
        run_id: The Airflow run (output folder).
        lineage: Extra tags, e.g. the Airflow DAG and run ids.
        search_run_id: The candidate's MLflow run that ``plan_search`` opened and the mapped trial batches ran
            under (kubernetes mode with ``training.search.trials_per_pod``): training resumes it, and the
            search finds the trials in the run's studies and only reads their best.

    Returns:
        MLflow run ids and model URIs of the candidate and baseline.

    Raises:
        TrainingError: The featurised dataset is empty or lacks the target, or a hyperparameter is refused.
    """
    features = pd.read_parquet(datasets.train_features)
    train_raw = pd.read_parquet(datasets.train_raw)
    if features.empty or spec.schema_.target not in features.columns:
        raise TrainingError(f"featurised dataset {datasets.train_features} is empty or has no target column")

    start_tracking(settings, spec.name)
    tags = {
        TAG_PIPELINE: spec.name,
        TAG_CODE_VERSION: code_version(),
        TAG_TRAIN_PARTITIONS: json.dumps(datasets.train_partitions),
        TAG_HOLDOUT_PARTITIONS: json.dumps(datasets.holdout_partitions),
        **(lineage or {}),
    }
    reference = _reference_sample(spec, train_raw, layout.reference_inputs(spec.name, run_id))

    def choose(parent_run_id: str) -> tuple[Selection, Split]:
        from tasks.search import select_model, validation_split

        split = validation_split(spec, train_raw)
        journal = layout.search_journal(spec.name, run_id)
        storage = settings.search_storage_url
        cap, searched = settings.search_max_trials, search_run_id is not None
        return select_model(spec, features, split, parent_run_id, storage, journal, cap, searched), split

    mlflow_run_id, model_uri, selection = _fit_and_log(
        spec,
        spec.training.model,
        features,
        train_raw,
        datasets,
        tags | {TAG_ROLE: "candidate"},
        reference,
        choose if spec.training.selects else None,
        search_run_id,
    )
    baseline_tags = tags | {TAG_ROLE: "baseline", TAG_CANDIDATE_RUN: mlflow_run_id}
    baseline_run_id, baseline_uri, _ = _fit_and_log(
        spec, spec.training.baseline, features, train_raw, datasets, baseline_tags, None
    )
    chosen = selection.best if selection else spec.training.model
    log.info("trained %s (MLflow run %s) and baseline %s", chosen.family, mlflow_run_id, spec.training.baseline.family)
    return Trained(
        mlflow_run_id=mlflow_run_id,
        model_uri=model_uri,
        baseline_mlflow_run_id=baseline_run_id,
        baseline_model_uri=baseline_uri,
        family=chosen.family,
        train_rows=len(train_raw),
        reference_rows=min(len(train_raw), spec.monitoring.reference_rows),
        params=dict(chosen.params),
        selection_metric=selection.metric if selection else None,
        validation_scores=selection.scores if selection else {},
        trials={r.model.family: r.trials for r in selection.results} if selection else {},
        calibration=spec.training.calibration,
    )
