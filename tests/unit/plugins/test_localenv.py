"""The local stack's environment (plugins/mlops_airflow/localenv.py): what ``make demo`` and the e2e tests run."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from mlops_airflow.localenv import REPO_ROOT, admin_token_file, local_env
from tasks.settings import get_settings, load_settings


def test_the_local_stack_token_is_random_private_and_stable_per_state_dir(tmp_path):
    first, again = admin_token_file(tmp_path / "a"), admin_token_file(tmp_path / "a")
    other = admin_token_file(tmp_path / "b")
    assert first == again and first.read_text() == again.read_text()
    assert len(first.read_text().strip()) >= 32 and first.read_text() != other.read_text()
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["admin_token"]  # no temporary file left


def test_processes_creating_the_token_at_once_all_get_the_same_one(tmp_path):
    state = tmp_path / "state"
    start = threading.Barrier(8, timeout=30)
    tokens: list[str] = []

    def create() -> None:
        start.wait()
        tokens.append(admin_token_file(state).read_text())

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(tokens) == 8 and len(set(tokens)) == 1
    assert [p.name for p in state.iterdir()] == ["admin_token"]


def test_a_token_file_left_readable_is_made_private_again(tmp_path):
    token = admin_token_file(tmp_path)
    before = token.read_text()
    token.chmod(0o644)
    assert admin_token_file(tmp_path).read_text() == before  # kept, not replaced
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No inherited override of the variables ``local_env`` only defaults."""
    for var in (
        "ML_ENV",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW_CONN_REDIS_DEFAULT",
    ):
        monkeypatch.delenv(var, raising=False)


def test_the_stack_runs_airflow_and_mlflow_under_one_state_dir_on_the_given_ports(tmp_path, clean_env):
    state = tmp_path / "state"
    env = local_env(state, api_port=18123, serving_port=18456)
    root = state.resolve()
    assert env["ML_ENV"] == "local"
    assert env["MLP_DATA_ROOT"] == str(root / "data")
    assert env["MLP_SERVING_URL"] == "http://127.0.0.1:18456"
    assert env["AIRFLOW_HOME"] == str(root / "airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{root / 'airflow' / 'airflow.db'}"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO_ROOT / "dags")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(REPO_ROOT / "plugins")
    assert (REPO_ROOT / "dags").is_dir() and (REPO_ROOT / "plugins" / "mlops_airflow").is_dir()
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"
    assert env["AIRFLOW__API__PORT"] == "18123"
    assert env["AIRFLOW__API__BASE_URL"] == "http://localhost:18123"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18123/execution/"
    assert env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] == str(root / "logs" / "airflow")
    assert env["AIRFLOW_CONN_REDIS_DEFAULT"] == "redis://127.0.0.1:6379/0"
    token = Path(env["MLP_ADMIN_TOKEN_FILE"])
    assert token == root / "admin_token" and token.is_file()  # created: the server and deploy stage read it


def test_what_the_caller_already_set_wins_over_the_local_defaults(tmp_path, clean_env, monkeypatch):
    monkeypatch.setenv("ML_ENV", "staging")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://airflow@127.0.0.1/airflow")
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "from-the-caller")
    monkeypatch.setenv("AIRFLOW_CONN_REDIS_DEFAULT", "redis://10.0.0.5:6380/2")
    monkeypatch.setenv("SOMETHING_UNRELATED", "kept")
    env = local_env(tmp_path)
    assert env["ML_ENV"] == "staging"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql://airflow@127.0.0.1/airflow"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "from-the-caller"
    assert env["AIRFLOW_CONN_REDIS_DEFAULT"] == "redis://10.0.0.5:6380/2"
    assert env["SOMETHING_UNRELATED"] == "kept"


def test_it_returns_a_copy_and_leaves_this_process_alone(tmp_path, clean_env):
    before = dict(os.environ)
    env = local_env(tmp_path / "s", api_port=18999)
    assert dict(os.environ) == before
    env["MLP_DATA_ROOT"] = "changed"
    assert os.environ.get("MLP_DATA_ROOT") != "changed"


