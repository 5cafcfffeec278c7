"""The prediction log: typed columns, event time, the window reader and its index, migration and refusal;
group commit, a locked or a down store, PostgreSQL."""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator

import pandas as pd
import pytest

from tasks.errors import PermanentError
from tasks.prediction_log import (
    SCHEMA_VERSION,
    PredictionLogError,
    PredictionLogUnavailable,
    PredictionLogWriter,
    event_time,
    log_store,
    read_window,
    read_window_chunks,
    window_bounds,
)
from tests.conftest import free_port, fresh_postgres_database
from tests.unit.conftest import FIXTURES

DROP = ["instant", "casual", "registered", "cnt"]
COLUMNS = {"bike_demand": "dteday", "adult_income": None}


def _bike_rows(start: str, end: str) -> list[dict]:
    data = pd.read_csv(FIXTURES / "bike_sharing_hour.csv.gz")
    return data[data.dteday.between(start, end)].drop(columns=DROP).to_dict("records")


@pytest.fixture
def log_path(tmp_path):
    return tmp_path / "serving" / "predictions.sqlite"


def test_inputs_are_sorted_json_even_for_values_the_fast_encoder_refuses(log_path):
    """Rows are written by msgspec; a lone surrogate (legal in a JSON string escape) falls back to json.dumps,
    a non-finite float is stored as null and read back as missing, an integer past 64 bits survives."""
    writer = PredictionLogWriter(log_path, COLUMNS)
    rows = [
        {"workclass": "Private", "age": 39, "education": "Bachelors"},
        {"workclass": "Self-emp", "age": 2**70, "education": float("nan")},
        {"workclass": "\ud800x", "age": 40, "education": "HS-grad"},
    ]
    assert writer.append("req-x", "adult_income", "1", rows, [0.1, 0.2, 0.3]) == 3
    with sqlite3.connect(log_path) as conn:
        stored = [r[0] for r in conn.execute("SELECT inputs FROM predictions ORDER BY row_id")]
    assert stored[0] == '{"age":39,"education":"Bachelors","workclass":"Private"}'  # keys sorted, compact
    assert json.loads(stored[1]) == {"age": 2**70, "education": None, "workclass": "Self-emp"}
    assert stored[2] == '{"age": 40, "education": "HS-grad", "workclass": "\\ud800x"}'  # json.dumps escaped it


def test_rows_land_with_typed_columns_and_their_event_date(log_path):
    writer = PredictionLogWriter(log_path, COLUMNS)
    rows = _bike_rows("2012-06-18", "2012-06-19")
    assert writer.append("req-1", "bike_demand", "3", rows, [float(i) for i in range(len(rows))]) == 48
    with sqlite3.connect(log_path) as conn:
        conn.row_factory = sqlite3.Row
        first = dict(conn.execute("SELECT * FROM predictions ORDER BY row_id LIMIT 1").fetchone())
        types = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(predictions)")}
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert first["row_id"] == 1 and first["request_id"] == "req-1" and first["pipeline"] == "bike_demand"
    assert first["model_version"] == "3" and first["event_time"] == "2012-06-18" and first["source"] == "served"
    assert first["served_at"].endswith("+00:00") and json.loads(first["inputs"])["hr"] == 0
    assert types == {
        "row_id": "INTEGER",
        "request_id": "TEXT",
        "pipeline": "TEXT",
        "model_version": "TEXT",
        "event_time": "TEXT",
        "served_at": "TEXT",
        "source": "TEXT",
        "inputs": "TEXT",
        "prediction": "REAL",
    }


