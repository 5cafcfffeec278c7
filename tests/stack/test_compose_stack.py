"""The production-shaped stack, from docker-compose.yaml, as local processes against a real PostgreSQL.

This test reads ``docker-compose.yaml`` and runs each service's own command with its own environment
(interpolated the way ``docker compose`` does with a ``.env``), pointing hosts, ports and paths at this
machine: Airflow 3 (api-server, scheduler, dag-processor, triggerer; LocalExecutor) with its metadata in
PostgreSQL, an ``mlflow server`` with basic auth whose tracking store, registry and users are in PostgreSQL
(every client signs in), and the model server. The bike-demand pipeline then runs through the real
scheduler: an ``airflow backfill`` of the ingest DAG over 20 daily partition keys, the raw-asset events keyed
by them, the training runs they schedule per key, the champion in the PostgreSQL-backed registry, served over
HTTP; partitioned landing events over REST, and the watchers' key-less events re-emitted as partitioned ones.
tests/stack/test_container_stack.py runs the same file with a container engine; this one covers the commands
and environments on any machine.

Skipped, with the reason, where PostgreSQL is not reachable on 127.0.0.1:5432 (under CI=true: a failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from scripts.stack import load_compose
from tests.conftest import REPO, SHARED, cap_search, free_port, require, write_spec

pytestmark = [pytest.mark.e2e, pytest.mark.needs_data, pytest.mark.needs_postgres]
PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_USER = os.environ.get("MLP_TEST_PG_USER", "postgres")
SERVICES = [
    "mlflow",
    "model-server",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
]
DAYS = [f"2011-06-{d:02d}" for d in range(1, 21)]
_VAR = re.compile(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}")
BIN = Path(sys.executable).parent


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` as docker compose resolves them."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"docker-compose.yaml requires {name}: {arg}")
        return arg if op == ":-" else ""

    return _VAR.sub(one, value)


def _pg(dbname: str = "postgres") -> Any:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, connect_timeout=3)
    conn.autocommit = True
    return conn


def require_postgres() -> None:
    """Skip the calling test, with the reason, when PostgreSQL does not answer."""
    try:
        _pg().close()
    except Exception as exc:  # noqa: BLE001 - any connection failure means: no PostgreSQL here
        reason = f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} as {PG_USER!r} ({exc}); CI machines have it"
        require(False, reason)


def _clean_env() -> dict[str, str]:
    """This process's environment without the test session's own Airflow/MLflow/pipeline settings."""
    prefixes = ("AIRFLOW", "MLP_", "MLFLOW_", "ML_ENV")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_postgres()
    tmp = tmp_path_factory.mktemp("stack")
    suffix = secrets.token_hex(4)
    channel = f"mlp.test.{suffix}.bike_demand.landing"  # this stack's own: Redis is shared by the machine
    stream = f"mlp.test.{suffix}.bike_demand.landed"
    dbs = {
        "AIRFLOW_DB": f"mlp_stack_airflow_{suffix}",
        "MLFLOW_DB": f"mlp_stack_mlflow_{suffix}",
        "SEARCH_DB": f"mlp_stack_optuna_{suffix}",
    }
    with closing(_pg()) as conn, conn.cursor() as cur:
        for db in dbs.values():
            cur.execute(f"CREATE DATABASE {db}")
    ports = {"AIRFLOW_API_PORT": free_port(), "MLFLOW_PORT": free_port(), "MODEL_SERVER_PORT": free_port()}
    dotenv = {  # what a .env would hold on this machine
        "POSTGRES_HOST": PG_HOST,
        "POSTGRES_PORT": str(PG_PORT),
        "POSTGRES_USER": PG_USER,
        "POSTGRES_PASSWORD": "trust-auth-ignores-it",
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW_SECRET_KEY": secrets.token_urlsafe(32),
        "MLFLOW_ADMIN_USER": "admin",
        "MLFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(16),
        "MLFLOW_SECRET_KEY": secrets.token_urlsafe(32),
        "MLP_ADMIN_TOKEN": secrets.token_urlsafe(32),
        "AIRFLOW_ALL_ADMINS": "True",
        "AIRFLOW_PARALLELISM": "4",
        "AIRFLOW_HOME_DIR": str(tmp / "airflow"),
        "AIRFLOW_API_HOST": "127.0.0.1",
        "MLFLOW_HOST": "127.0.0.1",
        "MODEL_SERVER_HOST": "127.0.0.1",
        "REDIS_HOST": "127.0.0.1",
        "PROJECT_DIR": str(REPO),
        "DATA_ROOT": str(tmp / "data"),
        "PIPELINES_DIR": str(_specs(tmp / "specs", channel, stream)),
        "SHARED_DATASETS": str(SHARED),
        "MLFLOW_ARTIFACTS": str(tmp / "mlartifacts"),
        **dbs,
        **{k: str(v) for k, v in ports.items()},
    }
    compose = interpolate(load_compose(REPO / "docker-compose.yaml"), dotenv)["services"]
    (tmp / "logs").mkdir()
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def launch(service: str, **extra_env: str) -> subprocess.Popen[bytes]:
        spec = compose[service]
        argv = [str(BIN / spec["command"][0]) if spec["command"][0] != "python" else sys.executable]
        env = _clean_env() | {k: str(v) for k, v in (spec.get("environment") or {}).items()} | extra_env
        log = open(tmp / "logs" / f"{service}.log", "ab")  # noqa: SIM115 - owned by the child (a relaunch appends)
        return subprocess.Popen(
            argv + spec["command"][1:], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    # this process is an MLflow client too: it signs in as the services do
    signed_in = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": dotenv["MLFLOW_ADMIN_PASSWORD"]}
    saved = {k: os.environ.get(k) for k in signed_in}
    os.environ.update(signed_in)
    try:
        init = launch("airflow-init")
        assert init.wait(300) == 0, (tmp / "logs" / "airflow-init.log").read_text()[-3000:]
        for service in SERVICES:
            procs[service] = launch(service)
        urls = {
            "airflow": f"http://127.0.0.1:{ports['AIRFLOW_API_PORT']}",
            "mlflow": f"http://127.0.0.1:{ports['MLFLOW_PORT']}",
            "server": f"http://127.0.0.1:{ports['MODEL_SERVER_PORT']}",
        }
        _wait(f"{urls['airflow']}/api/v2/monitor/health", procs, tmp)
        _wait(f"{urls['mlflow']}/health", procs, tmp)
        _wait(f"{urls['server']}/health", procs, tmp)
        yield {
            "urls": urls,
            "env": _clean_env() | {k: str(v) for k, v in compose["airflow-scheduler"]["environment"].items()},
            "dbs": dbs,
            "root": tmp / "data",
            "logs": tmp / "logs",
            "channel": channel,
            "stream": stream,
            "specs": tmp / "specs",
            "launch": launch,
            "procs": procs,
            "mlflow_password": dotenv["MLFLOW_ADMIN_PASSWORD"],
        }
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
            # the group, not only its leader: a LocalExecutor worker forked from the scheduler's forkserver
            # outlives a scheduler that exits on SIGTERM (found idle 15 minutes after a run)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with closing(_pg()) as conn, conn.cursor() as cur:
            for db in dbs.values():
                cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _specs(folder: Path, channel: str, stream: str) -> Path:
    """Bike demand (20-day window) announced on a Redis channel and a Redis Stream; adult income by its files."""
    write_spec(folder, events={"redis_channel": channel, "redis_stream": stream, "poll_seconds": 1})
    adult = yaml.safe_load((REPO / "config" / "pipelines" / "adult_income.yaml").read_text())
    adult["source"]["events"] = {"watch_landing": True, "poll_seconds": 2}
    cap_search(adult)
    (folder / "adult_income.yaml").write_text(yaml.safe_dump(adult))
    return folder


def _wait(url: str, procs: dict[str, subprocess.Popen[bytes]], tmp: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                pytest.fail(
                    f"{name} exited with {proc.returncode}:\n{(tmp / 'logs' / f'{name}.log').read_text()[-3000:]}"
                )
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer within {timeout:.0f}s")


def _api(base: str, method: str, path: str, **kw: Any) -> Any:
    reply = httpx.request(method, f"{base}/api/v2{path}", timeout=30, **kw)
    assert reply.status_code < 400, f"{method} {path}: {reply.status_code} {reply.text}"
    return reply.json()


def _runs(base: str, dag_id: str) -> list[dict[str, Any]]:
    return _api(base, "GET", f"/dags/{dag_id}/dagRuns", params={"limit": 200})["dag_runs"]


def _wait_until(what: str, check: Any, timeout: float, logs: Path, every: float = 3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    scheduler = (logs / "airflow-scheduler.log").read_text()[-4000:]
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n--- scheduler log ---\n{scheduler}")


def _replay(stack: dict[str, Any], pipeline: str, start: str, end: str, corrupt: list[str] | None = None) -> None:
    """Upstream delivers landing files (the stage CLI, with the services' environment)."""
    args = json.dumps({"start": start, "end": end, "corrupt": corrupt or []})
    out = subprocess.run(
        [sys.executable, "-m", "tasks", "replay", "--pipeline", pipeline, "--args", args],
        env=stack["env"], cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]


def _asset_events(base: str, uri: str) -> list[dict[str, Any]]:
    (asset,) = [a for a in _api(base, "GET", "/assets", params={"uri_pattern": uri})["assets"] if a["uri"] == uri]
    params = {"asset_id": asset["id"], "limit": 100}
    for _ in range(12):
        # Airflow 3.3.2 answers 500 while an event's created run is queued (its start_date None fails the response
        # model, api_fastapi/core_api/services/public/assets.py); many queued runs: read the table (_stored_events)
        reply = httpx.get(f"{base}/api/v2/assets/events", params=params, timeout=30)
        if reply.status_code != 500:  # noqa: PLR2004
            break
        time.sleep(5)
    assert reply.status_code < 400, f"GET /assets/events: {reply.status_code} {reply.text}"
    return reply.json()["asset_events"]


def _stored_events(stack: dict[str, Any], uri: str) -> list[dict[str, Any]]:
    """An Asset's events as Airflow stored them (PostgreSQL), for when its REST listing cannot answer (above)."""
    with closing(_pg(stack["dbs"]["AIRFLOW_DB"])) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT e.partition_key, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = %s",
            (uri,),
        )
        return [{"partition_key": key, "extra": extra} for key, extra in cur.fetchall()]


