from __future__ import annotations

import copy
import threading

import pytest
import uvicorn

from tasks.deploy import (
    PINS_ENV,
    DeployError,
    DeployRefusedError,
    DeployUnauthorizedError,
    RolloutFailedError,
    deploy_model,
    deploy_version,
    roll_out,
    rollout_version,
)
from tasks.ledger import PromotionLedger
from tasks.serving.app import create_app
from tasks.settings import get_settings
from tests.conftest import free_port, wait_healthy


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(DeployError, match="unreachable"):
        deploy_version(f"http://127.0.0.1:{free_port()}", "bike_demand", "1", timeout_s=2)


def test_deploy_switches_a_running_server_to_the_champion(use_champion_store):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(get_settings(), ["bike_demand"]), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url, token = f"http://127.0.0.1:{port}", get_settings().admin_token.get_secret_value()
    try:
        wait_healthy(url)
        version = use_champion_store["registered"]["version"]
        served = deploy_version(url, "bike_demand", version, token=token, actor="airflow:test")
        assert served["version"] == version and "champion" in served["why"]
        with pytest.raises(
            DeployRefusedError, match=r"has no version 999 in the registry; still serving v1"
        ) as refused:
            deploy_version(url, "bike_demand", "999", token=token)
        assert refused.value.serving == version
        # a deploy without the token, or with a wrong one, is a configuration error: no retry, nothing changes
        with pytest.raises(DeployUnauthorizedError, match=r"HTTP 401: admin endpoints need an Authorization: Bearer"):
            deploy_version(url, "bike_demand", version)
        with pytest.raises(DeployUnauthorizedError, match=r"HTTP 403: wrong admin token.*MLP_ADMIN_TOKEN"):
            deploy_version(url, "bike_demand", version, token="x" * 32)
    finally:
        server.should_exit = True
        thread.join(10)


# ---- on Kubernetes: the pinned version in the Deployment's pod template (a fake AppsV1Api) ----


class FakeApps:
    """An ``AppsV1Api`` that records its calls, applies JSON patches and answers recorded rollout statuses."""

    def __init__(self, statuses: list[dict], pins: str = '{"bike_demand": "1"}') -> None:
        env = [{"name": "ML_ENV", "value": "prod"}, {"name": PINS_ENV, "value": pins}]
        template = {
            "metadata": {"labels": {"app": "m"}},
            "spec": {"containers": [{"name": "model-server", "env": env}]},
        }
        self.deployment = {"metadata": {"generation": 4}, "spec": {"replicas": 2, "template": template}}
        self.statuses, self.calls = list(statuses), []

    def read_namespaced_deployment(self, name, namespace):
        self.calls.append(("read", name, namespace))
        return copy.deepcopy(self.deployment)

    def patch_namespaced_deployment(self, name, namespace, body):
        self.calls.append(("patch", name, namespace, body))
        for op in body:
            *parents, leaf = op["path"].strip("/").split("/")
            node = self.deployment
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            key = int(leaf) if isinstance(node, list) and leaf != "-" else leaf
            if op["op"] == "test":
                assert node[key] == op["value"], "the patch's test failed"
            elif op["op"] == "add" and leaf == "-":
                node.append(op["value"])
            else:
                node[key] = op["value"]
        self.deployment["metadata"]["generation"] += 1
        return copy.deepcopy(self.deployment)

    def read_namespaced_deployment_status(self, name, namespace):
        self.calls.append(("status", name, namespace))
        return {"spec": self.deployment["spec"], "status": self.statuses.pop(0)}


def _status(observed=5, updated=2, replicas=2, available=2, conditions=()):
    return {
        "observedGeneration": observed,
        "updatedReplicas": updated,
        "replicas": replicas,
        "availableReplicas": available,
        "conditions": list(conditions),
    }


DEADLINE = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}


def _prod(settings):
    k8s = settings.kubernetes.model_copy(update={"serving_deployment": "model-server", "rollout_timeout_s": 60})
    return settings.model_copy(update={"kubernetes": k8s})


