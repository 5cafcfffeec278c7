"""Ingest: copy one day's landing file into the raw store as a typed Parquet partition."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.errors import PermanentError
from tasks.spec import PipelineSpec
from tasks.storage import DataLayout, atomic_path, parse_day, write_json

log = logging.getLogger(__name__)


class IngestError(PermanentError, RuntimeError):
    """The landing file for a partition is missing or unreadable."""


@dataclass(frozen=True)
class IngestResult:
    """What one ingest wrote."""

    partition: str
    uri: str
    rows: int
    uncast_columns: list[str]
    sha256: str = ""
    skipped: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Small, JSON-able form for XCom."""
        return asdict(self)


def _cast(frame: pd.DataFrame, spec: PipelineSpec) -> tuple[pd.DataFrame, list[str]]:
    """Cast declared columns; a column that does not cast is kept as text for validation to report.

    Empty cells and the spec's ``na_values`` markers become missing values (NaN / None).
    """
    uncast = []
    markers = {"", *spec.source.na_values}
    for col, kind in spec.schema_.columns.items():
        if col not in frame.columns:
            continue
        if kind == "str":
            if spec.source.na_values:
                frame[col] = frame[col].mask(frame[col].isin(spec.source.na_values))  # NaN in text: missing
            continue
        text = frame[col].where(~frame[col].isin(markers))
        values = pd.to_numeric(text, errors="coerce")
        lost = values.isna() & text.notna()
        if lost.any():
            uncast.append(col)
            continue
        if kind == "int" and values.notna().all() and (values == values.round()).all():
            frame[col] = values.astype("int64")
        else:
            frame[col] = values.astype("float64")
    return frame, uncast


def _source_record(layout: DataLayout, pipeline: str, day: str) -> Path:
    return layout.raw_partition(pipeline, day).with_name("_source.json")


def ingest_partition(spec: PipelineSpec, layout: DataLayout, day: str, skip_if_unchanged: bool = False) -> IngestResult:
    """Read ``landing/<pipeline>/<day>.csv`` and write ``raw/<pipeline>/dt=<day>/part.parquet`` atomically.

    Re-running a day rewrites the same partition byte for byte. The batch is stored even when it looks
    wrong: deciding what is valid is the validation stage's job, which quarantines it with reasons.
    The landing file's SHA-256 is kept beside the partition (``_source.json``); with ``skip_if_unchanged``
    (upstream events, which may arrive twice or late) a file already ingested unchanged is not processed
    again, while a corrected delivery (new bytes) is.

    Args:
        spec: The pipeline.
        layout: Data root layout.
        day: The partition date (the data interval start), ``YYYY-MM-DD``.
        skip_if_unchanged: Return without rewriting when this exact file was already ingested.

    Returns:
        The partition written.

    Raises:
        IngestError: No landing file for the day, or it is not CSV.
    """
    day = parse_day(day)
    source = layout.landing_file(spec.name, day)
    if not source.is_file():
        raise IngestError(
            f"no landing file for {spec.name} partition {day}: expected {source}. "
            "Has the upstream delivered it? Re-run this task once it lands."
        )
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    record = _source_record(layout, spec.name, day)
    target = layout.raw_partition(spec.name, day)
    if skip_if_unchanged and target.is_file() and record.is_file():
        seen = json.loads(record.read_text())
        if seen.get("sha256") == digest:
            why = f"already ingested from an identical landing file at {seen.get('ingested_at')}: nothing to do"
            log.info("%s partition %s: %s", spec.name, day, why)
            return IngestResult(day, str(target), int(seen.get("rows", 0)), [], digest, True, why)
    try:
        frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise IngestError(f"landing file {source} is not readable CSV: {exc}") from exc
    frame, uncast = _cast(frame, spec)
    order = [c for c in spec.source.order_by if c in frame.columns]
    if order:
        frame = frame.sort_values(order, kind="stable").reset_index(drop=True)
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
    ingested_at = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(record, {"sha256": digest, "rows": len(frame), "source": str(source), "ingested_at": ingested_at})
    if uncast:
        log.warning("partition %s: columns %s did not cast to their declared types", day, uncast)
    log.info("ingested %s rows of %s partition %s -> %s", len(frame), spec.name, day, target)
    return IngestResult(partition=day, uri=str(target), rows=len(frame), uncast_columns=uncast, sha256=digest)
