"""What the container tests share: the engine (as `make stack` finds it) and the project image, built here.

Where no engine runs, the calling test is skipped with the reason (a failure under ``CI=true``).

The image keeps one fixed tag, TEST_IMAGE, between runs: it is the build cache. podman's ``rmi`` of a tag also
deletes the untagged layers under it, so removing it would make every run (and the second test of the same
run) rebuild the 2.5 GB venv. A build that changes the image removes the image it replaced; containers,
volumes and networks are always removed.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from scripts.stack import LOCAL_BASE, REPO, Engine, StackError, find_engine, stage_torch_wheel
from tests.conftest import IN_CI, require

CA_BUNDLE = Path("/var/tmp/oci/host-ca-bundle.crt")  # written by ../shared/containers/setup.sh
TEST_IMAGE = "localhost/mlops-test/tasks:cache"


def container_engine() -> Engine:
    """The engine `make stack` would use, with the registry-less base image; skip (CI: fail) where none runs."""
    try:
        engine = find_engine()
    except StackError as exc:
        require(False, f"no container engine here ({exc})")
        raise  # unreachable: require() skipped or failed
    probe = subprocess.run(
        [engine.name, "run", "--rm", LOCAL_BASE, "true"], env=engine.env, capture_output=True, text=True, timeout=300
    )
    require(
        probe.returncode == 0,
        f"{engine.name} cannot run a container of {LOCAL_BASE} ({probe.stderr.strip()[-500:]}); "
        "../shared/containers/setup.sh makes this machine able to",
    )
    return engine


def engine_if_any() -> Engine | None:
    """The engine where containers run here, else None (tests then fall back to local processes); CI: required."""
    try:
        engine = find_engine()
    except StackError as exc:
        require(not IN_CI, f"no container engine here ({exc})")
        return None
    probe = subprocess.run(
        [engine.name, "run", "--rm", LOCAL_BASE, "true"], env=engine.env, capture_output=True, text=True, timeout=300
    )
    require(probe.returncode == 0 or not IN_CI, f"{engine.name} cannot run containers: {probe.stderr[-500:]}")
    return engine if probe.returncode == 0 else None


def image_id(engine: Engine, ref: str) -> str | None:
    """The image ID behind a tag, or None."""
    out = subprocess.run([engine.name, "image", "inspect", "--format", "{{.Id}}", ref], env=engine.env,
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.strip() or None if out.returncode == 0 else None


def drop_replaced(engine: Engine, ref: str, before: str | None) -> None:
    """Remove the image ``ref`` pointed at before a build, when the build replaced it."""
    if before and image_id(engine, ref) != before:
        subprocess.run([engine.name, "rmi", before], env=engine.env, capture_output=True, timeout=300)


def build_project_image(engine: Engine, tag: str = TEST_IMAGE) -> float:
    """``docker/Dockerfile`` built as docker-compose.local.yaml builds it (local base, CPU torch); seconds taken."""
    stage_torch_wheel()
    argv = [engine.name, "build", "-f", "docker/Dockerfile", "-t", tag]
    argv += ["--build-arg", f"BASE={LOCAL_BASE}", "--build-arg", "TORCH_SOURCE=cpu-wheel"]
    if CA_BUNDLE.is_file():
        argv += ["--secret", f"id=ca,src={CA_BUNDLE}"]
    before = image_id(engine, tag)
    started = time.monotonic()
    out = subprocess.run([*argv, "."], env=engine.env, cwd=REPO, capture_output=True, text=True, timeout=2400)
    assert out.returncode == 0, f"image build failed:\n{(out.stdout + out.stderr)[-4000:]}"
    drop_replaced(engine, tag, before)
    return time.monotonic() - started
