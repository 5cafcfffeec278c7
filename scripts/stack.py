"""`make stack` / `make stack-down`: docker-compose.yaml with whichever engine is here, validated first.

    python scripts/stack.py validate            # the compose files against the Compose specification
    python scripts/stack.py up [--local|--upstream] [--env-file .env] [--project NAME] [--timeout S]
    python scripts/stack.py down [--volumes]    # stop and remove the containers (and the volumes)
    python scripts/stack.py ps

``up`` validates the compose file(s) (the Compose specification's JSON schema committed in
tests/fixtures/compose-spec.json, YAML without duplicate keys, the expected services), picks the engine
(``docker compose`` where a Docker engine answers, else ``podman-compose`` with podman), writes ``.env`` with
fresh random secrets when there is none, builds, starts, waits until every service is healthy (running the
health checks itself where podman has no systemd to schedule them) and prints where to look.

With podman, ``../shared/containers/setup.sh`` (when present) is run first: it installs podman/runc on a fresh
machine, selects the containers.conf this machine needs and builds the base image ``local/debian:bookworm``.
Where that base image exists (no registry reachable), docker-compose.local.yaml is added (``--local``): the
project image, PostgreSQL and Redis are built on it from the package indexes this machine reaches.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yaml"
LOCAL_OVERRIDE = REPO / "docker-compose.local.yaml"
SCHEMA = REPO / "tests" / "fixtures" / "compose-spec.json"
SETUP = REPO.parent / "shared" / "containers" / "setup.sh"
LOCAL_BASE = "local/debian:bookworm"
PROJECT = "mlops-airflow"
SERVICES = frozenset(
    {
        "postgres",
        "redis",
        "airflow-init",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "mlflow",
        "model-server",
    }
)
ONE_SHOT = frozenset({"airflow-init"})  # runs to completion; every other service stays up and healthy


class StackError(RuntimeError):
    """The compose file is invalid, no engine is usable, or a service did not become healthy."""


# -- the compose file ------------------------------------------------------------------------------------------
class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key repeated in one mapping (PyYAML keeps the last one, silently).

    Keys that a merge (``<<: *anchor``) brings in may be overridden, as YAML intends; keys written twice may not.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping, after checking that no key is written twice in it."""
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_compose(path: Path) -> dict[str, Any]:
    """A compose file as a mapping; duplicate keys and non-mapping documents are errors."""
    try:
        doc = yaml.load(path.read_text(), Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise StackError(f"{path.name}: {exc}") from exc
    if not isinstance(doc, dict):
        raise StackError(f"{path.name}: not a mapping")
    return doc


def schema_errors(doc: dict[str, Any], name: str) -> list[str]:
    """Every violation of the Compose specification's JSON schema, with where it is."""
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{name}: {'/'.join(str(p) for p in err.absolute_path) or '(top)'}: {err.message}"
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file onto a base: mappings merge, sequences and scalars are replaced.

    (Compose appends some sequences, e.g. ports and volumes; the override file sets none of those.)
    """
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: merge(base[k], v) if k in base else v for k, v in override.items()} | {
            k: v for k, v in base.items() if k not in override
        }
    return override


def validate(files: list[Path]) -> dict[str, Any]:
    """Load, schema-check and merge the compose files; the merged model. Raises StackError with every problem."""
    docs = [load_compose(f) for f in files]
    errors = [e for f, d in zip(files, docs, strict=True) for e in schema_errors(d, f.name)]
    merged: dict[str, Any] = {}
    for doc in docs:
        merged = merge(merged, doc)
    errors += schema_errors(merged, "+".join(f.name for f in files)) if len(docs) > 1 else []
    services = set(merged.get("services") or {})
    if services != SERVICES:
        errors.append(f"services {sorted(services)} != expected {sorted(SERVICES)}")
    for name, service in (merged.get("services") or {}).items():
        missing = set(service.get("depends_on") or {}) - services
        if missing:
            errors.append(f"service {name} depends on undefined {sorted(missing)}")
        if "image" not in service and "build" not in service:
            errors.append(f"service {name} has neither image nor build")
    if errors:
        raise StackError("invalid compose file:\n  " + "\n  ".join(errors))
    return merged


# -- .env -----------------------------------------------------------------------------------------------------
def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blank lines skipped), as compose reads a .env file."""
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def write_fresh_env(path: Path, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """``.env.example`` with every ``change-me-...`` placeholder replaced by a fresh random secret (mode 0600)."""
    lines = []
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            if value.startswith("change-me-"):
                value = secrets.token_urlsafe(32)
            value = (overrides or {}).get(key, value)
            values[key] = value
            line = f"{key}={value}"
        lines.append(line)
    for key, value in (overrides or {}).items():
        if key not in values:
            lines.append(f"{key}={value}")
            values[key] = value
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return values


# -- the engine -----------------------------------------------------------------------------------------------
def _run(argv: list[str], env: dict[str, str] | None = None, check: bool = True, **kw: Any) -> str:
    out = subprocess.run(argv, env=env, capture_output=True, text=True, **kw)
    if check and out.returncode != 0:
        raise StackError(f"{' '.join(argv[:6])} ... failed ({out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}")
    return out.stdout


@dataclass
class Engine:
    """A container engine and its compose front end, with the environment they need."""

    name: str  # docker | podman
    compose: list[str]
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def cli(self, *args: str, check: bool = True, timeout: float | None = None) -> str:
        """The engine's own CLI (``docker ...`` / ``podman ...``)."""
        return _run([self.name, *args], env=self.env, check=check, timeout=timeout)

    def version(self) -> tuple[int, ...]:
        """The engine's version, e.g. (4, 3, 1)."""
        fmt = "{{.Client.Version}}"
        text = self.cli("version", "--format", fmt, check=False).strip()
        return tuple(int(p) for p in text.split("-")[0].split(".")[:3] if p.isdigit()) or (0,)

    def image_exists(self, ref: str) -> bool:
        """Whether ``ref`` is in the engine's local image store."""
        argv = ["image", "exists", ref] if self.name == "podman" else ["image", "inspect", ref]
        return subprocess.run([self.name, *argv], env=self.env, capture_output=True).returncode == 0


def podman_env() -> dict[str, str]:
    """This process's environment plus CONTAINERS_CONF from ../shared/containers/setup.sh (run when present).

    BUILDAH_FORMAT=docker: podman builds Docker-format images, which keep the Dockerfile's HEALTHCHECK (the OCI
    format has no field for it), whoever calls ``podman build`` (podman-compose or the tests).
    """
    env = dict(os.environ) | {"BUILDAH_FORMAT": "docker"}
    if SETUP.is_file():
        out = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise StackError(f"{SETUP} failed:\n{(out.stdout + out.stderr)[-3000:]}")
        for line in out.stdout.splitlines():
            if line.startswith("export ") and "=" in line:
                key, value = line[len("export ") :].split("=", 1)
                env[key] = value
    return env


def find_engine() -> Engine:
    """Docker Compose where a Docker engine answers; else podman with podman-compose; else StackError."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        alive = subprocess.run(["docker", "info"], capture_output=True, text=True)
        if probe.returncode == 0 and alive.returncode == 0:
            return Engine("docker", ["docker", "compose"])
    if shutil.which("podman") or SETUP.is_file():
        env = podman_env()
        front = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
        if not shutil.which("podman", path=env.get("PATH")):
            raise StackError("podman is not installed (and ../shared/containers/setup.sh is not here to install it)")
        if not Path(front).is_file():
            raise StackError("podman-compose is not installed: `make install` puts it in .venv")
        return Engine("podman", [front], env)
    raise StackError("no container engine: install Docker (with the compose plugin) or podman and podman-compose")


@dataclass
class Stack:
    """One compose project: its files, .env, name and engine."""

    engine: Engine
    files: list[Path]
    env_file: Path
    project: str = PROJECT

    def compose(self, *args: str, check: bool = True, timeout: float | None = None) -> str:
        """``<compose front end> -p NAME --env-file F -f ... <args>`` from the repository root."""
        argv = [*self.engine.compose, "-p", self.project, "--env-file", str(self.env_file)]
        for f in self.files:
            argv += ["-f", str(f)]
        return _run([*argv, *args], env=self.engine.env, check=check, timeout=timeout, cwd=REPO)

    def up(self, timeout: float) -> None:
        """Build and start every service, detached.

        podman before 4.6 cannot wait for a dependency's health (podman-compose ignores those conditions) and
        fails to start a container whose dependency has a dependency of its own (``--requires`` chains: "not
        found in input list"), so there services start without engine-level dependencies; the images'
        entrypoint waits for what each needs (MLP_WAIT_FOR, Airflow's migrations), as it does on Kubernetes.
        """
        args = ["up", "-d", "--build"]
        if self.engine.name == "podman" and self.engine.version() < (4, 6):
            args.append("--no-deps")
        self.compose(*args, timeout=timeout)

    def containers(self) -> list[dict[str, Any]]:
        """This project's containers: id, service, state, health, exit code."""
        ids = self.engine.cli("ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}").split()
        if not ids:
            return []
        found = []
        for c in json.loads(self.engine.cli("inspect", *ids)):
            state = c["State"]
            health = state.get("Health") or state.get("Healthcheck") or {}
            found.append(
                {
                    "id": c["Id"][:12],
                    "name": c["Name"].lstrip("/"),
                    "service": c["Config"]["Labels"].get("com.docker.compose.service", "?"),
                    "status": state["Status"],
                    "exit_code": state.get("ExitCode", 0),
                    "health": health.get("Status", "") if c["Config"].get("Healthcheck") else "",
                }
            )
        return found

    def logs(self, container: str, tail: int = 60) -> str:
        """The last lines a container wrote."""
        return _run([self.engine.name, "logs", "--tail", str(tail), container], env=self.engine.env, check=False)

    def _problem(self, c: dict[str, Any] | None, service: str) -> str | None:
        """Why ``service`` is not ready yet (None: it is); StackError when it stopped for good."""
        if c is None:
            return f"{service}: no container"
        if service in ONE_SHOT:
            if c["status"] == "exited" and c["exit_code"] != 0:
                raise StackError(f"{service} exited with {c['exit_code']}:\n{self.logs(c['id'])}")
            return None if c["status"] == "exited" else f"{service}: {c['status']}"
        if c["status"] in ("exited", "dead") or (c["status"] != "running" and c["exit_code"]):
            raise StackError(f"{service} stopped ({c['status']}, {c['exit_code']}):\n{self.logs(c['id'])}")
        if c["health"] == "healthy":
            return None
        if self.engine.name == "podman" and c["status"] == "running" and c["health"]:
            # podman schedules health checks with systemd timers; without systemd, run them here. A check that
            # hangs (a loaded machine) is one more "not yet": the wait's own deadline decides, not this call
            try:
                self.engine.cli("healthcheck", "run", c["id"], check=False, timeout=60)
            except subprocess.TimeoutExpired:
                return f"{service}: its health check did not answer within 60 s"
        return f"{service}: {c['status']}/{c['health'] or 'no health check'}"

    def wait_healthy(self, timeout: float = 900, expected: frozenset[str] = SERVICES) -> list[dict[str, Any]]:
        """Until every long-running service is healthy and every one-shot one exited 0; StackError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.containers()
            by_service = {c["service"]: c for c in found}
            problems = [p for s in sorted(expected) if (p := self._problem(by_service.get(s), s))]
            if not problems:
                return found
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {c['service']} ---\n{self.logs(c['id'], 20)}" for c in found)
                raise StackError(f"not healthy after {timeout:.0f}s: {'; '.join(problems)}\n{tails}")
            time.sleep(3)


def make_stack(local: bool | None, env_file: Path, project: str = PROJECT) -> Stack:
    """The engine, and the compose files for it (the local override where the registry-less base image exists)."""
    engine = find_engine()
    if local is None:
        local = engine.image_exists(LOCAL_BASE)
    files = [COMPOSE, LOCAL_OVERRIDE] if local else [COMPOSE]
    if local:
        stage_torch_wheel()
    return Stack(engine, files, env_file, project)


def stage_torch_wheel(source: Path = Path("/opt/wheels")) -> None:
    """The machine's CPU torch wheel into docker/wheels/ (the build context) for TORCH_SOURCE=cpu-wheel builds."""
    wheels = REPO / "docker" / "wheels"
    for wheel in source.glob("torch-*+cpu-*.whl"):
        target = wheels / wheel.name
        if not target.exists():
            try:
                target.hardlink_to(wheel)  # same file system: no copy of a few hundred MB
            except OSError:
                shutil.copy2(wheel, target)


def urls(env: dict[str, str]) -> dict[str, str]:
    """Where the published services answer on this host."""
    host = env.get("BIND_ADDRESS") or "127.0.0.1"
    host = "127.0.0.1" if host == "0.0.0.0" else host
    return {
        "airflow": f"http://{host}:{env.get('AIRFLOW_API_PORT') or 8080}",
        "mlflow": f"http://{host}:{env.get('MLFLOW_PORT') or 5000}",
        "model_server": f"http://{host}:{env.get('MODEL_SERVER_PORT') or 8000}",
    }


# -- commands -------------------------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> None:
    """Validate, build, start, wait for health, print where to look."""
    env_file = Path(args.env_file)
    if not env_file.exists():
        write_fresh_env(env_file)
        print(f"wrote {env_file} from .env.example with fresh random secrets (keep it; never commit it)")
    stack = make_stack(args.local, env_file, args.project)
    validate(stack.files)
    print(f"engine: {' '.join(stack.engine.compose)}; files: {', '.join(f.name for f in stack.files)}")
    started = time.monotonic()
    stack.up(timeout=args.timeout)
    print(f"built and started in {time.monotonic() - started:.0f}s; waiting for the health checks ...")
    stack.wait_healthy(timeout=args.timeout)
    env = read_env(env_file)
    where = urls(env)
    api = next(c["name"] for c in stack.containers() if c["service"] == "airflow-api-server")
    print(f"""healthy after {time.monotonic() - started:.0f}s.
  Airflow UI / REST API  {where["airflow"]}   (user admin; password: {stack.engine.name} exec {api} \\
                         cat /opt/airflow/simple_auth_manager_passwords.json.generated)
  MLflow                 {where["mlflow"]}   (user {env.get("MLFLOW_ADMIN_USER", "admin")}, \
password MLFLOW_ADMIN_PASSWORD in {env_file})
  Model server           {where["model_server"]}/health   POST /predict, /models/<pipeline>/predict
  Containers             {" ".join(stack.engine.compose)} -p {stack.project} ps / logs <service>
  Stop                   make stack-down  (keeps the volumes; python scripts/stack.py down --volumes drops them)""")


def cmd_down(args: argparse.Namespace) -> None:
    """Stop and remove the project's containers (and volumes with --volumes)."""
    env_file = Path(args.env_file)
    stack = make_stack(args.local, env_file if env_file.exists() else REPO / ".env.example", args.project)
    if not env_file.exists():
        stack.env_file = REPO / ".env.example"
    stack.compose("down", *(["-v"] if args.volumes else []), timeout=300)
    print(f"stopped {stack.project}" + (" and removed its volumes" if args.volumes else ""))


def cmd_ps(args: argparse.Namespace) -> None:
    """The project's containers and their health."""
    stack = make_stack(args.local, Path(args.env_file), args.project)
    for c in stack.containers():
        print(f"{c['service']:24} {c['status']:10} {c['health'] or '-':10} {c['name']}")


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("validate", "up", "down", "ps"):
        p = sub.add_parser(name)
        p.add_argument("--env-file", default=str(REPO / ".env"))
        p.add_argument("--project", default=PROJECT)
        where = p.add_mutually_exclusive_group()
        where.add_argument("--local", dest="local", action="store_true", default=None)
        where.add_argument("--upstream", dest="local", action="store_false")
        if name == "up":
            p.add_argument("--timeout", type=float, default=1800, help="seconds for the build, then for health")
        if name == "down":
            p.add_argument("--volumes", action="store_true")
    args = parser.parse_args()
    try:
        if args.command == "validate":
            files = [COMPOSE, LOCAL_OVERRIDE] if args.local is not False else [COMPOSE]
            validate([COMPOSE])
            validate(files)
            print(f"valid: {', '.join(f.name for f in files)} (Compose specification, no duplicate keys, services)")
        else:
            {"up": cmd_up, "down": cmd_down, "ps": cmd_ps}[args.command](args)
    except StackError as exc:
        sys.exit(f"stack: {exc}")


if __name__ == "__main__":
    main()
