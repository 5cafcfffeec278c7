"""Ingest: check one day's landing file and stage it, typed, beside the raw partition; refuse it with reasons.

The flow every entry point shares (a scheduled run, the trigger form, a REST / Redis / landing-watcher event,
``python -m tasks ingest``):

1. the day must be a calendar date (:func:`tasks.landing.strict_day`);
2. the landing file must be complete under the spec's ``source.completion`` (:func:`tasks.landing.readiness`;
   not yet: :class:`LandingNotReadyError`, retryable);
3. :func:`tasks.reader.read_landing_file` reads and checks it; a refused file leaves a quarantine record
   (``reasons.json``, a copy of the landing file, its SHA-256) and raises
   :class:`tasks.reader.LandingFileRefusedError` (permanent); nothing is written to the raw partition;
4. the typed batch is written to ``raw/<p>/dt=<day>/.staged/<sha256>/part.parquet``. Validation
   (:func:`tasks.validate.validate_staged`) judges it there and only a valid batch replaces ``part.parquet``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import PermanentError
from tasks.landing import (  # noqa: F401 - re-exported: callers and tests use them from here
    Contract,
    Look,
    pending_landing_files,
    readiness,
    sha256_of,
    strict_day,
)
from tasks.partitions import (
    SOURCE,
    QuarantinedPartition,
    current_source,
    now_iso,
    partition_lock,
    quarantine_batch,
    read_json,
    staged_dir,
    staging_stamp,
)
from tasks.reader import LandingFileRefusedError, read_landing_file
from tasks.results import Ingested, IngestedPartition
from tasks.results import QuarantinedPartition as Refusal
from tasks.spec import PipelineSpec
from tasks.storage import DataLayout, atomic_path, write_json

log = logging.getLogger(__name__)
_ROW_GROUP = 1 << 17  # rows per Parquet row group: bounds the writer's buffers on a large file


def write_parquet(table: Any, path: Path) -> None:
    """Write a staged batch (deterministic: the same table gives the same bytes)."""
    import pyarrow.parquet as pq

    pq.write_table(table, path, row_group_size=_ROW_GROUP)


class IngestError(PermanentError, RuntimeError):
    """The landing file for a partition is missing."""


class LandingNotReadyError(RuntimeError):
    """The landing file is still being written (or not marked complete yet): a retry may find it complete."""


@dataclass(frozen=True)
class IngestResult:
    """What one ingest did with a day's landing file.

    ``outcome``: ``staged`` (waiting for validation at ``staged``), ``skipped`` (this exact file was judged
    before; ``reason`` says how), ``accepted`` / ``superseded`` (after validation, when run in one call).
    """

    partition: str
    uri: str
    rows: int
    sha256: str = ""
    skipped: bool = False
    reason: str = ""
    outcome: str = "staged"
    staged: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Small, JSON-able form for XCom."""
        return asdict(self)


def manual_run_key() -> str:
    """The run key of an ingest started by hand (the CLI, a script): ``manual__<UTC time>``."""
    from datetime import UTC, datetime

    return "manual__" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def ingest_partitions(
    spec: PipelineSpec,
    layout: DataLayout,
    days: list[str],
    skip_if_unchanged: bool = False,
    run_key: str | None = None,
) -> Ingested:
    """Stage each day's landing file for validation; a refused file is recorded, not fatal to the other days.

    Returns:
        Each day's result, the days staged (day -> landing SHA-256) and the refusals (quarantine records,
        which validation reports with its own).

    Raises:
        BadPartitionError: A day is not a calendar date.
        IngestError: A day has no landing file.
        LandingNotReadyError: A file is not complete yet (retryable).
    """
    run_key = run_key or manual_run_key()
    results: list[IngestedPartition] = []
    refused: list[Refusal] = []
    for day in days:
        try:
            results.append(
                IngestedPartition.parse(ingest_partition(spec, layout, day, skip_if_unchanged, run_key).to_dict())
            )
        except LandingFileRefusedError as exc:
            record = {"partition": day, "source": str(exc.path), "quarantined_at": "", "reasons": exc.reasons}
            refused.append(Refusal.parse(exc.entry or record | {"sha256": exc.sha256, "stage": "ingest"}))
            results.append(
                IngestedPartition(
                    partition=day, uri="", rows=0, sha256=exc.sha256, reason=str(exc), outcome="quarantined"
                )
            )
    staged = {r.partition: r.sha256 for r in results if r.outcome == "staged"}
    return Ingested(partitions=results, new=list(staged), staged=staged, refused=refused)


def ingest_and_validate(
    spec: PipelineSpec, layout: DataLayout, day: str, skip_if_unchanged: bool = False, run_key: str | None = None
) -> IngestedPartition:
    """Landing file of ``day`` -> validated raw partition (the ingest DAG's ingest and validation in one call).

    Raises:
        LandingFileRefusedError: The file was refused (quarantine record in the message).
        ValidationFailedError: The batch failed the expectation suite and was quarantined; the current
            partition of the day, if any, stays as it was.
    """
    from tasks.validate import ValidationFailedError, quarantine_message, validate_staged

    run_key = run_key or manual_run_key()
    result = ingest_partition(spec, layout, day, skip_if_unchanged, run_key)
    if result.skipped:
        return IngestedPartition.parse(result.to_dict())
    validation = validate_staged(spec, layout, {result.partition: result.sha256}, run_key).to_dict()
    if validation["quarantined"]:
        raise ValidationFailedError(quarantine_message(spec.name, validation["quarantined"], 0))
    return IngestedPartition.parse(result.to_dict() | {"outcome": "accepted", "staged": ""})


