"""Validate: run the pipeline's Great Expectations suite on each batch; quarantine the failures.

Each partition is its own batch, so one bad day never hides the good days around it.

- At ingest (:func:`validate_staged`): the staged batch is judged beside the current partition; a valid one
  replaces ``part.parquet`` (one rename), an invalid one is *moved* to ``quarantine/<p>/dt=<day>/<run>/``
  and the current partition stays byte for byte.
- At training (:func:`validate_partitions`): the raw partitions of the window are judged again (the suite may
  have changed since); a failing partition is moved from ``raw/`` to quarantine with its sidecars.

Either way ``reasons.json`` names the file, each failed expectation and how many rows broke it, and the
day's ``_versions.jsonl`` records the outcome.

A verdict is kept by content (:mod:`tasks.cache`): the batch's parquet SHA-256, the suite's hash and the
library versions. A batch already judged (at ingest, or by an earlier training run) is not validated again,
and Great Expectations is imported only when some batch has no verdict yet; a changed suite, batch or
library version is judged afresh.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks import cache
from tasks.errors import PermanentError
from tasks.landing import sha256_of
from tasks.partitions import (
    SOURCE,
    QuarantinedPartition,
    current_source,
    partition_lock,
    promote_staged,
    quarantine_batch,
    quarantine_current,
    read_json,
    staged_batches,
    staged_dir,
)
from tasks.results import Validation
from tasks.spec import PipelineSpec
from tasks.storage import DataLayout, write_json

if TYPE_CHECKING:
    import great_expectations as gx
    import pandas as pd

log = logging.getLogger(__name__)


class ValidationFailedError(PermanentError, RuntimeError):
    """Data failed validation; the message says which partition, which expectation and how many rows."""


@dataclass(frozen=True)
class ExpectationFailure:
    """One failed expectation on one partition."""

    expectation: str
    column: str | None
    unexpected_count: int | None
    element_count: int | None
    examples: list[Any]
    detail: str

    def describe(self) -> str:
        """One line a person can act on."""
        where = f"column {self.column!r}" if self.column else "table"
        if self.unexpected_count is not None and self.element_count:
            rows = f"{self.unexpected_count} of {self.element_count} rows"
            return f"{self.expectation} on {where}: {rows} unexpected (e.g. {self.examples[:3]}) {self.detail}".strip()
        return f"{self.expectation} on {where}: {self.detail}".strip()


@dataclass
class ValidationResult:
    """Outcome over all partitions of a training window."""

    suite: str
    valid: list[str] = field(default_factory=list)
    quarantined: list[QuarantinedPartition] = field(default_factory=list)
    report_uri: str = ""
    cached: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for XCom and the report file)."""
        return asdict(self)


def load_suite(path: Path) -> gx.ExpectationSuite:
    """Load an expectation suite from its JSON file under ``include/``.

    Raises:
        ValidationFailedError: The file is missing or is not a suite.
    """
    import great_expectations as gx

    if not path.is_file():
        raise ValidationFailedError(f"expectation suite not found: {path}")
    try:
        raw = json.loads(path.read_text())
        return gx.ExpectationSuite(name=raw["name"], expectations=raw["expectations"], meta=raw.get("meta"))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValidationFailedError(f"{path} is not a valid expectation suite: {exc}") from exc


def _failures(result: Any) -> list[ExpectationFailure]:
    failures = []
    for item in result.results:
        if item.success:
            continue
        info = item.to_json_dict()
        cfg = info["expectation_config"]
        res = info.get("result") or {}
        exc = info.get("exception_info") or {}
        detail = exc.get("exception_message") or ""
        kwargs = {k: v for k, v in cfg["kwargs"].items() if k not in {"column", "batch_id"}}
        if not detail and kwargs:
            detail = f"expected {kwargs}"
            if "observed_value" in res:
                detail += f", observed {res['observed_value']}"
        failures.append(
            ExpectationFailure(
                expectation=cfg["type"],
                column=cfg["kwargs"].get("column"),
                unexpected_count=res.get("unexpected_count"),
                element_count=res.get("element_count"),
                examples=list(res.get("partial_unexpected_list") or [])[:5],
                detail=detail,
            )
        )
    return failures


def _batch_definition(name: str) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas(f"{name}_raw")
    return source.add_dataframe_asset("partition").add_batch_definition_whole_dataframe("day")


def validate_frame(
    frame: pd.DataFrame, suite: gx.ExpectationSuite, batch_definition: Any = None
) -> list[ExpectationFailure]:
    """Validate one batch; return its failed expectations (empty when valid)."""
    batch_definition = batch_definition or _batch_definition(suite.name)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    return _failures(batch.validate(suite, result_format="SUMMARY"))


