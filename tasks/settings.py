"""Environment settings: ``config/base`` overlaid by ``config/<ML_ENV>``, then by environment variables.

Environment variables (highest precedence): ``ML_ENV`` (layer, default ``local``), ``MLP_DATA_ROOT``,
``MLFLOW_TRACKING_URI``, ``MLP_SERVING_URL``, ``MLP_SHARED_DATASETS``, ``MLP_EXECUTION_MODE`` and
``MLP_TASK_IMAGE`` (the task image of the kubernetes execution mode), ``MLP_LEDGER_URI`` (the promotion
ledger's database), ``MLP_PREDICTION_LOG_URI`` (the prediction log's database) and ``MLP_MLFLOW_UI_URL``.

The model server's admin token comes only from the environment, never from a file under ``config/``:
``MLP_ADMIN_TOKEN``, or ``MLP_ADMIN_TOKEN_FILE`` (the path of a mounted Kubernetes Secret key; the trailing
newline is stripped). No token means the admin API is off.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from tasks.errors import PermanentError
from tasks.redact import redact
from tasks.spec import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "config"
_ENV_OVERRIDES = {
    "MLP_DATA_ROOT": "data_root",
    "MLFLOW_TRACKING_URI": "mlflow_tracking_uri",
    "MLP_SERVING_URL": "serving_url",
    "MLP_SHARED_DATASETS": "shared_datasets",
    "MLP_EXECUTION_MODE": "execution_mode",
    "MLP_LEDGER_URI": "ledger_uri",
    "MLP_PREDICTION_LOG_URI": "prediction_log_uri",
    "MLP_MLFLOW_UI_URL": "mlflow_ui_url",
    "MLP_SEARCH_STORAGE_URL": "search_storage_url",
    "MLP_SEARCH_MAX_TRIALS": "search_max_trials",
}
ADMIN_TOKEN_ENV = "MLP_ADMIN_TOKEN"
ADMIN_TOKEN_FILE_ENV = "MLP_ADMIN_TOKEN_FILE"
MIN_ADMIN_TOKEN_CHARS = 16

_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: parsing specs at DAG-parse time is ~10x faster


class SettingsError(PermanentError, ValueError):
    """The environment layer is unknown or a settings file is malformed."""


class KubernetesSettings(BaseModel):
    """Where and how heavy stages run as pods when ``execution_mode`` is ``kubernetes``.

    Cluster facts live here (namespace, image, shared store, GPU node pool); what one pipeline's stage
    needs (CPU, memory, GPUs) lives in its spec under ``resources``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = "ml-pipelines"
    image: str = "ghcr.io/mlops-airflow/tasks:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str | None = "ml-tasks"
    kubernetes_conn_id: str | None = None
    in_cluster: bool = True
    config_file: str | None = None
    shared_store_claim: str = Field(
        default="ml-data", description="ReadWriteMany PVC holding the data root, mounted by Airflow workers and pods."
    )
    data_mount: str = Field(default="/data", description="Where the pod sees the shared store (its MLP_DATA_ROOT).")
    mlflow_secret: str = Field(
        default="mlflow-credentials",
        description="Secret with keys tracking_uri, username, password: MLflow credentials never sit in DAG files.",
    )
    schedule_timeout_seconds: int = Field(default=600, gt=0, description="A pod not scheduled by then fails.")
    startup_timeout_seconds: int = Field(default=300, gt=0, description="A scheduled pod not running by then fails.")
    pod_template: str | None = "include/pod_templates/stage.yaml"
    gpu_node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    labels: dict[str, str] = Field(default_factory=dict)
    serving_deployment: str | None = Field(
        default=None,
        description="The model server's Deployment (deploy/k8s/model-server.yaml). Set: the deploy stage rolls a "
        "version out by pinning it in the pod template; unset: it asks one server's POST /admin/reload. "
        "Environment: MLP_SERVING_DEPLOYMENT (empty unsets it).",
    )
    serving_namespace: str = Field(default="ml-serving", description="Namespace of the model server's Deployment.")
    serving_container: str = Field(default="model-server", description="The server's container in the pod template.")
    rollout_timeout_s: float = Field(
        default=900,
        gt=0,
        description="Longest the deploy stage watches a rollout; past it (or the Deployment's own "
        "progressDeadlineSeconds) the rollout is rolled back and the stage fails.",
    )