def test_the_settings_the_stack_s_processes_load_point_at_its_data_root(tmp_path, clean_env, monkeypatch):
    env = local_env(tmp_path / "s", serving_port=18777)
    for var in ("MLP_DATA_ROOT", "MLP_SERVING_URL", "MLP_ADMIN_TOKEN_FILE", "ML_ENV"):
        monkeypatch.setenv(var, env[var])
    monkeypatch.delenv("MLP_ADMIN_TOKEN", raising=False)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    try:
        settings = load_settings("local")
        assert settings.data_root == (tmp_path / "s" / "data").resolve()
        assert settings.serving_url == "http://127.0.0.1:18777"
        assert settings.mlflow_tracking_uri == f"sqlite:///{settings.data_root / 'mlflow' / 'mlflow.db'}"
        assert settings.admin_token is not None
        assert settings.admin_token.get_secret_value() == Path(env["MLP_ADMIN_TOKEN_FILE"]).read_text().strip()
    finally:
        get_settings.cache_clear()


def test_task_processes_fork_from_a_forkserver_that_preloaded_the_stage_libraries(tmp_path, monkeypatch):
    """Airflow 3.3 applies [scheduler] mp_start_method / mp_forkserver_preload before the LocalExecutor starts."""
    import importlib.util

    from airflow.utils.process_utils import resolve_mp_start_method

    from mlops_airflow.localenv import PRELOAD

    env = local_env(tmp_path)
    assert env["AIRFLOW__SCHEDULER__MP_START_METHOD"] == "forkserver"
    preload = env["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"].split(",")
    assert preload == list(PRELOAD) and "tasks.stages" in preload and "evidently" not in preload
    assert all(importlib.util.find_spec(m) is not None for m in preload)  # a typo would be skipped in silence
    monkeypatch.setenv("AIRFLOW__SCHEDULER__MP_START_METHOD", "fork")  # an operator's choice wins
    assert local_env(tmp_path)["AIRFLOW__SCHEDULER__MP_START_METHOD"] == "fork"
    monkeypatch.setenv("AIRFLOW__SCHEDULER__MP_START_METHOD", "forkserver")  # the option exists under this name
    assert resolve_mp_start_method("scheduler") == "forkserver"


