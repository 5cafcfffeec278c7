"""Every pod the DAGs would create in kubernetes mode, rendered by the provider and checked field by field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks.settings import Settings
from tasks.spec import HEAVY_STAGES, PipelineSpec, load_spec
from tests.conftest import REPO, write_spec
from tests.kubernetes.conftest import CLAIM, SECRET

STAGE_OF_TASK = {
    "validate_data": "validate_data",
    "validate_partitions": "validate_partitions",  # ingest-time validation
    "build_features": "build_features",
    "train_model": "train_model",
    "evaluate_model": "evaluate_model",
    "check_drift": "check_drift",
    "score_partitions": "score_partitions",  # batch scoring
}


def _pods(spec: PipelineSpec, settings: Settings) -> dict[str, tuple[Any, Any]]:
    """task_id -> (operator, rendered V1Pod) for every pod-backed task of the pipeline's DAGs."""
    from mlops_airflow.factory import build_pipeline_dags
    from mlops_airflow.pods import StagePodOperator

    out = {}
    for dag in build_pipeline_dags(spec, settings).values():
        for op in dag.tasks:
            if isinstance(op, StagePodOperator):
                out[op.task_id] = (op, op.build_pod_request_obj(dry_run=True))
    return out


def _env(pod: Any) -> dict[str, Any]:
    return {e.name: e for e in pod.spec.containers[0].env}


def test_heavy_stages_and_only_they_become_pods(prod_settings: Settings) -> None:
    pods = _pods(load_spec("bike_demand"), prod_settings)
    assert set(pods) == set(STAGE_OF_TASK)
    # search_trials is a mapped pod, only where the spec sets training.search.trials_per_pod (tests below)
    assert {op.stage for op, _ in pods.values()} == set(HEAVY_STAGES) - {"search_trials"}


def test_pod_runs_the_stage_cli_in_the_task_image(prod_settings: Settings) -> None:
    kube = prod_settings.kubernetes
    for task_id, (op, pod) in _pods(load_spec("bike_demand"), prod_settings).items():
        container = pod.spec.containers[0]
        assert container.image == kube.image == "ghcr.io/mlops-airflow/tasks:0.1.0"
        assert container.image_pull_policy == "IfNotPresent"
        assert container.command == ["python", "-m", "tasks"]
        assert container.args[:3] == [STAGE_OF_TASK[task_id], "--pipeline", "bike_demand"]
        assert pod.metadata.namespace == "ml-pipelines" and pod.spec.service_account_name == "ml-tasks"
        assert pod.spec.restart_policy == "Never"
        labels = pod.metadata.labels
        assert labels["mlops/pipeline"] == "bike_demand" and labels["mlops/stage"] == op.stage
        assert labels["app.kubernetes.io/part-of"] == "mlops-airflow"  # from settings
        assert labels["app.kubernetes.io/name"] == "mlops-stage"  # from the pod template
        # results come back through the shared store, not the XCom sidecar
        assert op.do_xcom_push is False and [c.name for c in pod.spec.containers] == ["base"]


def test_pod_environment_and_secrets(prod_settings: Settings) -> None:
    for _, pod in _pods(load_spec("bike_demand"), prod_settings).values():
        env = _env(pod)
        assert env["ML_ENV"].value == "prod" and env["MLP_DATA_ROOT"].value == "/data"
        assert env["MLP_EXECUTION_MODE"].value == "local", "a stage pod must not launch pods itself"
        for name, key in (
            ("MLFLOW_TRACKING_URI", "tracking_uri"),
            ("MLFLOW_TRACKING_USERNAME", "username"),
            ("MLFLOW_TRACKING_PASSWORD", "password"),
            ("MLP_SEARCH_STORAGE_URL", "search_storage_url"),  # optional: a journal file without it
        ):
            ref = env[name].value_from.secret_key_ref
            assert env[name].value is None and (ref.name, ref.key) == (SECRET, key)
        # no credential or tracking URI in plain text anywhere in the pod
        rendered = json.dumps(pod.to_dict(), default=str)
        assert "sqlite:" not in rendered and "mlflow.db" not in rendered and 'password": "' not in rendered


def test_a_sql_sources_url_comes_from_the_pipelines_secret(prod_settings: Settings) -> None:
    spec = load_spec("bike_demand")
    sql = {"url_env": "MLP_TEAM_DB_URL", "conn_id": "team_db", "table": "t", "date_column": "ts"}
    source = spec.source.model_validate(spec.source.model_dump(exclude={"dataset"}) | {"sql": sql})
    for _, pod in _pods(spec.model_copy(update={"source": source}), prod_settings).values():
        var = _env(pod)["MLP_TEAM_DB_URL"]
        ref = var.value_from.secret_key_ref
        assert var.value is None and (ref.name, ref.key, ref.optional) == ("mlops-source-bike-demand", "url", True)


