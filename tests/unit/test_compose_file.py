"""docker-compose.yaml, its local override, the images' entrypoint and health check, on any machine.

The compose files are validated against the Compose specification's JSON schema (committed in
tests/fixtures/compose-spec.json; source: github.com/compose-spec/compose-spec, schema/compose-spec.json at
commit a08f8d51631b7127ddac3d2c65537db429d0f1d0) with ``jsonschema``, loaded by a YAML loader that refuses
duplicate keys, and their service set is asserted: the file that put the redis service inside
``x-airflow.depends_on`` (loaded by PyYAML as ``redis: null``) fails here.
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.stack import (
    COMPOSE,
    LOCAL_OVERRIDE,
    SERVICES,
    StackError,
    StrictLoader,
    load_compose,
    merge,
    schema_errors,
    validate,
    write_fresh_env,
)
from tests.conftest import REPO, free_port
from tests.stack.test_compose_stack import interpolate

ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
AIRFLOW = ["airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker/postgres/Dockerfile", REPO / "docker/redis/Dockerfile"]


def _example() -> dict[str, str]:
    lines = (REPO / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def _services(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(load_compose(COMPOSE), env if env is not None else _example())["services"]


# -- the file is valid, and a broken one is refused -----------------------------------------------------------
def test_compose_files_are_valid_compose_specification() -> None:
    assert schema_errors(load_compose(COMPOSE), COMPOSE.name) == []
    assert schema_errors(load_compose(LOCAL_OVERRIDE), LOCAL_OVERRIDE.name) == []
    merged = validate([COMPOSE, LOCAL_OVERRIDE])
    assert set(merged["services"]) == SERVICES == set(validate([COMPOSE])["services"])
    # the override replaces what cannot be pulled here and keeps everything else
    assert merged["services"]["postgres"]["build"]["dockerfile"] == "docker/postgres/Dockerfile"
    assert merged["services"]["postgres"]["environment"] == load_compose(COMPOSE)["services"]["postgres"]["environment"]
    assert merged["services"]["airflow-init"]["build"]["args"]["TORCH_SOURCE"] == "cpu-wheel"


def test_the_redis_service_inside_depends_on_is_refused() -> None:
    """The bug of issue 15, rebuilt from today's file: the redis service indented into x-airflow.depends_on."""
    text = COMPOSE.read_text()
    start = text.index("  redis:\n    image:")
    block = text[start : text.index("\n\n", start) + 1]
    broken = text.replace(block, "").replace(
        "    redis: {condition: service_healthy}\n",
        "    redis: {condition: service_healthy}\n" + "\n".join("  " + line for line in block.splitlines()) + "\n",
        1,
    )
    assert yaml.safe_load(broken)["x-airflow"]["depends_on"]["redis"]["image"]  # PyYAML: last key wins, silently
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'redis'"):
        yaml.load(broken, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    # without the duplicate (the old file's exact shape): the schema refuses the service definition under depends_on
    old = broken.replace("    redis: {condition: service_healthy}\n", "", 1)
    doc = yaml.load(old, Loader=StrictLoader)  # noqa: S506
    errors = schema_errors(doc, "old")
    assert any("/depends_on: " in e and "'redis': {'image'" in e for e in errors), errors
    assert "redis" not in doc["services"]


def test_duplicate_keys_are_refused_but_merge_overrides_are_not(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("services:\n  a: {image: x}\n  a: {image: y}\n")
    with pytest.raises(StackError, match="duplicate key 'a'"):
        load_compose(f)
    f.write_text("x-e: &e {A: '1', B: '2'}\nservices:\n  a:\n    image: x\n    environment: {<<: *e, B: '3'}\n")
    assert load_compose(f)["services"]["a"]["environment"] == {"A": "1", "B": "3"}


def test_schema_and_service_set_catch_a_wrong_file(tmp_path: Path) -> None:
    doc = load_compose(COMPOSE)
    doc["services"]["mlflow"]["healthchek"] = doc["services"]["mlflow"].pop("healthcheck")  # a typo
    assert any("healthchek" in e for e in schema_errors(doc, "typo"))
    f = tmp_path / "docker-compose.yaml"
    doc = load_compose(COMPOSE)
    del doc["services"]["redis"]
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(StackError, match="depends on undefined \\['redis'\\]"):
        validate([f])


def test_merge_is_composes_override_semantics() -> None:
    base = {"services": {"a": {"image": "x", "environment": {"A": "1"}, "command": ["p", "q"]}}}
    override = {"services": {"a": {"image": "y", "command": ["r"]}, "b": {"image": "z"}}}
    assert merge(base, override) == {
        "services": {"a": {"image": "y", "environment": {"A": "1"}, "command": ["r"]}, "b": {"image": "z"}}
    }


# -- hardening ------------------------------------------------------------------------------------------------
def test_published_ports_listen_on_localhost_unless_told_otherwise() -> None:
    published = {n: s["ports"] for n, s in _services().items() if "ports" in s}
    assert set(published) == {"airflow-api-server", "mlflow", "model-server"}
    for name, ports in published.items():
        assert all(p.startswith("127.0.0.1:") for p in ports), (name, ports)
    raw = load_compose(COMPOSE)["services"]
    assert all(p.startswith("${BIND_ADDRESS:-127.0.0.1}:") for s in raw.values() for p in s.get("ports", []))
    wide = _services(_example() | {"BIND_ADDRESS": "0.0.0.0", "MLFLOW_PORT": "5999"})
    assert wide["mlflow"]["ports"] == ["0.0.0.0:5999:5999"]


def test_no_service_runs_as_root() -> None:
    services = load_compose(COMPOSE)["services"]
    assert services["postgres"]["user"] == "postgres" and services["redis"]["user"] == "redis"
    assert not [n for n, s in services.items() if str(s.get("user", "")).split(":")[0] in {"root", "0"}]
    project = re.findall(r"^USER (\S+)", (REPO / "docker/Dockerfile").read_text(), re.M)
    assert project == ["10001:10001"]  # every service of the project image runs as it (uid of the pod template)
    template = yaml.safe_load((REPO / "include/pod_templates/stage.yaml").read_text())
    assert template["spec"]["securityContext"]["runAsUser"] == 10001
    for dockerfile in DOCKERFILES[1:]:
        assert re.findall(r"^USER (\S+)", dockerfile.read_text(), re.M) in (["postgres"], ["redis"])


def test_mlflow_requires_a_login_and_every_client_has_credentials() -> None:
    services = _services()
    command = services["mlflow"]["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert "change-me" not in " ".join(command)  # no password in an argv (ps shows it): libpq reads PGPASSWORD
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == _example()["MLFLOW_ADMIN_PASSWORD"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == _example()["MLFLOW_SECRET_KEY"]
    ini = env["MLFLOW_AUTH_CONFIG_PATH"].replace("/opt/project", str(REPO))
    assert "database_uri = postgresql+psycopg2://" in Path(ini).read_text()
    clients = [n for n, s in services.items() if "MLFLOW_TRACKING_URI" in (s.get("environment") or {})]
    assert set(clients) == {*AIRFLOW, "model-server"}
    for name in clients:
        creds = services[name]["environment"]
        assert creds["MLFLOW_TRACKING_USERNAME"] == env["MLFLOW_AUTH_ADMIN_USERNAME"], name
        assert creds["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"], name


def test_the_admin_token_reaches_the_model_server_and_every_airflow_service() -> None:
    services = _services()
    for name in [*AIRFLOW, "model-server"]:
        assert services[name]["environment"]["MLP_ADMIN_TOKEN"] == _example()["MLP_ADMIN_TOKEN"], name


def test_every_secret_is_required_and_has_a_refused_placeholder() -> None:
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = _example()
    placeholders = {k for k, v in example.items() if v.startswith("change-me-")}
    assert required <= set(example), f".env.example lacks {required - set(example)}"
    assert placeholders == required - {"POSTGRES_USER"}, (placeholders, required)
    assert len(set(example[k] for k in placeholders)) == len(placeholders)  # each names one variable
    with pytest.raises(AssertionError, match="requires MLFLOW_ADMIN_PASSWORD"):
        _services({k: v for k, v in example.items() if k != "MLFLOW_ADMIN_PASSWORD"})
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_health_checks_and_dependencies() -> None:
    services = load_compose(COMPOSE)["services"]
    for name, service in services.items():
        if name != "airflow-init":
            assert service["healthcheck"]["test"], f"{name} has no health check"
        assert isinstance(service.get("command", []), list), f"{name}: command must be argv"
    for name in AIRFLOW[1:]:
        assert services[name]["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}
        assert services[name]["environment"]["MLP_WAIT_FOR_MIGRATIONS"] == "true"
    assert services["airflow-init"]["environment"]["MLP_WAIT_FOR_MIGRATIONS"] == "false"
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    # one project image, built once (by airflow-init), run by every other service of the project
    images = {n: s["image"] for n, s in services.items() if n not in ("postgres", "redis")}
    assert len(set(images.values())) == 1 and [n for n, s in services.items() if "build" in s] == ["airflow-init"]


# -- the images -----------------------------------------------------------------------------------------------
def _run_lines(dockerfile: Path) -> str:
    return re.sub(r"\\\n", " ", dockerfile.read_text())


def test_images_build_from_a_base_argument_and_the_lock_only() -> None:
    text = (REPO / "docker/Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", text, re.M) and re.search(
        r"^FROM \$\{BASE\}$", text, re.M
    )
    assert re.search(r"^ARG TORCH_SOURCE=cuda-index$", text, re.M)
    assert "requirements.lock" in text and "HEALTHCHECK" in text and "mlops-entrypoint" in text
    for dockerfile in DOCKERFILES:
        body = _run_lines(dockerfile)
        runs = "\n".join(line for line in body.splitlines() if line.startswith("RUN"))
        assert not re.search(r"https?://|--index-url|--extra-index-url|curl |wget ", runs), dockerfile
        assert "HEALTHCHECK" in body and "ENTRYPOINT" in body, dockerfile
    # the CPU wheel for local builds is copied into the context by `make stack`, never committed
    assert "docker/wheels/*.whl" in (REPO / ".gitignore").read_text()


@pytest.fixture
def sh_env() -> dict[str, str]:
    """A clean environment for the entrypoint: PATH and the project's .env.example."""
    return {"PATH": os.environ["PATH"], "MLP_ENV_EXAMPLE": str(REPO / ".env.example")}


def _entry(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ENTRYPOINT), *command], env=env, capture_output=True, text=True, timeout=30)


def test_entrypoint_refuses_every_placeholder(sh_env: dict[str, str]) -> None:
    ok = _entry(sh_env | {"AIRFLOW__API_AUTH__JWT_SECRET": "a-real-secret"}, "echo", "started")
    assert ok.returncode == 0 and ok.stdout == "started\n", ok.stderr
    for key, placeholder in _example().items():
        if not placeholder.startswith("change-me-"):
            continue
        # as compose passes it: embedded in a connection string, or alone
        env = sh_env | {"SOME_URI": f"postgresql://mlops:{placeholder}@postgres/db"}
        out = _entry(env, "echo", "started")
        assert out.returncode == 78 and "started" not in out.stdout, key
        assert f"SOME_URI still contains the .env.example placeholder of {key}" in out.stderr
        assert "refusing to start" in out.stderr


def test_entrypoint_waits_for_its_dependencies(sh_env: dict[str, str]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ok = _entry(sh_env | {"MLP_WAIT_FOR": f"127.0.0.1:{port}"}, "echo", "up")
        assert ok.returncode == 0 and ok.stdout == "up\n", ok.stderr
    closed = free_port()
    out = _entry(sh_env | {"MLP_WAIT_FOR": f"127.0.0.1:{closed}", "MLP_WAIT_TIMEOUT": "2"}, "echo", "up")
    assert out.returncode == 78 and f"127.0.0.1:{closed} did not accept connections within 2s" in out.stderr
    out = _entry(sh_env | {"MLP_WAIT_FOR": "no-port-here"}, "echo", "up")
    assert out.returncode == 78 and "is not host:port" in out.stderr


def _healthcheck() -> Any:
    spec = importlib.util.spec_from_file_location("mlops_healthcheck", REPO / "docker" / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def http_server() -> Iterator[tuple[int, list[str]]]:
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            paths.append(self.path)
            self.send_response(200 if self.path in ("/health", "/api/v2/monitor/health") else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], paths
    server.shutdown()


def test_health_check_follows_the_role(http_server: tuple[int, list[str]]) -> None:
    port, paths = http_server
    check = _healthcheck().check
    tini = ["/usr/bin/tini", "--", "mlops-entrypoint"]
    assert check([*tini, "python", "-m", "tasks", "serve", "--host", "0.0.0.0", "--port", str(port)]) == 0
    assert check([*tini, "mlflow", "server", "--app-name", "basic-auth", "--port", str(port)]) == 0
    assert check([*tini, "airflow", "api-server", "--port", str(port)]) == 0
    assert paths == ["/health", "/health", "/api/v2/monitor/health"]
    closed = str(free_port())
    assert check([*tini, "python", "-m", "tasks", "serve", "--port", closed]) == 1
    assert check([*tini, "airflow", "api-server", "--port", closed]) == 1
    assert check([*tini, "python", "-m", "tasks", "train", "--pipeline", "bike_demand"]) == 0  # a stage pod


def test_fresh_env_has_no_placeholder_left(tmp_path: Path) -> None:
    values = write_fresh_env(tmp_path / ".env", {"AIRFLOW_API_PORT": "18123"})
    assert not [k for k, v in values.items() if "change-me" in v]
    assert values["AIRFLOW_API_PORT"] == "18123" and len(values["MLFLOW_ADMIN_PASSWORD"]) >= 32
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    assert _services(values)["mlflow"]["ports"] == [f"127.0.0.1:{values['MLFLOW_PORT']}:{values['MLFLOW_PORT']}"]


def test_the_image_installs_the_locks_runtime_pins_only() -> None:
    spec = importlib.util.spec_from_file_location("runtime_requirements", REPO / "docker" / "runtime_requirements.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lock = (REPO / "requirements.lock").read_text()
    kept = module.runtime(lock)
    names = {line.split("==")[0] for line in kept}
    assert set(kept) <= set(lock.splitlines())  # the lock's own pins, versions untouched
    assert {"ruff", "mypy", "pytest", "pytest-timeout", "podman-compose", "pandas-stubs"}.isdisjoint(names)
    # needed at run time, even where a dev/test group names them too (jsonschema) or a dropped pin needs them
    assert {"apache-airflow", "torch", "mlflow", "flask-wtf", "jsonschema", "pluggy", "psycopg2-binary"} <= names
    assert len(names) > 200
    # a pin needed by both a dropped pin and a runtime one stays; one needed only by dropped ones goes
    toy = (
        "a==1\n    # via mlflow-airflow-lifecycle (pyproject.toml:dev)\n"
        "b==2\n    # via a\n"
        "c==3\n    # via\n    #   a\n    #   d\n"
        "d==4\n    # via mlflow-airflow-lifecycle (pyproject.toml)\n"
    )
    assert module.runtime(toy) == ["c==3", "d==4"]


def test_airflow_services_fork_tasks_from_the_same_preloaded_forkserver_as_the_local_stack() -> None:
    from mlops_airflow.localenv import PRELOAD, SCHEDULER_IDLE_SLEEP_S, WORKER_HEARTBEAT

    services = _services()
    for name in AIRFLOW:
        env = services[name]["environment"]
        assert env["AIRFLOW__SCHEDULER__MP_START_METHOD"] == "forkserver", name
        assert env["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"].split(",") == list(PRELOAD), name
        assert env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] == SCHEDULER_IDLE_SLEEP_S, name
        assert {var: env[var] for var in WORKER_HEARTBEAT} == WORKER_HEARTBEAT, name


def test_the_mlflow_service_runs_without_mlflow_s_job_runner() -> None:
    """The tracking server alone: MLflow 3's default job runner (huey consumers for GenAI jobs no stage uses)
    polls its queue at ~70 % of a core while idle."""
    from mlflow.environment_variables import MLFLOW_SERVER_ENABLE_JOB_EXECUTION

    from mlops_airflow.localenv import MLFLOW_SERVER_JOB_EXECUTION

    env = _services()["mlflow"]["environment"]
    assert env[MLFLOW_SERVER_ENABLE_JOB_EXECUTION.name] == MLFLOW_SERVER_JOB_EXECUTION == "false"