def test_the_scheduler_sleeps_briefly_after_an_idle_loop(tmp_path, monkeypatch):
    """A task's successor is scheduled within ~0.2 s of its end, not Airflow's default 1 s; an operator may differ."""
    from airflow.configuration import conf

    env = local_env(tmp_path)
    assert float(env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"]) == 0.2
    monkeypatch.setenv(
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"]
    )
    assert conf.getfloat("scheduler", "scheduler_idle_sleep_time") == 0.2  # the option Airflow reads, by this name
    monkeypatch.setenv("AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", "1")
    assert local_env(tmp_path)["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] == "1"


def _demo_script(tmp_path: Path):
    """``scripts/demo.py`` imported now (it reads its ports from the environment then), its state under tmp_path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_under_test", REPO_ROOT / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.STATE = tmp_path / "demo"  # not the repository's .local/
    return demo


def test_ports_are_settings_with_defaults_log_servers_and_the_demo_included(tmp_path, clean_env, monkeypatch):
    for var in ("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"):
        monkeypatch.delenv(var, raising=False)
    env = local_env(tmp_path)
    assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "8793"  # Airflow's own defaults
    assert env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] == "8794"
    ports = {"MLP_AIRFLOW_PORT": "18080", "MLP_MLFLOW_PORT": "15000", "MLP_SERVING_PORT": "18000"}
    ports |= {"MLP_WORKER_LOG_PORT": "18793", "MLP_TRIGGER_LOG_PORT": "18794"}
    for var, port in ports.items():
        monkeypatch.setenv(var, port)
    env = local_env(tmp_path)
    assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "18793"
    assert env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] == "18794"
    demo = _demo_script(tmp_path)
    commands = " ".join(" ".join(c) for c in demo._components(demo.env()).values())
    assert "--port 18080" in commands and "--port 15000" in commands and "--port 18000" in commands
    assert demo.API == "http://localhost:18080" and demo.SERVER == "http://127.0.0.1:18000"
    assert demo.env()["MLP_SERVING_URL"] == "http://127.0.0.1:18000"
    source = (REPO_ROOT / "scripts" / "demo.py").read_text()
    for literal in ('"8080"', '"5000"', '"8000"', ":8080", ":5000", ":8000"):
        assert source.count(literal) <= 1, literal  # only as a default


def test_airflow_plugin_discovery_imports_none_of_our_modules():
    """Airflow executes every ``.py`` under ``[core] plugins_folder`` in every task process, looking for
    AirflowPlugin classes (there are none here); through ``pods.py`` that is the Kubernetes client, 3.5 s a task.
    ``plugins/.airflowignore`` keeps ``mlops_airflow/`` out of that scan (the folder stays on ``sys.path``)."""
    from airflow.sdk._shared.module_loading import find_path_from_directory

    plugins = REPO_ROOT / "plugins"
    assert (plugins / "mlops_airflow" / "pods.py").is_file()  # the scan would find something without the ignore file
    scanned = [p for p in find_path_from_directory(str(plugins), ".airflowignore", "glob") if p.endswith(".py")]
    assert scanned == []


def test_the_demo_s_mlflow_server_runs_without_mlflow_s_job_runner(tmp_path, clean_env, monkeypatch):
    """`mlflow server` starts a job runner by default: huey consumers (15 threads) polling a queue, ~70 % of a core
    while idle on this machine, for MLflow's GenAI jobs, which no stage uses. The demo's own command, with the
    stack's environment, must start the tracking server alone."""
    import signal
    import subprocess
    import time

    import httpx
    import psutil
    from mlflow.environment_variables import MLFLOW_SERVER_ENABLE_JOB_EXECUTION

    from tests.conftest import free_port

    monkeypatch.setenv("MLP_MLFLOW_PORT", str(port := free_port()))
    demo = _demo_script(tmp_path)
    env = demo.env()
    monkeypatch.setenv(MLFLOW_SERVER_ENABLE_JOB_EXECUTION.name, env[MLFLOW_SERVER_ENABLE_JOB_EXECUTION.name])
    assert MLFLOW_SERVER_ENABLE_JOB_EXECUTION.get() is False  # MLflow reads the variable by this name as "off"
    (Path(env["MLP_DATA_ROOT"]) / "mlflow").mkdir(parents=True)
    log = open(tmp_path / "mlflow.log", "wb")  # noqa: SIM115 - owned by the child
    server = subprocess.Popen(demo._components(env)["mlflow-ui"], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health within 120 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        time.sleep(2)  # MLflow launches its job runner right after the server process
        tree = psutil.Process(server.pid).children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in tree]
        assert commands, "the server has no worker process: the check below would see nothing"
        assert not [c for c in commands if "huey" in c], commands
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()


def test_a_task_s_supervisor_looks_for_its_process_s_exit_every_second(tmp_path, clean_env):
    """Airflow's supervisor waits in a ``select`` of at most ``[workers] min_heartbeat_interval`` for its task
    process; a process whose sockets closed before it exited was noticed up to 5 s late (the default), holding
    an executor slot: a quarter of a 28-day backfill's tasks did. The stack's setting, read where Airflow reads it."""
    import subprocess
    import sys

    from mlops_airflow.localenv import WORKER_HEARTBEAT

    env = local_env(tmp_path)
    code = (
        "from airflow.sdk.execution_time import supervisor as s; "
        "print(s.MIN_HEARTBEAT_INTERVAL, s.MAX_FAILED_HEARTBEATS)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["1", "15"]
    assert WORKER_HEARTBEAT == {
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        "AIRFLOW__WORKERS__MAX_FAILED_HEARTBEATS": "15",  # 15 x 1 s: the default's 3 x 5 s of API tolerance
    }
