#!/usr/bin/env python3
"""The image's health check: the check of the role this container runs, found from its command.

One image serves every role, so ``HEALTHCHECK`` (and docker-compose.yaml's ``healthcheck``) call this script,
which reads the container's command line (PID 1 is tini, whose arguments are the command) and checks:

- ``airflow api-server``: ``GET /api/v2/monitor/health`` on its ``--port`` (8080);
- ``airflow scheduler | dag-processor | triggerer``: ``airflow jobs check --local`` for that job type
  (a live heartbeat of this host's job in the metadata database);
- ``mlflow server``: ``GET /health`` on its ``--port`` (5000);
- ``python -m tasks serve``: ``GET /health`` on its ``--port`` (8000);
- anything else (a stage pod, a one-off command): healthy while it runs.

Exit 0 healthy, 1 unhealthy (with the reason on stderr), as Docker and podman expect.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

JOBS = {"scheduler": "SchedulerJob", "dag-processor": "DagProcessorJob", "triggerer": "TriggererJob"}


def _command() -> list[str]:
    argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    return [a.decode(errors="replace") for a in argv if a]


def _port(argv: list[str], default: int) -> int:
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    return default


def _http(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - a fixed local URL
            if reply.status == 200:
                return 0
            sys.stderr.write(f"{url} answered {reply.status}\n")
    except OSError as exc:
        sys.stderr.write(f"{url}: {exc}\n")
    return 1


def check(argv: list[str]) -> int:
    """The exit status of the health check for a container running ``argv``."""
    words = [Path(a).name for a in argv]
    if "airflow" in words:
        role = words[words.index("airflow") + 1] if words.index("airflow") + 1 < len(words) else ""
        if role == "api-server":
            return _http(f"http://127.0.0.1:{_port(argv, 8080)}/api/v2/monitor/health")
        if role in JOBS:
            out = subprocess.run(
                ["airflow", "jobs", "check", "--job-type", JOBS[role], "--local"], capture_output=True, text=True
            )
            if out.returncode:
                sys.stderr.write((out.stdout + out.stderr)[-500:] + "\n")
            return out.returncode
        return 0
    if "mlflow" in words and "server" in words:
        return _http(f"http://127.0.0.1:{_port(argv, 5000)}/health")
    if "tasks" in words and "serve" in words:
        return _http(f"http://127.0.0.1:{_port(argv, 8000)}/health")
    return 0


if __name__ == "__main__":
    sys.exit(check(sys.argv[1:] or _command()))
