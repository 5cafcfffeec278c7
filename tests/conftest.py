"""Shared fixtures. Airflow reads its configuration at import time, so the test session's Airflow
environment (a private AIRFLOW_HOME on SQLite) is set here, before any test imports airflow."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops_airflow.localenv import local_env

_SESSION_STATE = Path(tempfile.mkdtemp(prefix="mlp-tests-"))
if os.environ.get("PYTEST_XDIST_WORKER") and "/mlp-tests-" in os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", ""):
    # an xdist worker inherits the controller's environment, which this module set for the controller's own
    # session: local_env keeps an Airflow DB URL it finds, and every worker would share the controller's
    del os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
os.environ.update(local_env(_SESSION_STATE, api_port=18080, serving_port=18000))
# the shipped specs search 15-20 trials per training; tests (and the Airflow processes they start) run 3
os.environ.setdefault("MLP_SEARCH_MAX_TRIALS", "3")

from tasks.settings import get_settings  # noqa: E402 - after the environment is set
from tasks.spec import PipelineSpec, load_spec  # noqa: E402
from tasks.storage import DataLayout  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def session_state() -> Path:
    """The session's state folder (Airflow home, default data root)."""
    return _SESSION_STATE


def forget_mlflow_store() -> None:
    """Drop MLflow's module-level tracking and registry URIs and the ``MLFLOW_*`` variables it wrote for them."""
    import mlflow

    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(var, None)


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, empty data root (and MLflow store) for one test."""
    root = tmp_path / "data"
    monkeypatch.setenv("MLP_DATA_ROOT", str(root))
    # MLflow's set_tracking_uri/set_registry_uri write these into os.environ: never inherit a previous test's store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    if "mlflow" in sys.modules:  # and its module-level URIs: a test in this worker may have set them
        forget_mlflow_store()
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


@pytest.fixture
def layout(data_root: Path) -> DataLayout:
    """Layout of the test's data root."""
    return DataLayout(data_root)


