"""Sources: pull one partition of a team's data into the landing zone, where ingest checks it as any landing file.

A spec's ``source`` names where the data lives (see :class:`tasks.spec.SourceSpec`):

- ``files``: a folder or object-store prefix, as a path or an fsspec URL (``file://``, ``memory://``,
  ``s3://`` through its fsspec driver), holding CSV, Parquet or JSON-lines files; one file per day
  (``{day}`` in the path) or files scanned for the rows whose ``date_column`` falls on the day;
- ``sql``: a table or a query, through SQLAlchemy, read one day at a time by a date column
  (``date_column >= day AND date_column < day + 1``); the database URL comes from the environment variable the
  spec names (never from the spec: the Airflow plugin fills it from a connection, pods from a Secret);
- neither: upstream delivers ``landing/<p>/<day>.csv`` itself (the shipped demos' replay tool does).

:func:`pull` writes ``landing/<p>/<day>.csv`` under a temporary name and renames it (the landing contract's
``rename``), only when its bytes change, so a re-pull of the same data is not a new delivery. The partition
column is written as the day when the data has none (date-less data: the ingestion day is the partition).
Values are written as CSV text and typed again by :mod:`tasks.reader`, so every check and quarantine of a
landing file applies to pulled data too. A plain CSV file of one day that carries its partition column is
copied byte for byte (its encoding, final newline and header are checked as delivered).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from tasks.errors import PermanentError
from tasks.redact import redact
from tasks.storage import atomic_path
from tasks.storage import database_url as _with_driver

if TYPE_CHECKING:
    import pandas as pd

    from tasks.spec import FilesSourceSpec, PipelineSpec, SqlSourceSpec
    from tasks.storage import DataLayout

log = logging.getLogger(__name__)


class SourceError(PermanentError, RuntimeError):
    """The source is misconfigured (no URL in the environment, an unreadable format): no retry can fix it."""


class SourceUnavailableError(RuntimeError):
    """The source did not answer (database down, object store unreachable): a retry may reach it."""


@dataclass(frozen=True)
class Pulled:
    """What one pull did: ``written`` (new bytes landed), ``unchanged`` (same bytes as landed) or ``absent``."""

    partition: str
    outcome: str
    rows: int = 0
    landing: str = ""
    reason: str = ""


def pull(spec: PipelineSpec, layout: DataLayout, day: str) -> Pulled:
    """Bring ``day``'s rows from the spec's source into ``landing/<p>/<day>.csv``; no-op without a source to pull.

    Returns:
        What happened; ``absent`` when the source has no data for the day yet (the sensor keeps waiting).

    Raises:
        SourceError: The source is misconfigured (no URL in its environment variable, unknown format).
        SourceUnavailableError: The source did not answer (retried).
    """
    source = spec.source
    target = layout.landing_file(spec.name, day)
    if source.files is not None:
        frame, raw = _from_files(spec, source.files, day)
    elif source.sql is not None:
        frame, raw = _from_sql(spec, source.sql, day), None
    else:
        return Pulled(day, "absent", reason="the spec has no source to pull (upstream delivers landing files)")
    if raw is None and (frame is None or frame.empty):
        return Pulled(day, "absent", reason=f"{describe(spec)} has no rows for {day} yet")
    data = raw if raw is not None else _csv_bytes(spec, frame, day)
    rows = len(frame) if frame is not None else data.count(b"\n") - 1
    if target.is_file() and _sha(target.read_bytes()) == _sha(data):
        return Pulled(day, "unchanged", rows, str(target), "the landing file already holds these bytes")
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    log.info("pulled %d rows of %s partition %s from %s -> %s", rows, spec.name, day, describe(spec), target)
    return Pulled(day, "written", rows, str(target))


def landing_status(spec: PipelineSpec, layout: DataLayout, day: str) -> dict[str, Any]:
    """Pull ``day`` when the spec has a source to pull, then whether its landing file is complete, and why.

    Returns:
        ``partition``, ``ready``, ``reason`` and ``present`` (whether there is a landing file at all; under
        ``source.completion: rename`` also one still being written under a temporary name).

    Raises:
        BadPartitionError: ``day`` is not a calendar date.
    """
    from tasks.landing import Contract, readiness, strict_day

    day = strict_day(day)
    pulled = pull(spec, layout, day)
    state = readiness(Contract.of(spec.source), layout.landing_file(spec.name, day), wait=True)
    reason = f"{pulled.reason}; {state.reason}" if pulled.outcome == "absent" and spec.source.pulls else state.reason
    log.info("%s partition %s: %s", spec.name, day, reason)
    return {"partition": day, "ready": state.ready, "reason": reason, "present": state.present}


def describe(spec: PipelineSpec) -> str:
    """The source in words, for logs and reasons (no credentials: the SQL URL is never part of it)."""
    source = spec.source
    if source.files is not None:
        return f"files {redact(source.files.path)} ({source.files.format})"
    if source.sql is not None:
        what = f"table {source.sql.table}" if source.sql.table else "query"
        return f"SQL {what} (URL from ${source.sql.url_env})"
    return f"landing files delivered to landing/{spec.name}/"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _day_bounds(day: str) -> tuple[date, date]:
    first = date.fromisoformat(day)
    return first, first + timedelta(days=1)


# ---- files ----


def _read(fs: Any, path: str, fmt: str) -> pd.DataFrame:
    import pandas as pd

    with fs.open(path, "rb") as f:
        if fmt == "csv":
            return pd.read_csv(f, dtype=str, keep_default_na=False)
        if fmt == "parquet":
            return pd.read_parquet(f)
        return pd.read_json(f, lines=True, dtype=False)


def _from_files(spec: PipelineSpec, files: FilesSourceSpec, day: str) -> tuple[pd.DataFrame | None, bytes | None]:
    import fsspec

    try:
        if files.date_column is None:  # one file per day: the file named for the day is the partition
            fs, path = fsspec.core.url_to_fs(files.path.format(day=day), **files.storage_options)
            if not fs.exists(path):
                return None, None
            if files.format == "csv" and spec.source.partition_column in _csv_header(fs, path):
                with fs.open(path, "rb") as f:
                    return None, f.read()  # as delivered: the reader checks its bytes
            return _read(fs, path, files.format), None
        fs, pattern = fsspec.core.url_to_fs(files.path, **files.storage_options)
        paths = sorted(fs.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        frames = [_on_day(_read(fs, p, files.format), files.date_column, day) for p in paths if fs.isfile(p)]
    except (OSError, ValueError) as exc:
        raise SourceUnavailableError(f"{describe(spec)}: {type(exc).__name__}: {redact(str(exc))}") from exc
    import pandas as pd

    frames = [f for f in frames if not f.empty]
    return (pd.concat(frames, ignore_index=True) if frames else None), None


def _csv_header(fs: Any, path: str) -> list[str]:
    import csv

    with fs.open(path, "rb") as f:
        first = f.readline().decode("utf-8-sig", errors="replace").strip("\r\n")
    return next(csv.reader([first]), [])


def _on_day(frame: pd.DataFrame, column: str, day: str) -> pd.DataFrame:
    """The rows whose ``column`` (a date, a timestamp or their ISO text) falls on ``day``."""
    import pandas as pd

    if column not in frame.columns:
        raise SourceError(f"source.files.date_column {column!r} is not a column of the files: {list(frame.columns)}")
    when = pd.to_datetime(frame[column], errors="coerce", format="mixed")
    first, after = _day_bounds(day)
    keep = (when >= pd.Timestamp(first)) & (when < pd.Timestamp(after))
    return frame[keep.to_numpy()].reset_index(drop=True)


# ---- SQL ----


def database_url(sql: SqlSourceSpec) -> str:
    """The SQLAlchemy URL from ``$<url_env>`` (a bare ``postgres://`` or ``postgresql://`` gets the psycopg2 driver).

    Raises:
        SourceError: The variable is unset, naming it and where it comes from.
    """
    url = os.environ.get(sql.url_env, "").strip()
    if not url:
        origin = f"the Airflow connection {sql.conn_id!r} (the plugin sets it)" if sql.conn_id else "a secret"
        raise SourceError(
            f"source.sql: the environment variable {sql.url_env} holding the database URL is not set; it comes from "
            f"{origin}, or in Kubernetes from the pod's Secret"
        )
    return _with_driver(url)


def _from_sql(spec: PipelineSpec, sql: SqlSourceSpec, day: str) -> pd.DataFrame:
    import pandas as pd
    import sqlalchemy as sa
    from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

    first, after = _day_bounds(day)
    if sql.table:
        table = sa.table(sql.table, sa.column(sql.date_column), schema=sql.db_schema)
        column = table.c[sql.date_column]
        statement: Any = (
            sa.select(sa.text("*")).select_from(table).where(column >= first, column < after).order_by(column)
        )
        params: dict[str, Any] = {}
    else:
        statement, params = sa.text(sql.query or ""), {"start": first, "end": after}
    engine = sa.create_engine(database_url(sql), pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            return pd.read_sql(statement, conn, params=params)
    except ProgrammingError as exc:  # a missing table or column, a bad query: the spec's to fix
        raise SourceError(f"{describe(spec)}: {redact(str(exc.orig))}") from None
    except (OperationalError, DBAPIError) as exc:
        raise SourceUnavailableError(f"{describe(spec)} did not answer: {redact(str(exc.orig))}") from None
    finally:
        engine.dispose()


# ---- the landing file ----


def _csv_bytes(spec: PipelineSpec, frame: pd.DataFrame | None, day: str) -> bytes:
    """The rows as a landing CSV: the schema's columns that the data has, the partition column as the day if absent."""
    import pandas as pd

    assert frame is not None
    frame = frame.copy()
    partition = spec.source.partition_column
    if partition not in frame.columns:
        frame.insert(0, partition, day)
    known = [c for c in spec.schema_.columns if c in frame.columns]
    frame = frame[known]  # columns the schema lacks are not delivered; missing ones are the reader's to name
    for col in known:
        if pd.api.types.is_datetime64_any_dtype(frame[col]):
            frame[col] = frame[col].dt.strftime("%Y-%m-%dT%H:%M:%S")
        elif pd.api.types.is_float_dtype(frame[col]) and spec.schema_.columns[col] == "int":
            frame[col] = frame[col].astype("Int64")  # NULLs made a float column: keep integers integral
    text = io.StringIO()
    frame.to_csv(text, index=False, lineterminator="\n")
    return text.getvalue().encode(spec.source.encoding)
