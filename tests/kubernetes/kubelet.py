"""A one-node "cluster" for the kubernetes execution mode tests: the Kubernetes API as the provider calls it.

There is no Kubernetes cluster on these machines, so this stands in for the API server at the client
boundary (``CoreV1Api``): the real ``KubernetesPodOperator`` and ``PodManager`` code runs unchanged against
it. What it does with a pod is what a kubelet would do with the container: with ``engine`` set (podman or
docker, where containers run) it runs the pod's image with ``<engine> run``: the pod's command as the
entrypoint and its arguments, its environment (Secret references resolved from its own secret store), its
volumes (each claim a local folder, mounted where the Airflow worker sees it), the pod's user and fsGroup;
without one, it runs the command as a local process. Either way the pod's mount paths in its environment
and arguments are mapped to the local folders. Then it reports
the phase, exit code and logs. ``behaviour="pending"`` models a pod nobody can schedule.

``behaviour="background"`` runs the pod's process without waiting for it (local processes only): the pod
is ``Running`` until the process ends, as on a real node. With ``kill_worker`` set, the Airflow worker
"dies" the first time it looks at a running pod: that call and every later one raise :class:`WorkerKilled`
(a killed worker makes no more API calls, so its cleanup deletes nothing) until :meth:`restart_worker`.
The pod keeps running meanwhile.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes.client import ApiException
from kubernetes.client import models as k8s

REPO = Path(__file__).resolve().parents[2]


class WorkerKilled(BaseException):  # noqa: N818 - an event, not an error: nothing in the worker may catch it
    """The Airflow worker process was killed (SIGKILL): no handler, no cleanup reaches the cluster."""


@dataclass
class LocalKubelet:
    """Records every pod created, runs it as a process, and records every deletion."""

    volumes: dict[str, Path]
    """PVC claim name -> local folder standing in for it."""
    secrets: dict[str, dict[str, str]]
    image_env: dict[str, str] = field(default_factory=dict)
    """What the image itself would set (Dockerfile ENV), e.g. where its pipeline specs are."""
    behaviour: str = "run"  # run | pending | oomkilled | background
    kill_worker: bool = False
    """With ``behaviour="background"``: the worker dies the first time it sees its pod running."""
    engine: list[str] | None = None
    """``["podman"]`` (with its environment in ``engine_env``) runs pods as containers of ``image``."""
    engine_env: dict[str, str] | None = None
    image: str | None = None
    """The image every pod runs in container mode (the pod's own image name is the registry's, not built here)."""
    host_mounts: list[Path] = field(default_factory=list)
    """Folders also mounted at their own path (a local MLflow store's absolute artifact paths live there)."""
    created: list[k8s.V1Pod] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    _pods: dict[str, k8s.V1Pod] = field(default_factory=dict)
    _logs: dict[str, bytes] = field(default_factory=dict)
    _procs: dict[str, tuple[subprocess.Popen[str], list[str], dict[str, str]]] = field(default_factory=dict)
    _worker_dead: bool = False

    def restart_worker(self) -> None:
        """A new worker process picks the task up (its retry)."""
        self._worker_dead = False

    def _alive(self) -> None:
        if self._worker_dead:
            raise WorkerKilled("the worker was killed: this call never reaches the API server")

    # -- what the provider calls -------------------------------------------------------------------
    @property
    def api_client(self) -> Any:
        """Only used to serialise pods; the real client's serialiser (no connection is made)."""
        from kubernetes.client import ApiClient

        return ApiClient()

    def create_namespaced_pod(self, namespace: str, body: Any, **_: Any) -> k8s.V1Pod:
        self._alive()
        if isinstance(body, dict):  # the provider sends the pod as the JSON the API server receives
            body = self.api_client._ApiClient__deserialize(body, "V1Pod")
        pod = copy.deepcopy(body)
        self.created.append(copy.deepcopy(body))
        pod.metadata.uid = f"uid-{len(self.created)}"
        self._pods[pod.metadata.name] = pod
        if self.behaviour == "pending":
            pod.status = k8s.V1PodStatus(phase="Pending", conditions=[])
        elif self.behaviour == "oomkilled":
            self._finish(pod, 137, "OOMKilled", b"")
        elif self.behaviour == "background":
            self._start(pod)
        else:
            self._run(pod)
        return pod

    def read_namespaced_pod(self, name: str, namespace: str, **_: Any) -> k8s.V1Pod:
        self._alive()
        if name not in self._pods:
            raise ApiException(status=404, reason=f"pods {name!r} not found")
        self._poll(name)
        pod = self._pods[name]
        if self.kill_worker and pod.status.phase == "Running":
            self.kill_worker, self._worker_dead = False, True
            raise WorkerKilled(f"worker killed while {name} runs")
        return copy.deepcopy(pod)

    def list_namespaced_pod(self, namespace: str, label_selector: str = "", **_: Any) -> k8s.V1PodList:
        self._alive()
        for name in list(self._procs):
            self._poll(name)
        items = [copy.deepcopy(p) for p in self._pods.values() if _matches(p.metadata.labels or {}, label_selector)]
        return k8s.V1PodList(items=items)

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **_: Any) -> k8s.V1Pod:
        self._alive()
        labels = (body.get("metadata", {}) if isinstance(body, dict) else {}).get("labels", {})
        self._pods[name].metadata.labels.update(labels)
        return copy.deepcopy(self._pods[name])

    def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> k8s.V1Status:
        self._alive()
        if name in self._procs:  # the kubelet stops the container
            self._procs[name][0].kill()
            self._poll(name)
        self.deleted.append(name)
        self._pods.pop(name, None)
        return k8s.V1Status(status="Success")

    def read_namespaced_pod_log(self, name: str, namespace: str, **_: Any) -> urllib3.HTTPResponse:
        self._alive()
        return urllib3.HTTPResponse(body=_Body(self._logs.get(name, b"")), preload_content=False)

    def list_namespaced_event(self, namespace: str, **_: Any) -> k8s.CoreV1EventList:
        self._alive()
        items = []
        if self.behaviour == "pending":
            items.append(
                k8s.CoreV1Event(
                    metadata=k8s.V1ObjectMeta(uid="ev-1", resource_version="1"),
                    involved_object=k8s.V1ObjectReference(field_path=""),
                    message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    reason="FailedScheduling",
                )
            )
        return k8s.CoreV1EventList(items=items, metadata=k8s.V1ListMeta(resource_version="1"))

    # -- the "kubelet" -----------------------------------------------------------------------------
    def _mounts(self, pod: k8s.V1Pod) -> dict[str, str]:
        claims = {
            v.name: v.persistent_volume_claim.claim_name for v in pod.spec.volumes or [] if v.persistent_volume_claim
        }
        container = pod.spec.containers[0]
        return {
            m.mount_path: str(self.volumes[claims[m.name]]) for m in container.volume_mounts or [] if m.name in claims
        }

    def _env(self, pod: k8s.V1Pod, mounts: dict[str, str], image_defaults: bool = True) -> dict[str, str]:
        env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(REPO / ".local")}
        env = env if image_defaults else {}  # a container has the image's own PATH and HOME
        env |= self.image_env
        for var in pod.spec.containers[0].env or []:
            if var.value_from is not None:
                ref = var.value_from.secret_key_ref
                value = self.secrets.get(ref.name, {}).get(ref.key)
                if value is None and not ref.optional:
                    raise AssertionError(f"pod needs secret {ref.name}/{ref.key}, which does not exist")
                if value is not None:
                    env[var.name] = value
            else:
                env[var.name] = _remap(var.value, mounts)
        return env

    def _command(self, pod: k8s.V1Pod) -> tuple[list[str], dict[str, str]]:
        container = pod.spec.containers[0]
        mounts = self._mounts(pod)
        command = [_remap(a, mounts) for a in [*container.command, *container.args]]
        if command[0] == "python":
            command[0] = sys.executable  # the task image's interpreter is this checkout's venv here
        return command, self._env(pod, mounts)

    def _start(self, pod: k8s.V1Pod) -> None:
        """Start the pod's process and report it running (``behaviour="background"``)."""
        assert not self.engine, "background pods run as local processes"
        command, env = self._command(pod)
        proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._procs[pod.metadata.name] = (proc, command, env)
        container = pod.spec.containers[0]
        running = k8s.V1ContainerState(running=k8s.V1ContainerStateRunning(started_at=datetime.now(UTC)))
        status = k8s.V1ContainerStatus(
            name=container.name, image=container.image, image_id="local", ready=True, restart_count=0, state=running
        )
        pod.status = k8s.V1PodStatus(
            phase="Running",
            container_statuses=[status],
            conditions=[k8s.V1PodCondition(type="PodScheduled", status="True")],
            start_time=datetime.now(UTC),
        )

    def _poll(self, name: str) -> None:
        """A background pod whose process ended is ``Succeeded`` / ``Failed``, with its logs."""
        if name not in self._procs or self._procs[name][0].poll() is None:
            return
        proc, command, env = self._procs.pop(name)
        out = proc.stdout.read() if proc.stdout else ""
        self.runs.append({"pod": name, "command": command, "env": env, "returncode": proc.returncode})
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        text = out.splitlines() or [""]
        if name in self._pods:
            self._finish(
                self._pods[name], proc.returncode, "Completed", "".join(f"{stamp} {line}\n" for line in text).encode()
            )

    def _run(self, pod: k8s.V1Pod) -> None:
        if self.engine:
            return self._run_container(pod)
        container = pod.spec.containers[0]
        mounts = self._mounts(pod)
        command = [_remap(a, mounts) for a in [*container.command, *container.args]]
        if command[0] == "python":
            command[0] = sys.executable  # the task image's interpreter is this checkout's venv here
        env = self._env(pod, mounts)
        proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        self.runs.append({"pod": pod.metadata.name, "command": command, "env": env, "returncode": proc.returncode})
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        text = (proc.stdout + proc.stderr).splitlines() or [""]
        self._finish(pod, proc.returncode, "Completed", "".join(f"{stamp} {line}\n" for line in text).encode())

    def _run_container(self, pod: k8s.V1Pod) -> None:
        """``<engine> run`` of the image, as a kubelet would start the pod's container.

        Each claim's local folder is mounted at the path the Airflow worker (this test process) sees it under,
        and the pod's mount paths in its environment and arguments are mapped to that path: Helm mounts the
        shared store at the same path in Airflow's containers and the pods, so paths in results agree.
        """
        assert self.engine and self.image, "container mode needs an engine and an image"
        container = pod.spec.containers[0]
        context = pod.spec.security_context or k8s.V1PodSecurityContext()
        uid, gid = context.run_as_user or 10001, context.run_as_group or context.run_as_user or 10001
        mounts = self._mounts(pod)
        argv = [*self.engine, "run", "--rm", "--network", "host", "--user", f"{uid}:{gid}"]
        for local in [*mounts.values(), *map(str, self.host_mounts)]:
            _fs_group(Path(local), context.fs_group)  # what the kubelet does to a volume for the pod's fsGroup
            argv += ["-v", f"{local}:{local}"]
        if context.fs_group:
            argv += ["--group-add", str(context.fs_group)]
        env = self._env(pod, mounts, image_defaults=False)
        for name, value in env.items():
            argv += ["-e", f"{name}={value}"]
        # Kubernetes: `command` replaces the image's ENTRYPOINT, `args` its CMD
        args = [_remap(a, mounts) for a in container.args]
        argv += ["--entrypoint", json.dumps(list(container.command)), self.image, *args]
        proc = subprocess.run(argv, env=self.engine_env, capture_output=True, text=True, timeout=900)
        self.runs.append({"pod": pod.metadata.name, "command": argv, "env": env, "returncode": proc.returncode})
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        text = (proc.stdout + proc.stderr).splitlines() or [""]
        self._finish(pod, proc.returncode, "Completed", "".join(f"{stamp} {line}\n" for line in text).encode())

    def _finish(self, pod: k8s.V1Pod, exit_code: int, reason: str, logs: bytes) -> None:
        container = pod.spec.containers[0]
        self._logs[pod.metadata.name] = logs
        terminated = k8s.V1ContainerStateTerminated(exit_code=exit_code, reason=reason)
        status = k8s.V1ContainerStatus(
            name=container.name,
            image=container.image,
            image_id="local",
            ready=False,
            restart_count=0,
            state=k8s.V1ContainerState(terminated=terminated),
        )
        pod.status = k8s.V1PodStatus(
            phase="Succeeded" if exit_code == 0 else "Failed",
            container_statuses=[status],
            conditions=[k8s.V1PodCondition(type="PodScheduled", status="True")],
        )


class _Body(io.BytesIO):
    """A log body that closes at its end, as the API server's stream does (urllib3 reads until closed)."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if not data:
            self.close()
        return data


def _fs_group(folder: Path, gid: int | None) -> None:
    """A volume for a pod with ``fsGroup``: group-owned by it, group-writable (the kubelet's recursive chown)."""
    if gid is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chown(path, -1, gid)
            path.chmod(path.stat().st_mode | 0o060 | (0o2010 if path.is_dir() else 0))


def _remap(value: str, mounts: dict[str, str]) -> str:
    """Paths under a mount point (also inside the ``--args`` JSON) -> the local folder behind the volume."""
    for mount, local in mounts.items():
        if value == mount:
            return local
        # only where a path starts (start of the value, after a quote, '=' or space), not inside another path
        pattern = r'(^|["=\s])' + re.escape(mount.rstrip("/") + "/")
        replacement = local.rstrip("/") + "/"
        value = re.sub(pattern, lambda m, r=replacement: m.group(1) + r, value)
    return value


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True
