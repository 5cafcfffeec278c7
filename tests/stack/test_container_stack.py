"""docker-compose.yaml run by the container engine: images built, the pipeline through the scheduler in containers.

The compose file and its local override (PostgreSQL and Redis built from Debian's packages, since no
registry is reachable here) are validated, built and started by podman-compose (or Docker Compose) under a
project name of this test's own, with free ports and a fresh ``.env``: PostgreSQL, Redis, Airflow 3
(api-server, scheduler, dag-processor, triggerer), MLflow with basic auth, the model server. The
bike-demand pipeline then runs through the scheduler inside the containers: a backfill ingests a few days,
the asset-triggered training run trains, gates, registers and deploys. The champion must be in MLflow's
PostgreSQL tables (read with psql inside the postgres container) and served over HTTP by the model-server
container. Everything the test started is removed: containers, volumes, network. The project image keeps
its fixed tag as the build cache (tests/containers.py); the PostgreSQL and Redis images are small and cached.

Skipped with the reason where no container engine runs; under CI=true that is a failure.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import httpx
import pytest

from scripts.stack import COMPOSE, LOCAL_OVERRIDE, SERVICES, Stack, StackError, validate, write_fresh_env
from tests.conftest import REPO, SHARED, free_port, write_spec
from tests.containers import TEST_IMAGE, container_engine, drop_replaced, image_id, stage_torch_wheel

# a cold first test builds every image inside its fixture (minutes): above pytest's 900 s default
pytestmark = [pytest.mark.e2e, pytest.mark.needs_data, pytest.mark.needs_containers, pytest.mark.timeout(2400)]
DAYS = [f"2011-06-{d:02d}" for d in range(1, 21)]
LOCAL_IMAGES = "localhost/mlops-test"  # the override's PostgreSQL and Redis images: <prefix>/postgres:15, /redis:7


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    engine = container_engine()
    tmp = tmp_path_factory.mktemp("containers")
    ports = {"AIRFLOW_API_PORT": free_port(), "MLFLOW_PORT": free_port(), "MODEL_SERVER_PORT": free_port()}
    env = write_fresh_env(
        tmp / ".env",
        {
            **{k: str(v) for k, v in ports.items()},
            "AIRFLOW_ALL_ADMINS": "True",  # the test drives the REST API without a login
            "AIRFLOW_PARALLELISM": "4",
            "MLOPS_IMAGE": TEST_IMAGE,
            "LOCAL_IMAGE_PREFIX": LOCAL_IMAGES,
            "SHARED_DATASETS_HOST": str(SHARED),
            "PIPELINES_DIR": "/data/specs",  # the test's 20-day spec, written into the shared volume below
        },
    )
    stack = Stack(engine, [COMPOSE, LOCAL_OVERRIDE], tmp / ".env", project=f"mlpct{secrets.token_hex(3)}")
    validate(stack.files)
    stage_torch_wheel()  # the local build's CPU torch wheel into the build context (not only after the pod tests)
    built = (TEST_IMAGE, f"{LOCAL_IMAGES}/postgres:15", f"{LOCAL_IMAGES}/redis:7")
    before = {ref: image_id(engine, ref) for ref in built}
    timings: dict[str, float] = {}
    try:
        started = time.monotonic()
        stack.compose("build", timeout=2400)
        timings["build_s"] = time.monotonic() - started
        for ref, old in before.items():
            drop_replaced(engine, ref, old)
        # the test's 20-day spec into the shared volume before any service reads PIPELINES_DIR (a one-off
        # container of the model server's service, which creates the project's volume as `up` will find it)
        spec = base64.b64encode((write_spec(tmp / "specs") / "bike_demand.yaml").read_bytes()).decode()
        write = f"mkdir -p /data/specs && echo {spec} | base64 -d > /data/specs/bike_demand.yaml"
        stack.compose("run", "--rm", "--no-deps", "-T", "-e", "MLP_WAIT_FOR=", "model-server", "sh", "-c", write)
        stack.up(timeout=600)
        stack.wait_healthy(timeout=900)
        timings["healthy_s"] = time.monotonic() - started
        containers = {c["service"]: c["name"] for c in stack.containers()}
        yield {
            "stack": stack,
            "containers": containers,
            "env": env,
            "urls": {
                "airflow": f"http://127.0.0.1:{ports['AIRFLOW_API_PORT']}",
                "mlflow": f"http://127.0.0.1:{ports['MLFLOW_PORT']}",
                "server": f"http://127.0.0.1:{ports['MODEL_SERVER_PORT']}",
            },
            "timings": timings,
        }
    finally:
        with suppress(StackError, subprocess.TimeoutExpired):
            logs = tmp / "logs"
            logs.mkdir(exist_ok=True)
            for c in stack.containers():
                (logs / f"{c['service']}.log").write_text(stack.logs(c["id"], tail=400))
        stack.compose("down", "-v", timeout=600, check=False)
        left = [c["name"] for c in stack.containers()]
        volumes = engine.cli("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={stack.project}")
        assert not left and not volumes.split(), f"left behind: {left} {volumes.split()}"


def _exec(stack: Stack, container: str, *argv: str, stdin: str | None = None, timeout: float = 300) -> str:
    out = subprocess.run(
        [stack.engine.name, "exec", "-i", container, *argv],
        input=stdin, env=stack.engine.env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, f"{' '.join(argv)} in {container}: {(out.stdout + out.stderr)[-3000:]}"
    return out.stdout


def _api(base: str, method: str, path: str, **kw: Any) -> Any:
    reply = httpx.request(method, f"{base}/api/v2{path}", timeout=30, **kw)
    assert reply.status_code < 400, f"{method} {path}: {reply.status_code} {reply.text}"
    return reply.json()


def _wait_until(what: str, check: Any, timeout: float, stack: dict[str, Any]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(5)
    scheduler = stack["stack"].logs(stack["containers"]["airflow-scheduler"], tail=80)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n--- scheduler ---\n{scheduler}")


def test_every_service_is_healthy_and_none_runs_as_root(stack: dict[str, Any]) -> None:
    engine, containers = stack["stack"].engine, stack["containers"]
    assert set(containers) == SERVICES
    running = {c["service"]: c for c in stack["stack"].containers()}
    assert running["airflow-init"]["status"] == "exited" and running["airflow-init"]["exit_code"] == 0
    for service, name in containers.items():
        if service == "airflow-init":
            user = engine.cli("inspect", "--format", "{{.Config.User}}", name).strip()
            assert user not in ("", "0", "root", "0:0"), user
            continue
        assert running[service]["health"] == "healthy", running[service]
        assert _exec(stack["stack"], name, "id", "-u").strip() != "0", f"{service} runs as root"
    # published ports answer on the loopback address only (BIND_ADDRESS defaults to 127.0.0.1)
    ports = engine.cli("port", containers["mlflow"]).split()
    assert ports and all(p.startswith("127.0.0.1:") for p in ports if ":" in p), ports


def test_the_image_refuses_a_placeholder_secret(stack: dict[str, Any]) -> None:
    engine = stack["stack"].engine
    lines = (REPO / ".env.example").read_text().splitlines()
    example = dict(line.split("=", 1) for line in lines if "=" in line and line[0] != "#")
    refused = subprocess.run(
        [engine.name, "run", "--rm", "-e", f"MLFLOW_TRACKING_PASSWORD={example['MLFLOW_ADMIN_PASSWORD']}",
         TEST_IMAGE, "python", "-c", "print('started')"],
        env=engine.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 78 and "started" not in refused.stdout, refused
    assert "MLFLOW_TRACKING_PASSWORD still contains the .env.example placeholder of MLFLOW_ADMIN_PASSWORD" in (
        refused.stderr
    )
    assert "refusing to start" in refused.stderr


def test_pipeline_runs_through_the_scheduler_in_containers(stack: dict[str, Any]) -> None:
    base, mlflow, server = stack["urls"]["airflow"], stack["urls"]["mlflow"], stack["urls"]["server"]
    containers = stack["containers"]
    # upstream delivers the days into the landing zone (the stage CLI inside the scheduler's container)
    args = json.dumps({"start": DAYS[0], "end": DAYS[-1]})
    _exec(stack["stack"], containers["airflow-scheduler"], "python", "-m", "tasks", "replay", "--pipeline",
          "bike_demand", "--args", args)  # fmt: skip

    def parsed() -> bool:
        dags = {d["dag_id"] for d in _api(base, "GET", "/dags")["dags"]}
        return {"bike_demand_ingest", "bike_demand_train"} <= dags

    _wait_until("the DAGs from the test's spec to be parsed", parsed, 240, stack)
    for dag_id in ("bike_demand_ingest", "bike_demand_train"):
        _api(base, "PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    _api(base, "POST", "/backfills", json={
        "dag_id": "bike_demand_ingest", "from_date": f"{DAYS[0]}T00:00:00Z", "to_date": f"{DAYS[-1]}T00:00:00Z",
        "max_active_runs": 4, "reprocess_behavior": "none",
    })  # fmt: skip

    def runs(dag_id: str) -> list[dict[str, Any]]:
        return _api(base, "GET", f"/dags/{dag_id}/dagRuns", params={"limit": 200})["dag_runs"]

    def ingested() -> list[dict[str, Any]] | None:
        backfill = [r for r in runs("bike_demand_ingest") if r["run_type"] == "backfill"]
        return backfill if len([r for r in backfill if r["state"] in ("success", "failed")]) == len(DAYS) else None

    backfilled = _wait_until(f"{len(DAYS)} backfilled ingest runs", ingested, 600, stack)
    assert {r["state"] for r in backfilled} == {"success"}, [(r["dag_run_id"], r["state"]) for r in backfilled]

    def deployed() -> dict[str, str] | None:
        for run in runs("bike_demand_train"):
            if run["state"] == "success":
                tis = _api(base, "GET", f"/dags/bike_demand_train/dagRuns/{run['dag_run_id']}/taskInstances")
                states = {t["task_id"]: t["state"] for t in tis["task_instances"]}
                if states.get("deploy_model") == "success":
                    return states
        return None

    states = _wait_until("a training run that deploys", deployed, 600, stack)
    assert all(states[t] == "success" for t in ("validate_data", "train_model", "gate_model", "register_model"))
    train_runs = {r["dag_run_id"] for r in runs("bike_demand_train")}

    # MLflow asks who calls; the services signed in with the credentials from .env
    search = f"{mlflow}/api/2.0/mlflow/registered-models/search"
    assert httpx.get(search, timeout=30).status_code == 401
    password = stack["env"]["MLFLOW_ADMIN_PASSWORD"]
    reply = httpx.get(f"{mlflow}/api/2.0/mlflow/registered-models/alias", timeout=30, auth=("admin", password),
                      params={"name": "bike_demand", "alias": "champion"})  # fmt: skip
    assert reply.status_code == 200, reply.text
    champion = reply.json()["model_version"]
    assert {t["key"]: t["value"] for t in champion["tags"]}["airflow.run_id"] in train_runs

    # the champion is in MLflow's PostgreSQL tables, and the promotion in the ledger beside them
    user = stack["env"]["POSTGRES_USER"]
    rows = _exec(stack["stack"], containers["postgres"], "psql", "-U", user, "-d", "mlflow", "-At", "-F", "|", "-c",
                 "SELECT name, alias, version FROM registered_model_aliases")  # fmt: skip
    assert f"bike_demand|champion|{champion['version']}" in rows.splitlines(), rows
    ledger = _exec(stack["stack"], containers["postgres"], "psql", "-U", user, "-d", "mlflow", "-At", "-F", "|", "-c",
                   "SELECT action, to_version FROM promotion_ledger WHERE pipeline = 'bike_demand'")  # fmt: skip
    # the last switch is the promotion; the model server then records that it serves that version
    lines = ledger.splitlines()
    switches = [line for line in lines if not line.startswith(("serve|", "serve_refused|"))]
    assert switches[-1] == f"promote|{champion['version']}", ledger
    assert f"serve|{champion['version']}" in lines[lines.index(switches[-1]) :], ledger

    # and the model-server container serves it over HTTP
    health = httpx.get(f"{server}/health", timeout=30).json()
    assert health["version"] == str(champion["version"]), health
    import pandas as pd

    rows_in = pd.read_csv(SHARED / "bike_sharing_hour.csv.gz").query("dteday == '2011-06-21'")
    instances = rows_in.drop(columns=["instant", "casual", "registered", "cnt"]).to_dict("records")
    reply = httpx.post(f"{server}/predict", json={"instances": instances}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["predictions"]) == 24 and reply.json()["model_version"] == str(champion["version"])
    print(f"container stack timings: {stack['timings']}")
