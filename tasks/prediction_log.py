"""The prediction log: every prediction the model server (or a batch scorer) made, with typed columns.

A store behind SQLAlchemy: SQLite for the embedded default (``serving/predictions.sqlite`` under the data
root), PostgreSQL in compose and prod (``prediction_log_uri`` / ``MLP_PREDICTION_LOG_URI``: :func:`log_store`).
Table ``predictions``:

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
prediction     REAL (double precision)
=============  ======================================================================================

The index ``predictions_window`` on ``(pipeline, event_time)`` serves what the monitor asks: one
pipeline's rows in a window of event days (:func:`read_window`; or chunk by chunk, :func:`read_window_chunks`:
a server-side cursor on PostgreSQL, so the reader holds one chunk's rows). In SQLite ``PRAGMA user_version``
holds the schema version: a file from before this schema (``model_name``, ``logged_at``) is migrated on first open, in
one transaction (the event time taken from each pipeline's spec); a file from a newer version is refused.
In PostgreSQL the table is created when missing (under an advisory lock: several workers start at once);
a ``predictions`` table with other columns is refused.

Durability (group commit, :class:`PredictionLogWriter`): while one request of a process commits, the
others queue; the next of them commits every request waiting at that moment in one transaction, and each
answers only once its rows are committed. An acknowledged request's rows are committed; a request that was
not acknowledged left all its rows or none (one transaction). SQLite runs in WAL mode, by default with
``synchronous=NORMAL``: a commit survives the server process being killed (``kill -9``, an OOM kill), not a
power loss or a kernel crash of the machine, and costs no ``fsync`` (10 ms each here); ``serving_log_sync:
full`` syncs every commit (group commit shares one among concurrent requests). PostgreSQL commits durably.
The writers of several processes take SQLite's write lock with ``BEGIN IMMEDIATE`` and wait for it. A store
that is down, or locked for longer than the writer's patience, is a :class:`PredictionLogUnavailable` (the
server answers 503), never a lost or half-written request.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tasks.errors import PermanentError
from tasks.redact import redact

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Engine

    from tasks.settings import Settings
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


class PredictionLogUnavailable(RuntimeError):
    """The store did not take the rows (down, or locked beyond the writer's patience); nothing was written."""

    def __init__(self, message: str, busy: bool = False) -> None:
        """``busy``: the store answered but stayed locked (else it did not answer or refused the write)."""
        super().__init__(message)
        self.busy = busy


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


@cache
def _inputs_json() -> Any:
    """A row's inputs as compact JSON text with sorted keys.

    msgspec's encoder (a kept library, already Airflow's) is ~8x faster than ``json.dumps(row, sort_keys=True)``,
    which took 28 ms of a 10,000-row request. A non-finite float becomes ``null`` (read back as a missing value).
    What msgspec refuses (a lone surrogate in a string, which a JSON escape can carry) goes through
    ``json.dumps``, which escapes it.
    """
    import msgspec

    encode = msgspec.json.Encoder(order="sorted").encode

    def text(row: Mapping[str, Any]) -> str:
        try:
            return encode(row).decode()
        except (UnicodeEncodeError, TypeError, OverflowError):
            return json.dumps(row, sort_keys=True)

    return text


def _all_event_columns() -> dict[str, str | None]:
    from tasks.spec import list_specs

    return {s.name: event_column(s) for s in list_specs(resolve_code=False)}


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


def store_url(store: Path | str) -> str:
    """The SQLAlchemy URL of a log store: a path is an SQLite file, a string already a URL."""
    return f"sqlite:///{Path(store).absolute()}" if isinstance(store, Path) else store


def log_store(settings: Settings) -> str:
    """This environment's log store: ``prediction_log_uri`` when set, else the SQLite file under the data root."""
    from tasks.storage import DataLayout

    return settings.prediction_log_uri or store_url(DataLayout(settings.data_root).prediction_log)


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise PredictionLogError("the prediction log needs a file (sqlite:///path), not an in-memory database")
    return Path(parsed.database)


_INSERT_COLUMNS = (
    "request_id",
    "pipeline",
    "model_version",
    "event_time",
    "served_at",
    "source",
    "inputs",
    "prediction",
)
_SQLITE_INSERT = (
    f"INSERT INTO predictions ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})"
)


def _insert(conn: Any, records: list[tuple[Any, ...]]) -> None:
    """Insert the records (tuples in ``_INSERT_COLUMNS``' order) in the open transaction.

    SQLite: the driver's own ``executemany`` (every column is text or a float, nothing to bind-process);
    SQLAlchemy's per-row parameter handling cost ~70 us a row, 0.7 s of a 10,000-row request. Elsewhere
    (PostgreSQL) the Core ``INSERT``, which SQLAlchemy batches into multi-row ``VALUES`` for the driver.
    """
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(_SQLITE_INSERT, records)
    else:
        conn.execute(_table().insert(), [dict(zip(_INSERT_COLUMNS, r, strict=True)) for r in records])


@cache
def _table() -> Any:
    """The typed ``predictions`` table (SQLite files are created by :data:`_SCHEMA`, which matches it)."""
    from sqlalchemy import BigInteger, CheckConstraint, Column, Double, Index, Integer, MetaData, Table, Text

    table = Table(
        "predictions",
        MetaData(),
        Column("row_id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("request_id", Text, nullable=False),
        Column("pipeline", Text, nullable=False),
        Column("model_version", Text, nullable=False),
        Column("event_time", Text),
        Column("served_at", Text, nullable=False),
        Column("source", Text, CheckConstraint("source IN ('served', 'batch')"), nullable=False),
        Column("inputs", Text, nullable=False),
        Column("prediction", Double, nullable=False),
    )
    Index("predictions_window", table.c.pipeline, table.c.event_time)
    return table


def _engine(url: str, timeout_s: float, write: bool, sync: str = "normal", checkpoint: bool = True) -> Engine:
    """An engine for the store; SQLite connections in autocommit mode, transactions begun explicitly.

    ``write``: transactions take SQLite's write lock at once (``BEGIN IMMEDIATE``, waiting up to ``timeout_s``
    for another process's), so no transaction fails half-way on a lock. ``checkpoint`` off: SQLite's commits do
    not checkpoint the WAL (the writer's :class:`_Checkpointer` does, on its own thread).
    """
    from sqlalchemy import create_engine, event

    if _sqlite_path(url) is None:
        from sqlalchemy.engine import make_url

        from tasks.storage import database_url

        parsed = make_url(database_url(url))  # the psycopg2 driver for a bare postgresql:// URL
        args = {"connect_timeout": max(1, int(timeout_s))} if parsed.get_backend_name() == "postgresql" else {}
        return create_engine(parsed, pool_pre_ping=True, pool_size=2, connect_args=args)
    # a writer does not wait in SQLite's busy handler, which sleeps 1, 2, 5, 10 ... 100 ms between tries: two
    # server processes' commits, a few ms each, then waited tens of ms for each other (PredictionLogWriter._commit
    # retries a locked BEGIN itself, every 0.2-0.5 ms for 50 ms, then backing off to 10 ms, up to the same timeout)
    busy_wait = 0 if write else timeout_s
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_wait})

    @event.listens_for(engine, "connect")
    def _autocommit(dbapi: Any, _record: Any) -> None:
        dbapi.isolation_level = None  # pysqlite's implicit BEGIN off: SQLAlchemy's "begin" below decides
        dbapi.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        if not checkpoint:
            dbapi.execute("PRAGMA wal_autocheckpoint=0")

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def prepare(url: str, engine: Engine | None = None, create: bool = True) -> bool:
    """Create (or migrate) the store's table when missing; False when there is none and ``create`` is off.

    Raises:
        PredictionLogError: A newer schema, or a ``predictions`` table that is not a prediction log.
        sqlalchemy.exc.SQLAlchemyError: The store did not answer.
    """
    path = _sqlite_path(url)
    if path is not None:
        if not create and not path.is_file():
            return False
        _connect(path, create=create).close()
        return True
    from sqlalchemy import inspect, text

    owned = engine is None
    engine = engine or _engine(url, 10, write=True)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # several workers start at once: one creates, the others see it
                conn.execute(text("SELECT pg_advisory_xact_lock(7143520812)"))
            inspector = inspect(conn)
            if not inspector.has_table("predictions"):
                if create:
                    _table().metadata.create_all(conn)
                return create
            columns = {c["name"] for c in inspector.get_columns("predictions")}
            if columns != set(_table().c.keys()):
                raise PredictionLogError(
                    f"table 'predictions' at {redact(url)} has columns {sorted(columns)}: not a prediction log"
                )
    finally:
        if owned:
            engine.dispose()
    return True