def _landing_events(base: str, pipeline: str) -> list[dict[str, Any]]:
    """What the watchers recorded (key-less: ``<p>_announce`` re-emits them as partitioned landing events)."""
    return _asset_events(base, f"ml://{pipeline}/landing/watched")


def _unpause(base: str, *dag_ids: str) -> None:
    for dag_id in dag_ids:
        _api(base, "PATCH", f"/dags/{dag_id}", json={"is_paused": False})


def _event_runs(base: str, dag_id: str) -> list[dict[str, Any]]:
    runs = [r for r in _runs(base, dag_id) if r["run_type"] == "asset_triggered"]
    return sorted(runs, key=lambda r: r["run_after"])


def _ingested(base: str, dag_id: str, run: dict[str, Any]) -> list[dict[str, Any]]:
    path = f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances/ingest_partitions/xcomEntries/return_value"
    return _api(base, "GET", path)["value"]["partitions"]


def _finished_event_run(base: str, dag_id: str, n: int, skip: int = 0) -> dict[str, Any] | None:
    """The latest finished asset-triggered run once at least ``n`` have finished (ignoring the first ``skip``)."""
    done = [r for r in _event_runs(base, dag_id)[skip:] if r["state"] in ("success", "failed")]
    return done[-1] if len(done) >= n else None


