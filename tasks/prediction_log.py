"""The prediction log: every prediction the model server (or a batch scorer) made, with typed columns.

One SQLite file under the data root (``serving/predictions.sqlite``), table ``predictions``:

=============  ======================================================================================
row_id         INTEGER primary key, in logging order
request_id     TEXT, the HTTP request (or batch) that asked for the row
pipeline       TEXT, the pipeline whose model answered
model_version  TEXT, the registered version that answered
event_time     TEXT, ISO UTC: the row's own event date/time when the pipeline's partition column is one of
               its inputs (bike demand's ``dteday``), else when it was served; NULL when the row's value
               is not a date (the row is kept, and never counted in a monitoring window)
served_at      TEXT, ISO UTC, when the server answered
source         TEXT, ``served`` (the HTTP endpoint) or ``batch``
inputs         TEXT, the row's input fields as JSON
prediction     REAL
=============  ======================================================================================

The index ``predictions_window`` on ``(pipeline, event_time)`` serves what the monitor asks: one
pipeline's rows in a window of event days (:func:`read_window`). ``PRAGMA user_version`` holds the schema
version: a file from before this schema (``model_name``, ``logged_at``) is migrated on first open, in one
transaction (the event time taken from each pipeline's spec); a file from a newer version is refused.

Durability: WAL journal, each request's rows committed in one transaction as the request is answered.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tasks.errors import PermanentError

if TYPE_CHECKING:
    import pandas as pd

    from tasks.spec import PipelineSpec

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""1 (implicit, ``user_version`` 0): the server's first table (``model_name``, ``logged_at``)."""
Source = Literal["served", "batch"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    model_version TEXT NOT NULL,
    event_time TEXT,
    served_at TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('served', 'batch')),
    inputs TEXT NOT NULL,
    prediction REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_window ON predictions (pipeline, event_time);
"""
_COLUMNS = "request_id, pipeline, model_version, event_time, served_at, source, inputs, prediction"


class PredictionLogError(PermanentError, RuntimeError):
    """The prediction log file cannot be used by this code (newer schema, or not a prediction log)."""


def event_column(spec: PipelineSpec) -> str | None:
    """The input field holding a row's event date, when callers send one (else rows are placed by serving time)."""
    column = spec.source.partition_column
    return column if column in spec.schema_.input_columns else None


def event_time(value: Any) -> str | None:
    """A row's event date/time as an ISO UTC string (a date stays ``YYYY-MM-DD``); None when it is not one.

    Accepts ISO 8601 text (``2012-06-18``, ``2012-06-18T13:00+02:00``; naive times are UTC) and date objects;
    numbers and anything else are not event dates.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        return value.isoformat()
    elif isinstance(value, str):
        text = value.strip()
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _all_event_columns() -> dict[str, str | None]:
    from tasks.spec import list_specs

    return {s.name: event_column(s) for s in list_specs()}


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """The first schema (``model_name``, ``logged_at``, event date looked up in JSON per row) -> this one."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(predictions)")}
    if not {"model_name", "logged_at", "inputs", "prediction"} <= columns:
        raise PredictionLogError(f"table 'predictions' has unknown columns {sorted(columns)}: not a prediction log")
    conn.execute("ALTER TABLE predictions RENAME TO predictions_v1")
    conn.execute("DROP INDEX IF EXISTS predictions_time")
    _create(conn)
    rows = conn.execute(
        "SELECT request_id, model_name, model_version, logged_at, inputs, prediction FROM predictions_v1 ORDER BY id"
    )
    columns_of = _all_event_columns()
    converted = []
    for request_id, pipeline, version, logged_at, inputs, prediction in rows:
        column = columns_of.get(pipeline)
        when = event_time(json.loads(inputs).get(column)) if column else event_time(logged_at)
        converted.append((request_id, pipeline, version, when, logged_at, "served", inputs, prediction))
    conn.executemany(f"INSERT INTO predictions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", converted)
    conn.execute("DROP TABLE predictions_v1")
    log.warning("prediction log migrated to schema %d: %d rows", SCHEMA_VERSION, len(converted))


