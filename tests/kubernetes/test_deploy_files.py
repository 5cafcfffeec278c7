"""The deployment files agree with the settings the code reads (no cluster or engine here to apply them)."""

from __future__ import annotations

import re

import yaml

from tasks.settings import load_settings
from tests.conftest import REPO

PROD = load_settings("prod").kubernetes


def _docs(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]


def test_helm_values_match_the_prod_layer() -> None:
    values = yaml.safe_load((REPO / "deploy/helm/values.yaml").read_text())
    assert values["executor"] in {"KubernetesExecutor", "CeleryExecutor"}
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["ML_ENV"] == "prod" and env["MLP_DATA_ROOT"] == PROD.data_mount and env["MLP_TASK_IMAGE"] == PROD.image
    assert {s["secretName"] for s in values["secret"]} == {PROD.mlflow_secret, "ml-ledger", "ml-admin-token"}
    assert {s["envName"] for s in values["secret"]} >= {"MLFLOW_TRACKING_URI", "MLP_LEDGER_URI", "MLP_ADMIN_TOKEN"}
    claim = values["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == PROD.shared_store_claim and values["volumeMounts"][0]["mountPath"] == PROD.data_mount
    assert values["config"]["kubernetes_executor"]["namespace"] == PROD.namespace
    assert values["postgresql"]["enabled"] is False and "metadataSecretName" in values["data"]


def test_cluster_objects_match_the_prod_layer() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _docs("deploy/k8s/ml-pipelines.yaml")}
    pvc = docs[("PersistentVolumeClaim", PROD.shared_store_claim)]
    assert pvc["metadata"]["namespace"] == PROD.namespace and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert ("ServiceAccount", PROD.service_account) in docs
    role = docs[("Role", "stage-pod-launcher")]
    pod_rule = next(r for r in role["rules"] if r["resources"] == ["pods"])
    assert {"create", "get", "list", "watch", "delete", "patch"} <= set(pod_rule["verbs"])
    values = yaml.safe_load((REPO / "deploy/helm/values.yaml").read_text())
    binding = docs[("RoleBinding", "airflow-launches-stage-pods")]
    assert binding["subjects"][0]["name"] == values["workers"]["serviceAccount"]["name"]


def test_compose_has_health_checks_and_no_committed_secrets() -> None:
    text = (REPO / "docker-compose.yaml").read_text()
    services = yaml.safe_load(text)["services"]
    assert {"postgres", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
            "mlflow", "model-server"} <= set(services)  # fmt: skip
    for name, service in services.items():
        if name != "airflow-init":
            assert "healthcheck" in service, f"{name} has no health check"
        assert isinstance(service["command"] if "command" in service else [], list), f"{name}: command must be argv"
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    command = services["mlflow"]["command"]
    assert command[command.index("--backend-store-uri") + 1].startswith("postgresql+psycopg2://")
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = {line.split("=", 1)[0] for line in (REPO / ".env.example").read_text().splitlines() if "=" in line}
    assert required and required <= example, f".env.example lacks {required - example}"
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_task_image_user_matches_the_pod_template() -> None:
    dockerfile = (REPO / "docker/Dockerfile").read_text()
    template = yaml.safe_load((REPO / "include/pod_templates/stage.yaml").read_text())
    uid = template["spec"]["securityContext"]["runAsUser"]
    assert f"--uid {uid}" in dockerfile and f"USER {uid}:{uid}" in dockerfile
    # the task image's default torch is the package index's (the CUDA build for Linux x86_64), never another host's
    assert re.search(r"^ARG TORCH_SOURCE=cuda-index$", dockerfile, re.M) and "download.pytorch.org" not in dockerfile
    assert re.search(r"torch==2\.13\.0", (REPO / "requirements.lock").read_text())
