"""The model server's readiness rule on Kubernetes, and ``python -m tasks.serving.ready`` (the same check as a command).

Ready means: the default pipeline serves a model that passed its load-time smoke test (a version that fails
it is never served), and every version pinned in the pod template (``MLP_SERVING_VERSIONS``, a JSON object
``{pipeline: version}`` that the deploy stage patches) is the one served. A rollout's new pods therefore
become ready only once they serve the pinned, smoke-tested version, and the Deployment keeps the old pods
serving until then.

The server applies the rule itself (``GET /ready``: 200, or 503 saying why; :func:`not_ready` over its
models' states), which is what the Deployment's readiness probe asks. ``python -m tasks.serving.ready`` asks
the same route (exit status 0: ready; 1: not ready, the reason on stderr) for an exec probe or a shell.
Standard library only: the probe runs every few seconds.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

PINS_ENV = "MLP_SERVING_VERSIONS"
"""The pod template's pinned versions: ``{"<pipeline>": "<version>"}`` (JSON)."""


def pinned(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The versions pinned in this pod's environment (an empty object: none pinned).

    Raises:
        ValueError: The variable is not a JSON object.
    """
    raw = (environ if environ is not None else dict(os.environ)).get(PINS_ENV) or "{}"
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{PINS_ENV} must be a JSON object {{pipeline: version}}, got {raw!r}")
    return {str(k): str(v) for k, v in value.items()}


def not_ready(default: str, models: dict[str, dict[str, Any]], pins: dict[str, str]) -> tuple[str, str] | None:
    """``(error code, why)`` when a server whose models stand as ``models`` is not ready; None when it is.

    Args:
        default: The pipeline ``/predict`` answers for: it must serve.
        models: Each pipeline's ``/health`` entry (``state``: loading | serving | failed | no_champion,
            ``version``, ``error``; ``smoke_test_failed``: its last load failed the smoke test).
        pins: The pinned versions (:func:`pinned`): each pinned pipeline must serve exactly that version.
    """
    for name in dict.fromkeys([default, *pins]):
        model = models.get(name)
        want = f" (v{pins[name]} pinned)" if name in pins else ""
        if model is None:
            return "unknown_model", f"{name}{want} is not a pipeline this server serves"
        state, served = model.get("state"), model.get("version")
        if state == "serving":
            if name in pins and str(served) != pins[name]:
                return "version_not_pinned", f"{name} serves v{served} while v{pins[name]} is pinned"
            continue
        if state == "loading":
            return "model_loading", f"no model loaded yet: {name}{want} is still loading"
        if state == "no_champion":
            return "no_champion", f"no model loaded: {name}{want} has no champion yet"
        code = "smoke_test_failed" if model.get("smoke_test_failed") else "model_unavailable"
        return code, f"{name}{want} is not served: {model.get('error') or state}"
    return None


def main(url: str | None = None, timeout_s: float = 3.0) -> int:
    """Ask ``url`` (default ``http://127.0.0.1:$MLP_SERVING_PORT/ready``); 0 when it answers 200."""
    url = url or f"http://127.0.0.1:{os.environ.get('MLP_SERVING_PORT', '8000')}/ready"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):  # noqa: S310 - a fixed local http URL
            return 0
    except urllib.error.HTTPError as exc:
        try:
            body = json.load(exc)
        except ValueError:
            body = None
        why = str(body["detail"]) if isinstance(body, dict) and "detail" in body else f"HTTP {exc.code}"
    except OSError as exc:
        why = f"{url}: {exc}"
    print(f"not ready: {why}", file=sys.stderr)  # noqa: T201 - the probe's message (kubectl describe pod)
    return 1


if __name__ == "__main__":
    sys.exit(main())
