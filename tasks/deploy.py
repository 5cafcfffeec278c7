"""Deploy: ask the running model server to switch to a version (blue/green) and check that it serves it."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from tasks.errors import PermanentError

log = logging.getLogger(__name__)


class DeployError(RuntimeError):
    """The model server is unreachable or serves another version afterwards (retrying may help)."""


class DeployRefused(PermanentError, DeployError):
    """The server loaded the new version beside the old one and refused it (failed smoke test).

    ``serving`` is the version it still serves (None if it served nothing).
    """

    def __init__(self, message: str, serving: str | None) -> None:
        """Keep the version the server still serves."""
        super().__init__(message)
        self.serving = serving


def _served(base: str, name: str) -> str | None:
    health = httpx.get(f"{base}/health", timeout=10)
    version = ((health.json().get("models") or {}).get(name) or {}).get("version")
    return None if version is None else str(version)


def deploy_version(serving_url: str, name: str, version: str, timeout_s: float = 60) -> dict[str, Any]:
    """Make the server at ``serving_url`` serve ``name`` version ``version``.

    The server loads the version beside the one it serves, smoke-tests it (loads, has a signature,
    reproduces the offline predictions of holdout rows) and only then switches. On failure the old
    version keeps serving.

    Returns:
        The server's reload answer (version, previous, smoke-test figures).

    Raises:
        DeployRefused: The smoke test failed; the message carries the server's reason.
        DeployError: Unreachable server, or a different version served afterwards.
    """
    base = serving_url.rstrip("/")
    try:
        reply = httpx.post(f"{base}/admin/reload", json={"model": name, "version": str(version)}, timeout=timeout_s)
        served = _served(base, name)
    except httpx.HTTPError as exc:
        raise DeployError(
            f"model server at {base} is unreachable ({exc}); is it running? (make demo starts it)"
        ) from exc
    if reply.status_code == 409:
        detail = reply.json().get("detail", reply.text)
        raise DeployRefused(f"model server refused {name} v{version}: {detail}", served)
    if reply.status_code != 200:
        raise DeployError(
            f"model server answered HTTP {reply.status_code} to the reload of {name} v{version}: {reply.text}"
        )
    if served != str(version):
        raise DeployError(f"after reload the server serves {name} v{served}, expected v{version}")
    log.info("model server %s now serves %s v%s", base, name, version)
    return dict(reply.json())
