"""Validate: run the pipeline's Great Expectations suite on each raw partition; quarantine the failures.

Each partition is its own batch, so one bad day never hides the good days around it. A failing
partition is *moved* (not copied, not deleted) from ``raw/`` to ``quarantine/<pipeline>/dt=<day>/<run>/``
beside a ``reasons.json`` that names the file, each failed expectation and how many rows broke it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.errors import PermanentError
from tasks.spec import PipelineSpec
from tasks.storage import DataLayout, write_json

if TYPE_CHECKING:
    import great_expectations as gx

log = logging.getLogger(__name__)


class ValidationFailed(PermanentError, RuntimeError):
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


@dataclass(frozen=True)
class QuarantinedPartition:
    """A partition moved out of the raw store."""

    partition: str
    source: str
    quarantined_at: str
    failures: list[ExpectationFailure]


@dataclass
class ValidationResult:
    """Outcome over all partitions of a training window."""

    suite: str
    valid: list[str] = field(default_factory=list)
    quarantined: list[QuarantinedPartition] = field(default_factory=list)
    report_uri: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for XCom and the report file)."""
        return asdict(self)


def load_suite(path: Path) -> gx.ExpectationSuite:
    """Load an expectation suite from its JSON file under ``include/``.

    Raises:
        ValidationFailed: The file is missing or is not a suite.
    """
    import great_expectations as gx

    if not path.is_file():
        raise ValidationFailed(f"expectation suite not found: {path}")
    try:
        raw = json.loads(path.read_text())
        return gx.ExpectationSuite(name=raw["name"], expectations=raw["expectations"], meta=raw.get("meta"))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValidationFailed(f"{path} is not a valid expectation suite: {exc}") from exc


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


def _quarantine(
    spec: PipelineSpec, layout: DataLayout, day: str, run_key: str, failures: list[ExpectationFailure]
) -> QuarantinedPartition:
    raw = layout.raw_partition(spec.name, day)
    target_dir = layout.quarantine_dir(spec.name, day) / run_key
    target_dir.mkdir(parents=True, exist_ok=True)
    landing = layout.landing_file(spec.name, day)
    entry = QuarantinedPartition(
        partition=day, source=str(landing), quarantined_at=str(target_dir / "part.parquet"), failures=failures
    )
    # reasons first, then the move: a crash in between leaves the data in raw/, never nowhere.
    write_json(target_dir / "reasons.json", asdict(entry))
    os.replace(raw, target_dir / "part.parquet")
    for sidecar in raw.parent.iterdir():  # e.g. _source.json (the landing file's hash) travels with the data
        os.replace(sidecar, target_dir / sidecar.name)
    raw.parent.rmdir()
    return entry


def validate_partitions(spec: PipelineSpec, layout: DataLayout, days: list[str], run_key: str) -> ValidationResult:
    """Validate each raw partition in ``days``; move failing ones to quarantine.

    Args:
        spec: The pipeline (its suite and schema).
        layout: Data root layout.
        days: Partition dates to validate.
        run_key: Identifies this run in quarantine paths and the report.

    Returns:
        Valid and quarantined partitions, and the path of the JSON report.

    Raises:
        ValidationFailed: The suite cannot be loaded or a listed partition is not in the raw store.
    """
    suite = load_suite(spec.expectations_path)
    batch_definition = _batch_definition(suite.name)
    result = ValidationResult(suite=str(spec.expectations_path))
    for day in days:
        path = layout.raw_partition(spec.name, day)
        if not path.is_file():
            raise ValidationFailed(f"partition {day} of {spec.name} is not in the raw store ({path})")
        failures = validate_frame(pd.read_parquet(path), suite, batch_definition)
        if failures:
            entry = _quarantine(spec, layout, day, run_key, failures)
            result.quarantined.append(entry)
            log.error("quarantined %s partition %s: %s", spec.name, day, "; ".join(f.describe() for f in failures))
        else:
            result.valid.append(day)
    report = layout.run_dir(spec.name, run_key) / "validation.json"
    result.report_uri = str(report)
    write_json(report, result.to_dict())
    log.info("validated %d partitions: %d valid, %d quarantined", len(days), len(result.valid), len(result.quarantined))
    return result


def quarantine_message(spec_name: str, quarantined: list[dict[str, Any]], valid_count: int) -> str:
    """Explain quarantined partitions to a person: which file, which expectation, how many rows, what to do."""
    lines = [
        f"{len(quarantined)} {spec_name} partition(s) failed validation and were quarantined; "
        f"the {valid_count} valid partition(s) were processed without them."
    ]
    for q in quarantined:
        lines.append(f"- partition {q['partition']} (landing file {q['source']}), moved to {q['quarantined_at']}:")
        for f in q["failures"]:
            lines.append(f"    * {ExpectationFailure(**f).describe()}")
    lines.append(
        "Fix or re-deliver the landing file, re-run the ingest DAG for that date, and the next training run "
        "picks it up. The reasons are kept beside each quarantined file in reasons.json."
    )
    return "\n".join(lines)
