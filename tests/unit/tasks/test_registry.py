"""Registry decisions on the real bike-demand champion: registration, promotion, lost races, dry runs,
rollback, refusals, and the revert after a deploy whose smoke test fails (blue/green keeps the old version);
and an MLflow that does not answer: an outage everywhere the champion is read, never "no champion yet"."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from tasks import stages
from tasks.deploy import DeployRefusedError
from tasks.errors import PermanentError
from tasks.ledger import Entry, PromotionLedger
from tasks.names import CHAMPION
from tasks.registry import RegistryError, RegistryUnavailableError, RollbackError, champion, model_version
from tasks.results import ResultError
from tasks.serving.app import create_app
from tasks.settings import get_settings
from tasks.tracking import client
from tests.conftest import free_port, wait_healthy

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
    return str(stages.register_model(P, c["trained"], c["gated"])["version"])


def _entries(c: dict[str, Any]) -> list[Entry]:
    return PromotionLedger(get_settings().ledger_uri).read(P)[c["ledger_start"] :]


def _judged_against(c: dict[str, Any], champion: str | None) -> dict[str, Any]:
    return c["decision"] | {"champion_version": champion, "promote": True}


def test_registered_version_has_challenger_alias_lineage_gate_tags_and_its_card(use_champion_store):
    settings = get_settings()
    version = use_champion_store["registered"]["version"]
    current = champion(settings, P)
    assert current is not None and current.version == version
    mv = client(settings).get_model_version(P, version)
    assert (
        mv.tags["gate.passed"] == "True" and mv.tags["mlflow_run_id"] == use_champion_store["trained"]["mlflow_run_id"]
    )
    assert "champion" in mv.aliases
    challenger = client(settings).get_model_version_by_alias(P, "challenger")  # latest registered
    assert int(challenger.version) >= int(version) and challenger.tags["gate.mode"] == "enabled"
    assert mv.tags["gate.check.beats_baseline"] == "pass" and mv.tags["gate.champion_at_evaluation"] == "None"
    assert json.loads(mv.tags["data.train_partitions"])[0] == "2011-05-30" and mv.tags["code_version"]
    assert mv.tags["airflow.run_id"] == "fixture"  # lineage copied from the training run
    assert mv.description.startswith("# Model card: bike_demand")  # the card is the version's description


def test_no_champion_on_a_fresh_store(data_root):
    assert champion(get_settings(), P) is None


def test_registering_with_a_stale_gate_result_names_the_missing_field(use_champion_store):
    stale = {k: v for k, v in use_champion_store["gated"].items() if k != "model_card"}
    with pytest.raises(ResultError, match="Gated expected.*model_card: Field required") as err:
        stages.register_model(P, use_champion_store["trained"], stale)
    assert isinstance(err.value, PermanentError)


def test_promoting_a_version_the_registry_does_not_have_is_a_permanent_refusal(registry):
    v1 = registry["registered"]["version"]
    with pytest.raises(RegistryError, match="bike_demand has no version 999") as err:
        stages.promote_model(P, "999", _judged_against(registry, v1))
    assert isinstance(err.value, PermanentError)
    assert champion(get_settings(), P).version == v1 and _entries(registry) == []


def test_promotion_by_hand_replaces_whatever_is_champion(registry):
    v2 = _new_version(registry)
    result = stages.promote_model(P, v2, actor="cli:by-hand")
    assert result["promoted"] and result["outcome"] == "promoted"
    (entry,) = _entries(registry)
    assert (entry.action, entry.reason, entry.actor) == ("promote", "promoted by hand", "cli:by-hand")


def test_promotion_moves_champion_keeps_previous_and_is_recorded(registry):
    v1, v2 = registry["registered"]["version"], _new_version(registry)
    result = stages.promote_model(P, v2, _judged_against(registry, v1), actor="airflow:bike_demand_train/run-a")
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
    assert stages.promote_model(P, a, _judged_against(registry, v1))["promoted"]
    late = stages.promote_model(P, b, _judged_against(registry, v1))
    assert late["promoted"] is False and late["outcome"] == "lost_race" and late["champion"] == a
    assert champion(get_settings(), P).version == a
    assert client(get_settings()).get_model_version(P, b).tags["promotion.outcome"] == "lost_race"
    lost = _entries(registry)[-1]
    assert lost.action == "lost_race" and lost.to_version == b and f"to v{a}" in lost.reason


def test_dry_run_verdict_is_recorded_and_moves_nothing(registry):
    v1, v2 = registry["registered"]["version"], _new_version(registry)
    result = stages.promote_model(P, v2, registry["decision"] | {"mode": "dry_run", "promote": False})
    assert result["outcome"] == "dry_run" and champion(get_settings(), P).version == v1
    assert _entries(registry)[-1].action == "dry_run"


def test_rollback_restores_previous_and_a_second_rollback_undoes_it(registry):
    v1, v2 = registry["registered"]["version"], _new_version(registry)
    stages.promote_model(P, v2, _judged_against(registry, v1))
    back = stages.rollback_model(P, actor="cli:test", reason="v2 misbehaves")
    assert back == {"name": P, "version": v1, "previous": v2}
    assert champion(get_settings(), P).version == v1
    assert stages.rollback_model(P)["version"] == v2  # previous is now v2: rollback toggles
    actions = [(e.action, e.from_version, e.to_version) for e in _entries(registry)]
    assert actions[-2:] == [("rollback", v2, v1), ("rollback", v1, v2)]
    assert _entries(registry)[-2].reason == "v2 misbehaves"


@pytest.mark.parametrize(("target", "message"), [("999", "no version 999"), ("current", "already the champion")])
def test_rollback_to_a_bad_target_is_refused_and_changes_nothing(registry, target, message):
    v1 = registry["registered"]["version"]
    with pytest.raises(RollbackError, match=message):
        stages.rollback_model(P, v1 if target == "current" else target)
    assert champion(get_settings(), P).version == v1


def _tampered_version(c: dict[str, Any], shift: float) -> str:
    """The champion's model logged again, with a holdout sample whose expected predictions are off by ``shift``."""
    import mlflow
    import pandas as pd
    from mlflow.models import Model

    from tasks.names import EXPECTED_COLUMN, SMOKE_SAMPLE
    from tasks.tracking import start_tracking

    settings = get_settings()
    start_tracking(settings, P)
    uri = f"models:/{P}/{c['registered']['version']}"
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    meta = Model.load(local)
    sample = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=c["trained"]["mlflow_run_id"], artifact_path=SMOKE_SAMPLE)
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
        assert stages.promote_model(P, bad, _judged_against(registry, v1))["promoted"]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLP_SERVING_URL", url)
            get_settings.cache_clear()
            with pytest.raises(
                DeployRefusedError, match=r"smoke test failed: (\d+) of \1 holdout rows differ .*max \|diff\| 5"
            ) as refused:
                stages.deploy_model(P, bad, actor="airflow:test")
        get_settings.cache_clear()
        assert "still serving v" + v1 in str(refused.value) and "champion alias back on v" + v1 in str(refused.value)
        health = httpx.get(f"{url}/health").json()
        assert health["version"] == v1 and health["models"][P]["smoke_test"]["holdout_rows"] == 168
        assert champion(settings, P).version == v1  # the registry agrees with what is served
        refused, entry = _entries(registry)[-2:]
        # the server recorded its refusal (who asked, through the admin API), then the deploy stage its revert
        assert refused.action == "serve_refused" and refused.actor == "airflow:test via admin token"
        assert (refused.from_version, refused.to_version) == (v1, bad) and "smoke test failed" in refused.reason
        assert entry.action == "deploy_failed" and entry.from_version == bad and entry.to_version == v1
        assert entry.details == {"reverted": True}
    finally:
        server.should_exit = True
        thread.join(10)


