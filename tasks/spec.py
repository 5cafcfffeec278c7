"""Pipeline specs: the typed form of ``config/pipelines/<name>.yaml``.

A spec declares everything one pipeline needs (source, schema, features, model, gate, monitoring).
This module is imported at DAG parse time, so it only depends on pydantic and PyYAML.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.errors import PermanentError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PIPELINES_DIR = REPO_ROOT / "config" / "pipelines"


def pipelines_dir() -> Path:
    """Folder of pipeline specs: ``$MLP_PIPELINES_DIR`` if set (tests, other deployments), else ``config/pipelines``."""
    return Path(os.environ.get("MLP_PIPELINES_DIR") or DEFAULT_PIPELINES_DIR)


class SpecError(PermanentError, ValueError):
    """A pipeline spec is missing, malformed or inconsistent."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    """Where the pipeline's data lands and how it is partitioned."""

    dataset: str = Field(description="File name under the shared datasets folder, used by the replay tool.")
    partition_column: str = Field(description="Column holding the calendar date (YYYY-MM-DD) of each row.")
    order_by: list[str] = Field(default_factory=list, description="Columns that order rows inside a day.")


class SchemaSpec(_Strict):
    """The columns of a landed batch and their roles."""

    columns: dict[str, Literal["int", "float", "str"]]
    target: str
    id_column: str | None = None
    not_inputs: list[str] = Field(
        default_factory=list,
        description="Columns callers do not know at prediction time (ids, leakage), besides the target.",
    )

    @property
    def input_columns(self) -> list[str]:
        """Raw columns a caller sends to the model server, in schema order."""
        excluded = {self.target, *self.not_inputs}
        if self.id_column:
            excluded.add(self.id_column)
        return [c for c in self.columns if c not in excluded]


class FeatureSpec(_Strict):
    """Stateless feature transformations, applied identically in training and serving."""

    numeric: list[str] = Field(default_factory=list)
    categorical: dict[str, list[int | str]] = Field(
        default_factory=dict, description="Column -> its declared categories (one-hot encoded)."
    )
    cyclical: dict[str, int] = Field(default_factory=dict, description="Column -> period, encoded as sin/cos.")

    @property
    def source_columns(self) -> list[str]:
        """Raw columns the features are computed from."""
        return [*self.numeric, *self.categorical, *self.cyclical]


class ModelSpec(_Strict):
    """One estimator: a family from the train module's registry plus its hyperparameters."""

    family: Literal["lightgbm", "ridge", "random_forest", "hist_gradient_boosting", "torch"]
    params: dict[str, float | int | str | bool] = Field(default_factory=dict)


class TrainingSpec(_Strict):
    """Which data a training run uses and when a new run is worth it."""

    window_days: int = Field(gt=1, description="Most recent valid daily partitions used per run.")
    holdout_days: int = Field(gt=0, description="Last days of the window kept out for evaluation.")
    min_partitions: int = Field(gt=1, description="Do not train on fewer valid partitions than this.")
    retrain_after_new_partitions: int = Field(
        gt=0, description="On new data alone, retrain once this many partitions are newer than the champion's."
    )
    seed: int = 42
    model: ModelSpec
    baseline: ModelSpec

    @model_validator(mode="after")
    def _holdout_fits(self) -> TrainingSpec:
        if self.holdout_days >= self.min_partitions:
            raise ValueError("holdout_days must be smaller than min_partitions, or nothing is left to train on")
        if self.min_partitions > self.window_days:
            raise ValueError("min_partitions cannot exceed window_days")
        return self


HEAVY_STAGES = ("validate", "features", "train", "evaluate", "monitor")
"""Stages that run as pods in the kubernetes execution mode; the others are light and stay in Airflow."""


class StageResources(_Strict):
    """What one stage's pod asks Kubernetes for (kubernetes execution mode only).

    Unset fields fall back to ``resources.default``. ``gpu: null`` means "the stage's default": one GPU for
    training a ``torch`` model, none otherwise. Node selector and tolerations default to the environment's
    GPU node pool (settings ``kubernetes.gpu_*``) when the pod asks for a GPU.
    """

    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    gpu: int | None = Field(default=None, ge=0)
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, str | int]] | None = None
    timeout_minutes: int | None = Field(default=None, gt=0, description="Task execution timeout and pod deadline.")


_RESOURCE_FALLBACK = StageResources(
    cpu_request="500m", cpu_limit="2", memory_request="1Gi", memory_limit="4Gi", timeout_minutes=60
)


