"""Heavy stages as Kubernetes pods (``execution_mode: kubernetes``).

A :class:`StagePodOperator` runs ``python -m tasks <stage> --pipeline P --args JSON --result FILE`` in the
task image: the same command and stage function that the local-mode task calls in-process. Its contract:

* **Inputs**: the stage's keyword arguments, built at run time from upstream XComs by the same
  ``build_args`` function the local task uses, passed as ``--args`` JSON.
* **Result**: the pod writes a manifest (``{"ok": ..., "result": ...}``) to
  ``runs/<p>/<run>/results/<task>.try<n>.json`` in the shared store (a ReadWriteMany volume that Airflow
  workers also mount). The operator reads it and returns the result as the task's XCom. No XCom sidecar.
* **Secrets**: ``MLFLOW_TRACKING_URI`` / ``_USERNAME`` / ``_PASSWORD`` come from a Kubernetes Secret
  (``secretKeyRef``), never from the DAG file or settings.
* **Failure**: a pod that cannot be scheduled or started fails within ``schedule_timeout_seconds`` /
  ``startup_timeout_seconds`` with a message naming what it asked for. Pods are deleted on success and on
  failure. A stage's permanent error (bad data, config, gate) fails the task without retries.
* **Durable**: the provider's ``durable`` default (Airflow 3.3) keeps the pod's identity in the task state
  store; a retry after a killed worker re-attaches to the still running pod instead of starting a second
  one, and reads the manifest that pod's ``--result`` names (the earlier try's).

This module imports the Kubernetes provider; the DAG factory imports it only in kubernetes mode.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodLaunchFailedException, PodLaunchTimeoutException
from airflow.sdk.exceptions import AirflowFailException
from kubernetes.client import models as k8s

from tasks.spec import REPO_ROOT
from tasks.storage import DataLayout

if TYPE_CHECKING:
    from tasks.settings import KubernetesSettings, Settings
    from tasks.spec import PipelineSpec, StageResources

BuildArgs = Callable[[dict[str, Any], Any], dict[str, Any]]
"""(resolved upstream inputs, Airflow context) -> the stage function's keyword arguments."""

GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER = "base"


class StagePodError(RuntimeError):
    """A stage pod could not run or did not report back (retried like any infrastructure error)."""


def container_resources(res: StageResources) -> k8s.V1ResourceRequirements:
    """Requests and limits of a stage container; GPUs as ``nvidia.com/gpu`` limits (Kubernetes needs them there)."""
    requests = {"cpu": res.cpu_request, "memory": res.memory_request}
    limits = {"cpu": res.cpu_limit, "memory": res.memory_limit}
    if res.gpu:
        limits[GPU_RESOURCE] = str(res.gpu)
    return k8s.V1ResourceRequirements(
        requests={k: v for k, v in requests.items() if v}, limits={k: v for k, v in limits.items() if v}
    )


def placement(res: StageResources, kube: KubernetesSettings) -> tuple[dict[str, str] | None, list[k8s.V1Toleration]]:
    """Node selector and tolerations: the spec's own, else the GPU pool's for pods that ask for a GPU."""
    selector = res.node_selector if res.node_selector is not None else (kube.gpu_node_selector if res.gpu else None)
    raw = res.tolerations if res.tolerations is not None else (kube.gpu_tolerations if res.gpu else [])
    return selector or None, [k8s.V1Toleration(**t) for t in raw]


def _secret_env(name: str, secret: str, key: str) -> k8s.V1EnvVar:
    ref = k8s.V1SecretKeySelector(name=secret, key=key, optional=key != "tracking_uri")
    return k8s.V1EnvVar(name=name, value_from=k8s.V1EnvVarSource(secret_key_ref=ref))


def source_secret(pipeline: str) -> str:
    """The Kubernetes Secret holding a pipeline's SQL source URL (key ``url``): ``mlops-source-<pipeline>``."""
    return "mlops-source-" + pipeline.replace("_", "-")


