"""Deploy: make the model server serve a version, and check that it does.

Locally (and in compose) one server switches in place (blue/green, :func:`deploy_version`). On Kubernetes
(``kubernetes.serving_deployment`` set, as in ``ML_ENV=prod``) the version is pinned in the Deployment's pod
template and rolled out (:func:`rollout_version`): the rolling update keeps the old pods serving until new
ones are ready, and a rollout not ready within its deadline is rolled back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from tasks.errors import PermanentError

if TYPE_CHECKING:
    from tasks.settings import Settings

log = logging.getLogger(__name__)


class DeployError(RuntimeError):
    """The model server is unreachable or serves another version afterwards (retrying may help)."""


class DeployRefusedError(PermanentError, DeployError):
    """The server refused the version: its reload policy, no such version, or a failed smoke test.

    ``serving`` is the version it still serves (None if it served nothing).
    """

    def __init__(self, message: str, serving: str | None) -> None:
        """Keep the version the server still serves."""
        super().__init__(message)
        self.serving = serving


class DeployUnauthorizedError(PermanentError, DeployError):
    """The server's admin API is off or refused our token: a configuration error, retrying will not help."""


class RolloutFailedError(DeployRefusedError):
    """The Deployment's new pods did not become ready in time; it was rolled back to the previous template."""


_AUTH_ERRORS = {"unauthorized", "admin_disabled", "forbidden"}


def _served(base: str, name: str) -> str | None:
    health = httpx.get(f"{base}/health", timeout=10)
    version = ((health.json().get("models") or {}).get(name) or {}).get("version")
    return None if version is None else str(version)


def _body(reply: httpx.Response) -> tuple[str, str]:
    """``(error code, detail)`` of an error answer (the server's ``{"detail", "error"}``, or the raw text)."""
    try:
        body = reply.json()
    except ValueError:
        return "", reply.text[:500]
    if not isinstance(body, dict):
        return "", reply.text[:500]
    return str(body.get("error", "")), str(body.get("detail", reply.text[:500]))


def deploy_version(
    serving_url: str,
    name: str,
    version: str,
    timeout_s: float = 60,
    token: str | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Make the server at ``serving_url`` serve ``name`` version ``version``.

    The server checks its reload policy (champion, previous or gate-passed), loads the version beside the
    one it serves, smoke-tests it (loads, has a signature, reproduces the offline predictions of holdout
    rows), records the reload in the promotion ledger as ``actor`` and only then switches. On failure the
    old version keeps serving.

    Args:
        serving_url: The model server.
        name: Pipeline / registered model name.
        version: The version to serve.
        timeout_s: Bound on the reload request (loading and smoke-testing take seconds).
        token: The server's admin token (``Settings.admin_token``), sent as ``Authorization: Bearer``.
        actor: Who asks (the Airflow run); the server records it ``via admin token``.

    Returns:
        The server's reload answer (version, previous, why, smoke-test figures).

    Raises:
        DeployRefusedError: The server refused the version; the message carries its reason.
        DeployUnauthorizedError: The admin API is off on the server or refused the token.
        DeployError: Unreachable server, MLflow or the ledger unreachable from it, or a different version
            served afterwards (retrying may help).
    """
    base = serving_url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = {"model": name, "version": str(version), "actor": actor}
    try:
        reply = httpx.post(f"{base}/admin/reload", json=payload, headers=headers, timeout=timeout_s)
        served = _served(base, name)
    except httpx.HTTPError as exc:
        raise DeployError(
            f"model server at {base} is unreachable ({exc}); is it running? (make demo starts it)"
        ) from exc
    error, detail = _body(reply) if reply.status_code != 200 else ("", "")
    if reply.status_code in (401, 403) and (error in _AUTH_ERRORS or not error):
        raise DeployUnauthorizedError(
            f"model server at {base} refused the admin request (HTTP {reply.status_code}: {detail}); give the "
            "Airflow workers the server's admin token (MLP_ADMIN_TOKEN or MLP_ADMIN_TOKEN_FILE)"
        )
    if reply.status_code in (403, 409):
        raise DeployRefusedError(f"model server refused {name} v{version}: {detail}", served)
    if reply.status_code != 200:
        raise DeployError(
            f"model server answered HTTP {reply.status_code} to the reload of {name} v{version}: {detail}"
        )
    if served != str(version):
        raise DeployError(f"after reload the server serves {name} v{served}, expected v{version}")
    log.info("model server %s now serves %s v%s", base, name, version)
    return dict(reply.json())


def deploy_model(settings: Settings, name: str, version: str, actor: str | None = None) -> dict[str, Any]:
    """Make the model server serve ``version``; if it refuses (or the rollout fails), the champion alias goes back.

    With ``kubernetes.serving_deployment`` set (prod) the version is rolled out through the Deployment
    (:func:`roll_out`); otherwise the server switches in place (:func:`deploy_version`): it checks the admin
    token (``settings.admin_token``) and its reload policy, and records the reload (``serve`` /
    ``serve_refused``) in the promotion ledger as ``<actor> via admin token``. After a refusal or a failed
    rollout the champion alias returns to the version still served, recorded as ``deploy_failed``.

    Raises:
        DeployError: The server is unreachable (retryable), refused the token (permanent) or refused the
            version (permanent; the old version keeps serving and the ledger records ``deploy_failed``).
    """
    from tasks.ledger import default_actor
    from tasks.registry import revert_failed_deploy

    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    try:
        if settings.kubernetes.serving_deployment:
            return roll_out(settings, name, version, actor or default_actor())
        return deploy_version(
            settings.serving_url, name, version, settings.serving_timeout_s, token, actor or default_actor()
        )
    except DeployRefusedError as exc:
        reverted = revert_failed_deploy(settings, name, version, exc.serving, str(exc), actor)
        kept = f"champion alias back on v{reverted['champion']}" if reverted["reverted"] else "champion alias unchanged"
        raise type(exc)(f"{exc} ({kept}; recorded in the promotion ledger)", exc.serving) from exc


# ---- on Kubernetes: the pinned version in the Deployment's pod template ----

PINS_ENV = "MLP_SERVING_VERSIONS"
"""The pod template's ``{pipeline: version}`` (JSON); the readiness probe (tasks/serving/ready.py) waits for it."""
ROLLOUT_POLL_S = 5.0


def _field(obj: Any, *names: str) -> Any:
    """``obj.a.b`` for the client's models or plain dicts (camelCase keys), None along the way stays None."""
    for name in names:
        if obj is None:
            return None
        if isinstance(obj, dict):
            camel = name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:])
            obj = obj.get(camel, obj.get(name))
        else:
            obj = getattr(obj, name, None)
    return obj


