"""The spec factory (plugins/mlops_airflow/factory.py): each stage that runs in Airflow is a task of its name."""

from __future__ import annotations

from tasks.stages import STAGES
from tests.conftest import REPO


def test_the_dags_run_the_stages_under_their_names(spec):
    from mlops_airflow.factory import build_pipeline_dags, rollback_dag

    dags = build_pipeline_dags(spec)
    ingest, train, monitor = (dags[f"bike_demand_{d}"] for d in ("ingest", "train", "monitor"))
    assert {"ingest_partitions", "validate_partitions", "publish_partitions", "report_quarantine"} <= set(
        ingest.task_ids
    )
    train_stages = {"plan_training", "validate_data", "build_features", "train_model", "evaluate_model"}
    assert train_stages | {"gate_model", "register_model", "promote_model", "deploy_model"} <= set(train.task_ids)
    assert "check_drift" in monitor.task_ids
    in_airflow = set().union(*(d.task_ids for d in dags.values()), rollback_dag([spec]).task_ids)
    # by hand and in scripts only; and the mapped trial batches, kubernetes mode with trials_per_pod only
    assert set(STAGES) - in_airflow == {"replay", "ingest_partition", "plan_search", "search_trials"}


def test_the_factory_builds_its_dags_only_from_the_blocks():
    """No TaskFlow task is defined in the factory: every body is a block's (one call into tasks.stages)."""
    import ast

    tree = ast.parse((REPO / "plugins" / "mlops_airflow" / "factory.py").read_text())
    decorators = [ast.unparse(d) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) for d in n.decorator_list]
    assert not [d for d in decorators if d.startswith("task")], decorators


def test_the_rollback_dag_names_its_pipeline_by_the_run_form():
    """One rollback DAG serves every pipeline: the blocks get the form's pipeline as a templated argument."""
    from mlops_airflow.factory import rollback_dag
    from tasks.spec import list_specs

    dag = rollback_dag(list_specs())
    for task_id in ("rollback_model", "deploy_model"):
        task = dag.get_task(task_id)
        assert task.op_args[0] == "{{ params.pipeline }}" and "op_args" in task.template_fields
    assert dag.get_task("rollback_model").retries == 0


def test_daily_partitions_are_airflow_partitions(spec):
    """Ingest runs are cron partitions keyed by the day; announcements and new days schedule runs per key."""
    from datetime import UTC, datetime

    from airflow.sdk import CronPartitionTimetable, PartitionedAssetTimetable
    from airflow.serialization.encoders import coerce_to_core_timetable

    from mlops_airflow.factory import build_pipeline_dags

    dags = build_pipeline_dags(spec)
    ingest = dags["bike_demand_ingest"]
    assert isinstance(ingest.timetable, CronPartitionTimetable)
    core = coerce_to_core_timetable(ingest.timetable)
    # a backfill of 2011-06-01..03 is the runs of these three keys; the run after midnight takes the day before
    infos = core.iter_partition_dagrun_infos(
        earliest=datetime(2011, 6, 1, tzinfo=UTC), latest=datetime(2011, 6, 3, tzinfo=UTC)
    )
    assert [i.partition_key for i in infos] == ["2011-06-01", "2011-06-02", "2011-06-03"]
    assert core._get_partition_info(core._get_next(datetime(2011, 6, 1, 12, tzinfo=UTC)))[1] == "2011-06-01"

    announced, announce, train = (dags[f"bike_demand_{d}"] for d in ("ingest_announced", "announce", "train"))
    assert isinstance(announced.timetable, PartitionedAssetTimetable)
    assert announced.timetable.asset_condition.uri == "ml://bike_demand/landing"
    assert set(announced.task_ids) == set(ingest.task_ids)  # the same ingest, started by upstream
    # the watchers (no partition key in 3.3) feed the announcer, whose task re-emits keyed landing events
    assert announce.timetable.asset_condition.uri == "ml://bike_demand/landing/watched"
    assert announce.timetable.asset_condition.watchers
    assert [o.uri for o in announce.get_task("announce_partitions").outlets] == ["ml://bike_demand/landing"]
    assert isinstance(train.timetable, PartitionedAssetTimetable)
