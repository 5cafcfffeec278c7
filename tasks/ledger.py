"""The promotion ledger: an append-only record of every registry decision, and the lock that serialises them.

Each row says who did what, when and why, and which version the champion moved from and to:
``promote``, ``lost_race`` (another run became champion after this one was judged), ``rejected`` (the
gate said no), ``dry_run``, ``rollback``, ``deploy_failed`` (the server refused the version; the
champion alias went back to what it serves), and the model server's own record of every admin reload:
``serve`` (it now serves that version) and ``serve_refused`` (the policy, a failed smoke test or an
outage kept it from serving it); and a person's answer to a promotion approval (``gate.approval``):
``approved``, ``declined`` (promotion skipped, the champion keeps serving) or ``approval_timeout``.
Every row is masked with :func:`tasks.redact.redact` before it is written, so no credential reaches the ledger.

The ledger lives in a SQL database (``Settings.ledger_uri``): a SQLite file under the data root by default,
PostgreSQL in the compose and Kubernetes stacks. Triggers make the table append-only in the database
itself, and :meth:`PromotionLedger.transaction` holds a per-pipeline lock (``BEGIN IMMEDIATE`` on SQLite, a
transaction-scoped advisory lock on PostgreSQL) around read-champion, move-alias and append, so two runs
finishing together cannot both become champion.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.redact import redact, redact_value

ACTIONS = (
    "promote",
    "lost_race",
    "rejected",
    "dry_run",
    "rollback",
    "deploy_failed",
    "serve",
    "serve_refused",
    "approved",
    "declined",
    "approval_timeout",
)

_COLUMNS = "at, pipeline, action, from_version, to_version, actor, reason, run_id, details"
_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS promotion_ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, pipeline TEXT NOT NULL, action TEXT NOT NULL,
    from_version TEXT, to_version TEXT, actor TEXT NOT NULL, reason TEXT NOT NULL, run_id TEXT, details TEXT);
CREATE TRIGGER IF NOT EXISTS promotion_ledger_no_update BEFORE UPDATE ON promotion_ledger
    BEGIN SELECT RAISE(ABORT, 'promotion_ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS promotion_ledger_no_delete BEFORE DELETE ON promotion_ledger
    BEGIN SELECT RAISE(ABORT, 'promotion_ledger is append-only'); END;
"""
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS promotion_ledger (
    seq BIGSERIAL PRIMARY KEY, at TEXT NOT NULL, pipeline TEXT NOT NULL, action TEXT NOT NULL,
    from_version TEXT, to_version TEXT, actor TEXT NOT NULL, reason TEXT NOT NULL, run_id TEXT, details TEXT);
CREATE OR REPLACE FUNCTION promotion_ledger_append_only() RETURNS trigger AS $$
    BEGIN RAISE EXCEPTION 'promotion_ledger is append-only'; END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER promotion_ledger_append_only BEFORE UPDATE OR DELETE ON promotion_ledger
    FOR EACH ROW EXECUTE FUNCTION promotion_ledger_append_only();
