"""MLflow wiring shared by every stage: tracking URI, experiment, and the registry client."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tasks.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient


log = logging.getLogger(__name__)

MLFLOW_LOGGERS = ("mlflow", "alembic", "huey")


def route_mlflow_logs() -> None:
    """Send MLflow's log records (and Python warnings) through the process's logging, at their own level.

    On import MLflow gives its loggers their own stderr handler and stops propagation, so in an Airflow task log
    every MLflow warning is a stderr line, shown as an error. Here they propagate to the task's handlers instead
    (a warning stays a warning); levels are kept.
    """
    import logging

    for name in MLFLOW_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    logging.captureWarnings(True)


def use_store(settings: Settings) -> None:
    """Point this process's MLflow tracking *and* registry URIs at the settings' store.

    Both, always: ``models:/`` URIs resolve through the registry URI, and MLflow writes both into
    ``os.environ``, so a process that skipped one would follow whatever store it or its parent used last.
    """
    import mlflow

    route_mlflow_logs()
    if settings.mlflow_tracking_uri.startswith("sqlite:"):
        (settings.data_root / "mlflow").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)


def start_tracking(settings: Settings, pipeline: str) -> str:
    """Point MLflow at the settings' store and select (creating if needed) the pipeline's experiment.

    With the local SQLite default, artifacts go under ``<data_root>/mlflow/artifacts`` rather than the
    current directory, so every process (Airflow worker, model server, MLflow UI) finds them.

    Returns:
        The experiment id.
    """
    import mlflow

    use_store(settings)
    name = settings.experiment_name(pipeline)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if settings.mlflow_tracking_uri.startswith("sqlite:"):
            location = (settings.data_root / "mlflow" / "artifacts").as_uri()
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            # another process created it between our lookup and create
            experiment_id = mlflow.get_experiment_by_name(name).experiment_id  # type: ignore[union-attr]
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return str(experiment_id)


def client(settings: Settings) -> MlflowClient:
    """A registry/tracking client bound to the settings' store."""
    from mlflow import MlflowClient

    if settings.mlflow_tracking_uri.startswith("sqlite:"):
        (settings.data_root / "mlflow").mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def artifact_url(settings: Settings, run_id: str, path: str, experiment_id: str | None = None) -> str | None:
    """Where a person opens one of a run's artifacts in the MLflow UI (None when no UI address is known)."""
    ui = settings.mlflow_ui_url or (
        settings.mlflow_tracking_uri if settings.mlflow_tracking_uri.startswith("http") else None
    )
    if not ui:
        return None
    experiment = experiment_id or client(settings).get_run(run_id).info.experiment_id
    return f"{ui.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}/artifactPath/{path}"


def ensure_store(settings: Settings) -> None:
    """Create/upgrade the tracking store's schema once, before several processes open it concurrently."""
    client(settings).search_experiments(max_results=1)


MODEL_LOADING_MODULES = ("mlflow.pyfunc", "mlflow.sklearn", "sklearn.pipeline", "tasks.features", "lightgbm")
"""What unpickling a served pipeline imports (every model here is a scikit-learn Pipeline whose first step is
:class:`tasks.features.FeatureBuilder`; LightGBM is the default family); a missing one is skipped."""


def prepare_model_loading() -> list[str]:
    """Pay once, now, what the first ``log_model`` or ``pyfunc.load_model`` of a process would pay on the way.

    - The modules of :data:`MODEL_LOADING_MODULES` (scikit-learn alone is ~1.5 s).
    - MLflow's module-to-distribution map: every ``log_model`` and every ``pyfunc.load_model`` compares the
      model's requirements with the environment, and the first comparison in a process reads every installed
      distribution's metadata (``importlib_metadata.packages_distributions()``: ~1 s here). MLflow keeps the
      map in a module global, so a process forked after this call, or a later load in this one, finds it.

    Used by the scheduler's forkserver preload (so the train, evaluate and register tasks do not each pay it)
    and by the model server's loader thread at start-up (so the first deploy to a server that had no champion
    does not). It changes no result: the same comparison runs, on the same map.

    Returns:
        The modules it could not import (absent from this environment).
    """
    import importlib

    missing = []
    for name in MODEL_LOADING_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    from mlflow.utils import requirements_utils

    requirements_utils._init_modules_to_packages_map()  # noqa: SLF001 - MLflow's own lazy cache, filled early
    return missing


def warm_model_loading() -> None:
    """:func:`prepare_model_loading` where only speed is at stake: a failure is a warning, never an exception.

    For the scheduler's forkserver preload (which survives an ``ImportError`` from a preloaded module and
    nothing else: any other exception would end every task) and the model server's loader thread (whose
    loads then pay the cost, or fail with their own reason).
    """
    try:
        missing = prepare_model_loading()
    except Exception:  # noqa: BLE001 - see the docstring: warming must not take down what it speeds up
        log.warning("warming up model loading failed; the first model load in each process pays it", exc_info=True)
        return
    if missing:
        log.info("not installed here, not warmed: %s", ", ".join(missing))
