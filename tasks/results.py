"""What stages hand each other: one typed, immutable result per stage boundary.

Every model is frozen and forbids unknown fields. A stage returns ``result.xcom()`` (plain JSON, what
XCom and a pod's result manifest carry: small summaries and paths, never tables) and validates what it
reads with ``Model.parse(value)``, so a wrong, renamed or stale upstream result fails at once, naming the
field, instead of deep inside the stage.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.errors import PermanentError

Metrics = dict[str, float | None]
"""Metric name -> value on some rows (None where the metric is undefined there)."""
DriftStatus = Literal["drift", "no_drift", "no_champion", "insufficient_data"]


class ResultError(PermanentError, ValueError):
    """An upstream result does not have the shape this stage expects (a stale XCom, a hand-written argument)."""


class Result(BaseModel):
    """Base of every stage result: frozen, strict about fields, JSON for XCom."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def xcom(self) -> dict[str, Any]:
        """The JSON form XCom, the CLI and pod manifests carry."""
        return self.model_dump(mode="json")

    @classmethod
    def parse(cls, value: Any) -> Self:
        """Validate an upstream result (a dict from XCom or JSON, or already this model).

        Raises:
            ResultError: Naming each field that is missing, unknown or of the wrong type.
        """
        if isinstance(value, cls):
            return value
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise ResultError(
                f"{cls.__name__} expected from the upstream stage, but it does not validate: {problems}"
            ) from exc


# ---- ingest and validation ----


class IngestedPartition(Result):
    """What one ingest did with a day's landing file.

    ``outcome``: ``staged`` (waiting for validation at ``staged``), ``skipped`` (this exact file was judged
    before; ``reason`` says how), ``quarantined`` (refused at ingest; ``reason`` says why), ``accepted`` /
    ``superseded`` (after validation, when ingest and validation run in one call).
    """

    partition: str
    uri: str
    rows: int
    sha256: str = ""
    skipped: bool = False
    reason: str = ""
    outcome: Literal["staged", "skipped", "quarantined", "accepted", "superseded"] = "staged"
    staged: str = ""
    notes: list[str] = Field(default_factory=list)


class ExpectationFailure(Result):
    """One failed expectation on one partition."""

    expectation: str
    column: str | None = None
    unexpected_count: int | None = None
    element_count: int | None = None
    examples: list[Any] = Field(default_factory=list)
    detail: str = ""

    def describe(self) -> str:
        """One line a person can act on."""
        where = f"column {self.column!r}" if self.column else "table"
        if self.unexpected_count is not None and self.element_count:
            rows = f"{self.unexpected_count} of {self.element_count} rows"
            return f"{self.expectation} on {where}: {rows} unexpected (e.g. {self.examples[:3]}) {self.detail}".strip()
        return f"{self.expectation} on {where}: {self.detail}".strip()


class QuarantinedPartition(Result):
    """A batch refused at ingest or failed by validation, and where its evidence is kept.

    ``reasons`` are the sentences a person acts on; ``failures`` the Great Expectations details (validation
    only); ``record`` the ``reasons.json`` beside the quarantined data.
    """

    partition: str
    source: str
    quarantined_at: str
    failures: list[ExpectationFailure] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    sha256: str = ""
    stage: str = "validation"
    record: str = ""
    run: str = ""


class Ingested(Result):
    """One ingest run over some days: each day's result, the days staged, the files refused.

    ``staged`` maps each staged day to its landing file's SHA-256 (the batch validation judges);
    ``refused`` are the quarantine records of refused files, which validation reports with its own.
    """

    partitions: list[IngestedPartition]
    new: list[str]
    staged: dict[str, str] = Field(default_factory=dict)
    refused: list[QuarantinedPartition] = Field(default_factory=list)


class Validation(Result):
    """Valid and quarantined partitions of one validation run, and its report file."""

    suite: str
    valid: list[str] = Field(default_factory=list)
    quarantined: list[QuarantinedPartition] = Field(default_factory=list)
    report_uri: str = ""
    cached: list[str] = Field(default_factory=list, description="Days whose verdict was kept from an earlier run.")


# ---- training ----


class TrainingPlan(Result):
    """Whether a training run is worth it, why, and the partitions of its window."""

    train: bool
    reason: str
    partitions: list[str]
    champion_version: str | None = None
    champion_data_end: str | None = None
    new_partitions: int = 0


class Datasets(Result):
    """Files one training run reads (all under ``runs/<pipeline>/<run_id>/``)."""

    train_raw: str
    train_features: str
    holdout: str
    train_partitions: list[str]
    holdout_partitions: list[str]
    train_rows: int
    holdout_rows: int


class TrialBatch(Result):
    """One batch of a family's search trials, run by one mapped pod (kubernetes mode, ``trials_per_pod``)."""

    family: str
    trials: int = Field(gt=0, description="Trials this batch runs.")
    index: int = Field(ge=0, description="The batch's number within its family (its sampler seed offset).")
    parent_run_id: str = Field(description="The candidate's MLflow run the trials nest under (study name).")