"""


class LedgerError(RuntimeError):
    """The ledger database is unreachable or refused a write."""


@dataclass(frozen=True)
class Entry:
    """One ledger row."""

    pipeline: str
    action: str
    actor: str
    reason: str
    from_version: str | None = None
    to_version: str | None = None
    mlflow_run_id: str | None = None  # the candidate's MLflow run (the DB column is still `run_id`)
    details: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    seq: int | None = None

    def __post_init__(self) -> None:
        """Refuse unknown actions: the ledger's vocabulary is fixed."""
        if self.action not in ACTIONS:
            raise ValueError(f"unknown ledger action {self.action!r}; known: {ACTIONS}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def default_actor() -> str:
    """Who acts when no Airflow run says: ``cli:<user>@<host>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}@{os.uname().nodename}"


class Transaction:
    """An open, locked ledger transaction (see :meth:`PromotionLedger.transaction`)."""

    def __init__(self, conn: Any, placeholder: str) -> None:
        """Wrap a DB-API connection whose lock is held."""
        self._conn = conn
        self._ph = placeholder
        self.appended: list[Entry] = []

    def append(self, entry: Entry) -> Entry:
        """Add a row (committed with the transaction)."""
        values = (
            entry.at,
            entry.pipeline,
            entry.action,
            entry.from_version,
            entry.to_version,
            redact(entry.actor),
            redact(entry.reason),
            entry.mlflow_run_id,
            redact(json.dumps(redact_value(entry.details), sort_keys=True, default=str)),
        )
        marks = ", ".join([self._ph] * len(values))
        cur = self._conn.cursor()
        cur.execute(f"INSERT INTO promotion_ledger ({_COLUMNS}) VALUES ({marks})", values)  # noqa: S608 - fixed columns
        self.appended.append(entry)
        return entry


class PromotionLedger:
    """The ledger at ``uri`` (``sqlite:///path`` or ``postgresql://...``)."""

    def __init__(self, uri: str) -> None:
        """Open lazily; the schema is created on first use."""
        self.uri = uri
        self.postgres = uri.startswith(("postgresql://", "postgres://", "postgresql+psycopg2://"))
        if not self.postgres and not uri.startswith("sqlite:///"):
            raise LedgerError(f"unsupported ledger URI {redact(uri)!r}: use sqlite:///<path> or postgresql://...")

    def _connect(self) -> Any:
        try:
            if self.postgres:
                import psycopg2

                dsn = self.uri.replace("postgresql+psycopg2://", "postgresql://")
                # bounded: an unreachable ledger is an error within seconds, not a hang (the URI may set its own)
                extra = {} if "connect_timeout" in dsn else {"connect_timeout": 10}
                return psycopg2.connect(dsn, **extra)
            path = Path(self.uri.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves; timeout: wait for the lock, do not fail
            return sqlite3.connect(path, timeout=300, isolation_level=None)
        except Exception as exc:
            raise LedgerError(f"cannot open the promotion ledger at {redact(self.uri)}: {redact(str(exc))}") from exc

    @contextmanager
    def transaction(self, pipeline: str) -> Iterator[Transaction]:
        """Hold the pipeline's promotion lock; rows appended inside commit together, or not at all.

        Everything that reads the champion and moves aliases runs inside this block, so concurrent
        promotions, rollbacks and deploy reverts of one pipeline happen one after the other.
        """
        with closing(self._connect()) as conn:
            cur = conn.cursor()
            if self.postgres:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('mlp-ledger'))")
                cur.execute(_PG_SCHEMA)
                conn.commit()
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"mlp-promotion:{pipeline}",))
            else:
                cur.executescript(_SQLITE_SCHEMA)
                cur.execute("BEGIN IMMEDIATE")  # the database's write lock: one promoter at a time
            tx = Transaction(conn, "%s" if self.postgres else "?")
            try:
                yield tx
            except BaseException:
                conn.rollback() if self.postgres else cur.execute("ROLLBACK")
                raise
            conn.commit() if self.postgres else cur.execute("COMMIT")

    def append(self, entry: Entry) -> Entry:
        """Append one row on its own (takes the pipeline's lock briefly)."""
        with self.transaction(entry.pipeline) as tx:
            return tx.append(entry)

    def read(self, pipeline: str | None = None, limit: int | None = None) -> list[Entry]:
        """Rows oldest first (the last ``limit`` of them), optionally of one pipeline."""
        with closing(self._connect()) as conn:
            cur = conn.cursor()
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'promotion_ledger'"
                if self.postgres
                else "SELECT COUNT(*) FROM sqlite_master WHERE name = 'promotion_ledger'"
            )
            if not cur.fetchone()[0]:
                return []
            ph = "%s" if self.postgres else "?"
            where, args = (f" WHERE pipeline = {ph}", (pipeline,)) if pipeline else ("", ())
            cur.execute(f"SELECT seq, {_COLUMNS} FROM promotion_ledger{where} ORDER BY seq", args)  # noqa: S608
            rows = cur.fetchall()
        entries = [
            Entry(
                seq=r[0],
                at=r[1],
                pipeline=r[2],
                action=r[3],
                from_version=r[4],
                to_version=r[5],
                actor=r[6],
                reason=r[7],
                mlflow_run_id=r[8],
                details=json.loads(r[9] or "{}"),
            )
            for r in rows
        ]
        return entries[-limit:] if limit else entries


def format_table(entries: list[Entry]) -> str:
    """The ledger as a fixed-width table for a terminal."""
    if not entries:
        return "(no ledger entries)"
    width = min(max(len(e.actor) for e in entries), 72)
    head = f"{'seq':>4}  {'at (UTC)':<23}  {'pipeline':<14} {'action':<13} {'from':>4} -> {'to':<4}  "
    head += f"{'actor':<{width}}  reason"
    lines = [head, "-" * len(head)]
    for e in entries:
        lines.append(
            f"{e.seq or '':>4}  {e.at[:23]:<23}  {e.pipeline:<14} {e.action:<13} {e.from_version or '-':>4} -> "
            f"{e.to_version or '-':<4}  {e.actor[:width]:<{width}}  {e.reason}"
        )
    return "\n".join(lines)
