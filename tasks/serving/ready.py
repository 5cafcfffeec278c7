"""The model server's readiness check on Kubernetes: ``python -m tasks.serving.ready`` (an exec probe).

Ready means: ``/health`` answers, says ``ok`` (the default pipeline serves a model that passed its load-time
smoke test: a version that fails it is never served), and every version pinned in the pod template
(``MLP_SERVING_VERSIONS``, a JSON object ``{pipeline: version}`` that the deploy stage patches) is the one
served. A rollout's new pods therefore become ready only once they serve the pinned, smoke-tested version,
and the Deployment keeps the old pods serving until then. Exit status 0: ready; 1: not ready (the reason
on stderr). Standard library only: the probe runs every few seconds.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from typing import Any

PINS_ENV = "MLP_SERVING_VERSIONS"
"""The pod template's pinned versions: ``{"<pipeline>": "<version>"}`` (JSON)."""


def pinned(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The versions pinned in this pod's environment (an empty object: none pinned)."""
    raw = (environ if environ is not None else dict(os.environ)).get(PINS_ENV) or "{}"
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{PINS_ENV} must be a JSON object {{pipeline: version}}, got {raw!r}")
    return {str(k): str(v) for k, v in value.items()}


def not_ready(health: dict[str, Any], pins: dict[str, str]) -> str | None:
    """Why a server answering ``health`` is not ready (None: ready)."""
    if health.get("status") != "ok":
        return f"status {health.get('status')!r}"
    models = health.get("models") or {}
    for name, version in pins.items():
        served = (models.get(name) or {}).get("version")
        if served is None or str(served) != version:
            return f"{name} serves v{served}, pinned v{version}"
    return None


def main(url: str | None = None, timeout_s: float = 3.0) -> int:
    """Probe ``url`` (default ``http://127.0.0.1:$PORT/health``); 0 when ready."""
    url = url or f"http://127.0.0.1:{os.environ.get('MLP_SERVING_PORT', '8000')}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 - a fixed local http URL
            health = json.load(reply)
        why = not_ready(health, pinned())
    except (OSError, ValueError) as exc:
        why = f"{url}: {exc}"
    if why is not None:
        print(f"not ready: {why}", file=sys.stderr)  # noqa: T201 - the probe's message (kubectl describe pod)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