def stage_env(settings: Settings, res: StageResources, spec: PipelineSpec | None = None) -> list[k8s.V1EnvVar]:
    """The pod's environment: settings layer, data root as mounted, MLflow credentials from the Secret.

    A pipeline with a SQL source also gets ``source.sql.url_env`` from its Secret (:func:`source_secret`, key
    ``url``; optional: only stages that pull a day need it).
    """
    kube = settings.kubernetes
    plain = {
        "ML_ENV": settings.env,
        "MLP_DATA_ROOT": kube.data_mount,
        # the pod is the execution environment: it must not try to launch pods itself
        "MLP_EXECUTION_MODE": "local",
        "PYTHONUNBUFFERED": "1",
        "GX_ANALYTICS_ENABLED": "False",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    if res.gpu:
        plain["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # deterministic cuBLAS for the torch family
    env = [k8s.V1EnvVar(name=k, value=v) for k, v in plain.items()]
    secret = kube.mlflow_secret
    env += [
        _secret_env("MLFLOW_TRACKING_URI", secret, "tracking_uri"),
        _secret_env("MLFLOW_TRACKING_USERNAME", secret, "username"),
        _secret_env("MLFLOW_TRACKING_PASSWORD", secret, "password"),
        # Optuna's RDB storage for the training pod's search (optional key: unset, a journal file in the run folder)
        _secret_env("MLP_SEARCH_STORAGE_URL", secret, "search_storage_url"),
    ]
    if spec is not None and spec.source.sql is not None:
        env.append(_secret_env(spec.source.sql.url_env, source_secret(spec.name), "url"))
    return env


def shared_store(kube: KubernetesSettings) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """The shared data store (PVC) as a pod volume and its mount at ``data_mount``."""
    claim = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=kube.shared_store_claim)
    volume = k8s.V1Volume(name="shared-store", persistent_volume_claim=claim)
    return [volume], [k8s.V1VolumeMount(name="shared-store", mount_path=kube.data_mount)]


class StagePodOperator(KubernetesPodOperator):
    """Run one pipeline stage in the task image and return its result manifest.

    Args:
        pipeline: Pipeline name.
        stage: Stage name in ``tasks.stages.STAGES``.
        stage_inputs: Upstream results (XComArgs) the stage needs; resolved by Airflow before ``execute``.
        build_args: Turns the resolved inputs and the context into the stage's keyword arguments.
        data_root: The shared store as this Airflow worker sees it (where the manifest is read).
        pod_data_root: The shared store as the pod sees it (where the manifest is written).
        batch: A mapped pod's own input (``.partial(...).expand(batch=...)``), handed to ``build_args`` as
            ``batch`` beside ``stage_inputs``.
        **kwargs: Passed to :class:`KubernetesPodOperator` (image, resources, timeouts, ...).
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "stage_inputs", "batch")
    ui_color = "#c6dbef"
    _launch_error: Exception | None = None
    _manifest: Path

    def __init__(
        self,
        *,
        pipeline: str,
        stage: str,
        stage_inputs: dict[str, Any],
        build_args: BuildArgs,
        data_root: str,
        pod_data_root: str,
        batch: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            cmds=["python", "-m", "tasks"],
            arguments=[stage, "--pipeline", pipeline],
            base_container_name=CONTAINER,
            do_xcom_push=False,
            on_finish_action="delete_pod",
            on_kill_action="delete_pod",
            **kwargs,
        )
        self.pipeline = pipeline
        self.stage = stage
        self.stage_inputs = stage_inputs
        self.build_args = build_args
        self.data_root = data_root
        self.pod_data_root = pod_data_root
        self.batch = batch

    def manifest_paths(self, context: Any) -> tuple[Path, str]:
        """The result manifest as Airflow reads it and as the pod writes it."""
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        local = DataLayout(Path(self.data_root)).result_manifest(
            self.pipeline, context["run_id"], self.task_id, ti.try_number, -1 if map_index is None else map_index
        )
        return local, f"{self.pod_data_root.rstrip('/')}/{local.relative_to(self.data_root).as_posix()}"

    def prepare(self, context: Any) -> Path:
        """Set the container arguments for this try; returns where the manifest will appear."""
        local, in_pod = self.manifest_paths(context)
        inputs = dict(self.stage_inputs) | ({"batch": self.batch} if self.batch is not None else {})
        kwargs = self.build_args(inputs, context)
        self.arguments = [self.stage, "--pipeline", self.pipeline, "--args", json.dumps(kwargs), "--result", in_pod]
        local.unlink(missing_ok=True)  # a manifest left by an earlier attempt must not pass for this one's
        return local

    def get_or_create_pod(self, pod_request_obj: k8s.V1Pod, context: Any) -> k8s.V1Pod:
        """As the provider's (durable: a retry re-attaches to its try's still running pod), minding the manifest.

        A re-attached pod was started by an earlier try and writes the manifest its own ``--result`` names
        (``<task>.try<earlier>.json``), not this try's: read that one.
        """
        pod = super().get_or_create_pod(pod_request_obj, context)
        if pod is not pod_request_obj:  # re-attached
            args = list(pod.spec.containers[0].args or [])
            if "--result" in args:
                in_pod = args[args.index("--result") + 1]
                relative = Path(in_pod).relative_to(self.pod_data_root)
                self._manifest = Path(self.data_root) / relative
                self.log.info("re-attached to %s: its result manifest is %s", pod.metadata.name, self._manifest)
        return pod

    def await_pod_start(self, pod: k8s.V1Pod) -> None:
        """As the provider's, remembering a launch failure (its cleanup would otherwise mask it)."""
        try:
            super().await_pod_start(pod)
        except (PodLaunchTimeoutException, PodLaunchFailedException) as exc:
            self._launch_error = exc
            raise

    def execute(self, context: Any) -> Any:
        """Launch the pod, wait for it, and return the stage's result read from the shared store."""
        from mlops_airflow.log_masking import mask_settings_secrets

        mask_settings_secrets()  # the pod's log is streamed into this task's log
        self._manifest = self.prepare(context)
        self._launch_error = None
        pod_error: Exception | None = None
        try:
            super().execute(context)
        except Exception as exc:  # noqa: BLE001 - the manifest, if any, says more than "pod failed"
            if self._launch_error is not None:
                raise StagePodError(self._launch_message(self._launch_error)) from exc
            pod_error = exc
        result = self._read_manifest(self._manifest, pod_error)
        # do_xcom_push stays False so the provider adds no sidecar; the result is pushed here instead
        context["ti"].xcom_push(key="return_value", value=result)
        return result

    def _launch_message(self, exc: Exception) -> str:
        res = self.container_resources
        asked = {**(res.requests or {}), **(res.limits or {})} if res else {}
        return (
            f"{self.pipeline}: the {self.stage!r} pod never ran: {exc}\n"
            f"  asked for {asked} on nodes matching {self.node_selector or 'any'} in namespace {self.namespace}; "
            f"limits: scheduled within {self.schedule_timeout_seconds}s, running within "
            f"{self.startup_timeout_seconds}s.\n  Check `kubectl -n {self.namespace} describe pod -l "
            f"task_id={self.task_id}` (insufficient {', '.join(asked) or 'resources'}? image pull? taints?)."
        )

    def _read_manifest(self, manifest: Path, pod_error: Exception | None) -> Any:
        if not manifest.is_file():
            if pod_error is not None:
                raise StagePodError(f"{self.pipeline}: the {self.stage!r} pod failed before reporting: {pod_error}")
            where = f"{manifest} (pod: {manifest.relative_to(self.data_root)} under {self.pod_data_root})"
            raise StagePodError(
                f"{self.pipeline}: the {self.stage!r} pod succeeded but wrote no result manifest at {where}; "
                "is the shared store mounted at the same place in Airflow and in the pod?"
            )
        outcome = json.loads(manifest.read_text())
        if outcome.get("ok"):
            if pod_error is not None:
                raise StagePodError(f"{self.pipeline}: {self.stage!r} reported success but the pod failed: {pod_error}")
            return outcome["result"]
        message = f"{self.pipeline}: stage {self.stage!r} failed ({outcome.get('error_type')}): {outcome.get('error')}"
        if outcome.get("permanent"):
            raise AirflowFailException(message)  # bad data / config / gate: a retry cannot help
        raise StagePodError(message)


