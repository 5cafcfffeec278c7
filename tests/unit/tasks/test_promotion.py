"""Registry decisions on the real bike-demand champion: promotion, lost races, dry runs, rollback, the ledger,
and a deploy whose smoke test fails (blue/green keeps the old version serving)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tasks import stages
from tasks.deploy import DeployRefused
from tasks.evaluate import GateFailed
from tasks.ledger import Entry, PromotionLedger
from tasks.registry import CHAMPION, RollbackError, champion_version
from tasks.serving.app import create_app
from tasks.settings import get_settings
from tasks.tracking import client
from tests.conftest import REPO, free_port, wait_healthy

pytestmark = pytest.mark.needs_data
P = "bike_demand"


@pytest.fixture
def registry(use_champion_store: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The session champion store; afterwards v1 is champion again (aliases only: the ledger keeps its rows)."""
    settings = get_settings()
    first = PromotionLedger(settings.ledger_uri).read(P)
    yield use_champion_store | {"ledger_start": len(first)}
    client(settings).set_registered_model_alias(P, CHAMPION, use_champion_store["registered"]["version"])


def _new_version(c: dict[str, Any]) -> str:
    """Another version of the same trained model (registering is cheap; training is not needed here)."""
    return str(stages.register(P, c["trained"], c["decision"])["version"])


def _entries(c: dict[str, Any]) -> list[Entry]:
    return PromotionLedger(get_settings().ledger_uri).read(P)[c["ledger_start"] :]


def _judged_against(c: dict[str, Any], champion: str | None) -> dict[str, Any]:
    return c["decision"] | {"champion_version": champion, "promote": True}


def test_promotion_moves_champion_keeps_previous_and_is_recorded(registry):
    v1, v2 = registry["registered"]["version"], _new_version(registry)
    result = stages.promote(P, v2, _judged_against(registry, v1), actor="airflow:bike_demand_train/run-a")
    assert result["promoted"] and result["previous"] == v1 and result["champion"] == v2
    mlflow_client = client(get_settings())
    assert str(mlflow_client.get_model_version_by_alias(P, "previous").version) == v1
    assert mlflow_client.get_model_version(P, v2).tags["promotion.outcome"] == "champion"
    (entry,) = _entries(registry)
    assert (entry.action, entry.from_version, entry.to_version) == ("promote", v1, v2)
    assert entry.actor == "airflow:bike_demand_train/run-a" and entry.reason.startswith(
        "gate enabled: passed; no champion yet"
    )


def test_a_candidate_judged_against_an_old_champion_loses_the_race(registry):
    v1 = registry["registered"]["version"]
    a, b = _new_version(registry), _new_version(registry)
    assert stages.promote(P, a, _judged_against(registry, v1))["promoted"]
    late = stages.promote(P, b, _judged_against(registry, v1))
    assert late["promoted"] is False and late["outcome"] == "lost_race" and late["champion"] == a
    assert champion_version(get_settings(), P).version == a
    assert client(get_settings()).get_model_version(P, b).tags["promotion.outcome"] == "lost_race"
    lost = _entries(registry)[-1]
    assert lost.action == "lost_race" and lost.to_version == b and f"to v{a}" in lost.reason


def test_retrain_identical_to_the_champion_is_rejected_recorded_and_still_gets_its_card(registry):
    c, v1 = registry, registry["registered"]["version"]
    metrics = stages.evaluate(P, c["trained"], c["datasets"], "tie")  # the champion judged against itself
    assert metrics["champion_version"] == v1 and metrics["champion"] == metrics["candidate"]
    with pytest.raises(GateFailed, match="tie never promotes") as failed:
        stages.gate(P, c["trained"], metrics, "tie", c["datasets"], actor="cli:tie-test")
    card = Path(failed.value.result["model_card"]["html"]).read_text()
    assert "beats_champion" in card and f"champion v{v1}" in card and 'class="fail"' in card
    entry = _entries(c)[-1]
    assert (entry.action, entry.actor, entry.from_version, entry.to_version) == ("rejected", "cli:tie-test", v1, None)
    assert entry.reason == "gate failed: beats_champion" and "tie" in entry.details["checks"]["beats_champion"]
    assert champion_version(get_settings(), P).version == v1


def test_dry_run_verdict_is_recorded_and_moves_nothing(registry):
    v1, v2 = registry["registered"]["version"], _new_version(registry)
    result = stages.promote(P, v2, registry["decision"] | {"mode": "dry_run", "promote": False})
    assert result["outcome"] == "dry_run" and champion_version(get_settings(), P).version == v1
    assert _entries(registry)[-1].action == "dry_run"