def test_the_window_is_read_by_event_date_through_the_index(log_path):
    writer = PredictionLogWriter(log_path, COLUMNS)
    for day in ("2012-06-17", "2012-06-18", "2012-06-19", "2012-06-20"):
        rows = _bike_rows(day, day)
        writer.append(f"req-{day}", "bike_demand", "1", rows, [1.0] * len(rows))
    writer.append("other", "adult_income", "1", [{"age": 40}], [0.3])
    window = read_window(log_path, "bike_demand", ["2012-06-18", "2012-06-19"])
    assert len(window) == 48 and set(window["dteday"]) == {"2012-06-18", "2012-06-19"}
    assert set(window.columns) >= {"hr", "prediction", "model_version", "event_time", "served_at", "source"}
    assert window["request_id"].iloc[0] == "req-2012-06-18"  # logging order
    with sqlite3.connect(log_path) as conn:
        query = "SELECT inputs FROM predictions WHERE pipeline = ? AND event_time >= ? AND event_time < ?"
        bounds = window_bounds(["2012-06-18", "2012-06-19"])
        plan = conn.execute(f"EXPLAIN QUERY PLAN {query}", ("bike_demand", *bounds)).fetchall()
    assert "USING INDEX predictions_window (pipeline=? AND event_time>? AND event_time<?)" in str(plan)


def test_the_window_is_read_in_chunks_of_at_most_the_asked_rows_in_logging_order(log_path):
    writer = PredictionLogWriter(log_path, COLUMNS)
    rows = _bike_rows("2012-06-17", "2012-06-19")
    for i in range(0, len(rows), 7):  # several requests, as served
        writer.append(f"r{i}", "bike_demand", "3", rows[i : i + 7], [float(i + j) for j in range(len(rows[i : i + 7]))])
    writer.append("other", "adult_income", "1", [{"age": 40}], [0.5])
    writer.close()
    days = ["2012-06-18", "2012-06-19"]
    whole = read_window(log_path, "bike_demand", days)
    chunks = list(read_window_chunks(log_path, "bike_demand", days, chunk_rows=10))
    assert len(whole) == 48 and [len(c) for c in chunks] == [10, 10, 10, 10, 8]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)
    assert whole["prediction"].is_monotonic_increasing  # logging order
    assert list(read_window_chunks(log_path, "bike_demand", [])) == []
    assert list(read_window_chunks(log_path.with_name("none.sqlite"), "bike_demand", days)) == []
    with pytest.raises(ValueError, match="at least 1"):
        next(read_window_chunks(log_path, "bike_demand", days, chunk_rows=0))


def test_a_pipeline_whose_callers_send_no_date_is_placed_by_serving_time(log_path):
    writer = PredictionLogWriter(log_path, COLUMNS)
    writer.append("r", "adult_income", "2", [{"age": 40}, {"age": 51}], [0.2, 0.7], source="batch")
    with sqlite3.connect(log_path) as conn:
        rows = conn.execute("SELECT event_time, served_at, source FROM predictions").fetchall()
    assert all(event == served and source == "batch" for event, served, source in rows)
    today = rows[0][1][:10]
    assert len(read_window(log_path, "adult_income", [today])) == 2


def test_event_times_are_normalised_to_utc_and_junk_is_not_a_date():
    assert event_time("2012-06-18") == "2012-06-18"
    assert event_time("2012-06-18T13:00:00+02:00") == "2012-06-18T11:00:00+00:00"
    assert event_time("2012-06-18 13:00") == "2012-06-18T13:00:00+00:00"  # naive: UTC
    assert event_time("20120618") == "2012-06-18"  # ISO 8601 basic format is a date too
    for junk in ("tomorrow", "", None, "2012-13-45", 20120618, 1.5):
        assert event_time(junk) is None


def test_a_row_without_a_usable_event_date_is_kept_but_never_in_a_window(log_path, caplog):
    writer = PredictionLogWriter(log_path, COLUMNS)
    row = _bike_rows("2012-06-18", "2012-06-18")[0] | {"dteday": "yesterday"}
    writer.append("r", "bike_demand", "1", [row], [5.0])
    assert "is not a date" in caplog.text
    with sqlite3.connect(log_path) as conn:
        assert conn.execute("SELECT event_time FROM predictions").fetchall() == [(None,)]
    assert read_window(log_path, "bike_demand", ["2012-06-18"]).empty


