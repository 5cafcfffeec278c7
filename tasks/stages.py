"""The stage contract: one function per pipeline stage, JSON in and JSON out.

Airflow tasks (``dags/``) and the CLI (``python -m tasks <stage>``, which a Kubernetes pod runs) both call
these, so a stage behaves the same wherever it runs. A stage's name is its CLI sub-command and its Airflow
task id. Arguments are pipeline names, dates, Airflow run ids and the small results earlier stages
returned (:mod:`tasks.results`, validated here as they are read); data moves through the data root,
never through XCom. Each function loads the context, makes one call into the module that owns the
logic, and serialises the result: no policy lives here (ruff PLR0915 keeps them short).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tasks.results import Datasets, Evaluation, Gated, GateDecision, Trained, Validation
from tasks.settings import Settings, get_settings
from tasks.spec import PipelineSpec, load_spec
from tasks.storage import DataLayout

log = logging.getLogger(__name__)


def _ctx(pipeline: str, resolve_code: bool = True) -> tuple[PipelineSpec, Settings, DataLayout]:
    """The spec (``resolve_code``: :func:`load_spec`; False where the model runs its own code), settings, layout."""
    settings = get_settings()
    return load_spec(pipeline, resolve_code=resolve_code), settings, DataLayout(settings.data_root)


def replay(pipeline: str, start: str, end: str, corrupt: list[str] | None = None) -> dict[str, Any]:
    """Feed the shipped dataset into the landing zone, one file per day."""
    from dataclasses import asdict

    from tasks.replay import replay_days

    spec, settings, layout = _ctx(pipeline)
    return asdict(replay_days(spec, layout, settings.shared_datasets, start, end, frozenset(corrupt or [])))


def landing_status(pipeline: str, day: str) -> dict[str, Any]:
    """Whether the landing file of ``day`` is complete under the spec's ``source.completion``, and why.

    A spec with a ``files`` or ``sql`` source pulls the day into the landing zone first (:mod:`tasks.sources`).
    Waits at most ``source.settle_seconds`` for a file that changed just now. Never reads the file.

    Raises:
        BadPartitionError: ``day`` is not a calendar date.
    """
    from tasks.sources import landing_status as status

    spec, _, layout = _ctx(pipeline)
    return status(spec, layout, day)


def landing_ready(pipeline: str, day: str) -> bool:
    """Whether upstream has delivered the landing file for ``day`` completely (see :func:`landing_status`).

    Raises:
        LandingOverdueError: No landing file, and the day's deadline (its scheduled run under ``ingest_schedule``
            + ``landing_timeout_hours``) has passed (:func:`tasks.landing.check_overdue`): the sensor stops waiting.
    """
    from tasks.landing import check_overdue

    status, spec = landing_status(pipeline, day), _ctx(pipeline)[0]
    check_overdue(day, status["present"] or status["ready"], spec.landing_timeout_hours, schedule=spec.ingest_schedule)
    return bool(status["ready"])


def ingest_partitions(
    pipeline: str, days: list[str], skip_if_unchanged: bool = False, run_key: str | None = None
) -> dict[str, Any]:
    """Stage each day's landing file for validation; a refused file is recorded, not fatal to the other days.

    Returns ``Ingested``: each day's result, the days staged (with their landing SHA-256) and the refusals
    (which ``validate_partitions`` reports with its own).

    Raises:
        BadPartitionError: A day is not a calendar date.
        IngestError: A day has no landing file.
        LandingNotReadyError: A file is not complete yet (retryable).
    """
    from tasks.ingest import ingest_partitions as ingest

    spec, _, layout = _ctx(pipeline)
    return ingest(spec, layout, days, skip_if_unchanged, run_key).xcom()


def ingest_partition(
    pipeline: str, day: str, skip_if_unchanged: bool = False, run_key: str | None = None
) -> dict[str, Any]:
    """Landing file of ``day`` -> validated raw partition (the ingest DAG's ingest and validation in one call).

    Raises:
        LandingFileRefusedError: The file was refused (quarantine record in the message).
        ValidationFailedError: The batch failed the expectation suite and was quarantined; the current partition
            of the day, if any, stays as it was.
    """
    from tasks.ingest import ingest_and_validate

    spec, _, layout = _ctx(pipeline)
    return ingest_and_validate(spec, layout, day, skip_if_unchanged, run_key).xcom()


def plan_training(
    pipeline: str, triggered_by: list[str] | None = None, as_of: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Decide whether a training run is worth it and which partitions it uses (policy: :mod:`tasks.plan`)."""
    from tasks.plan import plan_training as plan

    spec, settings, layout = _ctx(pipeline)
    return plan(spec, settings, layout, triggered_by, as_of, force).xcom()


def validate_data(pipeline: str, partitions: list[str], run_key: str) -> dict[str, Any]:
    """Validate each partition of a training window with the spec's suite; quarantine failures.

    Raises:
        ValidationFailedError: Fewer valid partitions remain than the spec's ``min_partitions``.
    """
    from tasks.validate import validate_window

    spec, _, layout = _ctx(pipeline)
    return validate_window(spec, layout, partitions, run_key).xcom()


def validate_partitions(
    pipeline: str,
    partitions: list[str],
    run_key: str,
    staged: dict[str, str] | None = None,
    refused: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Validate newly staged batches (at ingest time): valid ones become partitions, the others are quarantined.

    ``staged`` names each day's batch by its landing file's SHA-256 (default: the latest staged batch of each
    of ``partitions``); ``refused`` are the files ingest refused in the same run, reported with the rest.
    Never raises on bad data: ``report_quarantine`` says so after the valid days were announced.
    """
    from tasks.validate import validate_new_batches

    spec, _, layout = _ctx(pipeline)
    return validate_new_batches(spec, layout, partitions, run_key, staged, refused).xcom()


def report_quarantine(pipeline: str, validation: dict[str, Any]) -> None:
    """Fail with an actionable message if validation quarantined anything (after the good data was used).

    Raises:
        ValidationFailedError: Listing every quarantined partition, file, expectation and row count.
    """
    from tasks.validate import report_quarantine as report

    report(pipeline, Validation.parse(validation))


def build_features(pipeline: str, partitions: list[str], run_id: str) -> dict[str, Any]:
    """Time split + features for the valid partitions."""
    from tasks.features import build_features as build

    spec, _, layout = _ctx(pipeline)
    return build(spec, layout, partitions, run_id).xcom()


def plan_search(pipeline: str, run_id: str, lineage: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Open the candidate's MLflow run and cut each searched family's trial budget into batches (``TrialBatch``).

    Kubernetes mode with ``training.search.trials_per_pod``: each batch becomes one mapped ``search_trials`` pod.

    Raises:
        SelectionError: The spec sets no ``training.search.trials_per_pod``.
    """
    from tasks.search import plan_search as plan

    spec, settings, _ = _ctx(pipeline)
    return [batch.xcom() for batch in plan(spec, settings, run_id, lineage)]


def search_trials(pipeline: str, datasets: dict[str, Any], run_id: str, batch: dict[str, Any]) -> dict[str, Any]:
    """Run one batch of a family's search trials in the training run's shared Optuna study (a mapped pod).

    Each trial is a nested MLflow run under the batch's ``parent_run_id``; the study is Optuna's RDB storage
    (``search_storage_url``) or the journal file in the run's folder (the shared store, in kubernetes mode).
    """
    from tasks.results import TrialBatch
    from tasks.search import search_trials as search

    spec, settings, layout = _ctx(pipeline)
    return search(spec, settings, layout, Datasets.parse(datasets), run_id, TrialBatch.parse(batch)).xcom()


def train_model(
    pipeline: str,
    datasets: dict[str, Any],
    run_id: str,
    lineage: dict[str, str] | None = None,
    search_run_id: str | None = None,
) -> dict[str, Any]:
    """Fit and log the spec's model and baseline, with the reference sample monitoring compares with.

    ``search_run_id``: the candidate's run ``plan_search`` opened; the mapped batches' trials are read, not rerun.
    """
    from tasks.train import train_model as train

    spec, settings, layout = _ctx(pipeline)
    return train(spec, settings, layout, Datasets.parse(datasets), run_id, lineage, search_run_id).xcom()


def evaluate_model(pipeline: str, trained: dict[str, Any], datasets: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Holdout metrics of candidate, baseline and current champion; per-row predictions kept for the gate."""
    from tasks.evaluate import evaluate_model as evaluate

    spec, settings, layout = _ctx(pipeline)
    holdout = Datasets.parse(datasets).holdout
    return evaluate(spec, settings, layout, Trained.parse(trained), holdout, run_id).xcom()


def gate_model(
    pipeline: str,
    trained: dict[str, Any],
    datasets: dict[str, Any],
    evaluation: dict[str, Any],
    run_id: str,
    actor: str | None = None,
) -> dict[str, Any]:
    """Apply the spec's gate, write the model card, record both (a rejection also in the ledger).

    Raises:
        GateFailedError: In ``enabled`` mode, when any check fails.
    """
    from tasks.gate import gate_model as gate

    spec, settings, layout = _ctx(pipeline)
    inputs = Trained.parse(trained), Datasets.parse(datasets), Evaluation.parse(evaluation)
    return gate(spec, settings, layout, *inputs, run_id, actor).xcom()


def register_model(pipeline: str, trained: dict[str, Any], gated: dict[str, Any]) -> dict[str, Any]:
    """Register the candidate as a new version with the ``challenger`` alias; lineage comes from its run."""
    from tasks.registry import register_model as register

    spec, settings, _ = _ctx(pipeline)
    return register(settings, spec.registered_model_name, Trained.parse(trained), Gated.parse(gated)).xcom()


def promote_model(
    pipeline: str,
    version: str,
    decision: dict[str, Any] | None = None,
    actor: str | None = None,
    mlflow_run_id: str | None = None,
) -> dict[str, Any]:
    """Move ``champion`` to ``version`` as the gate decided, unless another run won meanwhile (serialised).

    Without a ``decision`` (by hand) the version replaces whatever is champion; a ``dry_run`` verdict is
    recorded in the ledger and promotes nothing.
    """
    from tasks.registry import promote_model as promote

    spec, settings, _ = _ctx(pipeline)
    gate = GateDecision.parse(decision) if decision is not None else None
    return promote(settings, spec.registered_model_name, str(version), gate, actor, mlflow_run_id).xcom()


def deploy_model(pipeline: str, version: str, actor: str | None = None) -> dict[str, Any]:
    """Make the model server serve ``version`` (blue/green); if it refuses, the champion alias goes back.

    The server checks the admin token (``MLP_ADMIN_TOKEN``) and its reload policy, and records the reload
    (``serve`` / ``serve_refused``) in the promotion ledger as ``<actor> via admin token``.

    Raises:
        DeployError: The server is unreachable (retryable), refused the token (permanent) or refused the
            version (permanent; the old version keeps serving and the ledger records ``deploy_failed``).
    """
    from tasks.deploy import deploy_model as deploy

    spec, settings, _ = _ctx(pipeline)
    return deploy(settings, spec.registered_model_name, version, actor)


def rollback_model(
    pipeline: str, version: str | None = None, actor: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """Restore ``previous`` (or ``version``) as champion; the deploy stage then serves it."""
    from tasks.registry import rollback_model as rollback

    spec, settings, _ = _ctx(pipeline)
    return rollback(settings, spec.registered_model_name, version, actor, reason).xcom()


def check_drift(pipeline: str, window_end: str, run_id: str) -> dict[str, Any]:
    """Nightly check of the served window against the champion's reference; asks for a retrain per the policy."""
    from tasks.monitor import check_drift as check

    spec, settings, layout = _ctx(pipeline)
    return check(spec, settings, layout, window_end, run_id).xcom()


def resolve_champion(pipeline: str) -> dict[str, Any]:
    """The version holding ``champion`` now, resolved once so a whole scoring run uses one version.

    Raises:
        ScoreError: The pipeline has no champion yet.
    """
    from tasks.score import resolve_version

    spec, settings, _ = _ctx(pipeline, resolve_code=False)
    return {"version": resolve_version(settings, spec)}


def score_partitions(pipeline: str, days: list[str], version: str | None = None) -> dict[str, Any]:
    """Score each day's raw partition with one model version (default: the champion) into ``scores/``.

    Re-scoring a day with the same version rewrites the same bytes; another version writes its own file.

    Raises:
        ScoreError: A day without a raw partition (nothing is written), no champion, an unknown version.
    """
    from tasks.score import score_partitions as score

    spec, settings, layout = _ctx(pipeline, resolve_code=False)  # the model carries a custom transformer's code
    return score(spec, settings, layout, days, version).xcom()


STAGES: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        replay,
        ingest_partition,
        ingest_partitions,
        plan_training,
        validate_data,
        validate_partitions,
        build_features,
        plan_search,
        search_trials,
        train_model,
        evaluate_model,
        gate_model,
        register_model,
        promote_model,
        deploy_model,
        rollback_model,
        check_drift,
        resolve_champion,
        score_partitions,
    )
}
"""Every stage by name: its CLI sub-command and its Airflow task id."""
