"""Readiness: ``GET /ready`` answers 200 only when the server serves a smoke-tested model at every pinned version.

Against the real app with the session's trained champion (tests/unit/tasks/conftest.py); the probe command
(``python -m tasks.serving.ready``) asks the same route.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tasks.serving.app import create_app
from tasks.serving.ready import PINS_ENV, main, not_ready, pinned
from tasks.settings import get_settings
from tests.conftest import free_port

P = "bike_demand"


def _ready(client: TestClient) -> tuple[int, dict[str, Any]]:
    reply = client.get("/ready")
    if reply.status_code == 503:
        assert reply.headers["Retry-After"]
    return reply.status_code, reply.json()


def test_the_rule_needs_the_default_model_served_and_every_pinned_version():
    serving = {"state": "serving", "version": "3"}
    models = {P: serving, "adult_income": {"state": "serving", "version": "7"}}
    assert not_ready(P, models, {}) is None and not_ready(P, models, {P: "3", "adult_income": "7"}) is None
    assert not_ready(P, models, {P: "4"}) == ("version_not_pinned", f"{P} serves v3 while v4 is pinned")
    assert not_ready(P, {P: {"state": "loading"}}, {})[0] == "model_loading"
    assert not_ready(P, models | {"adult_income": {"state": "no_champion"}}, {"adult_income": "7"})[0] == "no_champion"
    failed = {"state": "failed", "error": "smoke test failed: 3 of 3 rows differ", "smoke_test_failed": True}
    assert not_ready(P, {P: failed}, {}) == ("smoke_test_failed", f"{P} is not served: {failed['error']}")
    assert not_ready(P, {P: failed | {"smoke_test_failed": False}}, {})[0] == "model_unavailable"
    assert not_ready(P, models, {"nope": "1"})[0] == "unknown_model"
    assert pinned({PINS_ENV: '{"bike_demand": 3}'}) == {P: "3"} and pinned({}) == {}
    with pytest.raises(ValueError, match="JSON object"):
        pinned({PINS_ENV: '["3"]'})


def test_not_ready_before_a_model_is_loaded_while_health_answers(use_champion_store, monkeypatch):
    monkeypatch.delenv(PINS_ENV, raising=False)
    client = TestClient(create_app(get_settings(), [P]))  # lifespan not run: the champion is still "loading"
    status, body = _ready(client)
    assert (status, body["error"]) == (503, "model_loading") and "no model loaded yet" in body["detail"]
    assert client.get("/health").status_code == 200  # liveness: the process answers


def test_not_ready_without_a_champion(data_root, monkeypatch):
    monkeypatch.delenv(PINS_ENV, raising=False)
    with TestClient(create_app(get_settings(), [P])) as client:
        assert client.app.state.service.wait_settled(60)
        status, body = _ready(client)
        assert (status, body["error"]) == (503, "no_champion") and "no champion yet" in body["detail"]


def test_ready_only_when_serving_the_pinned_version(use_champion_store, monkeypatch):
    version = use_champion_store["registered"]["version"]
    other = str(int(version) + 1)
    monkeypatch.setenv(PINS_ENV, json.dumps({P: version}))
    with TestClient(create_app(get_settings(), [P])) as client:
        assert client.app.state.service.wait_settled(120)
        status, body = _ready(client)
        assert status == 200 and body == {
            "status": "ready",
            "model": P,
            "versions": {P: version},
            "pinned": {P: version},
        }
        # a new pod of a rollout that pins another version: serving the old one is not ready
        monkeypatch.setenv(PINS_ENV, json.dumps({P: other}))
        status, body = _ready(client)
        assert (status, body) == (
            503,
            {"detail": f"{P} serves v{version} while v{other} is pinned", "error": "version_not_pinned"},
        )
        monkeypatch.setenv(PINS_ENV, "")  # nothing pinned: serving the champion is ready
        assert _ready(client)[0] == 200
        monkeypatch.setenv(PINS_ENV, "[1]")
        status, body = _ready(client)
        assert (status, body["error"]) == (503, "bad_pins") and "JSON object" in body["detail"]


@pytest.fixture
def tampered_champion(champion_store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private copy of the champion store whose champion is the same model with a smoke sample that expects
    other predictions than the model makes (a served environment that does not reproduce evaluation)."""
    import mlflow

    from tasks.names import EXPECTED_COLUMN, SMOKE_SAMPLE
    from tasks.registry import champion
    from tasks.tracking import client, use_store

    root = tmp_path / "data"
    (root / "mlflow").mkdir(parents=True)
    shutil.copyfile(champion_store["root"] / "mlflow" / "mlflow.db", root / "mlflow" / "mlflow.db")
    monkeypatch.setenv("MLP_DATA_ROOT", str(root))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", PINS_ENV):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    use_store(settings)
    v1 = champion(settings, P)
    sample_path = mlflow.artifacts.download_artifacts(
        run_id=v1.mlflow_run_id, artifact_path=SMOKE_SAMPLE, dst_path=str(tmp_path / "dl")
    )
    sample = pd.read_parquet(sample_path)
    sample[EXPECTED_COLUMN] += 1.0
    tampered = tmp_path / "holdout_sample.parquet"
    sample.to_parquet(tampered)
    mlflow_client = client(settings)
    experiment = mlflow.create_experiment("tampered-smoke", artifact_location=(root / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifact(str(tampered), artifact_path=SMOKE_SAMPLE.rsplit("/", 1)[0])
    source = mlflow_client.get_model_version(P, v1.version).source
    version = str(mlflow_client.create_model_version(P, source, run_id=run.info.run_id).version)
    mlflow_client.set_registered_model_alias(P, "champion", version)
    yield version
    get_settings.cache_clear()


def test_not_ready_when_the_champion_fails_its_smoke_test(tampered_champion, monkeypatch):
    monkeypatch.setenv(PINS_ENV, json.dumps({P: tampered_champion}))
    with TestClient(create_app(get_settings(), [P])) as client:
        assert client.app.state.service.wait_settled(120)
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["models"][P]["state"] == "failed"
        status, body = _ready(client)
        assert (status, body["error"]) == (503, "smoke_test_failed"), body
        assert f"{P} (v{tampered_champion} pinned) is not served: smoke test failed" in body["detail"]


def test_an_outage_after_a_failed_smoke_test_reads_model_unavailable(data_root, monkeypatch):
    """``smoke_test_failed`` says why the *last* load failed: an MLflow outage (or an unexpected error) after an
    earlier smoke-test failure is ``model_unavailable``, not a smoke test that did not run."""
    from tasks.serving import app as serving
    from tasks.serving.hygiene import ApiError

    monkeypatch.delenv(PINS_ENV, raising=False)
    loads = iter(
        [
            serving.SmokeTestError("smoke test failed: 3 of 3 rows differ"),
            serving.ModelUnavailableError("MLflow did not answer"),
            serving.SmokeTestError("smoke test failed: 3 of 3 rows differ"),
            RuntimeError("the disk is full"),
        ]
    )

    def load_version(*args: Any, **kwargs: Any) -> Any:
        raise next(loads)

    monkeypatch.setattr(serving, "load_version", load_version)
    service = serving.ModelService(get_settings(), [P])

    def reason() -> str:
        service._load_champion(P)
        with pytest.raises(ApiError) as refused:
            service.ready()
        return refused.value.error

    try:
        assert [reason() for _ in range(4)] == [
            "smoke_test_failed",
            "model_unavailable",
            "smoke_test_failed",
            "model_unavailable",
        ]
    finally:
        service.stop()


def test_the_probe_command_exits_0_only_when_ready_answers_200(capsys):
    answer: dict[str, Any] = {"status": 200, "body": {"status": "ready"}}

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = json.dumps(answer["body"]).encode()
            self.send_response(answer["status"])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/ready"
    try:
        assert main(url) == 0
        answer.update(status=503, body={"detail": f"{P} serves v3 while v4 is pinned", "error": "version_not_pinned"})
        assert main(url) == 1 and f"not ready: {P} serves v3 while v4 is pinned" in capsys.readouterr().err
    finally:
        server.shutdown()
    assert main(url, timeout_s=1) == 1 and "not ready" in capsys.readouterr().err  # nothing listening