def test_a_failed_append_writes_nothing(log_path):
    writer = PredictionLogWriter(log_path, COLUMNS)
    with pytest.raises(ValueError, match="zip"):
        writer.append("r", "bike_demand", "1", _bike_rows("2012-06-18", "2012-06-18"), [1.0, 2.0])
    with pytest.raises(ValueError, match="does not know pipeline 'taxi'"):
        writer.append("r", "taxi", "1", [{}], [1.0])
    with pytest.raises(ValueError, match="'served' or 'batch'"):
        writer.append("r", "adult_income", "1", [{}], [1.0], source="replayed")  # type: ignore[arg-type]
    with sqlite3.connect(log_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone() == (0,)


def test_concurrent_requests_keep_every_row(log_path):
    writer = PredictionLogWriter(log_path, COLUMNS)
    rows = _bike_rows("2012-06-18", "2012-06-18")

    def serve(worker: int) -> None:
        for i in range(10):
            writer.append(f"{worker}-{i}", "bike_demand", "1", rows, [float(worker)] * len(rows))

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    window = read_window(log_path, "bike_demand", ["2012-06-18"])
    assert len(window) == 4 * 10 * 24 and window["request_id"].nunique() == 40


def _old_log(path, rows: list[tuple]) -> None:
    """The server's first schema, as a deployed data root holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL,"
            " logged_at TEXT NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL,"
            " inputs TEXT NOT NULL, prediction REAL NOT NULL)"
        )
        conn.execute("CREATE INDEX predictions_time ON predictions (model_name, logged_at)")
        conn.executemany(
            "INSERT INTO predictions (request_id, logged_at, model_name, model_version, inputs, prediction)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )


def test_an_old_log_is_migrated_once_with_every_row_and_its_event_time(log_path):
    bike = _bike_rows("2012-06-18", "2012-06-18")[:3]
    old = [("a", "2026-11-20T10:00:00+00:00", "bike_demand", "1", json.dumps(r), 10.0 + i) for i, r in enumerate(bike)]
    old.append(("b", "2026-11-21T09:30:00+00:00", "adult_income", "4", json.dumps({"age": 40}), 0.25))
    _old_log(log_path, old)
    window = read_window(log_path, "bike_demand", ["2012-06-18"])  # the reader migrates on first open
    assert window["prediction"].tolist() == [10.0, 11.0, 12.0] and set(window["served_at"]) == {old[0][1]}
    assert read_window(log_path, "adult_income", ["2026-11-21"])["model_version"].tolist() == ["4"]
    with sqlite3.connect(log_path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone() == (4,)
    assert "predictions_v1" not in tables and "predictions_time" not in tables and "predictions_window" in tables
    PredictionLogWriter(log_path, COLUMNS).append("c", "bike_demand", "2", bike[:1], [1.0])  # and it goes on
    assert len(read_window(log_path, "bike_demand", ["2012-06-18"])) == 4


def test_a_log_from_a_newer_version_is_refused_and_left_alone(log_path):
    PredictionLogWriter(log_path, COLUMNS).append("r", "adult_income", "1", [{"age": 1}], [0.5])
    with sqlite3.connect(log_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(PredictionLogError, match=f"schema {SCHEMA_VERSION + 1}, newer than") as err:
        PredictionLogWriter(log_path, COLUMNS)
    assert isinstance(err.value, PermanentError)
    with sqlite3.connect(log_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone() == (1,)


def test_a_foreign_predictions_table_is_not_migrated(log_path):
    log_path.parent.mkdir(parents=True)
    with sqlite3.connect(log_path) as conn:
        conn.execute("CREATE TABLE predictions (x TEXT)")
    with pytest.raises(PredictionLogError, match="not a prediction log"):
        read_window(log_path, "bike_demand", ["2012-06-18"])
    with sqlite3.connect(log_path) as conn:
        assert [r[1] for r in conn.execute("PRAGMA table_info(predictions)")] == ["x"]  # rolled back whole


def test_no_log_or_no_days_is_an_empty_window(log_path):
    assert read_window(log_path, "bike_demand", ["2012-06-18"]).empty
    PredictionLogWriter(log_path, COLUMNS)
    assert read_window(log_path, "bike_demand", []).empty


def test_each_pipelines_event_column_comes_from_its_spec():
    """What the model server gives its writer (``ModelService``): the partition column when callers send it."""
    from tasks.prediction_log import event_column
    from tasks.spec import load_spec

    columns = {name: event_column(load_spec(name)) for name in ("bike_demand", "adult_income")}
    assert columns == {"bike_demand": "dteday", "adult_income": None}


def test_concurrent_requests_share_transactions(log_path):
    writer = PredictionLogWriter(log_path, COLUMNS, sync="full")  # an fsync per commit: requests queue behind it
    rows = _bike_rows("2012-06-18", "2012-06-18")[:10]
    barrier = threading.Barrier(8)

    def serve(worker: int) -> None:
        barrier.wait()
        for i in range(10):
            assert writer.append(f"{worker}-{i}", "bike_demand", "1", rows, [1.0] * len(rows)) == 10

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = writer.stats
    writer.close()
    assert stats.requests == 80 and stats.rows == 800 and stats.unavailable == stats.busy == 0
    assert stats.transactions < 80 / 2, f"group commit: {stats.transactions} transactions for 80 requests"
    with sqlite3.connect(log_path) as conn:
        counts = dict(conn.execute("SELECT request_id, COUNT(*) FROM predictions GROUP BY request_id").fetchall())
    assert len(counts) == 80 and set(counts.values()) == {10}


def test_a_writer_polls_a_briefly_held_lock_then_backs_off(log_path, monkeypatch):
    """Another process's commit holds the write lock ~1 ms: poll every 0.2-0.5 ms, do not oversleep it; a lock
    held longer (here 0.3 s) is retried every 10 ms at most, not 600 times."""
    from tasks import prediction_log

    writer = PredictionLogWriter(log_path, COLUMNS, timeout_s=5)
    holder = sqlite3.connect(log_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    real, slept = time.sleep, []

    def recording(seconds: float) -> None:
        slept.append(seconds)
        real(seconds)

    monkeypatch.setattr(prediction_log.time, "sleep", recording)
    release = threading.Timer(0.3, holder.execute, ("COMMIT",))  # Timer waits on an Event, not time.sleep
    release.start()
    assert writer.append("r1", "adult_income", "1", [{"age": 40}], [0.1]) == 1
    release.join()
    monkeypatch.undo()
    holder.close()
    writer.close()
    assert slept[0] == 0.0002 and max(slept[:5]) <= 0.0005
    assert max(slept) == 0.01 and len(slept) < 200, slept  # polling at 0.5 ms throughout: ~600


def test_a_store_locked_past_the_timeout_refuses_the_request_whole_then_recovers(log_path):
    writer = PredictionLogWriter(log_path, COLUMNS, timeout_s=0.5)
    holder = sqlite3.connect(log_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    started = time.monotonic()
    with pytest.raises(PredictionLogUnavailable, match="stayed locked") as err:
        writer.append("r1", "adult_income", "1", [{"age": 40}, {"age": 41}], [0.1, 0.2])
    assert err.value.busy and time.monotonic() - started < 5
    holder.execute("ROLLBACK")
    holder.close()
    assert writer.append("r2", "adult_income", "1", [{"age": 42}], [0.3]) == 1
    assert writer.stats.busy == 1 and writer.stats.rows == 1
    writer.close()
    with sqlite3.connect(log_path) as conn:
        assert conn.execute("SELECT request_id FROM predictions").fetchall() == [("r2",)]


def test_a_store_that_is_down_is_unavailable_with_its_password_masked():
    url = f"postgresql://mlp:Secret-pw-{secrets.token_hex(4)}@127.0.0.1:{free_port()}/log"
    writer = PredictionLogWriter(url, COLUMNS, timeout_s=2)  # starts anyway: the store may come up later
    with pytest.raises(PredictionLogUnavailable, match="is unavailable") as err:
        writer.append("r", "adult_income", "1", [{"age": 40}], [0.5])
    assert not err.value.busy and "mlp:***@127.0.0.1" in str(err.value) and "Secret-pw" not in str(err.value)
    assert writer.stats.unavailable == 1 and "Secret-pw" not in str(writer.stats.last_error)
    writer.close()


def test_the_settings_choose_the_store(monkeypatch, data_root):
    from tasks.settings import get_settings

    assert log_store(get_settings()) == f"sqlite:///{data_root / 'serving' / 'predictions.sqlite'}"
    monkeypatch.setenv("MLP_PREDICTION_LOG_URI", "postgresql://u:p@db:5432/log")
    get_settings.cache_clear()
    assert log_store(get_settings()) == "postgresql://u:p@db:5432/log"
    get_settings.cache_clear()


@pytest.fixture
def pg_store() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432 (trust auth)."""
    with fresh_postgres_database("mlp_log") as url:
        yield url


def test_postgresql_store_holds_the_typed_table_and_serves_the_window(pg_store):
    import sqlalchemy as sa

    writers = [PredictionLogWriter(pg_store, COLUMNS) for _ in range(2)]  # two workers: one creates, both write
    rows = _bike_rows("2012-06-18", "2012-06-19")
    writers[0].append("a", "bike_demand", "3", rows[:24], [1.0] * 24)
    writers[1].append("b", "bike_demand", "3", rows[24:], [2.0] * 24)
    writers[1].append("c", "adult_income", "1", [{"age": 40}], [0.5], source="batch")
    for writer in writers:
        writer.close()
    window = read_window(pg_store, "bike_demand", ["2012-06-19"])
    assert len(window) == 24 and set(window["request_id"]) == {"b"} and set(window["prediction"]) == {2.0}
    chunks = list(read_window_chunks(pg_store, "bike_demand", ["2012-06-18", "2012-06-19"], chunk_rows=20))
    assert [len(c) for c in chunks] == [20, 20, 8]  # a server-side cursor, 20 rows at a time
    pd.testing.assert_frame_equal(
        pd.concat(chunks, ignore_index=True), read_window(pg_store, "bike_demand", ["2012-06-18", "2012-06-19"])
    )
    assert window["hr"].tolist() == list(range(24))
    engine = sa.create_engine(pg_store.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        inspector = sa.inspect(engine)
        types = {c["name"]: str(c["type"]) for c in inspector.get_columns("predictions")}
        indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("predictions")}
    finally:
        engine.dispose()
    assert types["row_id"] == "BIGINT" and types["prediction"] == "DOUBLE PRECISION" and types["inputs"] == "TEXT"
    assert indexes["predictions_window"] == ["pipeline", "event_time"]
    assert read_window(pg_store, "taxi", ["2012-06-19"]).empty


def test_the_wal_is_checkpointed_off_the_request_path_and_nothing_is_lost(log_path, monkeypatch):
    """Commits do not checkpoint (wal_autocheckpoint=0 on the writer's connections): the writer's own thread does,
    without blocking a reader holding a snapshot or the next commit; what the snapshot held back follows once
    the reader is done, so the whole WAL is copied."""
    from tasks import prediction_log

    monkeypatch.setattr(prediction_log, "CHECKPOINT_BYTES", 64 * 1024)
    monkeypatch.setattr(prediction_log, "CHECKPOINT_EVERY_S", 0.1)
    writer = PredictionLogWriter(log_path, COLUMNS)
    rows = _bike_rows("2012-06-01", "2012-06-30")  # 720 rows, ~170 KB of inputs
    with writer._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        # and it does not sleep in SQLite's busy handler (1, 2, 5 ... 100 ms): _commit retries a locked BEGIN itself
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 0
    reader = sqlite3.connect(log_path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM predictions").fetchone() == (0,)  # a snapshot held throughout
    for i in range(3):
        assert writer.append(f"r{i}", "bike_demand", "1", rows, [1.0] * len(rows)) == len(rows)
    checkpointer = writer._checkpointer

    def settled() -> bool:  # the last checkpoint copied every frame of the WAL
        return checkpointer.last is not None and checkpointer.last[1] == checkpointer.last[2] > 0

    time.sleep(0.5)
    assert checkpointer.last is not None and not settled()  # it ran; the reader's snapshot held frames back
    assert reader.execute("SELECT COUNT(*) FROM predictions").fetchone() == (0,)  # its snapshot, undisturbed
    reader.execute("COMMIT")
    deadline = time.monotonic() + 10
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert settled() and checkpointer.checkpoints >= 1, checkpointer.last
    assert reader.execute("SELECT COUNT(*) FROM predictions").fetchone() == (3 * len(rows),)
    reader.close()
    writer.close()
    assert not checkpointer._thread.is_alive()
    with sqlite3.connect(log_path) as conn:
        assert conn.execute("SELECT COUNT(DISTINCT request_id), COUNT(*) FROM predictions").fetchone() == (
            3,
            3 * len(rows),
        )