def _pod_kwargs(
    spec: PipelineSpec,
    settings: Settings,
    *,
    task_id: str,
    stage: str,
    stage_inputs: dict[str, Any],
    build_args: BuildArgs,
) -> dict[str, Any]:
    """The arguments of a stage's :class:`StagePodOperator`: the spec's resources, the settings' cluster."""
    from datetime import timedelta

    kube = settings.kubernetes
    res = spec.stage_resources(stage)
    node_selector, tolerations = placement(res, kube)
    volumes, mounts = shared_store(kube)
    template = str((REPO_ROOT / kube.pod_template).resolve()) if kube.pod_template else None
    timeout_s = (res.timeout_minutes or 60) * 60
    return {
        "task_id": task_id,
        "pipeline": spec.name,
        "stage": stage,
        "stage_inputs": stage_inputs,
        "build_args": build_args,
        "data_root": str(settings.data_root),
        "pod_data_root": kube.data_mount,
        "name": f"{spec.name}-{stage}".replace("_", "-"),
        "namespace": kube.namespace,
        "image": kube.image,
        "image_pull_policy": kube.image_pull_policy,
        "service_account_name": kube.service_account,
        "kubernetes_conn_id": kube.kubernetes_conn_id,
        "in_cluster": kube.in_cluster,
        "config_file": kube.config_file,
        "pod_template_file": template,
        "labels": {**kube.labels, "mlops/pipeline": spec.name, "mlops/stage": stage},
        "env_vars": stage_env(settings, res, spec),
        "container_resources": container_resources(res),
        "node_selector": node_selector,
        "tolerations": tolerations,
        "volumes": volumes,
        "volume_mounts": mounts,
        "schedule_timeout_seconds": kube.schedule_timeout_seconds,
        "startup_timeout_seconds": kube.startup_timeout_seconds,
        "active_deadline_seconds": timeout_s,
        "execution_timeout": timedelta(
            seconds=timeout_s + kube.schedule_timeout_seconds + kube.startup_timeout_seconds
        ),
        "get_logs": True,
        "log_events_on_failure": True,
    }


def stage_pod(
    spec: PipelineSpec,
    settings: Settings,
    *,
    task_id: str,
    stage: str,
    stage_inputs: dict[str, Any],
    build_args: BuildArgs,
) -> StagePodOperator:
    """The pod operator of one heavy stage, configured from the spec (resources) and settings (cluster)."""
    kwargs = _pod_kwargs(spec, settings, task_id=task_id, stage=stage, stage_inputs=stage_inputs, build_args=build_args)
    return StagePodOperator(**kwargs)


def mapped_stage_pods(
    spec: PipelineSpec,
    settings: Settings,
    *,
    task_id: str,
    stage: str,
    stage_inputs: dict[str, Any],
    build_args: BuildArgs,
    batches: Any,
) -> Any:
    """One pod of a heavy stage per element of ``batches`` (Airflow dynamic task mapping over an upstream XCom).

    Every mapped pod shares ``stage_inputs`` and the stage's resources; each gets its own element as ``batch``
    (and its own result manifest, by map index). Returns the mapped operator.
    """
    kwargs = _pod_kwargs(spec, settings, task_id=task_id, stage=stage, stage_inputs=stage_inputs, build_args=build_args)
    return StagePodOperator.partial(**kwargs).expand(batch=batches)