class Settings(BaseModel):
    """Typed, validated environment settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str
    data_root: Path
    mlflow_tracking_uri: str
    mlflow_experiment_prefix: str = ""
    serving_url: str
    serving_timeout_s: float = 60
    serving_default_model: str | None = Field(
        default=None, description="Pipeline answering POST /predict (others: /models/<name>/predict)."
    )
    serving_max_batch: int = Field(default=10_000, gt=0, description="Rows per prediction request the server accepts.")
    serving_max_body_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0, description="Largest request body the model server reads; bigger is a 413."
    )
    serving_mlflow_timeout_s: int = Field(
        default=10,
        gt=0,
        description="Seconds per MLflow HTTP request in the model server (MLFLOW_HTTP_REQUEST_TIMEOUT).",
    )
    serving_mlflow_retries: int = Field(
        default=1, ge=0, description="The model server's MLflow HTTP retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES)."
    )
    serving_load_retry_max_s: float = Field(
        default=60, gt=0, description="Longest wait between the model server's background retries of a failed load."
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the model server's admin API; only from MLP_ADMIN_TOKEN / MLP_ADMIN_TOKEN_FILE.",
    )
    ledger_uri: str = Field(description="The promotion ledger's database (sqlite:///... or postgresql://...).")
    prediction_log_uri: str | None = Field(
        default=None,
        description="The prediction log's database (postgresql://..., sqlite:///...); unset: "
        "serving/predictions.sqlite under the data root. Every server worker and the monitor share it.",
    )
    serving_model_threads: int = Field(
        default=1,
        ge=1,
        description="Threads per prediction (the served estimators' n_jobs): requests run concurrently.",
    )
    serving_log_sync: Literal["normal", "full"] = Field(
        default="normal",
        description="SQLite prediction log: normal (a commit survives the server being killed, not a power loss; "
        "no fsync) or full (fsync per group commit). PostgreSQL commits durably either way.",
    )
    serving_log_timeout_s: float = Field(
        default=10,
        gt=0,
        description="How long a prediction waits for a locked log store before it is answered 503 (never 500).",
    )
    mlflow_ui_url: str | None = Field(
        default=None, description="MLflow UI address people open; model-card links from Airflow point there."
    )
    execution_mode: Literal["local", "kubernetes"] = "local"
    search_storage_url: str | None = Field(
        default=None,
        description="Optuna's RDB storage for hyperparameter search (postgresql://...); unset: a journal file in "
        "the training run's folder.",
    )
    search_max_trials: int | None = Field(
        default=None,
        gt=0,
        description="Cap on search trials per family in this environment (CI, demos); the spec's budget otherwise.",
    )
    shared_datasets: Path
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    def experiment_name(self, pipeline: str) -> str:
        """MLflow experiment that holds a pipeline's runs."""
        return f"{self.mlflow_experiment_prefix}{pipeline}"


