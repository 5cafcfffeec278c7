"""The model server never hangs on a dependency, and no credential leaves in an answer, a log or the ledger.

Real processes: ``python -m tasks serve`` and, once it is "back", a real ``mlflow server`` over a copy of the
session's champion store, reached through a tracking URI that carries a sentinel password (MLflow without
auth ignores it; every client sends it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlops_airflow.localenv import MLFLOW_SERVER_JOB_EXECUTION
from tasks.ledger import PromotionLedger
from tasks.settings import get_settings
from tests.conftest import REPO, free_port, fresh_postgres_database
from tests.unit.conftest import FIXTURES
from tests.unit.tasks.conftest import raw_rows

P = "bike_demand"
SENTINEL = "Sentinel-" + secrets.token_hex(8)  # a password that must never be seen again
BIN = Path(sys.executable).parent
INPUT_DROP = ["instant", "casual", "registered", "cnt"]


class MlflowLater:
    """An MLflow tracking server over a copy of the champion store, on a port chosen now, started when asked."""

    def __init__(self, root: Path, logs: Path) -> None:
        self.root, self.logs = root, logs
        self.port = free_port()
        self.uri = f"http://mlp:{SENTINEL}@127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.proc is not None:
            return
        log = open(self.logs / "mlflow-server.log", "wb")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow' / 'mlflow.db'}",
             "--default-artifact-root", (self.root / "mlartifacts").as_uri(), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": MLFLOW_SERVER_JOB_EXECUTION}),
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, (self.logs / "mlflow-server.log").read_text()[-3000:]
            time.sleep(0.5)
        pytest.fail("mlflow server did not start within 180 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return env | extra


@pytest.fixture(scope="module")
def world(champion_store: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A copy of the champion store's registry (artifacts stay put), a log folder, MLflow (not started yet)."""
    root = tmp_path_factory.mktemp("outage") / "data"
    (root / "mlflow").mkdir(parents=True)
    shutil.copyfile(champion_store["root"] / "mlflow" / "mlflow.db", root / "mlflow" / "mlflow.db")
    logs = root.parent / "logs"
    logs.mkdir()
    mlflow = MlflowLater(root, logs)
    try:
        yield {"root": root, "logs": logs, "mlflow": mlflow, "champion": champion_store}
    finally:
        mlflow.stop()


