"""The embedded local stack's environment: Airflow on SQLite with LocalExecutor, MLflow on SQLite, one data root.

Used by ``make demo`` (scripts/demo.py) and by the end-to-end tests, so both run the same configuration.
No Airflow import here: it only builds environment variables.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN_FILE = "admin_token"
PRELOAD = (
    "airflow.sdk",
    "airflow.sdk.execution_time.task_runner",
    "airflow.dag_processing.dagbag",  # the task runner imports it to load the DAG file (0.6 s per task otherwise)
    "mlops_airflow.blocks",
    "pandas",
    "pyarrow.parquet",
    "sklearn.pipeline",
    "lightgbm",
    "mlflow",
    "mlflow.sklearn",
    # MLflow's SQL stores: every stage that opens the tracking or registry store imported them (1.5 s a task)
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "optuna",  # the train stage's search (1.1 s)
    "great_expectations",
    "tasks.stages",
    "tasks.ingest",
    "tasks.validate",
    "tasks.features",
    "tasks.train",
    "tasks.evaluate",
    "tasks.gate",
    "tasks.registry",
    "mlops_airflow.warm",  # fills MLflow's requirement map and imports pyplot (1-1.5 s per task otherwise)
    "mlops_airflow.gc_freeze",  # last: freezes all of the above out of each task process's garbage collections
)
"""What the scheduler's forkserver imports once for every task process (not Evidently, torch or SHAP: the
nightly monitor and a few families need them, and each would cost every component hundreds of MB)."""


def admin_token_file(state_dir: Path) -> Path:
    """The stack's model-server admin token (random, one per state dir, mode 0600), created on first use.

    Every process of the stack reads it through ``MLP_ADMIN_TOKEN_FILE``: the server checks it, the deploy
    stage sends it. Created with ``link()`` so concurrent callers all end up with the same token.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / ADMIN_TOKEN_FILE
    if not target.is_file():
        fd, tmp = tempfile.mkstemp(prefix=".admin_token.", dir=state_dir)  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
            os.link(tmp, target)
        except FileExistsError:
            pass  # another process created it first: use theirs
        finally:
            os.unlink(tmp)
    target.chmod(0o600)
    return target


SCHEDULER_IDLE_SLEEP_S = "0.2"  # compose sets the same (a unit test keeps them equal)
# Airflow's task supervisor notices its task process's exit only on socket activity or after a `select` of
# `[workers] min_heartbeat_interval` (5 s by default): when the process's sockets closed before it had exited,
# the supervisor slept 5 s more, holding its executor slot (a quarter of a backfill's tasks). 1 s bounds that;
# 15 failed heartbeats keep the default's ~15 s of tolerance for an unreachable API server.
WORKER_HEARTBEAT = {"AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1", "AIRFLOW__WORKERS__MAX_FAILED_HEARTBEATS": "15"}
MLFLOW_SERVER_JOB_EXECUTION = "false"  # the compose file's mlflow service sets the same (a unit test checks)


def local_env(state_dir: Path, api_port: int = 8080, serving_port: int = 8000) -> dict[str, str]:
    """Environment variables for every process of the local stack.

    Args:
        state_dir: Folder holding everything the stack writes (``airflow/``, ``data/``, ``logs/``).
        api_port: Airflow API server / UI port.
        serving_port: Model server port.

    Returns:
        A copy of ``os.environ`` with the stack's settings applied.
    """
    state_dir = Path(state_dir).resolve()
    airflow_home = state_dir / "airflow"
    env = dict(os.environ)
    env.update(
        {
            "ML_ENV": env.get("ML_ENV", "local"),
            "MLP_DATA_ROOT": str(state_dir / "data"),
            "MLP_SERVING_URL": f"http://127.0.0.1:{serving_port}",
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # 2 cores: more parallel task processes only thrash
            "AIRFLOW__CORE__PARALLELISM": "4",
            # each task process forks from a LocalExecutor worker, and each worker from a forkserver that
            # imported the stages' libraries once: a task starts with them loaded (Airflow 3.3's
            # [scheduler] mp_start_method / mp_forkserver_preload), instead of paying seconds of imports
            "AIRFLOW__SCHEDULER__MP_START_METHOD": env.get("AIRFLOW__SCHEDULER__MP_START_METHOD", "forkserver"),
            "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": env.get(
                "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD", ",".join(PRELOAD)
            ),
            # the scheduler sleeps this long after a loop with nothing to do (Airflow's default 1 s): a finished
            # task waited ~0.75 s on average for its successor to be scheduled; 0.2 s cuts a training run's hops
            # from ~7 s to ~2 s (`make bench`, scheduler section) for a few percent of a core while idle
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": env.get(
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", SCHEDULER_IDLE_SLEEP_S
            ),
            **{var: env.get(var, value) for var, value in WORKER_HEARTBEAT.items()},  # compose sets the same
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": env.get(
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{airflow_home / 'airflow.db'}"
            ),
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": f"http://localhost:{api_port}",
            "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET", "local-dev-only-not-a-secret"),
            "AIRFLOW__API__SECRET_KEY": env.get("AIRFLOW__API__SECRET_KEY", "local-dev-only-not-a-secret"),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(state_dir / "logs" / "airflow"),
            # Airflow's log servers (serving task and triggerer logs to the UI): not a fixed 8793/8794 when set
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": env.get("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT")
            or env.get("MLP_WORKER_LOG_PORT", "8793"),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": env.get("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT")
            or env.get("MLP_TRIGGER_LOG_PORT", "8794"),
            # the Redis on this machine: upstream announcements (spec source.events.redis_channel)
            "AIRFLOW_CONN_REDIS_DEFAULT": env.get("AIRFLOW_CONN_REDIS_DEFAULT", "redis://127.0.0.1:6379/0"),
            # the model server's admin API (POST /admin/reload): the deploy stage sends this token
            "MLP_ADMIN_TOKEN_FILE": str(admin_token_file(state_dir)),
            "GX_ANALYTICS_ENABLED": "False",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            # `mlflow server` starts a job runner by default (MLflow 3's GenAI jobs, unused here): 15 huey
            # consumer threads polling their queue took ~70 % of a core while idle, a third of this machine
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": env.get(
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", MLFLOW_SERVER_JOB_EXECUTION
            ),
            "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning",
        }
    )
    return env