def _backfill(base: str, days: list[str], max_active_runs: int, reprocess: str) -> dict[str, Any]:
    """``airflow backfill create`` of the bike ingest DAG over ``days``, through the REST API."""
    return _api(
        base,
        "POST",
        "/backfills",
        json={"dag_id": "bike_demand_ingest", "from_date": f"{days[0]}T00:00:00Z", "to_date": f"{days[-1]}T00:00:00Z",
              "max_active_runs": max_active_runs, "reprocess_behavior": reprocess},
    )  # fmt: skip


def _task_states(base: str, dag_id: str, run: dict[str, Any]) -> dict[str, str]:
    tis = _api(base, "GET", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]
    return {t["task_id"]: t["state"] for t in tis}


def test_pipeline_runs_through_the_scheduler_on_postgres(stack: dict[str, Any]) -> None:
    base, logs = stack["urls"]["airflow"], stack["logs"]
    # upstream delivers 20 days into the landing zone (the stage CLI, with the services' environment)
    _replay(stack, "bike_demand", DAYS[0], DAYS[-1])
    _wait_until("the DAGs to be parsed", lambda: _api(base, "GET", "/dags")["total_entries"] >= 12, 180, logs)
    for dag_id in ("bike_demand_ingest", "bike_demand_ingest_announced", "bike_demand_announce", "bike_demand_train"):
        _api(base, "PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    # a real backfill by partition key (PostgreSQL metadata: no SQLite write-lock limits)
    backfill = _backfill(base, DAYS, max_active_runs=4, reprocess="none")
    assert backfill["dag_id"] == "bike_demand_ingest"

    def ingested() -> list[dict[str, Any]] | None:
        # (unpausing also starts today's scheduled run, whose sensor waits for today's file: not ours)
        runs = [r for r in _runs(base, "bike_demand_ingest") if r["run_type"] == "backfill"]
        done = [r for r in runs if r["state"] in ("success", "failed")]
        return runs if len(done) == len(DAYS) else None

    runs = _wait_until("20 backfilled ingest runs", ingested, 600, logs)
    assert {r["state"] for r in runs} == {"success"}, [(r["dag_run_id"], r["state"]) for r in runs]
    partitions = sorted(p.parent.name for p in (stack["root"] / "raw" / "bike_demand").glob("dt=*/part.parquet"))
    assert partitions == [f"dt={d}" for d in DAYS]
    # one run per partition key, which is the day it ingested; each raw-asset event carries its run's key
    assert sorted(r["partition_key"] for r in runs) == DAYS
    for run in runs[:3]:
        assert [p["partition"] for p in _ingested(base, "bike_demand_ingest", run)] == [run["partition_key"]]
    raw_events = _stored_events(stack, "ml://bike_demand/raw")  # 20 train runs queue behind each other: see above
    assert sorted(e["partition_key"] for e in raw_events) == DAYS
    assert all(e["extra"]["partitions"] == [e["partition_key"]] for e in raw_events)

    # every raw-asset event schedules the train DAG; once 15 partitions exist, a run trains and deploys
    def deployed() -> dict[str, Any] | None:
        for run in _runs(base, "bike_demand_train"):
            if run["state"] == "success":
                tis = _api(base, "GET", f"/dags/bike_demand_train/dagRuns/{run['dag_run_id']}/taskInstances")
                states = {t["task_id"]: t["state"] for t in tis["task_instances"]}
                if states.get("deploy_model") == "success":
                    return states
        return None

    states = _wait_until("a training run that deploys", deployed, 480, logs)
    assert all(states[t] == "success" for t in ("validate_data", "train_model", "gate_model", "register_model"))
    train_runs = _runs(base, "bike_demand_train")
    assert {r["run_type"] for r in train_runs} == {"asset_triggered"}
    # each training run is the run of the raw partition key that scheduled it (the policy trains few of them)
    assert {r["partition_key"] for r in train_runs} <= set(DAYS) and len(train_runs) > 1

    # the champion lives in the PostgreSQL-backed registry, reached through the MLflow server, which asks who calls
    search = f"{stack['urls']['mlflow']}/api/2.0/mlflow/registered-models/search"
    assert httpx.get(search).status_code == 401
    assert httpx.get(search, auth=("admin", "wrong-password")).status_code == 401
    assert httpx.get(search, auth=("admin", stack["mlflow_password"])).status_code == 200
    from mlflow import MlflowClient

    registry = MlflowClient(stack["urls"]["mlflow"], stack["urls"]["mlflow"])
    champion = registry.get_model_version_by_alias("bike_demand", "champion")
    assert champion.tags["airflow.run_id"] in {r["dag_run_id"] for r in train_runs}
    with closing(_pg(stack["dbs"]["MLFLOW_DB"])) as conn, conn.cursor() as cur:
        cur.execute("SELECT name, alias, version FROM registered_model_aliases")
        assert ("bike_demand", "champion", int(champion.version)) in cur.fetchall()
        # compose puts the promotion ledger beside MLflow's tables: the Airflow task recorded the promotion there
        cur.execute("SELECT action, to_version, actor FROM promotion_ledger WHERE pipeline = 'bike_demand'")
        (action, to_version, who), served = cur.fetchall()[-2:]
        assert (action, to_version) == ("promote", str(champion.version))
        assert who.startswith("airflow:bike_demand_train/")
        # and the model server, given the same ledger, recorded the deploy it was asked for, with the admin token
        assert served == ("serve", str(champion.version), f"{who} via admin token")
    with closing(_pg(stack["dbs"]["AIRFLOW_DB"])) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM dag_run WHERE dag_id = 'bike_demand_ingest' AND run_type = 'backfill' "
            "AND state = 'success'"
        )
        assert cur.fetchone()[0] == len(DAYS)

    # and it is served over HTTP
    server = stack["urls"]["server"]
    assert httpx.get(f"{server}/health").json()["version"] == str(champion.version)
    import pandas as pd

    rows = pd.read_csv(SHARED / "bike_sharing_hour.csv.gz").query("dteday == '2011-06-21'")
    rows = rows.drop(columns=["instant", "casual", "registered", "cnt"]).to_dict("records")
    reply = httpx.post(f"{server}/predict", json={"instances": rows}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["predictions"]) == 24 and reply.json()["model_version"] == str(champion.version)

    # an upstream system announces a new day through the REST API, as a partitioned landing event: ingestion
    # runs at once, as the run of that key; a repeat is a no-op
    _replay(stack, "bike_demand", "2011-06-21", "2011-06-21")
    (asset,) = [a for a in _api(base, "GET", "/assets")["assets"] if a["uri"] == "ml://bike_demand/landing"]
    for attempt in (1, 2):  # the second event repeats the first (an at-least-once upstream)
        event = {"asset_id": asset["id"], "partition_key": "2011-06-21", "extra": {"source": "upstream-export"}}
        _api(base, "POST", "/assets/events", json=event)

        run = _wait_until(
            f"the asset-triggered ingest run {attempt}",
            lambda n=attempt: _finished_event_run(base, "bike_demand_ingest_announced", n),
            240,
            logs,
        )
        assert run["state"] == "success" and run["partition_key"] == "2011-06-21", run
        (result,) = _ingested(base, "bike_demand_ingest_announced", run)
        assert result["partition"] == "2011-06-21" and result["skipped"] is (attempt == 2), result
    assert (stack["root"] / "raw" / "bike_demand" / "dt=2011-06-21" / "part.parquet").is_file()
    assert "identical landing file" in result["reason"]