class Server:
    """``python -m tasks serve`` with the given environment; its log in the world's log folder."""

    def __init__(self, world: dict[str, Any], name: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = world["logs"] / f"{name}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tasks", "serve", "--pipelines", P, "--port", str(self.port)],
            env=_env({"MLP_DATA_ROOT": str(world["root"])} | env), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def health(self) -> tuple[dict[str, Any], float]:
        t0 = time.monotonic()
        reply = httpx.get(f"{self.url}/health", timeout=1)
        return reply.json(), time.monotonic() - t0

    def wait_for(self, what: str, check: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                body, _ = self.health()
                if check(body["models"][P]):
                    return body
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the server did not report {what} within {timeout:.0f}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


def _admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {get_settings().admin_token.get_secret_value()}"}


def _rows() -> list[dict[str, Any]]:
    return raw_rows(FIXTURES, "2012-06-18", "2012-06-18").drop(columns=INPUT_DROP).head(3).to_dict("records")


def test_an_mlflow_outage_is_reported_at_once_and_the_model_appears_once_mlflow_is_back(world):
    mlflow = world["mlflow"]
    server = Server(world, "server-outage", {"MLFLOW_TRACKING_URI": mlflow.uri})
    bodies: list[str] = []
    try:
        # listening at once, while MLflow is down (it used to be silent for minutes): every /health answers in < 1 s
        body = server.wait_for("the failed load", lambda m: m["state"] == "failed", timeout=90)
        answered_after = time.monotonic() - server.started
        assert answered_after < 60, f"/health said why only after {answered_after:.0f}s"
        latencies = [server.health()[1] for _ in range(5)]
        assert max(latencies) < 1.0, latencies
        model = body["models"][P]
        assert body["status"] == "failed" and model["version"] is None and model["retry_in_s"] is not None
        assert f"MLflow at http://mlp:***@127.0.0.1:{mlflow.port} unreachable" in model["error"], model
        assert "no champion" not in json.dumps(body)  # an outage is not "no champion yet"
        bodies.append(json.dumps(body))

        predict = httpx.post(f"{server.url}/predict", json={"instances": _rows()}, timeout=5)
        assert predict.status_code == 503 and predict.json()["error"] == "model_unavailable"
        assert int(predict.headers["Retry-After"]) > 0 and "unreachable" in predict.json()["detail"]
        reload = httpx.post(f"{server.url}/admin/reload", json={"model": P, "actor": "t"}, headers=_admin(), timeout=60)
        assert reload.status_code == 503 and reload.json()["error"] == "mlflow_unavailable", reload.text
        bodies += [predict.text, reload.text]

        mlflow.start()  # MLflow is back: the background loader retries with backoff and serves the champion
        body = server.wait_for("the champion serving", lambda m: m["state"] == "serving", timeout=120)
        assert body["status"] == "ok" and body["version"] == world["champion"]["registered"]["version"]
        served = httpx.post(f"{server.url}/predict", json={"instances": _rows()}, timeout=30)
        assert served.status_code == 200 and len(served.json()["predictions"]) == 3
        bodies.append(served.text)
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "unreachable" in log and SENTINEL not in log
    assert all(SENTINEL not in b for b in bodies)
    [refused] = PromotionLedger(f"sqlite:///{world['root'] / 'registry' / 'ledger.sqlite'}").read(P)
    assert refused.action == "serve_refused" and refused.actor == "t via admin token"
    assert "mlp:***@127.0.0.1" in refused.reason and SENTINEL not in json.dumps(refused.to_dict())


@pytest.fixture
def pg_ledger() -> Iterator[str]:
    """A fresh PostgreSQL database for the ledger, reached with the sentinel as password (trust auth ignores it)."""
    with fresh_postgres_database("mlp_sentinel") as url:
        user, rest = url.removeprefix("postgresql://").split("@", 1)
        yield f"postgresql://{user}:{SENTINEL}@{rest}"


def _cli(*args: str, env: dict[str, str], result: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tasks", *args] + (["--result", str(result)] if result else [])
    return subprocess.run(argv, env=_env(env), cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.needs_postgres
def test_the_sentinel_password_appears_in_no_log_body_manifest_or_ledger_row(world, pg_ledger, tmp_path):
    """Sentinel in the MLflow URI and the ledger (database) URI; exercise refusals and failures everywhere."""
    from mlflow import MlflowClient

    mlflow = world["mlflow"]
    mlflow.start()
    seen: list[str] = []
    env = {"MLFLOW_TRACKING_URI": mlflow.uri, "MLP_LEDGER_URI": pg_ledger, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    client = MlflowClient(mlflow.uri, mlflow.uri)
    v1 = client.get_model_version_by_alias(P, "champion")
    logged = v1.model_id or v1.source.removeprefix("models:/")  # the logged model (MLflow 3) behind v1
    candidate = client.create_model_version(P, v1.source, v1.run_id, {"gate.passed": "False"}, model_id=logged)
    client.set_registered_model_alias(P, "challenger", candidate.version)

    server = Server(world, "server-sentinel", env)
    try:
        server.wait_for("the champion serving", lambda m: m["state"] == "serving", timeout=120)
        for body in (
            {"model": P, "version": candidate.version, "actor": f"mallory {mlflow.uri}"},  # policy: 403
            {"model": P, "version": "999", "force": True, "reason": f"see {pg_ledger}"},  # no such version: 409
            {"model": P, "version": candidate.version, "force": True, "reason": "drill"},  # forced: served
        ):
            reply = httpx.post(f"{server.url}/admin/reload", json=body, headers=_admin(), timeout=60)
            assert reply.status_code in (200, 403, 409), reply.text
            seen.append(reply.text)
        seen += [server.health()[0].__repr__(), httpx.get(f"{server.url}/openapi.json").text]
    finally:
        server.stop()
    seen.append(server.log_path.read_text())

    # the CLI: a stage failing on an unreachable MLflow, and on an unreachable ledger (database)
    down = {
        "MLFLOW_TRACKING_URI": f"http://mlp:{SENTINEL}@127.0.0.1:{free_port()}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    data = {"MLP_DATA_ROOT": str(world["champion"]["root"])}  # the raw partitions are there: plan asks MLflow
    plan = _cli("plan_training", "--pipeline", P, env=down | data, result=tmp_path / "p.json")
    assert plan.returncode == 1 and "unreachable" in plan.stderr, plan.stderr
    manifest = (tmp_path / "p.json").read_text()
    assert json.loads(manifest)["permanent"] is False  # an outage: retrying may help
    dead_ledger = {"MLP_LEDGER_URI": f"postgresql://mlp:{SENTINEL}@127.0.0.1:{free_port()}/ledger"}
    ledger = _cli("ledger", env=dead_ledger)
    assert ledger.returncode == 1 and "cannot open the promotion ledger at postgresql://mlp:***@" in ledger.stderr
    rollback = _cli("rollback_model", "--pipeline", P, env=dead_ledger | {"MLP_DATA_ROOT": str(world["root"])})
    assert rollback.returncode == 1 and "promotion ledger" in rollback.stderr
    seen += [plan.stdout, plan.stderr, manifest, ledger.stdout, ledger.stderr, rollback.stdout, rollback.stderr]

    rows = PromotionLedger(pg_ledger).read(P)
    assert [r.action for r in rows] == ["serve_refused", "serve_refused", "serve"]
    assert (
        rows[0].actor.startswith("mallory http://mlp:***@127.0.0.1")
        and "postgresql://" in rows[1].details["requested_reason"]
    )
    seen += [json.dumps(r.to_dict()) for r in rows]
    seen += [p.read_text(errors="replace") for p in world["logs"].glob("*.log")]
    leaks = [s[max(0, s.find(SENTINEL) - 200) : s.find(SENTINEL) + 50] for s in seen if SENTINEL in s]
    assert not leaks, leaks