class SearchedBatch(Result):
    """What a batch of trials left in its family's study."""

    family: str
    index: int
    trials: int = Field(description="Completed trials of the family's study after this batch.")
    best_value: float = Field(description="The study's best validation score so far.")


class Trained(Result):
    """The logged candidate and baseline (MLflow runs and model URIs)."""

    mlflow_run_id: str
    model_uri: str
    baseline_mlflow_run_id: str
    baseline_model_uri: str
    family: str
    train_rows: int
    reference_rows: int = 0
    params: dict[str, float | int | str | bool] = Field(default_factory=dict)
    selection_metric: str | None = None
    validation_scores: dict[str, float] = Field(
        default_factory=dict, description="Family -> best score on the validation split (search/selection)."
    )
    trials: dict[str, int] = Field(default_factory=dict, description="Family -> search trials run (0: fixed params).")
    calibration: str | None = None


class Evaluation(Result):
    """Holdout metrics of candidate, baseline and champion; where the per-row predictions are."""

    candidate: Metrics
    baseline: Metrics
    champion: Metrics | None = None
    champion_version: str | None = None
    champion_error: str | None = None
    holdout_rows: int
    predictions_uri: str
    smoke_sample_uri: str
    reference_predictions_uri: str
    importance: dict[str, float] = Field(
        default_factory=dict, description="Raw input column -> mean |SHAP contribution| on a holdout sample."
    )
    importance_space: str | None = Field(default=None, description="raw_margin (trees) or prediction.")
    importance_plot: str | None = None


# ---- gate ----


class Check(Result):
    """One gate check with its own verdict and a reason a person can read."""

    name: str
    passed: bool
    observed: float | None = None
    threshold: float | None = None
    reason: str
    details: dict[str, Any] = Field(default_factory=dict)


class GateDecision(Result):
    """The gate's verdicts and whether promotion may proceed in the configured mode."""

    mode: Literal["disabled", "dry_run", "enabled"]
    passed: bool
    promote: bool
    primary_metric: str
    champion_version: str | None = None
    checks: list[Check] = Field(default_factory=list)
    metrics: dict[str, Metrics] = Field(default_factory=dict)
    slices: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)

    def summary(self) -> str:
        """One line per check, failed ones first."""
        ordered = sorted(self.checks, key=lambda c: c.passed)
        return "\n".join(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.reason}" for c in ordered)

    def failed(self) -> list[str]:
        """Names of the failed checks."""
        return [c.name for c in self.checks if not c.passed]

    def check(self, name: str) -> Check | None:
        """The check called ``name``, if the gate ran it."""
        return next((c for c in self.checks if c.name == name), None)


class ModelCardFiles(Result):
    """The rendered model card."""

    markdown: str
    html: str


class Gated(Result):
    """The gate stage's result: the decision, the model card and where to open it, a summary line per check."""

    decision: GateDecision
    model_card: ModelCardFiles
    model_card_url: str | None = None
    summary: str
    report_uri: str


# ---- registry, deployment ----


class Registered(Result):
    """A registered model version."""

    name: str
    version: str
    mlflow_run_id: str
    tags: dict[str, str] = Field(default_factory=dict)
    aliases: tuple[str, ...] = ()


class Promotion(Result):
    """What a promotion did.

    ``outcome``: ``promoted``, ``lost_race`` (the champion moved meanwhile), ``already_champion``, ``dry_run``
    (the verdict was recorded, nothing moved).
    """

    name: str
    version: str
    promoted: bool
    outcome: Literal["promoted", "lost_race", "already_champion", "dry_run"]
    previous: str | None = None
    champion: str | None = None


class Deployment(Result):
    """The model server's answer to a blue/green reload."""

    model: str
    version: str
    previous: str | None = None
    smoke_test: dict[str, Any] = Field(default_factory=dict)


class Rollback(Result):
    """The version a rollback restored and the one it replaced."""

    name: str
    version: str
    previous: str


# ---- batch scoring ----


class ScoredPartition(Result):
    """One day scored in batch: its file, rows and the file's SHA-256 (equal on a re-run with the same version)."""

    partition: str
    path: str
    rows: int
    sha256: str


class Scored(Result):
    """What a batch-scoring run wrote: every day, all scored by the one ``model_version``."""

    pipeline: str
    model_version: str
    partitions: list[ScoredPartition]


# ---- monitoring ----


class DriftReport(Result):
    """One monitoring window, small: the verdict and where the full report is (per-column tables stay there)."""

    pipeline: str
    window_end: str
    window: list[str]
    status: DriftStatus
    rows: int
    champion_version: str | None = None
    drift_share: float | None = None
    drifted_columns: list[str] = Field(default_factory=list)
    violations: list[str] = Field(default_factory=list)
    retrain: bool
    decision: str
    reason: str
    report_html: str | None = None
    summary_json: str
    report_url: str | None = None