def test_volumes_template_and_timeouts(prod_settings: Settings) -> None:
    kube = prod_settings.kubernetes
    for op, pod in _pods(load_spec("bike_demand"), prod_settings).values():
        volumes = {v.name: v for v in pod.spec.volumes}
        assert volumes["shared-store"].persistent_volume_claim.claim_name == CLAIM
        assert volumes["dshm"].empty_dir.medium == "Memory"  # from include/pod_templates/stage.yaml
        mounts = {m.name: m.mount_path for m in pod.spec.containers[0].volume_mounts}
        assert mounts == {"shared-store": "/data", "dshm": "/dev/shm"}
        assert pod.spec.security_context.run_as_non_root is True
        assert pod.spec.containers[0].security_context.allow_privilege_escalation is False
        # bounded waiting: a pod nobody schedules or starts fails; a runaway stage is stopped
        assert (op.schedule_timeout_seconds, op.startup_timeout_seconds) == (600, 300)
        assert (kube.schedule_timeout_seconds, kube.startup_timeout_seconds) == (600, 300)
        timeout_s = load_spec("bike_demand").stage_resources(op.stage).timeout_minutes * 60
        assert pod.spec.active_deadline_seconds == timeout_s
        assert op.execution_timeout.total_seconds() == timeout_s + 600 + 300
        # cleaned up whatever happens
        assert op.on_finish_action.value == "delete_pod" and op.on_kill_action.value == "delete_pod"


def test_resources_come_from_the_spec_and_lightgbm_stays_on_cpu(prod_settings: Settings) -> None:
    pods = _pods(load_spec("bike_demand"), prod_settings)
    train = pods["train_model"][1].spec.containers[0].resources
    assert train.requests == {"cpu": "2", "memory": "4Gi"}
    assert train.limits == {"cpu": "4", "memory": "8Gi"}
    validate = pods["validate_data"][1].spec.containers[0].resources
    assert validate.requests == {"cpu": "500m", "memory": "2Gi"} and validate.limits == {"cpu": "2", "memory": "4Gi"}
    for _, pod in pods.values():
        assert "nvidia.com/gpu" not in (pod.spec.containers[0].resources.limits or {})
        assert not pod.spec.node_selector and not pod.spec.tolerations
        assert "CUBLAS_WORKSPACE_CONFIG" not in _env(pod)


def test_torch_training_asks_for_a_gpu_node(prod_settings: Settings, tmp_path: Path) -> None:
    folder = write_spec(tmp_path / "specs", model={"family": "torch", "params": {"max_epochs": 50}})
    pods = _pods(load_spec(folder / "bike_demand.yaml"), prod_settings)
    train = pods["train_model"][1]
    assert train.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert train.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in train.spec.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")
    ]
    assert _env(train)["CUBLAS_WORKSPACE_CONFIG"].value == ":4096:8"
    for task_id in ("validate_data", "build_features", "evaluate_model", "check_drift"):
        assert "nvidia.com/gpu" not in (pods[task_id][1].spec.containers[0].resources.limits or {}), task_id


def test_spec_can_keep_torch_on_cpu_or_pin_its_own_gpu_pool(prod_settings: Settings, tmp_path: Path) -> None:
    import yaml

    folder = write_spec(tmp_path / "cpu", model={"family": "torch", "params": {}})
    spec = yaml.safe_load((folder / "bike_demand.yaml").read_text())
    spec["resources"]["train"] |= {"gpu": 0}
    (folder / "bike_demand.yaml").write_text(yaml.safe_dump(spec))
    train = _pods(load_spec(folder / "bike_demand.yaml"), prod_settings)["train_model"][1]
    assert "nvidia.com/gpu" not in train.spec.containers[0].resources.limits and not train.spec.node_selector

    spec["resources"]["train"] |= {
        "gpu": 2,
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    }
    (folder / "bike_demand.yaml").write_text(yaml.safe_dump(spec))
    train = _pods(load_spec(folder / "bike_demand.yaml"), prod_settings)["train_model"][1]
    assert train.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"
    assert train.spec.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert [(t.key, t.value) for t in train.spec.tolerations] == [("dedicated", "ml")]


def test_local_mode_builds_no_pods(data_root: Path) -> None:
    from mlops_airflow.factory import build_pipeline_dags
    from tasks.settings import load_settings

    dags = build_pipeline_dags(load_spec("bike_demand"), load_settings("local"))
    kinds = {type(t).__name__ for d in dags.values() for t in d.tasks}
    assert "StagePodOperator" not in kinds


def test_dag_files_parse_in_kubernetes_mode_without_heavy_imports(prod_settings: Settings) -> None:
    probe = (
        "import json, sys; from airflow.dag_processing.dagbag import DagBag; "
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r}); "
        "kinds = sorted({type(t).__name__ for d in bag.dags.values() for t in d.tasks}); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'pandas','sklearn','lightgbm','torch','mlflow'}); "
        "errors = {k: str(v) for k, v in bag.import_errors.items()}; "
        "print(json.dumps({'errors': errors, 'kinds': kinds, 'heavy': heavy}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=180, env=dict(os.environ)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {} and "StagePodOperator" in result["kinds"] and result["heavy"] == []