def _create(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):  # not executescript: it would commit the open transaction first
        if statement.strip():
            conn.execute(statement)


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    """Open the log at the current schema version (creating or migrating it); refuse a newer one."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")  # one process creates or migrates; the others wait, then see it done
            _upgrade(conn, path)
            conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
        raise
    return conn


def _upgrade(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise PredictionLogError(
            f"{path} has prediction-log schema {version}, newer than this code's {SCHEMA_VERSION}: "
            "upgrade this installation (or point MLP_DATA_ROOT elsewhere)"
        )
    if version < SCHEMA_VERSION:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'predictions'")
        if exists.fetchone():
            _migrate_v1(conn)
        else:
            _create(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class PredictionLogWriter:
    """Appends predictions (what the model server uses); one writer per process, safe across threads."""

    def __init__(self, path: Path, event_columns: Mapping[str, str | None]) -> None:
        """Open (creating or migrating) the log at ``path``.

        Args:
            path: The log file (``DataLayout.prediction_log``).
            event_columns: Pipeline -> the input field holding a row's event date (None: serving time).
        """
        self.path = Path(path)
        self.event_columns = dict(event_columns)
        self._conn = _connect(self.path, create=True)
        self._lock = threading.Lock()

    @classmethod
    def for_pipelines(cls, path: Path, pipelines: Iterable[str]) -> PredictionLogWriter:
        """A writer for the named pipelines, their event columns read from their specs."""
        from tasks.spec import load_spec

        return cls(path, {name: event_column(load_spec(name)) for name in pipelines})

    def append(
        self,
        request_id: str,
        pipeline: str,
        model_version: str,
        rows: list[dict[str, Any]],
        predictions: list[float],
        source: Source = "served",
    ) -> int:
        """Record one request's rows in one transaction; returns how many.

        Raises:
            ValueError: Rows and predictions differ in number, or ``pipeline`` is not one this writer knows.
        """
        if pipeline not in self.event_columns:
            raise ValueError(f"the prediction log writer does not know pipeline {pipeline!r}")
        if source not in ("served", "batch"):
            raise ValueError(f"source is 'served' or 'batch', not {source!r}")
        served_at = datetime.now(UTC).isoformat()
        column = self.event_columns[pipeline]
        records = []
        for row, pred in zip(rows, predictions, strict=True):
            when = event_time(row.get(column)) if column else served_at
            if when is None:
                log.warning("%s: %s=%r is not a date; the row is logged without an event time", pipeline, column, row)
            records.append(
                (request_id, pipeline, str(model_version), when, served_at, source, json.dumps(row, sort_keys=True))
                + (float(pred),)
            )
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(f"INSERT INTO predictions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", records)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return len(records)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def window_bounds(days: list[str]) -> tuple[str, str]:
    """``[first day, day after the last)`` as strings comparable with ``event_time``."""
    last = date.fromisoformat(max(days)) + timedelta(days=1)
    return min(days), last.isoformat()


def read_window(path: Path, pipeline: str, days: list[str]) -> pd.DataFrame:
    """One pipeline's logged rows whose event date is one of ``days`` (an index range scan), in logging order.

    Returns:
        The rows' input fields as columns, plus ``prediction``, ``model_version``, ``event_time``,
        ``served_at``, ``source`` and ``request_id`` (empty frame: no log, no days or no rows).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file() or not days:
        return pd.DataFrame()
    start, end = window_bounds(days)
    conn = _connect(path, create=False)
    try:
        rows = conn.execute(
            "SELECT inputs, prediction, model_version, event_time, served_at, source, request_id FROM predictions"
            " WHERE pipeline = ? AND event_time >= ? AND event_time < ? ORDER BY row_id",
            (pipeline, start, end),
        ).fetchall()
    finally:
        conn.close()
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame.from_records([json.loads(r[0]) for r in rows])
    meta = ("prediction", "model_version", "event_time", "served_at", "source", "request_id")
    for i, name in enumerate(meta, start=1):
        frame[name] = [r[i] for r in rows]
    frame["model_version"] = frame["model_version"].astype(str)
    return frame