@pytest.mark.needs_redis
def test_a_redis_message_starts_ingestion_once_per_partition(stack: dict[str, Any]) -> None:
    import redis

    base, logs, channel = stack["urls"]["airflow"], stack["logs"], stack["channel"]
    queue = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        queue.ping()
    except redis.ConnectionError as exc:
        require(False, f"Redis is not reachable on 127.0.0.1:6379 ({exc}); CI machines have it")
    _replay(stack, "bike_demand", "2011-06-22", "2011-06-22")
    before = len(_event_runs(base, "bike_demand_ingest_announced"))
    for attempt in (1, 2):  # the second message repeats the first (an at-least-once publisher)
        # pub/sub only reaches a listening subscriber: the AssetWatcher in the triggerer (it re-subscribes after
        # each message it turns into an event)
        _wait_until(
            "the triggerer's Redis subscription",
            lambda: dict(queue.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1,
            120,
            logs / "airflow-triggerer.log",
        )
        assert queue.publish(channel, json.dumps({"partition": "2011-06-22"})) >= 1

        run = _wait_until(
            f"the Redis-triggered ingest run {attempt}",
            lambda n=attempt: _finished_event_run(base, "bike_demand_ingest_announced", n, skip=before),
            240,
            logs,
        )
        assert run["state"] == "success", (run, _task_states(base, "bike_demand_ingest_announced", run))
        assert run["partition_key"] == "2011-06-22", run
        (result,) = _ingested(base, "bike_demand_ingest_announced", run)
        assert result["partition"] == "2011-06-22" and result["skipped"] is (attempt == 2), result
    # the watcher's events (no partition key: Airflow 3.3) say where they came from, with the message ...
    from_redis = [e for e in _landing_events(base, "bike_demand") if (e["extra"] or {}).get("from_trigger")]
    assert len(from_redis) == 2 and {e["extra"]["payload"]["channel"] for e in from_redis} == {channel}
    assert {e["partition_key"] for e in from_redis} == {None}
    # ... and bike_demand_announce re-emitted each as a landing event keyed by the day
    landing = _asset_events(base, "ml://bike_demand/landing")
    reemitted = [e for e in landing if e["source_dag_id"] == "bike_demand_announce"]
    assert [e["partition_key"] for e in reemitted] == ["2011-06-22", "2011-06-22"], landing
    assert (stack["root"] / "raw" / "bike_demand" / "dt=2011-06-22" / "part.parquet").is_file()


@pytest.mark.needs_redis
def test_a_redis_stream_message_survives_a_triggerer_crash_before_its_ack(stack: dict[str, Any]) -> None:
    """At least once, ingested once: a crash between the stored event and XACK, and a message sent while down.

    The triggerer runs with the test hook ``MLP_TEST_CRASH_BEFORE_XACK``: its stream producer exits when asked
    to acknowledge, i.e. after Airflow stored the asset event and before ``XACK``. A second message is
    published while no triggerer runs. The next triggerer delivers the first one again (it is still pending in
    the consumer group) and the second for the first time; both are then acknowledged, and the first day is
    ingested once (its repeat is reported skipped: the same file SHA-256).
    """
    import redis

    from mlops_airflow.triggers import CRASH_BEFORE_ACK

    base, logs, stream, procs = stack["urls"]["airflow"], stack["logs"], stack["stream"], stack["procs"]
    queue = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    try:
        queue.ping()
    except redis.ConnectionError as exc:
        require(False, f"Redis is not reachable on 127.0.0.1:6379 ({exc}); CI machines have it")
    days = ["2011-06-23", "2011-06-24"]
    _replay(stack, "bike_demand", days[0], days[-1])
    _wait_until("the DAGs to be parsed", lambda: _api(base, "GET", "/dags")["total_entries"] >= 7, 180, logs)
    _unpause(base, "bike_demand_announce", "bike_demand_ingest_announced")  # the watcher's event -> keyed runs
    before = len(_event_runs(base, "bike_demand_ingest_announced"))

    def restart_triggerer(**env: str) -> subprocess.Popen[bytes]:
        old = procs["airflow-triggerer"]
        if old.poll() is None:
            os.killpg(old.pid, signal.SIGTERM)
            old.wait(60)
        procs["airflow-triggerer"] = stack["launch"]("airflow-triggerer", **env)
        return procs["airflow-triggerer"]

    def stream_events() -> list[dict[str, Any]]:
        extras = [e["extra"] or {} for e in _landing_events(base, "bike_demand")]
        return [x["payload"] for x in extras if (x.get("payload") or {}).get("source") == "redis_stream"]

    def delivered() -> list[str]:
        return [m["message_id"] for e in stream_events() for m in e["messages"]]

    crashing = restart_triggerer(**{CRASH_BEFORE_ACK: "1"})
    _wait_until("the stream's consumer group", lambda: _has_group(queue, stream), 180, logs / "airflow-triggerer.log")
    first = queue.xadd(stream, {"partition": days[0]})
    _wait_until("the triggerer to crash before XACK", lambda: crashing.poll() is not None, 180, logs)
    assert f"{CRASH_BEFORE_ACK} set: exiting before XACK" in (logs / "airflow-triggerer.log").read_text()
    assert delivered() == [first]  # the event was stored ...
    assert queue.xpending(stream, "airflow")["pending"] == 1  # ... and the message not acknowledged
    second = queue.xadd(stream, {"partition": days[1]})  # published while no triggerer runs

    restart_triggerer()

    def settled() -> list[dict[str, Any]] | None:
        if queue.xpending(stream, "airflow")["pending"]:
            return None
        announced = _event_runs(base, "bike_demand_ingest_announced")[before:]
        runs = [r for r in announced if r["state"] in ("success", "failed")]
        if len(runs) < len(announced):
            return None
        results = [p for r in runs for p in _ingested(base, "bike_demand_ingest_announced", r)]
        return results if {p["partition"] for p in results} >= set(days) and len(stream_events()) == 2 else None

    results = _wait_until("both messages ingested and acknowledged", settled, 300, logs)
    assert sorted(delivered()) == sorted([first, first, second])  # the first delivered again, with the second
    taken = [p["partition"] for p in results if not p["skipped"]]
    assert sorted(taken) == days, results  # one ingest per (partition, file SHA-256)
    assert all("identical landing file" in p["reason"] for p in results if p["skipped"]), results
    assert queue.xpending(stream, "airflow")["pending"] == 0
    for day in days:
        assert (stack["root"] / "raw" / "bike_demand" / f"dt={day}" / "part.parquet").is_file()


def _has_group(queue: Any, stream: str) -> bool:
    try:
        return any(g["name"] == "airflow" for g in queue.xinfo_groups(stream))
    except Exception:  # noqa: BLE001 - no stream yet
        return False


def test_a_landed_file_starts_ingestion_and_a_bad_one_is_quarantined_on_arrival(stack: dict[str, Any]) -> None:
    base, logs, root = stack["urls"]["airflow"], stack["logs"], stack["root"]
    for dag_id in ("adult_income_announce", "adult_income_ingest_announced"):
        _api(base, "PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    # upstream drops two days into the landing zone; the second is corrupted. Nobody calls anything.
    _replay(stack, "adult_income", "2024-01-01", "2024-01-02", corrupt=["2024-01-02"])

    def both_judged() -> list[dict[str, Any]] | None:
        runs = [r for r in _event_runs(base, "adult_income_ingest_announced") if r["state"] in ("success", "failed")]
        days = {p["partition"] for r in runs for p in _ingested(base, "adult_income_ingest_announced", r)}
        return runs if days >= {"2024-01-01", "2024-01-02"} else None

    runs = _wait_until("ingest runs started by the landing-zone watcher", both_judged, 300, logs)
    assert sorted(r["partition_key"] for r in runs) == ["2024-01-01", "2024-01-02"]  # re-emitted: a run per key
    assert (root / "raw" / "adult_income" / "dt=2024-01-01" / "part.parquet").is_file()
    reasons = next((root / "quarantine" / "adult_income" / "dt=2024-01-02").glob("*/reasons.json")).read_text()
    assert "age" in reasons and not (root / "raw" / "adult_income" / "dt=2024-01-02" / "part.parquet").exists()
    # the run that took the bad day says so: report_quarantine failed with the reasons; training hears of the good day
    bad = next(r for r in runs if r["partition_key"] == "2024-01-02")
    assert bad["state"] == "failed"
    assert _task_states(base, "adult_income_ingest_announced", bad)["report_quarantine"] == "failed"
    (raw,) = _api(base, "GET", "/assets", params={"uri_pattern": "ml://adult_income/raw"})["assets"]
    published = _api(base, "GET", "/assets/events", params={"asset_id": raw["id"]})["asset_events"]
    assert {d for e in published for d in e["extra"]["partitions"]} == {"2024-01-01"}
    assert {e["partition_key"] for e in published} == {"2024-01-01"}
    # each file was announced once: a file already ingested (or quarantined) as it is is not announced again
    time.sleep(8)  # four more looks of the watcher
    announced = [d for e in _landing_events(base, "adult_income") for d in e["extra"]["payload"]["partitions"]]
    assert sorted(announced) == ["2024-01-01", "2024-01-02"], announced


def test_a_backfill_rerun_is_byte_identical_runs_beside_the_monitor_and_retrains_nothing(
    stack: dict[str, Any],
) -> None:
    import hashlib

    base, logs, root = stack["urls"]["airflow"], stack["logs"], stack["root"]
    days = DAYS[1:4]
    parts = [root / "raw" / "bike_demand" / f"dt={d}" / "part.parquet" for d in days]
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in parts]
    from mlflow import MlflowClient

    registry = MlflowClient(stack["urls"]["mlflow"], stack["urls"]["mlflow"])
    versions = len(registry.search_model_versions("name = 'bike_demand'"))
    champion = registry.get_model_version_by_alias("bike_demand", "champion").version
    # the nightly monitor runs while the same days are backfilled again (reprocess: completed runs too)
    _api(base, "PATCH", "/dags/bike_demand_monitor", json={"is_paused": False})
    monitor = _api(base, "POST", "/dags/bike_demand_monitor/dagRuns", json={"logical_date": "2011-06-22T02:00:00Z"})
    _backfill(base, days, max_active_runs=3, reprocess="completed")

    def settled() -> bool:
        backfilled = [r for r in _runs(base, "bike_demand_ingest") if r["run_type"] == "backfill"]
        again = [r for r in backfilled if r["partition_key"] in days]
        m = _api(base, "GET", f"/dags/bike_demand_monitor/dagRuns/{monitor['dag_run_id']}")
        busy = [r for r in _runs(base, "bike_demand_train") if r["state"] not in ("success", "failed")]
        return (
            all(r["state"] in ("success", "failed") for r in again)
            and any(r["end_date"] and r["end_date"] > monitor["queued_at"] for r in again)
            and m["state"] in ("success", "failed")
            and not busy
        )

    _wait_until("the re-run backfill, the monitor and any training run", settled, 420, logs)
    again = [r for r in _runs(base, "bike_demand_ingest") if r["run_type"] == "backfill"]
    again = [r for r in again if r["partition_key"] in days]
    assert sorted(r["partition_key"] for r in again) == sorted(days * 2)  # the backfill re-ran these keys
    assert {r["state"] for r in again} == {"success"}
    assert _api(base, "GET", f"/dags/bike_demand_monitor/dagRuns/{monitor['dag_run_id']}")["state"] == "success"
    # the same bytes, the same rows: a re-run interval rewrites its partition identically
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in parts] == before
    import pandas as pd

    assert [len(pd.read_parquet(p)) for p in parts] == [24, 24, 24]
    # the re-announced days reached the training DAG, whose retrain policy trained nothing new
    assert len(registry.search_model_versions("name = 'bike_demand'")) == versions
    assert registry.get_model_version_by_alias("bike_demand", "champion").version == champion