@pytest.fixture(scope="session")
def spec() -> PipelineSpec:
    """The real bike-demand spec."""
    return load_spec("bike_demand")


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """The session's Airflow metadata DB (SQLite under the session state), migrated once."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def write_spec(
    folder: Path,
    landing_timeout_hours: float | None = None,
    events: dict[str, Any] | None = None,
    **training: Any,
) -> Path:
    """The shipped bike-demand spec with a 20-day window (fast tests), optionally other training settings.

    ``events`` replaces ``source.events`` (the shipped Redis channel is shared by everything on this machine).
    Returns the folder, ready for ``MLP_PIPELINES_DIR``.
    """
    import yaml

    spec = yaml.safe_load((REPO / "config" / "pipelines" / "bike_demand.yaml").read_text())
    if "model" in training and "search" not in training:
        spec["training"].pop("search", None)  # the shipped search space is for the shipped model's family
    spec["training"] |= {"window_days": 20, "holdout_days": 4, "min_partitions": 15, **training}
    spec["monitoring"] |= {"window_days": 3}
    spec["source"]["events"] = events or {}
    cap_search(spec)
    if landing_timeout_hours is not None:
        spec["landing_timeout_hours"] = landing_timeout_hours
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bike_demand.yaml").write_text(yaml.safe_dump(spec))
    return folder


def cap_search(spec: dict[str, Any], trials: int = 3) -> dict[str, Any]:
    """A spec dict whose search runs at most ``trials`` trials: the stack tests start their own processes and
    containers, which do not inherit this process's MLP_SEARCH_MAX_TRIALS."""
    search = spec.get("training", {}).get("search")
    if search:
        search["trials"] = min(trials, search.get("trials") or trials)
    return spec


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, timeout_s: float = 60) -> dict[str, Any]:
    """Poll ``<url>/health`` until it answers 200 and, for our model server, no model is still ``loading`` (it
    loads its champions in the background); returns the answer ({} for a non-JSON one, such as MLflow's "OK").
    Fails the test after ``timeout_s``."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(f"{url}/health", timeout=2)
            if reply.status_code == 200:
                try:
                    body = reply.json()
                except ValueError:
                    return {}
                models = body.get("models", {}) if isinstance(body, dict) else {}
                if all(m.get("state") != "loading" for m in models.values()):
                    return dict(body) if isinstance(body, dict) else {}
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url}/health did not answer with every model settled within {timeout_s:.0f}s")


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip the calling test with ``reason`` unless ``condition``; under ``CI=true`` fail instead.

    For what CI machines must have (PostgreSQL, Redis, a container engine): there a skip would let a broken
    service or engine pass as a skipped test.
    """
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true, and this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new database on 127.0.0.1:5432 (trust auth, ``MLP_TEST_PG_USER``), its URL; dropped afterwards.

    PostgreSQL not reachable: the test is skipped (under ``CI=true`` it fails, see :func:`require`).
    """
    import secrets
    from contextlib import closing

    import psycopg2

    user = os.environ.get("MLP_TEST_PG_USER", "postgres")
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user=user, dbname="postgres", connect_timeout=3)
    except psycopg2.Error as exc:
        require(False, f"PostgreSQL is not reachable on 127.0.0.1:5432 as {user!r} ({exc})")
        raise
    admin.autocommit = True
    db = f"{prefix}_{secrets.token_hex(4)}"
    with closing(admin), admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    try:
        yield f"postgresql://{user}@127.0.0.1:5432/{db}"
    finally:
        with closing(psycopg2.connect(host="127.0.0.1", user=user, dbname="postgres")) as admin:
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


# `make test` runs two pytest-xdist workers. Each test file is one unit of work (its module fixtures, such as the
# compose stack, are set up once, in one worker), except the files that build and run the project image, which are
# one unit so the image is built once, never twice at the same time. Units are handed out longest first (figures:
# seconds on a quiet 2-core machine; unlisted files are short) so the long ones overlap the rest.
# (xdist's own `--dist loadgroup` cannot do this under pytest 9: it renames node ids through an attribute pytest 9
# no longer reads, so its groups are silently ignored.)
IMAGE_UNIT = ("tests/kubernetes/test_pod_contract.py", "tests/stack/test_container_stack.py")
UNIT_SECONDS = {
    "images": 610,
    "tests/stack/test_compose_stack.py": 520,
    "tests/e2e/test_lifecycle_airflow.py": 110,
    "tests/e2e/test_ingest_corpus.py": 100,
    "tests/stack/test_promotion_race.py": 85,
    "tests/unit/tasks/serving/test_fuzz.py": 75,
    "tests/e2e/test_adult_income_airflow.py": 65,
    "tests/kubernetes/test_mapped_trials.py": 60,
}


def _unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return "images" if path in IMAGE_UNIT else path


class _XdistUnits:
    """The scheduler hook, registered only where xdist runs (pytest refuses a hook it does not know)."""

    @staticmethod
    def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
        """xdist's scheduler, handing out the units above in collection order (which the hook below sorts)."""
        from xdist.scheduler import LoadScopeScheduling

        class FileUnits(LoadScopeScheduling):  # type: ignore[misc]
            def _split_scope(self, nodeid: str) -> str:
                return _unit(nodeid)

        config.option.loadscopereorder = False  # LoadScope's own order is by test count: the unit files first
        return FileUnits(config, log)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistUnits(), "mlp-xdist-units")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker, put the longest units first; skip everything that reads the shipped datasets when they
    are not beside the repository."""
    if hasattr(config, "workerinput"):  # every worker sorts alike: they must report the same collection
        items.sort(key=lambda item: -UNIT_SECONDS.get(_unit(item.nodeid), 0))  # stable: the rest keeps its order
    if SHARED.joinpath("bike_sharing_hour.csv.gz").is_file():
        return
    skip = pytest.mark.skip(reason=f"shipped datasets not found at {SHARED}")
    for item in items:
        if "needs_data" in item.keywords:
            item.add_marker(skip)
