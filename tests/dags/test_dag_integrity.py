"""DAG integrity: every DAG file imports cleanly, fast, without heavy imports or parse-time look-ups."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
HEAVY = ["pandas", "numpy", "sklearn", "lightgbm", "torch", "mlflow", "great_expectations", "evidently", "boto3"]
APPROVED_STAGES = {"stage:ingest", "stage:train", "stage:score", "stage:monitor", "stage:rollback"}
MANUAL_DAGS = {"rollback"}  # operational DAGs a person triggers: no schedule
NO_RETRY = {("rollback", "rollback_model")}  # a retry after a committed rollback would roll back again
# This machine imports slowly (airflow.sdk alone takes ~5 s cold); the budget is for the DAG file's own work.
PARSE_BUDGET_S = 2.0


@pytest.fixture(scope="module")
def dagbag():
    """One DagBag for the module, built while counting connection and Variable look-ups."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook, Variable

    with mock.patch.object(BaseHook, "get_connection") as conn, mock.patch.object(Variable, "get") as var:
        bag = DagBag(dag_folder=str(REPO / "dags"))
    bag.lookups = conn.call_count + var.call_count
    return bag


def _approved_tags() -> set[str]:
    from tasks.spec import list_specs

    tags = set(APPROVED_STAGES)
    for spec in list_specs():
        tags |= {f"domain:{spec.domain}", f"pipeline:{spec.name}"}
    return tags


def test_no_import_errors_and_every_file_has_a_dag(dagbag):
    assert dagbag.import_errors == {}
    for path in DAG_FILES:
        assert any(Path(d.fileloc) == path for d in dagbag.dags.values()), f"{path.name} defines no DAG"


def test_each_pipeline_spec_yields_its_four_dags_and_one_rollback_serves_all(dagbag):
    from tasks.spec import list_specs

    names = [s.name for s in list_specs()]
    assert {"adult_income", "bike_demand"} <= set(names)
    for name in names:
        assert {f"{name}_ingest", f"{name}_train", f"{name}_score", f"{name}_monitor"} <= set(dagbag.dag_ids)
    rollback = dagbag.dags["rollback"]
    assert rollback.params.get_param("pipeline").schema["enum"] == names
    assert rollback.params["version"] is None
    assert [t.task_id for t in rollback.topological_sort()] == ["rollback_model", "deploy_model"]


def test_no_connection_or_variable_lookups_at_parse_time(dagbag):
    assert dagbag.lookups == 0


def test_dag_conventions(dagbag):
    approved = _approved_tags()
    for dag_id, dag in dagbag.dags.items():
        dag.check_cycle()
        assert set(dag.tags) <= approved, f"{dag_id} has unapproved tags {set(dag.tags) - approved}"
        if dag_id not in MANUAL_DAGS:
            assert dag.timetable.can_be_scheduled, f"{dag_id} needs an explicit schedule, not None"
        assert dag.catchup is False, f"{dag_id}: catchup must be off (backfills are explicit)"
        assert dag.doc_md, f"{dag_id} has no doc_md for the UI"
        for t in dag.tasks:
            if (dag_id, t.task_id) in NO_RETRY:
                assert t.retries == 0
                continue
            assert t.retries is not None and t.retries >= 1, f"{dag_id}.{t.task_id} has retries={t.retries}"
            assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id} has no owner"


def test_train_is_scheduled_on_new_data_and_on_retrain_requests(dagbag):
    train = dagbag.dags["bike_demand_train"]
    condition = train.timetable.asset_condition
    assert type(condition).__name__ == "AssetAny", "either new data or a retrain request must start training"
    assert {a.uri for a in condition.objects} == {"ml://bike_demand/raw", "ml://bike_demand/retrain"}
    ingest = dagbag.dags["bike_demand_ingest"]
    assert [o.uri for o in ingest.get_task("publish_partitions").outlets] == ["ml://bike_demand/raw"]
    assert not ingest.get_task("ingest_partitions").outlets  # only validated partitions are announced
    assert ingest.get_task("validate_partitions").upstream_task_ids == {"ingest_partitions"}
    monitor = dagbag.dags["bike_demand_monitor"].get_task("request_retrain")
    assert [o.uri for o in monitor.outlets] == ["ml://bike_demand/retrain"]


def test_score_runs_once_per_new_raw_partition_key_and_never_on_the_clock(dagbag):
    score = dagbag.dags["bike_demand_score"]
    assert type(score.timetable).__name__ == "PartitionedAssetTimetable"  # one run per raw event's key
    assert score.timetable.asset_condition.uri == "ml://bike_demand/raw"
    assert {str(t.value) for t in score.allowed_run_types} == {"asset_triggered", "manual"}
    assert score.get_task("score_partitions").upstream_task_ids == {"resolve_champion"}  # one version per run


def test_gate_task_links_to_the_model_card_and_promotion_follows_registration(dagbag):
    for name in ("bike_demand", "adult_income"):
        train = dagbag.dags[f"{name}_train"]
        gate = train.get_task("gate_model")
        assert [link.name for link in gate.operator_extra_links] == ["Model card"]
        check = dagbag.dags[f"{name}_monitor"].get_task("check_drift")
        assert [link.name for link in check.operator_extra_links] == ["Drift report"]
        assert train.get_task("promote_model").upstream_task_ids == {"gate_model", "register_model", "train_model"}
        assert "approve_promotion" not in train.task_ids  # approval is off in both shipped specs