def _hitl(base: str, run: dict[str, Any]) -> str:
    run_path = f"{base}/api/v2/dags/bike_demand_train/dagRuns/{run['dag_run_id']}"
    return f"{run_path}/taskInstances/approve_promotion/-1/hitlDetails"


def _awaiting(base: str, run: dict[str, Any]) -> dict[str, Any] | None:
    """The approval request of ``run`` once its task waits for an answer (one light call while it does not)."""
    ti_path = f"/dags/bike_demand_train/dagRuns/{run['dag_run_id']}/taskInstances/approve_promotion"
    if _api(base, "GET", ti_path)["state"] != "awaiting_input":
        return None
    reply = httpx.get(_hitl(base, run), timeout=30)
    return reply.json() if reply.status_code == 200 and not reply.json()["response_received"] else None


def _answer_and_settle(stack: dict[str, Any], run: dict[str, Any], answer: dict[str, Any] | None) -> dict[str, str]:
    """Wait for the request, answer it (``None``: let it time out), wait for the run to finish; its task states.

    The answer goes in as soon as the task waits (polled every second, not every 3 s): on a loaded machine the
    spec's deadline must be spent waiting for the scheduler, not for this test. Only a parked task is answered:
    the task keeps its HITL request row across a clear, and a new try's request wipes an earlier answer.
    """
    base, logs = stack["urls"]["airflow"], stack["logs"]
    _wait_until("the approval request", lambda: _awaiting(base, run), 600, logs, every=1)
    if answer is not None:
        reply = httpx.patch(_hitl(base, run), json=answer, timeout=30)
        assert reply.status_code == 200, reply.text

    def finished() -> dict[str, Any] | None:
        now = _api(base, "GET", f"/dags/bike_demand_train/dagRuns/{run['dag_run_id']}")
        return now if now["state"] in ("success", "failed") else None

    _wait_until("the approval's run to finish", finished, 240, logs)
    return _task_states(base, "bike_demand_train", run)