def _pins(deployment: Any, container: str) -> tuple[int, int | None, dict[str, str]]:
    """(container index, index of the pins env var or None, the pinned versions) of the pod template."""
    containers = _field(deployment, "spec", "template", "spec", "containers") or []
    for i, c in enumerate(containers):
        if _field(c, "name") == container:
            for j, var in enumerate(_field(c, "env") or []):
                if _field(var, "name") == PINS_ENV:
                    return i, j, {str(k): str(v) for k, v in json.loads(_field(var, "value") or "{}").items()}
            return i, None, {}
    raise DeployError(f"the Deployment has no container {container!r} (kubernetes.serving_container)")


def _pin_patch(deployment: Any, container: str, pins: dict[str, str]) -> list[dict[str, Any]]:
    """A JSON patch setting the pins env var of ``container`` (guarded by a test of the value it replaces)."""
    i, j, _ = _pins(deployment, container)
    value = json.dumps(pins, sort_keys=True)
    env = _field(_field(deployment, "spec", "template", "spec", "containers")[i], "env")
    path = f"/spec/template/spec/containers/{i}/env"
    if j is None:
        if not env:
            return [{"op": "add", "path": path, "value": [{"name": PINS_ENV, "value": value}]}]
        return [{"op": "add", "path": f"{path}/-", "value": {"name": PINS_ENV, "value": value}}]
    return [
        {"op": "test", "path": f"{path}/{j}/value", "value": _field(env[j], "value")},
        {"op": "replace", "path": f"{path}/{j}/value", "value": value},
    ]


def rollout_progress(deployment: Any, generation: int) -> tuple[str, str]:
    """``("done" | "waiting" | "failed", why)`` of a Deployment's rollout (``kubectl rollout status``'s rules).

    Failed is the Deployment's own verdict: its ``Progressing`` condition with reason
    ``ProgressDeadlineExceeded`` (no progress within ``progressDeadlineSeconds``).
    """
    status = _field(deployment, "status") or {}
    wanted = _field(deployment, "spec", "replicas")
    wanted = 1 if wanted is None else int(wanted)
    for condition in _field(status, "conditions") or []:
        if _field(condition, "type") == "Progressing" and _field(condition, "reason") == "ProgressDeadlineExceeded":
            return "failed", f"ProgressDeadlineExceeded: {_field(condition, 'message') or 'no progress in time'}"
    observed = _field(status, "observed_generation") or 0
    updated = _field(status, "updated_replicas") or 0
    replicas = _field(status, "replicas") or 0
    available = _field(status, "available_replicas") or 0
    if observed < generation:
        return "waiting", f"the Deployment controller has not seen generation {generation} yet (at {observed})"
    if updated < wanted:
        return "waiting", f"{updated} of {wanted} new replicas updated"
    if replicas > updated:
        return "waiting", f"{replicas - updated} old replicas pending termination"
    if available < updated:
        return "waiting", f"{available} of {updated} updated replicas available (ready: serving the pinned version)"
    return "done", f"{updated} replicas serve the pinned version"


