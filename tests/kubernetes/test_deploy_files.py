"""The deployment files agree with the settings the code reads (no cluster or engine here to apply them)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tasks.deploy import PINS_ENV
from tasks.settings import load_settings
from tests.conftest import REPO

PROD = load_settings("prod").kubernetes
SERVING_URL = yaml.safe_load((REPO / "config/prod/settings.yaml").read_text())["serving_url"]  # no env override
MANIFESTS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "deploy").rglob("*.yaml") if "helm" not in p.parts)


def _docs(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]


# ---- every manifest against the Kubernetes OpenAPI schema (the kubernetes client's generated models) ----

_PRIMITIVES = {"str": str, "int": int, "float": (int, float), "bool": bool, "date": str, "datetime": str}


def _container_errors(value: object, type_name: str, where: str) -> list[str] | None:
    """Errors of a ``list[T]`` / ``dict[str, T]`` (``dict(str, T)`` in older clients) value; None: not a container."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        return [e for i, v in enumerate(value) for e in _schema_errors(v, type_name[5:-1], f"{where}[{i}]")]
    if type_name.startswith(("dict[", "dict(")):
        inner = type_name[type_name.index(",") + 1 : -1].strip()
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {type(value).__name__}"]
        return [e for key, v in value.items() for e in _schema_errors(v, inner, f"{where}.{key}")]
    return None


def _schema_errors(value: object, type_name: str, where: str) -> list[str]:
    """Where ``value`` breaks the client's model ``type_name``: unknown fields, wrong types, required fields."""
    import kubernetes.client as k8s

    if type_name == "object":  # IntOrString, RawExtension: any JSON value
        return []
    if (errors := _container_errors(value, type_name, where)) is not None:
        return errors
    if type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        return [] if ok else [f"{where}: expected {type_name}, got {value!r}"]
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} mapping, got {value!r}"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = [f"{where}.{key}: not a field of {type_name}" for key in value if key not in by_json]
    for key, v in value.items():
        if key in by_json and v is not None:
            errors += _schema_errors(v, model.openapi_types[by_json[key]], f"{where}.{key}")
    try:  # the models' own checks: required fields, enums
        model(**{by_json[key]: v for key, v in value.items() if key in by_json})
    except (ValueError, TypeError) as exc:
        errors.append(f"{where}: {exc}")
    return errors


def _model_name(doc: dict) -> str:
    version = doc["apiVersion"].split("/")[-1]
    return f"{version[0].upper()}{version[1:]}{doc['kind']}"


@pytest.mark.parametrize("path", MANIFESTS)
def test_every_manifest_under_deploy_is_valid_against_the_kubernetes_schema(path: str) -> None:
    docs = _docs(path)
    assert docs, f"{path} has no Kubernetes object"
    for doc in docs:
        name = f"{path}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        assert _schema_errors(doc, _model_name(doc), name) == []


def test_the_schema_check_catches_a_misspelt_field_and_a_wrong_type() -> None:
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "2"}}
    bad["spec"] |= {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containers": [{"imag": "x"}]}}}
    errors = _schema_errors(bad, _model_name(bad), "d")
    assert "d.spec.replicas: expected int, got '2'" in errors
    assert "d.spec.template.spec.containers[0].imag: not a field of V1Container" in errors
    assert any("containers[0]" in e and "name" in e for e in errors)  # a container needs a name


def test_the_model_server_objects_match_the_prod_layer() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _docs("deploy/k8s/model-server.yaml")}
    deployment = docs[("Deployment", PROD.serving_deployment)]
    assert deployment["metadata"]["namespace"] == PROD.serving_namespace
    assert f"{PROD.serving_deployment}.{PROD.serving_namespace}.svc" in SERVING_URL
    service = docs[("Service", PROD.serving_deployment)]
    port = int(SERVING_URL.rsplit(":", 1)[1])
    assert (
        service["spec"]["ports"][0]["port"] == port
        and service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    )
    spec = deployment["spec"]
    assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["progressDeadlineSeconds"] <= PROD.rollout_timeout_s  # Kubernetes' verdict comes before ours
    pod = spec["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == PROD.serving_container]
    assert container["image"] == PROD.image and container["command"][:4] == ["python", "-m", "tasks", "serve"]
    assert container["command"][container["command"].index("--port") + 1] == str(port)
    env = {e["name"]: e for e in container["env"]}
    assert env["ML_ENV"]["value"] == "prod" and json.loads(env[PINS_ENV]["value"]) == {}
    # secrets only by reference: the admin token as a mounted key, the database URIs from Secrets
    assert {"MLFLOW_TRACKING_URI", "MLP_LEDGER_URI", "MLP_PREDICTION_LOG_URI"} <= {
        n for n, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})
    }
    values = yaml.safe_load((REPO / "deploy/helm/values.yaml").read_text())
    token = next(s for s in values["secret"] if s["envName"] == "MLP_ADMIN_TOKEN")  # the deploy side's token
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == token["secretName"]]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert env["MLP_ADMIN_TOKEN_FILE"]["value"] == f"{mount['mountPath']}/{token['secretKey']}"
    assert not [
        e for e in env.values() if "TOKEN" in e["name"] and "value" in e and e["name"] != "MLP_ADMIN_TOKEN_FILE"
    ]
    # probes: readiness is the smoke-tested, pinned version (tasks/serving/ready.py); liveness the process
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    pdb, hpa = (
        docs[("PodDisruptionBudget", PROD.serving_deployment)],
        docs[("HorizontalPodAutoscaler", PROD.serving_deployment)],
    )
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"] and pdb["spec"]["minAvailable"] < spec["replicas"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == PROD.serving_deployment and hpa["spec"]["minReplicas"] >= 2
    assert "cpu" in container["resources"]["requests"]  # the autoscaler's utilisation is a share of it
    # the deploy stage (Airflow's workers) may read and patch this Deployment and nothing else
    binding = docs[("RoleBinding", "airflow-deploys-model-server")]
    assert binding["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": values["workers"]["serviceAccount"]["name"],
        "namespace": PROD.namespace,
    }
    rules = docs[("Role", binding["roleRef"]["name"])]["rules"]
    assert {v for r in rules for v in r["verbs"]} == {"get", "patch"} and all(
        r["resourceNames"] == [PROD.serving_deployment] for r in rules
    )


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