def _approval_log(stack: dict[str, Any], run: dict[str, Any]) -> str:
    """The approval task's attempts, as its log files say (for an assertion's message: what failed, and when)."""
    home = stack["logs"].parent / "airflow" / "logs" / "dag_id=bike_demand_train"
    lines = []
    for path in sorted(home.glob(f"run_id={run['dag_run_id']}/task_id=approve_promotion/attempt=*.log")):
        lines.append(f"--- {path.name}")
        lines += [line[:600] for line in path.read_text().splitlines() if '"level":"info"' not in line][-12:]
    return "\n".join(lines) or f"no approval log under {home}"


def _ledger_rows(stack: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    with closing(_pg(stack["dbs"]["MLFLOW_DB"])) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT action, to_version, actor, reason FROM promotion_ledger WHERE pipeline = 'bike_demand' ORDER BY seq"
        )
        return cur.fetchall()


def test_a_person_approves_rejects_or_lets_a_promotion_time_out_through_the_rest_api(stack: dict[str, Any]) -> None:
    """One training run, its approval answered three times (the task cleared in between), under the scheduler.

    The spec turns ``gate.approval`` on (90 s to answer) and lets a candidate no worse than the champion pass
    the gate, so a forced retrain on the same days reaches the approval. Reject: promotion and deploy are
    skipped, the ledger has who and why, the champion keeps serving. No answer: the spec's timeout fails the
    run, recorded in the ledger. Approve: the version is promoted and served.
    """
    from mlflow import MlflowClient

    base, logs, server = stack["urls"]["airflow"], stack["logs"], stack["urls"]["server"]
    registry = MlflowClient(stack["urls"]["mlflow"], stack["urls"]["mlflow"])
    champion = registry.get_model_version_by_alias("bike_demand", "champion").version
    spec_file = stack["specs"] / "bike_demand.yaml"
    shipped = spec_file.read_text()
    spec = yaml.safe_load(shipped)
    spec["gate"]["approval"] = {"required": True, "timeout_hours": 90 / 3600}
    spec["gate"]["champion"] = {"max_regression": 0.5, "bootstrap_samples": 200}
    spec_file.write_text(yaml.safe_dump(spec))
    try:

        def has_approval() -> bool:
            tasks = _api(base, "GET", "/dags/bike_demand_train/tasks")["tasks"]
            return "approve_promotion" in {t["task_id"] for t in tasks}

        _wait_until("the train DAG re-parsed with the approval", has_approval, 240, logs)
        _api(base, "PATCH", "/dags/bike_demand_train", json={"is_paused": False})
        run = _api(
            base, "POST", "/dags/bike_demand_train/dagRuns", json={"logical_date": None, "conf": {"force": True}}
        )

        # reject: promotion and deploy skipped; who and why in the ledger; the champion keeps serving
        reason = "the spring holdout is too short to trust"
        states = _answer_and_settle(stack, run, {"chosen_options": ["Reject"], "params_input": {"reason": reason}})
        assert states["approve_promotion"] == "success", (states, _approval_log(stack, run))
        assert states["promote_model"] == "skipped" and states["deploy_model"] == "skipped", states
        who = httpx.get(_hitl(base, run), timeout=30).json()["responded_by_user"]["name"]
        candidate = _api(
            base,
            "GET",
            f"/dags/bike_demand_train/dagRuns/{run['dag_run_id']}/taskInstances/register_model/xcomEntries/return_value",
        )["value"]["version"]
        action, version, actor, why = _ledger_rows(stack)[-1]
        assert (action, version, why) == ("declined", str(candidate), reason)
        assert actor.startswith(f"{who} (airflow user ") and f"airflow:bike_demand_train/{run['dag_run_id']}" in actor
        assert registry.get_model_version_by_alias("bike_demand", "champion").version == champion
        assert httpx.get(f"{server}/health").json()["version"] == str(champion)

        clear = {"dry_run": False, "task_ids": ["approve_promotion"], "dag_run_id": run["dag_run_id"],
                 "include_downstream": True, "only_failed": False, "reset_dag_runs": True}  # fmt: skip
        # no answer: the spec's timeout fails the run; the ledger says so; the champion keeps serving
        _api(base, "POST", "/dags/bike_demand_train/clearTaskInstances", json=clear)
        states = _answer_and_settle(stack, run, None)
        assert states["approve_promotion"] == "failed" and states["promote_model"] == "upstream_failed", states
        assert _ledger_rows(stack)[-1][:2] == ("approval_timeout", str(candidate))
        assert registry.get_model_version_by_alias("bike_demand", "champion").version == champion

        # approve: promoted and served
        _api(base, "POST", "/dags/bike_demand_train/clearTaskInstances", json=clear)
        states = _answer_and_settle(
            stack, run, {"chosen_options": ["Approve"], "params_input": {"reason": "reviewed the model card"}}
        )
        assert states["promote_model"] == "success" and states["deploy_model"] == "success", (
            states,
            _approval_log(stack, run),
        )
        assert registry.get_model_version_by_alias("bike_demand", "champion").version == str(candidate)
        assert httpx.get(f"{server}/health").json()["version"] == str(candidate)
        actions = [row[0] for row in _ledger_rows(stack)[-3:]]
        assert actions == ["approved", "promote", "serve"], _ledger_rows(stack)[-4:]
    finally:
        spec_file.write_text(shipped)