def _read_layer(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.load(path.read_text(), Loader=_YAML) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping, got {type(data).__name__}")
    return data


def admin_token_from_env() -> SecretStr | None:
    """The admin token from ``MLP_ADMIN_TOKEN`` or the file named by ``MLP_ADMIN_TOKEN_FILE`` (None: admin off).

    Raises:
        SettingsError: The file is missing or unreadable, or the token is shorter than 16 characters.
    """
    token = os.environ.get(ADMIN_TOKEN_ENV) or None
    source = ADMIN_TOKEN_ENV
    path = os.environ.get(ADMIN_TOKEN_FILE_ENV)
    if token is None and path:
        source = f"{ADMIN_TOKEN_FILE_ENV}={path}"
        try:
            token = Path(path).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read the admin token file {ADMIN_TOKEN_FILE_ENV}={path}: {exc}") from exc
    if token is None:
        return None
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise SettingsError(
            f"the admin token from {source} has {len(token)} characters; use at least {MIN_ADMIN_TOKEN_CHARS} "
            '(python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return SecretStr(token)


def _resolve(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


def load_settings(env: str | None = None) -> Settings:
    """Build the settings for an environment layer.

    Args:
        env: Layer name; defaults to ``$ML_ENV`` or ``local``.

    Returns:
        The merged settings, with relative paths made absolute.

    Raises:
        SettingsError: The layer has no folder under ``config/`` or a file is malformed.
    """
    env = env or os.environ.get("ML_ENV", "local")
    if not (CONFIG_DIR / env).is_dir():
        layers = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "pipelines")
        raise SettingsError(f"unknown ML_ENV {env!r}; layers under config/: {layers}")
    merged = _read_layer(CONFIG_DIR / "base" / "settings.yaml") | _read_layer(CONFIG_DIR / env / "settings.yaml")
    if "admin_token" in merged:
        raise SettingsError(
            f"admin_token is set in config/: a secret never goes in settings files; set {ADMIN_TOKEN_ENV} or "
            f"{ADMIN_TOKEN_FILE_ENV} (a mounted Secret) instead"
        )
    for var, key in _ENV_OVERRIDES.items():
        if os.environ.get(var):
            merged[key] = os.environ[var]
    data_root = _resolve(merged.pop("data_root"))
    uri = merged.pop("mlflow_tracking_uri", None) or f"sqlite:///{data_root / 'mlflow' / 'mlflow.db'}"
    shared = _resolve(merged.pop("shared_datasets"))
    ledger = merged.pop("ledger_uri", None) or f"sqlite:///{data_root / 'registry' / 'ledger.sqlite'}"
    if os.environ.get("MLP_TASK_IMAGE"):
        merged["kubernetes"] = (merged.get("kubernetes") or {}) | {"image": os.environ["MLP_TASK_IMAGE"]}
    if "MLP_SERVING_DEPLOYMENT" in os.environ:  # empty: no Deployment, deploy asks one server's /admin/reload
        deployment = os.environ["MLP_SERVING_DEPLOYMENT"] or None
        merged["kubernetes"] = (merged.get("kubernetes") or {}) | {"serving_deployment": deployment}
    try:
        return Settings(
            env=env,
            data_root=data_root,
            mlflow_tracking_uri=uri,
            shared_datasets=shared,
            ledger_uri=ledger,
            admin_token=admin_token_from_env(),
            **merged,
        )
    except ValidationError as exc:
        raise SettingsError(f"invalid settings for ML_ENV={env!r}: {redact(str(exc))}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings for the current process (cached; tests call ``get_settings.cache_clear()``)."""
    return load_settings()


def register_secrets(settings: Settings) -> list[str]:
    """Hand this environment's secrets to :mod:`tasks.redact`; returns them (for Airflow's own masker).

    The passwords of the MLflow and ledger URIs, the admin token and ``MLFLOW_TRACKING_PASSWORD``.
    """
    from tasks.redact import register_secret, register_uri_secrets

    uris = [settings.mlflow_tracking_uri, settings.ledger_uri]
    optional = (settings.search_storage_url, settings.prediction_log_uri)
    found = register_uri_secrets(uris + [uri for uri in optional if uri])
    for value in (
        settings.admin_token.get_secret_value() if settings.admin_token else None,
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
        os.environ.get("MLFLOW_TRACKING_TOKEN"),
    ):
        if value:
            register_secret(value)
            found.append(value)
    return found