def test_rollout_pins_the_version_and_waits_for_every_new_replica_to_be_ready(data_root):
    apps = FakeApps(
        [
            _status(observed=4, updated=0),  # the controller has not seen the patch yet
            _status(updated=1, replicas=3, available=1),  # one new pod ready, old ones still serving
            _status(updated=2, replicas=3, available=2),  # an old pod terminating
            _status(),
        ]
    )
    sleeps: list[float] = []
    done = rollout_version(apps, "ml-serving", "model-server", "model-server", "bike_demand", "2", sleep=sleeps.append)
    assert done["version"] == "2" and done["previous"] == "1" and done["generation"] == 5
    read, patch, *statuses = apps.calls
    assert read == ("read", "model-server", "ml-serving") and len(statuses) == 4 and len(sleeps) == 3
    assert patch[3] == [
        {"op": "test", "path": "/spec/template/spec/containers/0/env/1/value", "value": '{"bike_demand": "1"}'},
        {"op": "replace", "path": "/spec/template/spec/containers/0/env/1/value", "value": '{"bike_demand": "2"}'},
    ]
    # a retried task finds the version pinned: no second patch, it only watches
    again = FakeApps([_status(observed=4)], pins='{"bike_demand": "2"}')
    assert rollout_version(again, "ml-serving", "model-server", "model-server", "bike_demand", "2")["previous"] == "2"
    assert [c[0] for c in again.calls] == ["read", "status"]
    # through the stage's entry point: the ledger records who rolled out what
    roll_out(_prod(get_settings()), "bike_demand", "2", "airflow:test", apps=FakeApps([_status()]))
    entry = PromotionLedger(get_settings().ledger_uri).read("bike_demand", 1)[-1]
    assert (entry.action, entry.from_version, entry.to_version, entry.actor) == ("serve", "1", "2", "airflow:test")
    assert (
        entry.details["deployment"] == "model-server"
        and "rolled out on Deployment ml-serving/model-server" in entry.reason
    )


def test_a_rollout_past_its_progress_deadline_is_rolled_back_and_the_stage_fails_with_deploy_failed(
    data_root, monkeypatch
):
    apps = FakeApps(
        [_status(updated=1, replicas=3, available=0), _status(updated=1, replicas=3, conditions=[DEADLINE])]
    )
    before = copy.deepcopy(apps.deployment["spec"]["template"])
    monkeypatch.setattr("tasks.deploy.apps_api", lambda settings: apps)
    with pytest.raises(
        RolloutFailedError,
        match=r"ProgressDeadlineExceeded: too slow; rolled back to the previous pod template \(v1 keeps serving\)",
    ):
        deploy_model(_prod(get_settings()), "bike_demand", "2", actor="airflow:test")
    rollback = apps.calls[-1]
    assert rollback[:3] == ("patch", "model-server", "ml-serving")
    assert rollback[3] == [{"op": "replace", "path": "/spec/template", "value": before}]
    assert apps.deployment["spec"]["template"] == before  # the previous template: its ReplicaSet serves on
    entry = PromotionLedger(get_settings().ledger_uri).read("bike_demand", 1)[-1]
    assert entry.action == "deploy_failed" and entry.from_version == "2" and "ProgressDeadlineExceeded" in entry.reason


def test_new_pods_that_never_become_ready_are_rolled_back_at_the_stages_own_deadline():
    clock = iter(range(0, 1000, 10))
    apps = FakeApps([_status(available=0)] * 20)  # new pods never ready (a failing readiness probe)
    with pytest.raises(RolloutFailedError, match=r"not ready after 30 s \(0 of 2 updated replicas available") as failed:
        rollout_version(
            apps,
            "ml-serving",
            "model-server",
            "model-server",
            "bike_demand",
            "2",
            30,
            1,
            lambda s: None,
            lambda: next(clock),
        )
    assert failed.value.serving == "1" and apps.calls[-1][3][0]["path"] == "/spec/template"
