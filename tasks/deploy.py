"""Deploy: ask the running model server to load the new champion and check that it serves it."""

from __future__ import annotations

import logging
from typing import Any

import httpx

log = logging.getLogger(__name__)


class DeployError(RuntimeError):
    """The model server is unreachable, refused the new version, or serves another one afterwards."""


def deploy_champion(serving_url: str, name: str, version: str, timeout_s: float = 60) -> dict[str, Any]:
    """Make the server at ``serving_url`` serve ``name`` version ``version`` (its ``@champion``).

    The server loads the new version beside the old one and smoke-tests it before switching; if that
    fails the old version keeps serving and this raises with the server's reason.

    Returns:
        The server's ``/health`` entry for the model after the switch.

    Raises:
        DeployError: Unreachable server, failed reload, or a version mismatch afterwards.
    """
    base = serving_url.rstrip("/")
    try:
        reply = httpx.post(f"{base}/admin/reload", json={"model": name}, timeout=timeout_s)
        health = httpx.get(f"{base}/health", timeout=10)
    except httpx.HTTPError as exc:
        raise DeployError(
            f"model server at {base} is unreachable ({exc}); is it running? (make demo starts it)"
        ) from exc
    if reply.status_code != 200:
        raise DeployError(f"model server refused {name} v{version}: HTTP {reply.status_code} {reply.text}")
    served = (health.json().get("models") or {}).get(name) or {}
    if str(served.get("version")) != str(version):
        raise DeployError(f"after reload the server serves {name} v{served.get('version')}, expected v{version}")
    log.info("model server %s now serves %s v%s", base, name, version)
    return dict(served)
