"""The runtime part of requirements.lock, for the image: every pin but those only the dev and test groups need.

    python3 docker/runtime_requirements.py < requirements.lock > runtime.txt

uv writes who needs each pin under it (``# via ...``). A pin goes when everything that needs it is the
project's ``dev`` or ``test`` dependency group or a pin that already went (ruff, mypy, pytest, podman-compose
and what only they pull in); the versions of the rest are the lock's, untouched.
"""

from __future__ import annotations

import re
import sys

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+")
GROUP_ONLY = re.compile(r"^mlflow-airflow-lifecycle \(pyproject\.toml:(dev|test)\)$")


def runtime(lock: str) -> list[str]:
    """The lock's pin lines that the runtime needs."""
    needed_by: dict[str, list[str]] = {}
    lines: dict[str, str] = {}
    current = None
    for line in lock.splitlines():
        if m := PIN.match(line):
            current = m.group(1).lower()
            lines[current], needed_by[current] = line, []
        elif current and (via := re.match(r"^\s+#\s+(?:via\s+)?(\S.*)$", line)) and via.group(1) != "via":
            needed_by[current].append(via.group(1).strip().lower())
    dropped: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, vias in needed_by.items():
            if name not in dropped and vias and all(GROUP_ONLY.match(v) or v in dropped for v in vias):
                dropped.add(name)
                changed = True
    return [line for name, line in lines.items() if name not in dropped]


if __name__ == "__main__":
    sys.stdout.write("\n".join(runtime(sys.stdin.read())) + "\n")
