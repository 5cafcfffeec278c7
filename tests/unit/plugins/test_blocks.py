"""The DAG building blocks (plugins/mlops_airflow/blocks.py): one task per stage, one group per phase."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow import blocks
from tasks.errors import PermanentError
from tasks.names import TAG_AIRFLOW_DAG_ID, TAG_AIRFLOW_RUN_ID
from tasks.settings import get_settings, load_settings
from tasks.spec import load_spec

TRAIN_STAGES = {
    "plan_training",
    "validate_data",
    "report_quarantine",
    "build_features",
    "train_model",
    "evaluate_model",
    "gate_model",
    "register_model",
}


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)


def test_a_hand_built_dag_has_the_stages_as_task_ids_without_group_prefixes():
    with _dag("hand_built") as dag:
        gated, registered, trained = blocks.train_and_register("bike_demand", force=True)
        blocks.promote_and_deploy("bike_demand", gated, registered, trained)
    assert set(dag.task_ids) == TRAIN_STAGES | {"promote_model", "deploy_model"}
    assert dag.get_task("promote_model").upstream_task_ids == {"gate_model", "register_model", "train_model"}
    assert dag.get_task("deploy_model").upstream_task_ids == {"promote_model"}
    assert [type(link).__name__ for link in dag.get_task("gate_model").operator_extra_links] == ["ModelCardLink"]
    plan = dag.get_task("plan_training")
    assert list(plan.op_args[:2]) == ["bike_demand", True]  # the pipeline and force travel as the task's arguments


def test_the_ingest_and_monitor_phases_wire_their_assets():
    with _dag("hand_built_ingest") as dag:
        blocks.ingest("bike_demand")
        blocks.monitor("bike_demand")
    publish, retrain = dag.get_task("publish_partitions"), dag.get_task("request_retrain")
    assert [o.uri for o in publish.outlets] == ["ml://bike_demand/raw"]
    assert [o.uri for o in retrain.outlets] == ["ml://bike_demand/retrain"]
    assert dag.get_task("ingest_partitions").upstream_task_ids == {"wait_for_landing"}
    spec = load_spec("bike_demand")
    assert dag.get_task("wait_for_landing").timeout == spec.landing_timeout_hours * 3600
    assert dag.get_task("drift_detected").upstream_task_ids == {"check_drift"}


def test_the_landing_sensor_fails_at_once_for_a_day_past_its_deadline_and_waits_for_today(data_root, monkeypatch):
    """The run Airflow makes when the ingest DAG is unpaused (yesterday's key, at any hour) must not wait 12 h
    for a file that is not coming: past the day's end + landing_timeout_hours, no file fails the sensor."""
    today = datetime.now(UTC).date().isoformat()
    for key, verdict in (("2011-06-01", None), (today, False)):
        run = SimpleNamespace(partition_key=key)
        monkeypatch.setattr(blocks, "get_current_context", lambda run=run: {"dag_run": run})
        if verdict is None:
            with pytest.raises(AirflowFailException, match="deadline 2011-06-02 12:00 UTC"):
                blocks._landing_ready("bike_demand", {}, None, None)
        else:
            assert blocks._landing_ready("bike_demand", {}, None, None) is verdict


def test_building_hands_the_factory_s_spec_and_settings_to_heavy_stages(monkeypatch):
    """In kubernetes mode a heavy block is a pod with the given settings; outside ``building`` the environment's."""
    from mlops_airflow.pods import StagePodOperator

    monkeypatch.setenv("ML_ENV", "prod")
    get_settings.cache_clear()
    prod = load_settings("prod")
    monkeypatch.delenv("ML_ENV")
    get_settings.cache_clear()
    with _dag("pods") as dag, blocks.building(load_spec("bike_demand"), prod):
        blocks.check_drift("bike_demand")
    with _dag("local") as local:
        blocks.check_drift("bike_demand")
    get_settings.cache_clear()
    assert isinstance(dag.get_task("check_drift"), StagePodOperator)
    assert not isinstance(local.get_task("check_drift"), StagePodOperator)


def test_call_fails_a_permanent_error_at_once_and_lets_others_be_retried():
    def bad_data() -> None:
        raise PermanentError("partition 2011-06-05 is not valid")

    def outage() -> None:
        raise ConnectionError("MLflow unreachable")

    with pytest.raises(AirflowFailException, match="partition 2011-06-05 is not valid"):
        blocks.call(bad_data)
    with pytest.raises(ConnectionError):
        blocks.call(outage)
    assert blocks.call(lambda a, b=0: a + b, 1, b=2) == 3


def test_actor_names_the_run_and_the_user_who_triggered_it():
    run = SimpleNamespace(dag_id="bike_demand_train", run_id="manual__1", triggering_user_name="ana")
    assert blocks.actor({"dag_run": run}) == "airflow:bike_demand_train/manual__1 by ana"
    run.triggering_user_name = None
    assert blocks.actor({"dag_run": run}) == "airflow:bike_demand_train/manual__1"


def test_stage_arguments_come_from_the_typed_upstream_results_and_the_run():
    run = SimpleNamespace(
        dag_id="d",
        run_id="r",
        logical_date=None,
        run_after=datetime(2012, 7, 21, tzinfo=UTC),
        triggering_user_name=None,
    )
    ctx = {"run_id": "r", "dag_run": run}
    ingested = {"new": ["2011-06-01"], "staged": {"2011-06-01": "abc"}, "refused": [], "partitions": []}
    assert blocks._validate_partitions_args({"ingested": ingested}, ctx) == {
        "partitions": ["2011-06-01"],
        "run_key": "r",
        "staged": {"2011-06-01": "abc"},
        "refused": [],
    }
    assert blocks._check_drift_args({}, ctx) == {"window_end": "2012-07-21T00:00:00+00:00", "run_id": "r"}
    lineage = blocks._train_args({"datasets": {"x": 1}}, ctx)["lineage"]
    assert lineage == {TAG_AIRFLOW_DAG_ID: "d", TAG_AIRFLOW_RUN_ID: "r"}
    assert blocks._file_url({"model_card": {"html": "/data/card.html"}}) == "file:///data/card.html"
    assert blocks._file_url({"model_card": None}) == ""


def test_outlet_events_carry_the_partition_keys(monkeypatch):
    """Raw and landing events are one per day, keyed by it (AIP-76); a retrain request by its window's last day."""
    from airflow.sdk.execution_time.context import OutletEventAccessors

    outlets = OutletEventAccessors()
    run = SimpleNamespace(partition_key="2011-06-02", run_after=datetime(2011, 6, 3, tzinfo=UTC))
    monkeypatch.setattr(blocks, "get_current_context", lambda: {"outlet_events": outlets, "dag_run": run})

    ingested = {"partitions": [{"partition": "2011-06-02", "rows": 24, "skipped": False}]}
    extra = blocks._publish("bike_demand", ingested, {"valid": ["2011-06-02"], "quarantined": []})
    raw = outlets[blocks.raw_asset("bike_demand")]
    assert raw.partition_keys == {"2011-06-02"} and raw.extra == extra and extra["rows"] == 24

    watched = blocks.watched_asset("bike_demand")
    message = {"from_trigger": True, "payload": {"type": "message", "data": '{"partition": "2011-06-04"}'}}
    announced = blocks._announce("bike_demand", {watched: [SimpleNamespace(extra=message, partition_key=None)]})
    landing = outlets[blocks.landing_asset("bike_demand")]
    assert announced["partitions"] == ["2011-06-04"] and landing.partition_keys == {"2011-06-04"}
    assert landing.extra == {"announced_by": ["ml://bike_demand/landing/watched"]}

    report = {"decision": "k of n", "window": ["2012-07-18", "2012-07-20", "2012-07-19"], "drift_share": 0.5}
    blocks._request_retrain("bike_demand", report)
    assert outlets[blocks.retrain_asset("bike_demand")].partition_keys == {"2012-07-20"}
