"""A trained champion shared by the registry, serving and monitoring tests (built once per session).

Built from the committed fixtures (``tests/fixtures/datasets``): real rows, no ``../shared`` needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks import stages
from tasks.settings import get_settings
from tests.conftest import forget_mlflow_store
from tests.unit.conftest import FIXTURES

WINDOW = ("2011-05-30", "2011-06-26")


@pytest.fixture(scope="session")
def champion_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run the stages on June 2011 (real data) into a session data root; v1 is champion."""
    root = tmp_path_factory.mktemp("champion") / "data"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLP_DATA_ROOT", str(root))
    mp.setenv("MLP_SHARED_DATASETS", str(FIXTURES))  # the committed real-data cut, not ../shared
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # MLflow writes these into os.environ
        mp.delenv(var, raising=False)
    get_settings.cache_clear()
    try:
        stages.replay("bike_demand", *WINDOW)
        days = [r["partition"] for r in (stages.ingest_partition("bike_demand", d) for d in _days(*WINDOW))]
        plan = stages.plan_training("bike_demand")
        validation = stages.validate_data("bike_demand", plan["partitions"], "fixture")
        datasets = stages.build_features("bike_demand", validation["valid"], "fixture")
        trained = stages.train_model("bike_demand", datasets, "fixture", {"airflow.run_id": "fixture"})
        evaluation = stages.evaluate_model("bike_demand", trained, datasets, "fixture")
        gated = stages.gate_model("bike_demand", trained, datasets, evaluation, "fixture")
        registered = stages.register_model("bike_demand", trained, gated)
        promoted = stages.promote_model("bike_demand", registered["version"], gated["decision"])
        forget_mlflow_store()  # the stages pointed this process at the store: a later test says where it looks
        yield {
            "root": root,
            "days": days,
            "plan": plan,
            "datasets": datasets,
            "trained": trained,
            "evaluation": evaluation,
            "gated": gated,
            "decision": gated["decision"],
            "registered": registered,
            "promoted": promoted,
        }
    finally:
        mp.undo()
        get_settings.cache_clear()


@pytest.fixture
def use_champion_store(champion_store: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Point this test's settings, and this process's MLflow, at the session's champion store.

    ``mlflow.set_tracking_uri`` keeps a module-level URI besides the environment: a test that runs after
    another one pointed MLflow elsewhere (in the same xdist worker) would otherwise look up the champion's
    runs in that store ("Run ... not found").
    """
    from tasks.tracking import use_store

    monkeypatch.setenv("MLP_DATA_ROOT", str(champion_store["root"]))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # never another test's store
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # recorded, so the teardown removes them again
        monkeypatch.setenv(var, settings.mlflow_tracking_uri)
    use_store(settings)
    yield champion_store
    get_settings.cache_clear()


TEAM_FEATURES = Path(__file__).resolve().parents[2] / "fixtures"  # holds team_features, a team's own package


@pytest.fixture
def custom_model(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A ridge model trained on 8 days of bike demand with ``features.custom`` (tests/fixtures/team_features).

    The team's package is on this process's ``sys.path`` only (its PYTHONPATH), not in the environment:
    a subprocess without PYTHONPATH cannot import it. ``MLP_PIPELINES_DIR`` points at the spec's folder.
    """
    import yaml

    from tasks.features import build_features
    from tasks.replay import replay_days
    from tasks.spec import load_spec
    from tasks.storage import DataLayout
    from tasks.train import train_model
    from tests.conftest import write_spec

    monkeypatch.syspath_prepend(str(TEAM_FEATURES))
    folder = write_spec(tmp_path / "specs", model={"family": "ridge", "params": {"alpha": 1.0}})
    raw = yaml.safe_load((folder / "bike_demand.yaml").read_text())
    step = {"name": "feels", "transformer": "team_features.ratios:RatioFeature", "columns": ["atemp", "hum"]}
    raw["features"]["custom"] = [step | {"params": {"clip": 5.0}}]
    (folder / "bike_demand.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLP_PIPELINES_DIR", str(folder))
    spec, layout = load_spec("bike_demand"), DataLayout(data_root)
    days = [f"2011-06-{d:02d}" for d in range(1, 9)]
    replay_days(spec, layout, FIXTURES, days[0], days[-1])
    for day in days:
        stages.ingest_partition("bike_demand", day)
    datasets = build_features(spec, layout, days, "run")
    trained = train_model(spec, get_settings(), layout, datasets, "run")
    return {"spec": spec, "layout": layout, "days": days, "datasets": datasets, "trained": trained, "specs": folder}


def run_without_team_package(script: str, *args: str, cwd: Path) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter that cannot import the team's package (no ``PYTHONPATH``), as a
    model server or scorer without it installed would; its last stdout line, parsed as JSON."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _days(start: str, end: str) -> list[str]:
    from datetime import date, timedelta

    d0, d1 = date.fromisoformat(start), date.fromisoformat(end)
    return [(d0 + timedelta(days=i)).isoformat() for i in range((d1 - d0).days + 1)]


def raw_rows(shared: Path, start: str, end: str) -> Any:
    """Real dataset rows of a date range (what callers send, plus the truth); ``shared``: a datasets folder."""
    import pandas as pd

    data = pd.read_csv(shared / "bike_sharing_hour.csv.gz")
    return data[(data.dteday >= start) & (data.dteday <= end)].reset_index(drop=True)