@pytest.mark.parametrize("bad", [{"gpu": -1}, {"cpu": "2"}])
def test_bad_resources_are_spec_errors(tmp_path: Path, bad: dict[str, Any]) -> None:
    import yaml

    from tasks.spec import SpecError

    folder = write_spec(tmp_path / "bad")
    spec = yaml.safe_load((folder / "bike_demand.yaml").read_text())
    spec["resources"]["train"] = bad
    (folder / "bike_demand.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="resources"):
        load_spec(folder / "bike_demand.yaml")


def _mapped_search_spec(tmp_path: Path) -> PipelineSpec:
    """The bike spec searching 20 trials in batches of 8, each batch pod with its own resources."""
    import yaml

    folder = write_spec(tmp_path / "mapped")
    raw = yaml.safe_load((folder / "bike_demand.yaml").read_text())
    raw["training"]["search"] |= {"trials": 20, "trials_per_pod": 8}
    raw["resources"]["trial"] = {
        "cpu_request": "1",
        "cpu_limit": "1",
        "memory_request": "1500Mi",
        "timeout_minutes": 20,
    }
    (folder / "bike_demand.yaml").write_text(yaml.safe_dump(raw))
    return load_spec(folder / "bike_demand.yaml")


def test_mapped_trial_batches_run_before_train_in_kubernetes_mode_only(prod_settings: Settings, tmp_path: Path) -> None:
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    from mlops_airflow.factory import build_pipeline_dags
    from mlops_airflow.pods import StagePodOperator
    from tasks.settings import load_settings

    spec = _mapped_search_spec(tmp_path)
    train = build_pipeline_dags(spec, prod_settings)["bike_demand_train"]
    mapped = train.get_task("search_trials")
    assert isinstance(mapped, MappedOperator) and mapped.operator_class is StagePodOperator
    assert mapped.partial_kwargs["stage"] == "search_trials" and mapped.partial_kwargs["retries"] >= 1
    assert list(mapped.expand_input.value) == ["batch"]  # one pod per element of plan_search's list
    assert mapped.expand_input.value["batch"].operator.task_id == "plan_search"
    assert train.get_task("plan_search").upstream_task_ids == {"build_features"}
    assert mapped.upstream_task_ids == {"plan_search", "build_features"}
    assert {"search_trials", "plan_search"} <= train.get_task("train_model").upstream_task_ids
    assert "search_trials" in train.get_task("evaluate_model").get_flat_relative_ids(upstream=True)

    local = build_pipeline_dags(spec, load_settings("local"))["bike_demand_train"]
    assert not {"plan_search", "search_trials"} & set(local.task_ids)  # local mode: train runs every trial itself
    assert local.get_task("train_model").upstream_task_ids == {"build_features"}
    shipped = build_pipeline_dags(load_spec("bike_demand"), prod_settings)["bike_demand_train"]
    assert "search_trials" not in shipped.task_ids  # no trials_per_pod: the trials stay in the train pod


def test_a_mapped_trial_pod_asks_for_the_trial_resources_and_gets_the_search_storage(
    prod_settings: Settings, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from mlops_airflow.factory import build_pipeline_dags

    spec = _mapped_search_spec(tmp_path)
    mapped = build_pipeline_dags(spec, prod_settings)["bike_demand_train"].get_task("search_trials")
    batch = {"family": "lightgbm", "trials": 8, "index": 1, "parent_run_id": "abc"}
    op = mapped.unmap({"batch": batch})
    pod = op.build_pod_request_obj(dry_run=True)
    container = pod.spec.containers[0]
    assert container.resources.requests == {"cpu": "1", "memory": "1500Mi"}  # resources.trial
    assert container.resources.limits == {"cpu": "1", "memory": "4Gi"}  # the rest from resources.default
    assert pod.spec.active_deadline_seconds == 20 * 60
    assert container.args[:3] == ["search_trials", "--pipeline", "bike_demand"]
    assert pod.metadata.labels["mlops/stage"] == "search_trials"
    env = _env(pod)
    ref = env["MLP_SEARCH_STORAGE_URL"].value_from.secret_key_ref
    assert env["MLP_SEARCH_STORAGE_URL"].value is None and (ref.name, ref.key) == (SECRET, "search_storage_url")
    assert {v.name for v in pod.spec.volumes} >= {"shared-store"}  # the journal's home when no RDB is set

    op.stage_inputs = {"datasets": {"train_raw": "/x"}}  # what Airflow renders from build_features' XCom
    ctx = {"run_id": "r1", "ti": SimpleNamespace(try_number=1, map_index=3), "dag_run": SimpleNamespace()}
    local = op.prepare(ctx)
    assert local.name == "search_trials.map3.try1.json"  # each mapped pod its own manifest
    args = json.loads(op.arguments[op.arguments.index("--args") + 1])
    assert args == {"datasets": {"train_raw": "/x"}, "run_id": "r1", "batch": batch}
