"""Environment settings: ``config/base`` overlaid by ``config/<ML_ENV>``, then by environment variables.

Environment variables (highest precedence): ``ML_ENV`` (layer, default ``local``), ``MLP_DATA_ROOT``,
``MLFLOW_TRACKING_URI``, ``MLP_SERVING_URL``, ``MLP_SHARED_DATASETS``, ``MLP_EXECUTION_MODE`` and
``MLP_TASK_IMAGE`` (the task image of the kubernetes execution mode), ``MLP_LEDGER_URI`` (the promotion
ledger's database) and ``MLP_MLFLOW_UI_URL``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.errors import PermanentError
from tasks.spec import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "config"
_ENV_OVERRIDES = {
    "MLP_DATA_ROOT": "data_root",
    "MLFLOW_TRACKING_URI": "mlflow_tracking_uri",
    "MLP_SERVING_URL": "serving_url",
    "MLP_SHARED_DATASETS": "shared_datasets",
    "MLP_EXECUTION_MODE": "execution_mode",
    "MLP_LEDGER_URI": "ledger_uri",
    "MLP_MLFLOW_UI_URL": "mlflow_ui_url",
}


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
    ledger_uri: str = Field(description="The promotion ledger's database (sqlite:///... or postgresql://...).")
    mlflow_ui_url: str | None = Field(
        default=None, description="MLflow UI address people open; model-card links from Airflow point there."
    )
    execution_mode: Literal["local", "kubernetes"] = "local"
    shared_datasets: Path
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    def experiment_name(self, pipeline: str) -> str:
        """MLflow experiment that holds a pipeline's runs."""
        return f"{self.mlflow_experiment_prefix}{pipeline}"


def _read_layer(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping, got {type(data).__name__}")
    return data


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
    for var, key in _ENV_OVERRIDES.items():
        if os.environ.get(var):
            merged[key] = os.environ[var]
    data_root = _resolve(merged.pop("data_root"))
    uri = merged.pop("mlflow_tracking_uri", None) or f"sqlite:///{data_root / 'mlflow' / 'mlflow.db'}"
    shared = _resolve(merged.pop("shared_datasets"))
    ledger = merged.pop("ledger_uri", None) or f"sqlite:///{data_root / 'registry' / 'ledger.sqlite'}"
    if os.environ.get("MLP_TASK_IMAGE"):
        merged["kubernetes"] = (merged.get("kubernetes") or {}) | {"image": os.environ["MLP_TASK_IMAGE"]}
    try:
        return Settings(
            env=env, data_root=data_root, mlflow_tracking_uri=uri, shared_datasets=shared, ledger_uri=ledger, **merged
        )
    except ValidationError as exc:
        raise SettingsError(f"invalid settings for ML_ENV={env!r}: {exc}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings for the current process (cached; tests call ``get_settings.cache_clear()``)."""
    return load_settings()