def test_spec_with_approval_puts_a_hitl_approval_between_registration_and_promotion(tmp_path, monkeypatch):
    import yaml

    from mlops_airflow.factory import build_pipeline_dags
    from tasks.spec import load_spec

    raw = yaml.safe_load((REPO / "config" / "pipelines" / "adult_income.yaml").read_text())
    raw["gate"]["approval"] = {"required": True, "timeout_hours": 48, "assigned_users": ["risk-officer"]}
    (tmp_path / "adult_income.yaml").write_text(yaml.safe_dump(raw))
    train = build_pipeline_dags(load_spec(tmp_path / "adult_income.yaml"))["adult_income_train"]
    approval = train.get_task("approve_promotion")
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    assert isinstance(approval, ApprovalOperator) and type(approval).__name__ == "PromotionApproval"
    assert approval.params.get_param("reason").schema["minLength"] == 1  # the form's required reason
    assert approval.upstream_task_ids == {"register_model"}
    assert "approve_promotion" in train.get_task("promote_model").upstream_task_ids
    assert approval.response_timeout.total_seconds() == 48 * 3600
    assert [u["id"] for u in approval.assigned_users] == ["risk-officer"]
    assert "model_card_url" in approval.body and "gate_summary" in approval.body


_PROBE = """
import json, os, sys, time, runpy
import airflow.sdk  # the dag-processor has this loaded already; time only the file's own work
from airflow.providers.standard.decorators import short_circuit, sensor  # noqa: F401 - same
if os.environ.get("ML_ENV") == "prod":  # kubernetes mode: the provider is loaded once per processor as well
    import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401
before = set(sys.modules)
t0 = time.perf_counter()
runpy.run_path(sys.argv[1])
elapsed = time.perf_counter() - t0
print(json.dumps({"elapsed": elapsed, "new": sorted(set(sys.modules) - before)}))
"""


@pytest.mark.parametrize("ml_env", ["local", "prod"])
@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_parse_is_fast_and_imports_nothing_heavy(path, ml_env):
    import os

    env = dict(os.environ, ML_ENV=ml_env)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=120, cwd=REPO, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = sorted({m.split(".")[0] for m in probe["new"]} & set(HEAVY))
    assert heavy == [], f"{path.name} imports {heavy} at parse time"
    assert probe["elapsed"] < PARSE_BUDGET_S, f"{path.name} ({ml_env}) took {probe['elapsed']:.2f}s to parse"


def test_the_hand_written_weekly_retrain_is_the_train_dag_from_the_same_blocks_after_a_pre_step(dagbag):
    weekly, train = dagbag.dags["bike_demand_weekly_retrain"], dagbag.dags["bike_demand_train"]
    assert weekly.timetable.expression == "0 0 * * 0" and weekly.max_active_runs == 1  # @weekly
    assert set(weekly.task_ids) == set(train.task_ids) | {"last_full_week"}
    for t in train.tasks:  # the same stages, the same wiring, the same operators and links
        mine = weekly.get_task(t.task_id)
        extra = {"last_full_week"} if t.task_id == "plan_training" else set()
        assert mine.upstream_task_ids == t.upstream_task_ids | extra, t.task_id
        assert type(mine) is type(t) and len(mine.operator_extra_links) == len(t.operator_extra_links), t.task_id


def test_last_full_week_is_the_sunday_before_the_newest_partition_and_refuses_an_empty_store(data_root, layout):
    import importlib.util

    from airflow.sdk.exceptions import AirflowFailException

    path = REPO / "dags" / "bike_demand_weekly_retrain.py"
    module_spec = importlib.util.spec_from_file_location("weekly_retrain_under_test", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    pre_step = module.last_full_week.function
    with pytest.raises(AirflowFailException, match="no raw partition of bike_demand yet: run bike_demand_ingest"):
        pre_step("bike_demand")
    for day in ("2011-06-17", "2011-06-20", "2011-06-18"):  # 2011-06-19 is a Sunday, 06-20 a Monday
        part = layout.raw_partition("bike_demand", day)
        part.parent.mkdir(parents=True)
        part.write_bytes(b"")
    assert pre_step("bike_demand") == "2011-06-19"
    (layout.raw_partition("bike_demand", "2011-06-20")).unlink()
    assert pre_step("bike_demand") == "2011-06-12"  # a Saturday's newest: the week before


def test_a_task_process_builds_only_the_dags_of_its_own_pipeline(dagbag, monkeypatch):
    """Under the task runner's parsing context every DAG is still found, alone with its pipeline's siblings."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.context import _AIRFLOW_PARSING_CONTEXT_DAG_ID

    from tasks.spec import list_specs

    names = [s.name for s in list_specs()]
    path = str(REPO / "dags" / "pipelines.py")
    every = {d for d, dag in dagbag.dags.items() if dag.fileloc == path}
    assert len(every) > 20
    for dag_id in sorted(every):
        monkeypatch.setenv(_AIRFLOW_PARSING_CONTEXT_DAG_ID, dag_id)
        bag = DagBag(dag_folder=path)
        assert bag.import_errors == {}
        assert dag_id in bag.dag_ids and set(bag.dag_ids) <= every, dag_id
        # one pipeline's six DAGs (and another's six where its name prefixes this one's, as "bike" would)
        expected = 1 if dag_id == "rollback" else 6 * sum(dag_id.startswith(f"{n}_") for n in names)
        assert len(bag.dag_ids) == expected, (dag_id, bag.dag_ids)
        assert bag.dags[dag_id].task_dict.keys() == dagbag.dags[dag_id].task_dict.keys()
