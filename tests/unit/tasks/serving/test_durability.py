"""The prediction log under a real crash: ``python -m tasks serve --workers 2`` killed with SIGKILL mid-load.

Eight client threads send 10-row requests to two workers sharing one SQLite log until the whole process
group is killed. Afterwards every acknowledged request has all its rows in the log (group commit answers
only after the commit) and every request in the log has all its rows or none (one transaction each).
Two workers on one SQLite file under concurrent load answer no 5xx (the old log failed with 500
"database is locked").
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.unit.conftest import FIXTURES
from tests.unit.tasks.conftest import raw_rows

P = "bike_demand"
ROWS = 10
INPUT_DROP = ["instant", "casual", "registered", "cnt"]


def _wait_serving(url: str, proc: subprocess.Popen[bytes], log: Path, workers: int) -> None:
    """Until each worker answers with the champion loaded (each loads its own; probe until two agree)."""
    deadline, ready = time.monotonic() + 240, 0
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            body = httpx.get(f"{url}/health", timeout=2).json()
            ready = ready + 1 if body["models"][P]["state"] == "serving" else 0
            if ready >= 4 * workers:
                return
        except httpx.HTTPError:
            ready = 0
        time.sleep(0.1)
    pytest.fail(f"the server did not serve within 240 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def killed(champion_store: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Load two workers, SIGKILL the process group while requests are in flight; what the clients saw and the log."""
    folder = tmp_path_factory.mktemp("durability")
    store, log = folder / "predictions.sqlite", folder / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env |= {"MLP_DATA_ROOT": str(champion_store["root"]), "MLP_PREDICTION_LOG_URI": f"sqlite:///{store}"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks", "serve", "--pipelines", P, "--port", str(port), "--workers", "2"],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_serving(url, proc, log, workers=2)
        rows = raw_rows(FIXTURES, "2012-06-18", "2012-06-18").drop(columns=INPUT_DROP).head(ROWS).to_dict("records")
        acked: list[str] = []
        statuses: Counter[int | str] = Counter()
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    try:
                        reply = http.post(f"{url}/predict", json={"instances": rows})
                    except httpx.HTTPError as exc:
                        statuses[type(exc).__name__] += 1
                        continue
                    statuses[reply.status_code] += 1
                    if reply.status_code == 200:
                        acked.append(reply.json()["request_id"])

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(4)
        os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and both workers, mid-request
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    with sqlite3.connect(store) as conn:  # opening it recovers the WAL as a restarted server would
        logged = Counter(r for (r,) in conn.execute("SELECT request_id FROM predictions"))
    yield {"acked": acked, "statuses": statuses, "logged": logged, "log": log.read_text()}


def test_no_acknowledged_request_loses_a_row_to_kill_9(killed):
    assert len(killed["acked"]) > 50, killed["statuses"]  # the load really ran
    lost = [r for r in killed["acked"] if killed["logged"][r] != ROWS]
    assert not lost, f"{len(lost)} acknowledged requests lost rows: {[(r, killed['logged'][r]) for r in lost[:5]]}"


def test_an_unacknowledged_request_left_all_its_rows_or_none(killed):
    partial = {r: n for r, n in killed["logged"].items() if n != ROWS}
    assert not partial, f"requests with some of their {ROWS} rows: {partial}"
    assert sum(killed["logged"].values()) >= ROWS * len(killed["acked"])


def test_two_workers_on_one_sqlite_log_answer_no_5xx(killed):
    errors = {code: n for code, n in killed["statuses"].items() if isinstance(code, int) and code != 200}
    assert not errors, f"{errors}\n{killed['log'][-3000:]}"
    assert "database is locked" not in killed["log"]
