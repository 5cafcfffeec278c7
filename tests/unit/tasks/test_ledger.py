"""The promotion ledger on its own (SQLite): append-only in the database, fixed vocabulary, the lock, the CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from tasks.ledger import ACTIONS, Entry, LedgerError, PromotionLedger, default_actor, format_table
from tests.conftest import REPO


@pytest.fixture
def ledger(tmp_path) -> PromotionLedger:
    return PromotionLedger(f"sqlite:///{tmp_path / 'registry' / 'ledger.sqlite'}")


def test_rows_read_back_in_order_with_every_field(ledger):
    ledger.append(Entry("bike_demand", "promote", "cli:a", "first", None, "1", "run-1", {"k": 1}))
    ledger.append(Entry("adult_income", "rejected", "cli:b", "gate failed: min_roc_auc", "1", None, "run-2"))
    ledger.append(Entry("bike_demand", "rollback", "cli:c", "v2 misbehaves", "2", "1"))
    rows = ledger.read()
    assert [(e.seq, e.pipeline, e.action) for e in rows] == [
        (1, "bike_demand", "promote"),
        (2, "adult_income", "rejected"),
        (3, "bike_demand", "rollback"),
    ]
    assert rows[0].details == {"k": 1} and rows[0].mlflow_run_id == "run-1" and rows[2].mlflow_run_id is None
    assert [e.seq for e in ledger.read("bike_demand")] == [1, 3] and [e.seq for e in ledger.read(limit=1)] == [3]


def test_an_empty_or_absent_ledger_reads_as_no_rows(ledger):
    assert ledger.read() == [] and format_table([]) == "(no ledger entries)"


def test_ledger_is_append_only_in_the_database(ledger):
    ledger.append(Entry("bike_demand", "promote", "me", "why", None, "1"))
    with sqlite3.connect(ledger.uri.removeprefix("sqlite:///")) as conn:
        for sql in ("UPDATE promotion_ledger SET reason = 'x'", "DELETE FROM promotion_ledger"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
    assert ledger.read()[0].reason == "why"


def test_the_vocabulary_is_fixed():
    with pytest.raises(ValueError, match="unknown ledger action"):
        Entry("bike_demand", "promoted-by-magic", "me", "why")
    assert set(ACTIONS) == {
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
    }


def test_rows_of_a_failed_transaction_are_not_kept(ledger):
    with pytest.raises(RuntimeError, match="alias move failed"), ledger.transaction("bike_demand") as tx:
        tx.append(Entry("bike_demand", "promote", "me", "half done", None, "2"))
        raise RuntimeError("alias move failed")
    assert ledger.read() == []


def test_the_pipeline_lock_serialises_transactions(ledger):
    order: list[str] = []
    entered = threading.Event()

    def first() -> None:
        with ledger.transaction("bike_demand") as tx:
            entered.set()
            time.sleep(0.5)
            order.append("first")
            tx.append(Entry("bike_demand", "promote", "first", "why", None, "1"))

    worker = threading.Thread(target=first)
    worker.start()
    entered.wait(10)
    with ledger.transaction("bike_demand") as tx:  # waits for the first to commit
        order.append("second")
        tx.append(Entry("bike_demand", "promote", "second", "why", "1", "2"))
    worker.join()
    assert order == ["first", "second"] and [e.actor for e in ledger.read()] == ["first", "second"]


def test_an_unsupported_uri_is_refused_clearly():
    with pytest.raises(LedgerError, match="unsupported ledger URI 'mysql://x'"):
        PromotionLedger("mysql://x")


def test_default_actor_names_the_user_and_host():
    assert default_actor().startswith("cli:") and "@" in default_actor()


def _ledger_cli(uri: str, *args: str) -> str:
    env = dict(os.environ, MLP_LEDGER_URI=uri)
    command = [sys.executable, "-m", "tasks", "ledger", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True).stdout


def test_ledger_command_prints_a_table_and_json(ledger):
    ledger.append(Entry("bike_demand", "promote", "cli:ledger-test", "gate enabled: passed", "1", "2", "run-9"))
    ledger.append(Entry("adult_income", "dry_run", "cli:other", "dry run", None, "1"))
    table = _ledger_cli(ledger.uri, "--pipeline", "bike_demand", "--limit", "1")
    assert "promote" in table and "cli:ledger-test" in table and "1 -> 2" in table and "dry_run" not in table
    last = json.loads(_ledger_cli(ledger.uri, "--json").splitlines()[-1])
    assert last["action"] == "dry_run" and last["to_version"] == "1" and last["seq"] == 2
    first = json.loads(_ledger_cli(ledger.uri, "--json").splitlines()[0])
    assert first["mlflow_run_id"] == "run-9"