# ------------------------------------------------------------------------------------------- an outage
def test_no_champion_is_an_answer(data_root):
    assert champion(get_settings(), "bike_demand") is None
    assert model_version(get_settings(), "bike_demand", "3") is None


def test_an_unreachable_mlflow_is_an_outage_with_its_masked_address(data_root, monkeypatch):
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://mlp:pw-0123456789@127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    get_settings.cache_clear()
    for read in (
        lambda: champion(get_settings(), "bike_demand"),
        lambda: model_version(get_settings(), "b", "1"),
    ):
        with pytest.raises(
            RegistryUnavailableError, match=rf"MLflow at http://mlp:\*\*\*@127.0.0.1:{port} unreachable"
        ) as err:
            read()
        assert "pw-0123456789" not in str(err.value)
    from tasks.plan import plan_training
    from tasks.spec import load_spec
    from tasks.storage import DataLayout

    class _Ingested(DataLayout):  # enough partitions that the plan must ask who the champion is
        def raw_partitions(self, pipeline: str) -> list[str]:
            return [f"2011-06-{d:02d}" for d in range(1, 29)]

    settings = get_settings()
    with pytest.raises(RegistryUnavailableError):  # the training plan used to say "no champion yet: first model"
        plan_training(load_spec("bike_demand"), settings, _Ingested(settings.data_root))