def rollout_version(
    apps: Any,
    namespace: str,
    deployment: str,
    container: str,
    name: str,
    version: str,
    timeout_s: float = 900,
    poll_s: float = ROLLOUT_POLL_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Pin ``name`` v``version`` in the Deployment's pod template and watch the rollout; roll back if it fails.

    ``apps`` is a ``kubernetes.client.AppsV1Api``. The patch changes the template (one env var), so Kubernetes
    starts new pods and keeps the old ones until the new ones are ready (the readiness probe: the pinned
    version, smoke-tested, is served). Pinning the version already rolled out is a no-op (a retried task).

    Returns:
        ``{"version", "previous", "deployment", "namespace", "generation", "why"}``.

    Raises:
        RolloutFailedError: ``ProgressDeadlineExceeded`` (or ``timeout_s`` passed): the template was patched back
            to the previous one (its pods never stopped serving); ``serving`` is the previous pinned version.
        DeployError: The Kubernetes API failed (retrying may help).
    """
    version = str(version)
    current = apps.read_namespaced_deployment(deployment, namespace)
    previous_template = _field(current, "spec", "template")
    _, _, pins = _pins(current, container)
    previous = pins.get(name)
    where = f"Deployment {namespace}/{deployment}"
    if previous == version:
        generation = int(_field(current, "metadata", "generation") or 0)
        log.info("%s already pins %s v%s; watching its rollout", where, name, version)
    else:
        patched = apps.patch_namespaced_deployment(
            deployment, namespace, _pin_patch(current, container, pins | {name: version})
        )
        generation = int(_field(patched, "metadata", "generation") or 0)
        log.info("%s: pinned %s v%s (was v%s), generation %s", where, name, version, previous, generation)
    deadline = clock() + timeout_s
    while True:
        state, why = rollout_progress(apps.read_namespaced_deployment_status(deployment, namespace), generation)
        if state == "done":
            log.info("%s rolled out %s v%s: %s", where, name, version, why)
            return {
                "version": version,
                "previous": previous,
                "deployment": deployment,
                "namespace": namespace,
                "generation": generation,
                "why": why,
            }
        if state == "waiting" and clock() >= deadline:
            state, why = "failed", f"not ready after {timeout_s:g} s ({why})"
        if state == "failed":
            break
        log.info("%s: %s", where, why)
        sleep(poll_s)
    if previous != version:
        template = _serialize(previous_template)
        apps.patch_namespaced_deployment(
            deployment, namespace, [{"op": "replace", "path": "/spec/template", "value": template}]
        )
    kept = f"v{previous} keeps serving" if previous is not None else "its pods keep serving"
    raise RolloutFailedError(
        f"rollout of {name} v{version} on {where} failed: {why}; rolled back to the previous pod template ({kept})",
        previous,
    )


def _serialize(obj: Any) -> Any:
    """A client model as the API's JSON (camelCase), a dict unchanged."""
    if isinstance(obj, dict) or obj is None:
        return obj
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def apps_api(settings: Settings) -> Any:
    """``AppsV1Api`` from the pod's service account (in cluster) or ``kubernetes.config_file``."""
    from kubernetes import client, config

    k8s = settings.kubernetes
    if k8s.in_cluster:
        config.load_incluster_config()
    else:
        config.load_kube_config(config_file=k8s.config_file)
    return client.AppsV1Api()


def roll_out(settings: Settings, name: str, version: str, actor: str, apps: Any = None) -> dict[str, Any]:
    """Roll ``version`` out through the model server's Deployment (:func:`rollout_version`); record ``serve``.

    Raises:
        RolloutFailedError: Not ready within the deadline; rolled back (the caller records ``deploy_failed``).
        DeployError: The Kubernetes API failed (retrying may help).
    """
    from tasks.ledger import Entry
    from tasks.registry import ledger

    k8s = settings.kubernetes
    if not k8s.serving_deployment:
        raise DeployError("kubernetes.serving_deployment is not set: no Deployment to roll out")
    try:
        done = rollout_version(
            apps if apps is not None else apps_api(settings),
            k8s.serving_namespace,
            k8s.serving_deployment,
            k8s.serving_container,
            name,
            version,
            k8s.rollout_timeout_s,
        )
    except DeployError:
        raise
    except Exception as exc:  # the client's ApiException, urllib3 errors: the cluster's API, not the version
        raise DeployError(f"Kubernetes API call for the rollout of {name} v{version} failed: {exc}") from exc
    why = f"rolled out on Deployment {k8s.serving_namespace}/{k8s.serving_deployment}: {done['why']}"
    details = {
        "deployment": k8s.serving_deployment,
        "namespace": k8s.serving_namespace,
        "generation": done["generation"],
    }
    with ledger(settings).transaction(name) as tx:
        tx.append(Entry(name, "serve", actor, why, done["previous"], str(version), details=details))
    return done
