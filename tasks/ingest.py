"""Ingest: copy one day's landing file into the raw store as a typed Parquet partition."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
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


_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}")


def partitions_from_event(extra: dict[str, Any] | None) -> list[str]:
    """The partitions an upstream Asset event announces, whichever way it came.

    - REST (``POST /api/v2/assets/events``): ``{"partition": "YYYY-MM-DD", ...}``.
    - An AssetWatcher: ``{"from_trigger": true, "payload": ...}`` where the payload is the landing-file
      watcher's ``{"partitions": [...]}`` or a Redis message whose ``data`` is ``{"partition": ...}`` JSON
      or the bare date.

    Returns:
        ``YYYY-MM-DD`` days; empty when the event names none.
    """
    extra = extra or {}
    if extra.get("partition"):
        return [str(extra["partition"])[:10]]
    payload = extra.get("payload")
    if not isinstance(payload, dict):
        return []
    if payload.get("partitions"):
        return [str(d)[:10] for d in payload["partitions"]]
    if payload.get("partition"):
        return [str(payload["partition"])[:10]]
    data = payload.get("data")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError:
            return [data.strip()[:10]] if _DAY.match(data.strip()) else []
    if isinstance(data, dict) and data.get("partition"):
        return [str(data["partition"])[:10]]
    if isinstance(data, str) and _DAY.match(data):
        return [data[:10]]
    return []


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pending_landing_files(
    layout: DataLayout, pipeline: str, seen: dict[str, tuple[int, int, str, bool]]
) -> list[tuple[str, str]]:
    """Landing files not yet ingested as they are now, once they have settled: ``[(day, sha256)]``.

    A file counts once its size and modification time are the same as at the previous look (an upstream
    still writing it is not announced half-written); its SHA-256 is then compared with the one recorded
    beside the raw (or quarantined) partition, so a file already ingested is not announced again and a
    corrected re-delivery is. ``seen`` is the caller's memory across looks
    (``day -> (mtime_ns, size, sha256, judged)``): an unchanged file already judged is not read again.
    """
    folder = layout.landing_dir(pipeline)
    pending = []
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        day = path.stem
        if not _DAY.match(day):
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:  # moved away between the listing and now
            continue
        before = seen.get(day)
        if before is None or before[:2] != (stat.st_mtime_ns, stat.st_size):
            seen[day] = (stat.st_mtime_ns, stat.st_size, "", False)  # first sight, or still changing: look again
            continue
        if before[3]:
            continue  # unchanged since it was found ingested or quarantined
        digest = before[2] or sha256_of(path)
        judged = digest in _judged_digests(layout, pipeline, day)
        seen[day] = (stat.st_mtime_ns, stat.st_size, digest, judged)
        if not judged:
            pending.append((day, digest))
    return pending


def _judged_digests(layout: DataLayout, pipeline: str, day: str) -> set[str]:
    """SHA-256 of the landing files of ``day`` already ingested (raw) or already quarantined."""
    records = [_source_record(layout, pipeline, day)]
    records += layout.quarantine_dir(pipeline, day).glob("*/_source.json")
    return {json.loads(r.read_text()).get("sha256") for r in records if r.is_file()}


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
    target = layout.raw_partition(spec.name, day)
    target.parent.mkdir(parents=True, exist_ok=True)
    # one ingest of a partition at a time: two events for the same day (REST, queue, file watcher) racing
    # each other must not both process it; the second waits, then finds the file already ingested
    with (target.parent / ".ingest.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ingest_locked(spec, layout, day, source, target, skip_if_unchanged)


def _ingest_locked(
    spec: PipelineSpec, layout: DataLayout, day: str, source: Path, target: Path, skip_if_unchanged: bool
) -> IngestResult:
    digest = sha256_of(source)
    record = _source_record(layout, spec.name, day)
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
