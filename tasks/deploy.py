"""Deploy: ask the running model server to switch to a version (blue/green) and check that it serves it."""

from __future__ import annotations

import logging
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
    """Make the model server serve ``version`` (:func:`deploy_version`); if it refuses, the champion alias goes back.

    The server checks the admin token (``settings.admin_token``) and its reload policy, and records the reload
    (``serve`` / ``serve_refused``) in the promotion ledger as ``<actor> via admin token``. After a refusal
    the champion alias returns to the version the server still serves, recorded as ``deploy_failed``.

    Raises:
        DeployError: The server is unreachable (retryable), refused the token (permanent) or refused the
            version (permanent; the old version keeps serving and the ledger records ``deploy_failed``).
    """
    from tasks.ledger import default_actor
    from tasks.registry import revert_failed_deploy

    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    try:
        return deploy_version(
            settings.serving_url, name, version, settings.serving_timeout_s, token, actor or default_actor()
        )
    except DeployRefusedError as exc:
        reverted = revert_failed_deploy(settings, name, version, exc.serving, str(exc), actor)
        kept = f"champion alias back on v{reverted['champion']}" if reverted["reverted"] else "champion alias unchanged"
        raise DeployRefusedError(f"{exc} ({kept}; recorded in the promotion ledger)", exc.serving) from exc