class _Judge:
    """Verdicts of one validation run: from the cache by content, else from the suite (loaded on first miss)."""

    def __init__(self, spec: PipelineSpec, layout: DataLayout, run_key: str, result: ValidationResult) -> None:
        self.spec, self.layout, self.result = spec, layout, result
        self.report = str(layout.run_dir(spec.name, run_key) / "validation.json")
        self.suite_hash = cache.suite_hash(spec.expectations_path)
        self._suite: tuple[gx.ExpectationSuite, Any] | None = None

    def failures(self, day: str, path: Path, parquet_sha256: str | None = None) -> list[ExpectationFailure]:
        """The batch at ``path``'s failed expectations (empty when valid), judged once per content."""
        digest = parquet_sha256 or sha256_of(path)
        key = cache.validation_key(digest, self.suite_hash)
        known = cache.get_verdict(self.layout, self.spec.name, key)
        if known is not None:
            self.result.cached.append(day)
            log.info("%s partition %s: verdict of these bytes kept from %s", self.spec.name, day, known.report)
            return [ExpectationFailure(**f) for f in known.failures]
        if self._suite is None:
            suite = load_suite(self.spec.expectations_path)
            self._suite = suite, _batch_definition(suite.name)
        import pandas as pd

        found = validate_frame(pd.read_parquet(path), *self._suite)
        verdict = cache.Verdict(failures=[asdict(f) for f in found], report=self.report, partition=day)
        parts = {"parquet_sha256": digest, "suite_hash": self.suite_hash, "suite": str(self.spec.expectations_path)}
        cache.put_verdict(self.layout, self.spec.name, key, verdict, parts)
        return found


def _entry(
    spec: PipelineSpec, layout: DataLayout, day: str, sha: str, failures: list[ExpectationFailure], stage: str
) -> QuarantinedPartition:
    return QuarantinedPartition(
        partition=day,
        source=str(layout.landing_file(spec.name, day)),
        quarantined_at="",
        failures=[asdict(f) for f in failures],
        reasons=[f.describe() for f in failures],
        sha256=sha,
        stage=stage,
    )


def validate_partitions(spec: PipelineSpec, layout: DataLayout, days: list[str], run_key: str) -> ValidationResult:
    """Validate each raw partition in ``days`` (training time); move failing ones to quarantine.

    Args:
        spec: The pipeline (its suite and schema).
        layout: Data root layout.
        days: Partition dates to validate.
        run_key: Identifies this run in quarantine paths and the report.

    Returns:
        Valid and quarantined partitions, and the path of the JSON report.

    Raises:
        ValidationFailedError: The suite cannot be loaded or a listed partition is not in the raw store.
    """
    result = ValidationResult(suite=str(spec.expectations_path))
    judge = _Judge(spec, layout, run_key, result)
    for day in days:
        path = layout.raw_partition(spec.name, day)
        if not path.is_file():
            raise ValidationFailedError(f"partition {day} of {spec.name} is not in the raw store ({path})")
        judged = sha256_of(path)
        failures = judge.failures(day, path, judged)
        if not failures:
            result.valid.append(day)
            continue
        landing_sha = (current_source(layout, spec.name, day) or {}).get("sha256", "")
        entry = _entry(spec, layout, day, landing_sha, failures, "validation (training)")
        moved = quarantine_current(layout, spec.name, day, run_key, entry, judged)
        if moved is None:  # replaced meanwhile by a batch validated at ingest: that one is judged next time
            result.valid.append(day)
            continue
        result.quarantined.append(moved)
        log.error("quarantined %s partition %s: %s", spec.name, day, "; ".join(moved.reasons))
    return _report(spec, layout, run_key, result, len(days))


def _report(spec: PipelineSpec, layout: DataLayout, run_key: str, result: ValidationResult, n: int) -> ValidationResult:
    report = layout.run_dir(spec.name, run_key) / "validation.json"
    result.report_uri = str(report)
    write_json(report, result.to_dict())
    log.info(
        "validated %d partitions: %d valid, %d quarantined (%d verdicts kept from earlier runs)",
        n,
        len(result.valid),
        len(result.quarantined),
        len(result.cached),
    )
    return result


def _find_staged(layout: DataLayout, pipeline: str, day: str, sha: str | None) -> Path | None:
    if sha:
        path = staged_dir(layout, pipeline, day, sha) / "part.parquet"
        return path if path.is_file() else None
    batches = staged_batches(layout, pipeline, day)
    return batches[-1] if batches else None


