from __future__ import annotations

import json

import pytest

from tasks import stages
from tasks.registry import champion_version
from tasks.settings import get_settings
from tasks.spec import ModelSpec
from tasks.tracking import client
from tasks.train import TrainingError, make_estimator

pytestmark = pytest.mark.needs_data


def test_candidate_beats_baseline_on_the_real_holdout(use_champion_store):
    m = use_champion_store["metrics"]
    assert m["candidate"]["rmse"] < 0.9 * m["baseline"]["rmse"]
    assert m["candidate"]["r2"] > 0.6
    assert use_champion_store["decision"]["passed"] is True


def test_run_logs_params_metrics_signature_example_and_lineage(use_champion_store):
    import mlflow

    settings = get_settings()
    run = client(settings).get_run(use_champion_store["trained"]["run_id"])
    assert run.data.params["model.family"] == "lightgbm" and run.data.params["seed"] == "42"
    assert {"train_rmse", "holdout_rmse", "baseline_holdout_rmse"} <= set(run.data.metrics)
    partitions = json.loads(run.data.tags["data.train_partitions"])
    assert partitions[0] == "2011-05-30" and "2011-06-26" not in partitions  # the last days are holdout
    assert run.inputs.dataset_inputs, "training dataset lineage is logged"
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    info = mlflow.models.get_model_info(use_champion_store["trained"]["model_uri"])
    inputs = [c.name for c in info.signature.inputs.inputs]
    assert "cnt" not in inputs and "casual" not in inputs and "hr" in inputs
    assert info.saved_input_example_info is not None


def test_registered_version_has_champion_alias_and_tags(use_champion_store):
    settings = get_settings()
    version = use_champion_store["registered"]["version"]
    champion = champion_version(settings, "bike_demand")
    assert champion is not None and champion.version == version
    mv = client(settings).get_model_version("bike_demand", version)
    assert mv.tags["gate.passed"] == "True" and mv.tags["run_id"] == use_champion_store["trained"]["run_id"]
    assert "champion" in mv.aliases
    challenger = client(settings).get_model_version_by_alias("bike_demand", "challenger")  # latest registered
    assert int(challenger.version) >= int(version) and challenger.tags["gate.mode"] == "enabled"
    assert mv.tags["gate.check.beats_baseline"] == "pass" and mv.tags["gate.champion_at_evaluation"] == "None"
    assert json.loads(mv.tags["data.train_partitions"])[0] == "2011-05-30" and mv.tags["code_version"]
    assert mv.description.startswith("# Model card: bike_demand")  # the card is the version's description


def test_unknown_hyperparameter_is_a_training_error():
    with pytest.raises(TrainingError, match="ridge does not accept"):
        make_estimator(ModelSpec(family="ridge", params={"alphaa": 1}), 0)


def test_first_model_policy_and_consolidated_retrains(use_champion_store):
    plan = stages.plan_training("bike_demand")
    assert plan["train"] is False and "no retrain" in plan["reason"]
    assert stages.plan_training("bike_demand", triggered_by=["ml://bike_demand/retrain"])["train"] is True
    assert stages.plan_training("bike_demand", force=True)["reason"].startswith("forced")
    assert stages.plan_training("bike_demand", as_of="2011-06-10")["reason"].startswith("waiting for data")
