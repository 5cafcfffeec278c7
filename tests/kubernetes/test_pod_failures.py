"""Known failure modes of stage pods, one test each: the provider's real operator against the local kubelet."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tasks.settings import Settings
from tasks.spec import load_spec
from tests.conftest import write_spec
from tests.kubernetes.kubelet import LocalKubelet

RESULTS = "runs/bike_demand/manual__2026-11-24T00_00_00_00_00/results"


@dataclass
class _TI:
    """The task-instance fields the operator reads, and the XComs it pushes."""

    task_id: str
    dag_id: str = "bike_demand_train"
    run_id: str = "manual__2026-11-24T00:00:00+00:00"
    map_index: int = -1
    try_number: int = 1
    xcoms: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def _operator(settings: Settings, stage: str, args: dict[str, Any], spec_dir: Path | None = None, **kube: Any) -> Any:
    from mlops_airflow.pods import stage_pod

    if kube:
        settings = settings.model_copy(update={"kubernetes": settings.kubernetes.model_copy(update=kube)})
    spec = load_spec(spec_dir / "bike_demand.yaml") if spec_dir else load_spec("bike_demand")
    return stage_pod(
        spec,
        settings,
        task_id=f"{stage}_task",
        stage=stage,
        stage_inputs={},
        build_args=lambda inputs, ctx: args,
    )


def _run(op: Any) -> tuple[Any, _TI]:
    ti = _TI(task_id=op.task_id)
    context = {"ti": ti, "run_id": ti.run_id, "dag": object()}
    return op.execute(context), ti


def test_pending_pod_fails_within_the_schedule_timeout_and_is_deleted(
    prod_settings: Settings, kubelet: LocalKubelet, tmp_path: Path
) -> None:
    from mlops_airflow.pods import StagePodError

    kubelet.behaviour = "pending"  # e.g. no GPU node free: the scheduler never places the pod
    torch = write_spec(tmp_path / "specs", model={"family": "torch", "params": {}})
    op = _operator(prod_settings, "train_model", {"datasets": {}}, torch, schedule_timeout_seconds=3)
    op.startup_check_interval_seconds = 1
    started = time.monotonic()
    with pytest.raises(StagePodError) as err:
        _run(op)
    elapsed = time.monotonic() - started
    assert 3 <= elapsed < 15, f"pending pod gave up after {elapsed:.1f}s"
    message = str(err.value)
    assert "'train_model' pod never ran" in message and "scheduled within 3s" in message
    assert "'nvidia.com/gpu': '1'" in message and "nvidia.com/gpu.present" in message  # what it asked for, where
    assert "kubectl -n ml-pipelines describe pod" in message
    assert kubelet.deleted == [kubelet.created[0].metadata.name], "the pending pod must be deleted"


def test_success_returns_the_manifest_result_and_deletes_the_pod(
    prod_settings: Settings, kubelet: LocalKubelet
) -> None:
    op = _operator(prod_settings, "check_drift", {"window_end": "2011-06-21T02:00:00+00:00", "run_id": "m1"})
    result, ti = _run(op)
    assert result["status"] == "no_champion" and ti.xcoms["return_value"] == result
    assert kubelet.deleted == [kubelet.created[0].metadata.name]
    manifest = prod_settings.data_root / RESULTS / "check_drift_task.try1.json"
    assert manifest.is_file()


def test_permanent_stage_error_fails_without_retry_and_deletes_the_pod(
    prod_settings: Settings, kubelet: LocalKubelet
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    op = _operator(prod_settings, "validate_data", {"partitions": [], "run_key": "r1"})
    with pytest.raises(AirflowFailException, match="ValidationFailedError.*only 0 valid partitions"):
        _run(op)
    assert kubelet.runs[0]["returncode"] == 1
    assert kubelet.deleted == [kubelet.created[0].metadata.name]


def test_killed_pod_without_manifest_is_retryable_and_deleted(prod_settings: Settings, kubelet: LocalKubelet) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.pods import StagePodError

    kubelet.behaviour = "oomkilled"  # over its memory limit before it could write anything
    op = _operator(prod_settings, "build_features", {"partitions": ["2011-06-01"], "run_id": "r1"})
    with pytest.raises(StagePodError, match="'build_features' pod failed before reporting") as err:
        _run(op)
    assert not isinstance(err.value, AirflowFailException)  # infrastructure: Airflow retries it
    assert kubelet.deleted == [kubelet.created[0].metadata.name]


def test_a_manifest_left_by_an_earlier_try_does_not_count(prod_settings: Settings, kubelet: LocalKubelet) -> None:
    from mlops_airflow.pods import StagePodError

    # the pod writes to a volume Airflow does not see (misconfigured mount): no manifest where Airflow looks
    kubelet.volumes["ml-data"] = prod_settings.data_root.parent / "elsewhere"
    op = _operator(prod_settings, "check_drift", {"window_end": "2011-06-21T02:00:00+00:00", "run_id": "m1"})
    stale = prod_settings.data_root / RESULTS / "check_drift_task.try1.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"ok": true, "result": {"stale": true}}')
    with pytest.raises(StagePodError, match="wrote no result manifest.*shared store mounted"):
        _run(op)
    assert not stale.exists()


def test_a_retry_after_a_killed_worker_reattaches_to_the_running_pod_and_starts_no_second_one(
    prod_settings: Settings, kubelet: LocalKubelet
) -> None:
    """The provider's ``durable`` default (Airflow 3.3): the pod's identity is in the task state store.

    The worker dies while the pod runs (nothing of its cleanup reaches the cluster); the retry, a new worker
    with the same task state store, finds the pod there, waits for it and returns its result: one pod.
    """
    from tests.kubernetes.kubelet import WorkerKilled

    class TaskStateStore(dict[str, Any]):  # what Airflow 3.3 keeps per task instance across its tries
        def set(self, key: str, value: Any) -> None:
            self[key] = value

    train = _operator(prod_settings, "train_model", {"datasets": {}})
    assert train.durable is True and train.reattach_on_restart is True  # the train stage's pod, as rendered
    store = TaskStateStore()
    args = {"window_end": "2011-06-21T02:00:00+00:00", "run_id": "m1"}
    kubelet.behaviour, kubelet.kill_worker = "background", True
    first = _TI(task_id="check_drift_task", try_number=1)
    with pytest.raises(WorkerKilled):
        _operator(prod_settings, "check_drift", args).execute(
            {"ti": first, "run_id": first.run_id, "dag": object(), "task_state_store": store}
        )
    (pod,) = kubelet.created
    assert store["pod_identifier"]["name"] == pod.metadata.name and not kubelet.deleted

    kubelet.restart_worker()
    assert kubelet.read_namespaced_pod(pod.metadata.name, "ml-pipelines").status.phase == "Running"  # still
    retry = _TI(task_id="check_drift_task", try_number=2)
    result = _operator(prod_settings, "check_drift", args).execute(
        {"ti": retry, "run_id": retry.run_id, "dag": object(), "task_state_store": store}
    )
    assert result["status"] == "no_champion" and retry.xcoms["return_value"] == result
    assert len(kubelet.created) == 1 and len(kubelet.runs) == 1  # no second pod
    assert kubelet.deleted == [pod.metadata.name]  # the retry cleans up the pod it adopted
    assert (prod_settings.data_root / RESULTS / "check_drift_task.try1.json").is_file()  # written by try 1's pod