def validate_staged(
    spec: PipelineSpec,
    layout: DataLayout,
    staged: dict[str, str | None],
    run_key: str,
    refused: list[dict[str, Any]] | None = None,
) -> ValidationResult:
    """Judge staged batches (ingest time): a valid one becomes the day's partition, an invalid one is quarantined.

    Args:
        spec: The pipeline (its suite).
        layout: Data root layout.
        staged: Day -> the landing file's SHA-256 of the batch staged for it (None: the latest staged batch).
        run_key: Identifies this run in quarantine paths and the report.
        refused: Quarantine records of files ingest refused in the same run (reported with the rest).

    Returns:
        Valid days (now in ``raw/``), quarantined batches (with the refusals), the report path.

    Raises:
        ValidationFailedError: The suite cannot be loaded, or a day has no staged batch and no partition from it.
    """
    result = ValidationResult(suite=str(spec.expectations_path))
    result.quarantined += [QuarantinedPartition(**r) for r in refused or []]
    if not staged:
        return _report(spec, layout, run_key, result, len(result.quarantined))
    judge = _Judge(spec, layout, run_key, result)
    for day, sha in staged.items():
        path = _find_staged(layout, spec.name, day, sha)
        if path is None:
            current = current_source(layout, spec.name, day)
            if current and sha and current.get("sha256") == sha:  # a concurrent run already promoted these bytes
                result.valid.append(day)
                continue
            raise ValidationFailedError(
                f"no staged batch of {spec.name} partition {day}"
                + (f" from landing file {sha}" if sha else "")
                + ": run ingest for the day first"
            )
        failures = judge.failures(day, path)
        record = read_json(path.with_name(SOURCE)) or {}
        with partition_lock(layout, spec.name, day):
            entry = _entry(spec, layout, day, str(record.get("sha256", "")), failures, "validation")
            if not path.is_file():  # a concurrent run judged the same bytes meanwhile: its verdict stands
                if failures:
                    result.quarantined.append(entry)
                else:
                    result.valid.append(day)
                continue
            if failures:
                landing = layout.landing_file(spec.name, day)
                entry = quarantine_batch(layout, spec.name, day, run_key, entry, landing, path.parent)
                result.quarantined.append(entry)
                log.error("quarantined %s partition %s: %s", spec.name, day, "; ".join(entry.reasons))
            else:
                outcome = promote_staged(layout, spec.name, day, path, run_key)
                result.valid.append(day)
                log.info("%s partition %s: staged batch %s", spec.name, day, outcome)
    return _report(spec, layout, run_key, result, len(staged) + len(refused or []))


def validate_window(spec: PipelineSpec, layout: DataLayout, days: list[str], run_key: str) -> Validation:
    """Validate a training window (:func:`validate_partitions`); enough valid partitions must remain.

    Raises:
        ValidationFailedError: Fewer valid partitions remain than the spec's ``min_partitions``.
    """
    result = Validation.parse(validate_partitions(spec, layout, days, run_key).to_dict())
    if len(result.valid) < spec.training.min_partitions:
        raise ValidationFailedError(
            f"only {len(result.valid)} valid partitions, fewer than min_partitions="
            f"{spec.training.min_partitions}: not training.\n"
            + quarantine_message(spec.name, result.xcom()["quarantined"], len(result.valid))
        )
    return result


def validate_new_batches(
    spec: PipelineSpec,
    layout: DataLayout,
    days: list[str],
    run_key: str,
    staged: dict[str, str] | None = None,
    refused: list[dict[str, Any]] | None = None,
) -> Validation:
    """Judge the batches ingest staged for ``days`` (:func:`validate_staged`); never raises on bad data.

    ``staged`` names each day's batch by its landing file's SHA-256 (default: the latest staged batch of
    the day); ``refused`` are the files ingest refused in the same run, reported with the rest.
    """
    batches: dict[str, str | None] = {d: (staged or {}).get(d) for d in days}
    return Validation.parse(validate_staged(spec, layout, batches, run_key, refused).to_dict())


def report_quarantine(pipeline: str, validation: Validation) -> None:
    """Fail with an actionable message if validation quarantined anything (after the good data was used).

    Raises:
        ValidationFailedError: Listing every quarantined partition, file, expectation and row count.
    """
    if validation.quarantined:
        found = validation.xcom()
        raise ValidationFailedError(quarantine_message(pipeline, found["quarantined"], len(validation.valid)))


def quarantine_message(spec_name: str, quarantined: list[dict[str, Any]], valid_count: int) -> str:
    """Explain quarantined partitions to a person: which file, which expectation, how many rows, what to do."""
    lines = [
        f"{len(quarantined)} {spec_name} partition(s) were quarantined (refused at ingest or failed validation); "
        f"the {valid_count} valid partition(s) were processed without them."
    ]
    for q in quarantined:
        where = q.get("record") or q["quarantined_at"]
        stage = "refused at ingest" if q.get("stage") == "ingest" else "failed validation"
        lines.append(f"- partition {q['partition']} (landing file {q['source']}), {stage}; record {where}:")
        reasons = q.get("reasons") or [ExpectationFailure(**f).describe() for f in q.get("failures", [])]
        lines += [f"    * {r}" for r in reasons]
    lines.append(
        "Fix or re-deliver the landing file, re-run the ingest DAG for that date, and the next training run "
        "picks it up. The current partition of a day (if any) was kept as it was. The reasons are kept in each "
        "record (reasons.json) beside the quarantined data."
    )
    return "\n".join(lines)
