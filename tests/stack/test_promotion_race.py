"""Concurrent promotions against a PostgreSQL-backed MLflow server and a PostgreSQL promotion ledger.

Five processes, each holding a candidate judged against the same champion, call the promotion stage at
the same instant. Exactly one may become champion; the other four must be recorded as ``lost_race``.
Without the ledger's lock they would all read champion v1 and all move the alias.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from mlops_airflow.localenv import MLFLOW_SERVER_JOB_EXECUTION
from tests.conftest import REPO, SHARED, free_port, wait_healthy
from tests.stack.test_compose_stack import PG_HOST, PG_PORT, PG_USER, _clean_env, _pg, require_postgres

pytestmark = [pytest.mark.needs_data, pytest.mark.needs_postgres]
RACERS = 5
BIN = Path(sys.executable).parent

_RACER = """
import json, sys, time
from tasks import stages
version, start = sys.argv[1], float(sys.argv[2])
decision = {"mode": "enabled", "passed": True, "promote": True, "champion_version": "1", "primary_metric": "rmse"}
time.sleep(max(0.0, start - time.time()))  # every racer is imported and waiting: go together
print(json.dumps(stages.promote_model("bike_demand", version, decision, f"racer-{version}", f"run-{version}")))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A fresh PostgreSQL database behind an ``mlflow server`` and the ledger."""
    require_postgres()
    tmp = tmp_path_factory.mktemp("race")
    db = f"mlp_race_{secrets.token_hex(4)}"
    with closing(_pg()) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    pg_uri = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"
    port = free_port()
    log = open(tmp / "mlflow.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"), "server", "--backend-store-uri", pg_uri.replace("postgresql:", "postgresql+psycopg2:"),
            "--artifacts-destination", str(tmp / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "2", "--allowed-hosts", f"127.0.0.1,127.0.0.1:{port}",
        ],
        env=_clean_env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": MLFLOW_SERVER_JOB_EXECUTION},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    env = _clean_env() | {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "MLP_LEDGER_URI": pg_uri,
        "MLP_DATA_ROOT": str(tmp / "data"),
        "MLP_SHARED_DATASETS": str(SHARED),
    }
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout_s=180)
        yield {"env": env, "pg_uri": pg_uri, "db": db, "tmp": tmp}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
        log.close()
        with closing(_pg()) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


_SETUP = """
import json
import mlflow, pandas as pd
from mlflow.models import infer_signature
from sklearn.linear_model import Ridge
from tasks import stages
from tasks.tracking import start_tracking
from tasks.settings import get_settings

data = pd.read_csv(sys.argv[1])
rows = data[data.dteday.between("2011-06-01", "2011-06-14")]
X, y = rows[["hr", "temp", "hum", "windspeed", "workingday"]], rows["cnt"]
model = Ridge().fit(X, y)
start_tracking(get_settings(), "bike_demand")
with mlflow.start_run():
    info = mlflow.sklearn.log_model(model, name="model", signature=infer_signature(X, model.predict(X)))
versions = [str(mlflow.register_model(info.model_uri, "bike_demand").version) for _ in range(1 + int(sys.argv[2]))]
first = stages.promote_model("bike_demand", versions[0], {"mode": "enabled", "passed": True, "promote": True,
                                                          "champion_version": None, "primary_metric": "rmse"},
                             "setup", "run-1")
print(json.dumps({"versions": versions, "first": first}))
"""


def _python(code: str, *args: str, env: dict[str, str], timeout: float = 180) -> Any:
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code, *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_concurrent_promotions_yield_one_champion_and_record_the_losers(store: dict[str, Any]) -> None:
    env = store["env"]
    setup = _python(_SETUP, str(SHARED / "bike_sharing_hour.csv.gz"), str(RACERS), env=env)
    v1, candidates = setup["versions"][0], setup["versions"][1:]
    assert v1 == "1" and setup["first"]["promoted"]

    start = time.time() + 20  # enough for every racer to import the stack before the common start
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, v, str(start)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for v in candidates
    ]
    results = []
    for proc in racers:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert time.time() > start, "racers must have started together"

    winners = [r for r in results if r["promoted"]]
    losers = [r for r in results if not r["promoted"]]
    assert len(winners) == 1, results
    winner = winners[0]["version"]
    assert {r["outcome"] for r in losers} == {"lost_race"} and {r["champion"] for r in losers} == {winner}

    # the registry (MLflow on PostgreSQL) agrees: one champion, the old one kept as previous
    import psycopg2

    with closing(psycopg2.connect(store["pg_uri"])) as conn, conn.cursor() as cur:
        cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = 'bike_demand'")
        aliases = dict(cur.fetchall())
        assert str(aliases["champion"]) == winner and str(aliases["previous"]) == v1
        cur.execute("SELECT action, from_version, to_version, actor FROM promotion_ledger ORDER BY seq")
        ledger = cur.fetchall()
    assert ledger[0] == ("promote", None, v1, "setup")
    rest = ledger[1:]
    assert [e for e in rest if e[0] == "promote"] == [("promote", v1, winner, f"racer-{winner}")]
    lost = sorted(e[2] for e in rest if e[0] == "lost_race")
    assert lost == sorted(v for v in candidates if v != winner)

    # the ledger is append-only in PostgreSQL itself
    with closing(psycopg2.connect(store["pg_uri"])) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.Error, match="append-only"):
            cur.execute("UPDATE promotion_ledger SET reason = 'rewritten'")

    # and the ledger command reads it back from PostgreSQL
    table = subprocess.run(
        [sys.executable, "-m", "tasks", "ledger", "--pipeline", "bike_demand"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert table.count("lost_race") == RACERS - 1 and f"{v1} -> {winner}" in table