class ResourcesSpec(_Strict):
    """Per-stage pod resources: built-in fallback <- ``default`` <- the stage's own entry."""

    default: StageResources = StageResources()
    validate_: StageResources = Field(default=StageResources(), alias="validate")
    features: StageResources = StageResources()
    train: StageResources = StageResources()
    evaluate: StageResources = StageResources()
    monitor: StageResources = StageResources()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def for_stage(self, stage: str, model_family: str) -> StageResources:
        """The stage's resources with defaults filled in and its GPU count decided."""
        override = getattr(self, "validate_" if stage == "validate" else stage)
        merged = _RESOURCE_FALLBACK.model_copy(update=self.default.model_dump(exclude_none=True))
        merged = merged.model_copy(update=override.model_dump(exclude_none=True))
        if merged.gpu is None:
            merged = merged.model_copy(update={"gpu": 1 if (stage == "train" and model_family == "torch") else 0})
        return merged


class GateSpec(_Strict):
    """Absolute thresholds a candidate must meet before it may become champion."""

    mode: Literal["disabled", "dry_run", "enabled"] = "enabled"
    max_rmse: float | None = None
    max_mae: float | None = None
    min_r2: float | None = None
    min_improvement_over_baseline: float = Field(
        default=0.0, description="Relative RMSE improvement over the baseline model, e.g. 0.1 = 10 %."
    )


class MonitoringSpec(_Strict):
    """The nightly drift check."""

    schedule: str = "0 2 * * *"
    window_days: int = Field(default=1, gt=0, description="Days of served traffic (by event date) per check.")
    min_rows: int = Field(default=50, gt=0)
    drift_share_threshold: float = Field(default=0.5, gt=0, le=1)
    column_p_value: float = Field(default=0.05, gt=0, lt=1)
    reference_rows: int = Field(default=5000, gt=0)
    include_target: bool = Field(
        default=True, description="Once labels for served rows have landed, also compare the target distribution."
    )


class PipelineSpec(_Strict):
    """Everything one pipeline declares."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    owner: str
    domain: str
    start_date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    ingest_schedule: str = "@daily"
    landing_timeout_hours: float = Field(default=12, gt=0, description="How long ingest waits for a landing file.")
    source: SourceSpec
    schema_: SchemaSpec = Field(alias="schema")
    expectations: str = Field(description="Great Expectations suite, relative to the repository root.")
    features: FeatureSpec
    training: TrainingSpec
    gate: GateSpec
    monitoring: MonitoringSpec
    resources: ResourcesSpec = ResourcesSpec()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _columns_known(self) -> PipelineSpec:
        known = set(self.schema_.columns)
        for col in [*self.features.source_columns, self.schema_.target, self.source.partition_column]:
            if col not in known:
                raise ValueError(f"column {col!r} is used but not declared under schema.columns")
        leaked = set(self.features.source_columns) - set(self.schema_.input_columns)
        if leaked:
            raise ValueError(f"features use columns callers cannot send: {sorted(leaked)}")
        return self

    def stage_resources(self, stage: str) -> StageResources:
        """Pod resources of a heavy stage (see :class:`ResourcesSpec`)."""
        if stage not in HEAVY_STAGES:
            raise SpecError(f"{stage!r} is not a heavy stage; heavy stages: {list(HEAVY_STAGES)}")
        return self.resources.for_stage(stage, self.training.model.family)

    @property
    def registered_model_name(self) -> str:
        """Name of the pipeline's model in the MLflow registry."""
        return self.name

    @property
    def expectations_path(self) -> Path:
        """Absolute path of the expectation suite."""
        return REPO_ROOT / self.expectations


def load_spec(name_or_path: str | Path) -> PipelineSpec:
    """Load and validate one pipeline spec.

    Args:
        name_or_path: A pipeline name (looked up under ``config/pipelines``) or a YAML path.

    Returns:
        The validated spec.

    Raises:
        SpecError: The file is missing or does not validate; the message names the file and the field.
    """
    path = Path(name_or_path)
    if path.suffix not in {".yaml", ".yml"}:
        path = pipelines_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in pipelines_dir().glob("*.yaml"))
        raise SpecError(f"no pipeline spec at {path}; available pipelines: {available}")
    try:
        raw = yaml.safe_load(path.read_text())
        return PipelineSpec.model_validate(raw)
    except (yaml.YAMLError, ValueError) as exc:
        raise SpecError(f"invalid pipeline spec {path}: {exc}") from exc


def list_specs(directory: Path | None = None) -> list[PipelineSpec]:
    """Load every spec in a folder (default :func:`pipelines_dir`), sorted by name."""
    return [load_spec(p) for p in sorted((directory or pipelines_dir()).glob("*.yaml"))]