def ingest_partition(
    spec: PipelineSpec, layout: DataLayout, day: str, skip_if_unchanged: bool = False, run_key: str = "manual"
) -> IngestResult:
    """Check ``landing/<p>/<day>.csv`` and stage it as ``raw/<p>/dt=<day>/.staged/<sha256>/part.parquet``.

    Re-running a day stages the same bytes again. With ``skip_if_unchanged`` (upstream events, which may
    arrive twice or late) a file that is the current partition's source, or was already quarantined, is not
    processed again, while a corrected delivery (new bytes) is.

    Args:
        spec: The pipeline.
        layout: Data root layout.
        day: The partition date, ``YYYY-MM-DD``.
        skip_if_unchanged: Return without staging when this exact file was already judged.
        run_key: The run, for quarantine folders and the version history.

    Returns:
        The staged batch (or the skip).

    Raises:
        BadPartitionError: ``day`` is not a calendar date.
        IngestError: No landing file for the day.
        LandingNotReadyError: The file is not complete yet (retryable).
        LandingFileRefusedError: The file was refused; the quarantine record is ``exc.record``.
    """
    day = strict_day(day)
    if spec.source.pulls:  # files or SQL: bring the day into the landing zone first (a no-op when unchanged)
        from tasks.sources import pull

        pull(spec, layout, day)
    source = layout.landing_file(spec.name, day)
    if not source.is_file():
        raise IngestError(
            f"no landing file for {spec.name} partition {day}: expected {source}. "
            "Has the upstream delivered it? Re-run this task once it lands."
        )
    state = readiness(Contract.of(spec.source), source, wait=True)
    if not state.ready or state.look is None:
        raise LandingNotReadyError(f"{spec.name} partition {day}: {state.reason}; not read, a retry will look again")
    # one ingest of a partition at a time: two events for the same day (REST, queue, file watcher) racing
    # each other must not both process it; the second waits, then finds the file already judged
    with partition_lock(layout, spec.name, day):
        return _stage_locked(spec, layout, day, source, state.look, skip_if_unchanged, run_key)


def _already_judged(layout: DataLayout, pipeline: str, day: str, digest: str) -> str | None:
    current = current_source(layout, pipeline, day)
    if current and current.get("sha256") == digest:
        when = current.get("ingested_at")
        return f"already ingested from an identical landing file at {when}: nothing to do"
    for record in sorted(layout.quarantine_dir(pipeline, day).glob("*/_source.json")):
        if (read_json(record) or {}).get("sha256") == digest:
            where = record.parent / "reasons.json"
            return f"this identical landing file was already quarantined ({where}): nothing to do"
    return None


def _stage_locked(
    spec: PipelineSpec,
    layout: DataLayout,
    day: str,
    source: Path,
    look: Look,
    skip_if_unchanged: bool,
    run_key: str,
) -> IngestResult:
    target = layout.raw_partition(spec.name, day)
    if skip_if_unchanged:
        digest = sha256_of(source)
        why = _already_judged(layout, spec.name, day, digest)
        if why:
            log.info("%s partition %s: %s", spec.name, day, why)
            rows = int((current_source(layout, spec.name, day) or {}).get("rows", 0))
            return IngestResult(day, str(target), rows, digest, True, why, "skipped")
    try:
        batch = read_landing_file(spec, source, day)
    except LandingFileRefusedError as exc:
        _unchanged_since(source, look)
        entry = QuarantinedPartition(
            partition=day, source=str(source), quarantined_at="", reasons=exc.reasons, sha256=exc.sha256, stage="ingest"
        )
        entry = quarantine_batch(layout, spec.name, day, run_key, entry, landing=source)
        exc.record = entry.record
        exc.entry = entry.to_dict()
        log.error("refused %s partition %s (%s): %s", spec.name, day, entry.record, "; ".join(exc.reasons))
        raise
    _unchanged_since(source, look)
    folder = staged_dir(layout, spec.name, day, batch.sha256)
    with atomic_path(folder / "part.parquet") as tmp:
        write_parquet(batch.table, tmp)
    write_json(
        folder / SOURCE,
        {
            "sha256": batch.sha256,
            "bytes": batch.size,
            "rows": batch.rows,
            "parquet_sha256": sha256_of(folder / "part.parquet"),
            "source": str(source),
            "ingested_at": now_iso(),
            "staged_at_ns": staging_stamp(),
            "run": run_key,
            "notes": batch.notes,
        },
    )
    log.info("staged %s rows of %s partition %s -> %s", batch.rows, spec.name, day, folder)
    return IngestResult(
        partition=day,
        uri=str(target),
        rows=batch.rows,
        sha256=batch.sha256,
        outcome="staged",
        staged=str(folder / "part.parquet"),
        notes=batch.notes,
    )


def _unchanged_since(source: Path, look: Look) -> None:
    """The file read is the file judged complete: a write meanwhile means it was not complete after all."""
    if not look.same_file(Look.of(source)):
        raise LandingNotReadyError(
            f"{source} changed while it was read (it was not complete after all): nothing was kept; a retry will "
            "look again"
        )