def _is_busy(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    return "database is locked" in text or "database is busy" in text or "lock timeout" in text


@dataclass
class _Pending:
    """One request's rows, waiting for their commit."""

    records: list[tuple[Any, ...]]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass
class LogStats:
    """What this process's writer did (the server reports it in ``/health``)."""

    requests: int = 0
    rows: int = 0
    transactions: int = 0
    unavailable: int = 0
    busy: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The counters, for ``/health``."""
        return dict(self.__dict__)


LOCK_POLL_FAST_S = 0.05
"""How long a writer polls a locked SQLite file every 0.2-0.5 ms before backing off towards 10 ms."""
CHECKPOINT_BYTES = 4 * 1024 * 1024
"""WAL bytes (estimated: whole pages, the table's and its index's) a writer commits before its checkpointer copies
the WAL into the database file at once (SQLite's own default checkpoints every 1,000 pages, ~4 MiB)."""
CHECKPOINT_EVERY_S = 1.0
"""Otherwise the checkpointer copies what was committed at most this long ago."""
_PAGE = 4096


class _Checkpointer:
    """Copies an SQLite log's write-ahead log into the database file on its own thread, off the request path.

    SQLite checkpoints inside the ``COMMIT`` that fills the WAL past 1,000 pages, and with ``synchronous=NORMAL``
    that checkpoint is the commit's only ``fsync`` (two): a 10,000-row request's commit took 32 ms with it, 5 ms
    without (median of 20). The writer's connections turn the automatic checkpoint off (``wal_autocheckpoint=0``)
    and this thread runs a ``PASSIVE`` checkpoint, which never blocks a writer or a reader (frames a reader's
    snapshot still needs stay for the next one), within ``CHECKPOINT_EVERY_S`` of a commit, or at once when a
    commit brings the WAL past ``CHECKPOINT_BYTES``. A commit survives a killed process whether or not its
    frames were checkpointed; readers read through the WAL either way.
    """

    def __init__(self, path: Path, timeout_s: float) -> None:
        """Checkpoint the SQLite file at ``path`` (its thread starts at the first :meth:`wrote`)."""
        self.path, self.timeout_s = path, timeout_s
        self.checkpoints = 0  # checkpoints that copied frames
        self.last: tuple[int, int, int] | None = None  # the last one's (busy, WAL frames, frames copied)
        self._pending = 0  # estimated WAL bytes committed since the last checkpoint
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def wrote(self, rows: int, size: int) -> None:
        """A commit of ``rows`` rows, ``size`` bytes of inputs: start the thread, wake it when the WAL is large."""
        pages = 2 + (size + 64 * rows) // _PAGE + rows // 40  # the table's pages, the index's, the commit frame
        with self._lock:
            self._pending += pages * _PAGE
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="prediction-log-checkpoint", daemon=True)
                self._thread.start()
            if self._pending < CHECKPOINT_BYTES:
                return
        self._wake.set()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.is_set():
                self._wake.wait(CHECKPOINT_EVERY_S)
                self._wake.clear()
                with self._lock:
                    pending, self._pending = self._pending, 0
                if not pending or self._stop.is_set():
                    continue
                try:
                    conn = conn or sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
                    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # tried again a second later; the WAL only grows meanwhile
                    log.warning("prediction log checkpoint of %s failed: %s", self.path, exc)
                    with self._lock:
                        self._pending += pending
                    continue
                self.last = (busy, frames, copied)
                self.checkpoints += copied > 0
                if copied < frames:  # a reader's snapshot held some back: the next round copies them
                    with self._lock:
                        self._pending += 1
        finally:
            if conn is not None:
                conn.close()

    def close(self) -> None:
        """Stop the thread; the last connection to close checkpoints what is left (SQLite does, on close)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s)


class PredictionLogWriter:
    """Appends predictions with group commit (what the model server uses); one writer per process, thread-safe.

    :meth:`append` returns once the request's rows are committed. While one request commits, the others
    wait; the next commits every request waiting at that moment (up to ``max_batch_rows`` rows) in one
    transaction: concurrent requests share one commit (and one ``fsync``) instead of one each.
    """

    def __init__(
        self,
        store: Path | str,
        event_columns: Mapping[str, str | None],
        timeout_s: float = 10.0,
        max_batch_rows: int = 50_000,
        sync: Literal["normal", "full"] = "normal",
    ) -> None:
        """Open (creating or migrating) the log; a store that does not answer yet is retried at the first write.

        Args:
            store: An SQLite file (``DataLayout.prediction_log``) or a SQLAlchemy URL (:func:`log_store`).
            event_columns: Pipeline -> the input field holding a row's event date (None: serving time).
            timeout_s: How long one commit waits for a locked store before its requests fail (503).
            max_batch_rows: Most rows in one transaction.
            sync: SQLite only: ``normal`` (a commit survives the process, not a power loss) or ``full``.

        Raises:
            PredictionLogError: The store holds a newer schema or is not a prediction log.
        """
        self.url = store_url(store)
        self.path = _sqlite_path(self.url)
        self.event_columns = dict(event_columns)
        self.timeout_s = timeout_s
        self.max_batch_rows = max_batch_rows
        self.stats = LogStats()
        self._engine = _engine(self.url, timeout_s, write=True, sync=sync, checkpoint=self.path is None)
        self._checkpointer = _Checkpointer(self.path, timeout_s) if self.path is not None else None
        self._ready = False
        try:
            self._ready = prepare(self.url, self._engine)
        except PredictionLogError:
            self._engine.dispose()
            raise
        except Exception as exc:  # noqa: BLE001 - not reachable now: every write retries, and answers 503 meanwhile
            log.warning("prediction log at %s not reachable yet (%s); retried at each write", redact(self.url), exc)
        self._turn = threading.Condition()  # guards _waiting and _committing
        self._waiting: list[_Pending] = []
        self._committing = False
        self._closed = False

    def add_pipeline(self, name: str, column: str | None) -> None:
        """Log a pipeline that was not served at start (its event column, from its spec)."""
        self.event_columns[name] = column

    def append(
        self,
        request_id: str,
        pipeline: str,
        model_version: str,
        rows: list[dict[str, Any]],
        predictions: list[float],
        source: Source = "served",
    ) -> int:
        """Record one request's rows in one transaction; returns how many, once they are committed.

        Raises:
            ValueError: Rows and predictions differ in number, or ``pipeline`` is not one this writer knows.
            PredictionLogUnavailable: The store did not take them (nothing of this request was written).
        """
        if pipeline not in self.event_columns:
            raise ValueError(f"the prediction log writer does not know pipeline {pipeline!r}")
        if source not in ("served", "batch"):
            raise ValueError(f"source is 'served' or 'batch', not {source!r}")
        served_at = datetime.now(UTC).isoformat()
        column = self.event_columns[pipeline]
        version = str(model_version)
        encode = _inputs_json()
        times: dict[Any, str | None] = {}  # a request's rows share few event dates: each parsed once
        records: list[tuple[Any, ...]] = []  # in _INSERT_COLUMNS' order
        for row, pred in zip(rows, predictions, strict=True):
            if column:
                value = row.get(column)
                try:
                    when = times[value]
                except (KeyError, TypeError):  # TypeError: an unhashable value, which is no date anyway
                    when = event_time(value)
                    with suppress(TypeError):
                        times[value] = when
            else:
                when = served_at
            if when is None:
                log.warning("%s: %s=%r is not a date; the row is logged without an event time", pipeline, column, row)
            records.append((request_id, pipeline, version, when, served_at, source, encode(row), float(pred)))
        if not records:
            return 0
        if self._closed:
            raise PredictionLogUnavailable("the prediction log writer is closed")
        pending = _Pending(records)
        self._take_turn(pending)
        if pending.error is not None:
            raise pending.error
        return len(records)

    def _take_turn(self, pending: _Pending) -> None:
        """Leader/follower group commit: wait while another request commits, then commit everything waiting.

        No writer thread: alone, a request commits its own rows at once (no hand-off between threads, which
        cost up to the interpreter's 5 ms switch interval under load); concurrent requests queue while one
        commits and the next of them commits all of their rows in one transaction.
        """
        with self._turn:
            self._waiting.append(pending)
        while True:
            with self._turn:
                while not pending.done.is_set() and self._committing:
                    self._turn.wait()
                if pending.done.is_set():
                    return
                self._committing = True
                batch: list[_Pending] = []
                rows = 0
                while self._waiting and (not batch or rows < self.max_batch_rows):
                    batch.append(self._waiting.pop(0))
                    rows += len(batch[-1].records)
            error: BaseException | None = None
            try:
                error = self._commit([r for p in batch for r in p.records])
            except BaseException as exc:  # every waiting request must be woken, whatever happened here
                error = exc
                raise
            finally:
                error = self._count(batch, rows, error)
                with self._turn:
                    for done in batch:
                        done.error = error
                        done.done.set()
                    self._committing = False
                    self._turn.notify_all()

    def _commit(self, records: list[tuple[Any, ...]]) -> BaseException | None:
        """One transaction with every record (retried while the store is locked, up to ``timeout_s``)."""
        from sqlalchemy.exc import OperationalError, SQLAlchemyError

        started = time.monotonic()
        deadline = started + self.timeout_s
        delay = 0.0002
        while True:
            try:
                if not self._ready:
                    self._ready = prepare(self.url, self._engine)
                with self._engine.begin() as conn:
                    _insert(conn, records)
                if self._checkpointer is not None:
                    self._checkpointer.wrote(len(records), sum(len(r[6]) for r in records))
                return None
            except PredictionLogError as exc:
                return exc
            except OperationalError as exc:
                busy = _is_busy(exc)
                if busy and time.monotonic() < deadline:
                    time.sleep(delay)  # another process commits: a few ms at most, unless something holds the lock
                    # a commit holds the lock ~1 ms (a 10,000-row one ~40): poll for 50 ms, then back off to 10 ms
                    fast = time.monotonic() - started < LOCK_POLL_FAST_S
                    delay = min(delay * 2, 0.0005 if fast else 0.01)
                    continue
                what = "stayed locked" if busy else "is unavailable"
                return PredictionLogUnavailable(f"the prediction log at {redact(self.url)} {what}: {exc.orig}", busy)
            except (SQLAlchemyError, OSError) as exc:
                return PredictionLogUnavailable(f"the prediction log at {redact(self.url)} is unavailable: {exc}")

    def _count(self, batch: list[_Pending], rows: int, error: BaseException | None) -> BaseException | None:
        stats = self.stats
        stats.requests += len(batch)
        stats.transactions += 1
        if error is None:
            stats.rows += rows
            return None
        busy = isinstance(error, PredictionLogUnavailable) and error.busy
        stats.busy += busy
        stats.unavailable += not busy
        stats.last_error = redact(str(error))
        log.error("prediction log: %d requests (%d rows) not written: %s", len(batch), rows, stats.last_error)
        return error

    def close(self) -> None:
        """Refuse further appends and close the connections."""
        self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._engine.dispose()


def window_bounds(days: list[str]) -> tuple[str, str]:
    """``[first day, day after the last)`` as strings comparable with ``event_time``."""
    last = date.fromisoformat(max(days)) + timedelta(days=1)
    return min(days), last.isoformat()


LOG_READ_CHUNK_ROWS = 100_000
"""Rows per chunk :func:`read_window_chunks` reads the log in (the monitor aggregates in chunks of its own size)."""
_META = ("prediction", "model_version", "event_time", "served_at", "source", "request_id")


def read_window_chunks(
    store: Path | str, pipeline: str, days: list[str], chunk_rows: int = LOG_READ_CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """:func:`read_window`'s rows as frames of at most ``chunk_rows`` rows each, in logging order.

    The query's rows are streamed (``stream_results``: a server-side cursor on PostgreSQL, SQLite's cursor
    stepping through the index range), so only one chunk's rows and its frame are in memory at a time. Each
    frame has its own rows' input fields as columns (a field no row of the chunk sent is absent from it),
    plus the metadata columns of :func:`read_window`. Nothing is yielded for no log, no days or no rows.
    """
    import pandas as pd
    from sqlalchemy import select

    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    url = store_url(store)
    if not days or not prepare(url, create=False):
        return
    start, end = window_bounds(days)
    t = _table()
    query = (
        select(t.c.inputs, t.c.prediction, t.c.model_version, t.c.event_time, t.c.served_at, t.c.source, t.c.request_id)
        .where(t.c.pipeline == pipeline, t.c.event_time >= start, t.c.event_time < end)
        .order_by(t.c.row_id)
    )
    engine = _engine(url, 30, write=False)
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(query)
            for rows in result.partitions(chunk_rows):
                frame = pd.DataFrame.from_records([json.loads(r[0]) for r in rows])
                for i, name in enumerate(_META, start=1):
                    frame[name] = [r[i] for r in rows]
                frame["model_version"] = frame["model_version"].astype(str)
                yield frame
    finally:
        engine.dispose()


def read_window(store: Path | str, pipeline: str, days: list[str]) -> pd.DataFrame:
    """One pipeline's logged rows whose event date is one of ``days`` (an index range scan), in logging order.

    Args:
        store: An SQLite file or a SQLAlchemy URL (:func:`log_store`).
        pipeline: The pipeline (registered model) whose rows to read.
        days: The window's event days (``YYYY-MM-DD``).

    Returns:
        The rows' input fields as columns, plus ``prediction``, ``model_version``, ``event_time``,
        ``served_at``, ``source`` and ``request_id`` (empty frame: no log, no days or no rows). Read in
        chunks (:func:`read_window_chunks`): the raw rows of one chunk at a time besides the frame.
    """
    import pandas as pd

    chunks = list(read_window_chunks(store, pipeline, days))
    if not chunks:
        return pd.DataFrame()
    return chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)