def test_rollback_restores_previous_and_a_second_rollback_undoes_it(registry):
    v1, v2 = registry["registered"]["version"], _new_version(registry)
    stages.promote(P, v2, _judged_against(registry, v1))
    back = stages.rollback(P, actor="cli:test", reason="v2 misbehaves")
    assert back == {"name": P, "version": v1, "previous": v2}
    assert champion_version(get_settings(), P).version == v1
    assert stages.rollback(P)["version"] == v2  # previous is now v2: rollback toggles
    actions = [(e.action, e.from_version, e.to_version) for e in _entries(registry)]
    assert actions[-2:] == [("rollback", v2, v1), ("rollback", v1, v2)]
    assert _entries(registry)[-2].reason == "v2 misbehaves"


@pytest.mark.parametrize(("target", "message"), [("999", "no version 999"), ("current", "already the champion")])
def test_rollback_to_a_bad_target_is_refused_and_changes_nothing(registry, target, message):
    v1 = registry["registered"]["version"]
    with pytest.raises(RollbackError, match=message):
        stages.rollback(P, v1 if target == "current" else target)
    assert champion_version(get_settings(), P).version == v1


def test_ledger_is_append_only_in_the_database(registry):
    path = get_settings().ledger_uri.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        for sql in ("UPDATE promotion_ledger SET reason = 'x'", "DELETE FROM promotion_ledger"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
    with pytest.raises(ValueError, match="unknown ledger action"):
        Entry(P, "promoted-by-magic", "me", "why")


def _ledger_cli(*args: str) -> str:
    command = [sys.executable, "-m", "tasks", "ledger", *args]
    out = subprocess.run(
        command, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout


def test_ledger_command_prints_a_table_and_json(registry):
    v1, v2 = registry["registered"]["version"], _new_version(registry)
    stages.promote(P, v2, _judged_against(registry, v1), actor="cli:ledger-test")
    table = _ledger_cli("--pipeline", P, "--limit", "1")
    assert "promote" in table and "cli:ledger-test" in table and f"{v1} -> {v2}" in table
    lines = _ledger_cli("--json").splitlines()
    last = json.loads(lines[-1])
    assert last["action"] == "promote" and last["to_version"] == v2 and last["seq"] > 0


def _tampered_version(c: dict[str, Any], shift: float) -> str:
    """The champion's model logged again, with a holdout sample whose expected predictions are off by ``shift``."""
    import mlflow
    import pandas as pd
    from mlflow.models import Model

    from tasks.evaluate import EXPECTED_COLUMN, SMOKE_ARTIFACT
    from tasks.tracking import start_tracking

    settings = get_settings()
    start_tracking(settings, P)
    uri = f"models:/{P}/{c['registered']['version']}"
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    meta = Model.load(local)
    sample = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=c["trained"]["run_id"], artifact_path=SMOKE_ARTIFACT)
    )
    sample[EXPECTED_COLUMN] += shift
    with mlflow.start_run(run_name="tampered"):
        info = mlflow.sklearn.log_model(
            mlflow.sklearn.load_model(uri),
            name="model",
            signature=meta.signature,
            input_example=meta.load_input_example(local),
            serialization_format="cloudpickle",
        )
        path = c["root"] / "holdout_sample.parquet"
        sample.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="smoke")
    return str(mlflow.register_model(info.model_uri, P).version)


def test_deploy_that_fails_its_smoke_test_keeps_the_old_version_serving(registry):
    settings = get_settings()
    v1 = registry["registered"]["version"]
    bad = _tampered_version(registry, shift=5.0)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, [P]), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        assert httpx.get(f"{url}/health").json()["version"] == v1
        assert stages.promote(P, bad, _judged_against(registry, v1))["promoted"]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLP_SERVING_URL", url)
            get_settings.cache_clear()
            with pytest.raises(
                DeployRefused, match=r"smoke test failed: (\d+) of \1 holdout rows differ .*max \|diff\| 5"
            ) as refused:
                stages.deploy(P, bad, actor="airflow:test")
        get_settings.cache_clear()
        assert "still serving v" + v1 in str(refused.value) and "champion alias back on v" + v1 in str(refused.value)
        health = httpx.get(f"{url}/health").json()
        assert health["version"] == v1 and health["models"][P]["smoke_test"]["holdout_rows"] == 168
        assert champion_version(settings, P).version == v1  # the registry agrees with what is served
        refused, entry = _entries(registry)[-2:]
        # the server recorded its refusal (who asked, through the admin API), then the deploy stage its revert
        assert refused.action == "serve_refused" and refused.actor == "airflow:test via admin token"
        assert (refused.from_version, refused.to_version) == (v1, bad) and "smoke test failed" in refused.reason
        assert entry.action == "deploy_failed" and entry.from_version == bad and entry.to_version == v1
        assert entry.details == {"reverted": True}
    finally:
        server.should_exit = True
        thread.join(10)
