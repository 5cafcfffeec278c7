"""Building blocks for DAGs: one ``@task`` per stage, one ``@task_group`` per phase.

The spec factory (:mod:`mlops_airflow.factory`) builds every pipeline's DAGs from these and nothing else,
and a hand-written DAG (``dags/bike_demand_weekly_retrain.py``) uses the same ones::

    from mlops_airflow import blocks

    gated, registered, trained = blocks.train_and_register("bike_demand")
    blocks.promote_and_deploy("bike_demand", gated, registered, trained)

Each stage block takes ``pipeline: str`` and the stage's typed inputs (the XComArgs of earlier blocks; the
JSON of :mod:`tasks.results`); its task id is the stage's name. Each task body is one call into
:mod:`tasks.stages` (imported inside the task, so parsing a DAG never imports pandas, MLflow, Great
Expectations or Evidently). Heavy stages (validation, ``build_features``, ``train_model``,
``evaluate_model``, ``check_drift``, ``score_partitions``) go through :func:`heavy_stage`: a TaskFlow task
calling the stage in the worker in the ``local`` execution mode, a :class:`mlops_airflow.pods.StagePodOperator`
pod running ``python -m tasks <stage>`` in ``kubernetes`` mode. Both build the stage's arguments with the same function.
Phases use ``prefix_group_id=False``: a task's id is its stage's name, whichever group holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from airflow.sdk import Asset, AssetWatcher, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow.events import announced_partitions, run_partitions
from mlops_airflow.links import DriftReportLink, ModelCardLink
from tasks.errors import PermanentError
from tasks.names import (
    LANDING_ASSET,
    RAW_ASSET,
    RETRAIN_ASSET,
    TAG_AIRFLOW_DAG_ID,
    TAG_AIRFLOW_RUN_ID,
    WATCHED_ASSET,
)

if TYPE_CHECKING:
    from airflow.sdk.definitions.xcom_arg import XComArg

    from tasks.settings import Settings
    from tasks.spec import PipelineSpec

BuildArgs = Callable[[dict[str, Any], Any], dict[str, Any]]
Result = dict[str, Any]
Upstream = Any
"""An upstream stage's result: its :mod:`tasks.results` JSON at run time, the XComArg that carries it when wiring."""


# ---- assets ----


def raw_asset(pipeline: str) -> Asset:
    """Updated each time a partition lands in the raw store: one event per day, keyed by the day (AIP-76)."""
    return Asset(RAW_ASSET.format(pipeline=pipeline), group="ml")


def retrain_asset(pipeline: str) -> Asset:
    """Updated when monitoring asks for a retrain, keyed by the day the monitored window ends."""
    return Asset(RETRAIN_ASSET.format(pipeline=pipeline), group="ml")


def landing_asset(pipeline: str) -> Asset:
    """A day's file has landed: a partitioned event whose key is the day.

    Recorded by upstream over REST (``POST /api/v2/assets/events`` with ``partition_key``) and by
    ``<p>_announce`` (which re-emits the watchers' key-less events); schedules ``<p>_ingest_announced``.
    """
    return Asset(LANDING_ASSET.format(pipeline=pipeline), group="ml")


def watched_asset(pipeline: str, spec: PipelineSpec | None = None, settings: Settings | None = None) -> Asset:
    """What the spec's watchers (``source.events``) record; their events carry no partition key (Airflow 3.3).

    A Redis Stream (durable: acknowledged once the event is stored), a Redis channel (the Redis provider's
    trigger, imported only in the triggerer; loses what is published while it is down) and the landing zone
    itself, all in the triggerer. Upstream may also record a key-less event here over REST
    (``extra = {"partition": day}``). ``<p>_announce`` turns each into a partitioned landing event.
    """
    uri = WATCHED_ASSET.format(pipeline=pipeline)
    source = spec.source if spec is not None else None
    events = source.events if source is not None else None
    watchers = []
    if events is not None and events.redis_channel:
        from mlops_airflow.triggers import RedisChannelTrigger

        queue = RedisChannelTrigger(
            [events.redis_channel], redis_conn_id=events.redis_conn_id, poll_interval=events.poll_seconds
        )
        watchers.append(AssetWatcher(name=f"{pipeline}_redis_announcements", trigger=queue))
    if events is not None and events.redis_stream:
        from mlops_airflow.triggers import RedisStreamTrigger

        stream = RedisStreamTrigger(
            events.redis_stream, events.redis_group, redis_conn_id=events.redis_conn_id, block_seconds=1.0
        )
        watchers.append(AssetWatcher(name=f"{pipeline}_redis_stream", trigger=stream))
    if source is not None and source.events.watch_landing and settings is not None:
        from mlops_airflow.triggers import LandingFileTrigger

        files = LandingFileTrigger(
            pipeline,
            str(settings.data_root),
            source.events.poll_seconds,
            completion=source.completion,
            settle_seconds=source.settle_seconds,
        )
        watchers.append(AssetWatcher(name=f"{pipeline}_landing_files", trigger=files))
    return Asset(uri, group="ml", watchers=watchers) if watchers else Asset(uri, group="ml")


# ---- running a stage ----


def call(stage: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a stage; a deterministic failure (bad data, config, gate verdict) fails at once, without retries.

    The settings' secrets are handed to Airflow's log masker first, so no credential reaches the task log.
    """
    from mlops_airflow.log_masking import mask_settings_secrets

    mask_settings_secrets()
    try:
        return stage(*args, **kwargs)
    except PermanentError as exc:
        raise AirflowFailException(str(exc)) from exc


def actor(ctx: Any = None) -> str:
    """Who acts, for the promotion ledger: the DAG run, and the user who triggered it when there is one."""
    run = (ctx or get_current_context())["dag_run"]
    user = getattr(run, "triggering_user_name", None)
    return f"airflow:{run.dag_id}/{run.run_id}" + (f" by {user}" if user else "")


_BUILDING: ContextVar[tuple[PipelineSpec, Settings] | None] = ContextVar("_BUILDING", default=None)


@contextmanager
def building(spec: PipelineSpec, settings: Settings) -> Iterator[None]:
    """Blocks created inside use this spec and these settings (the factory's); by default they load them."""
    token = _BUILDING.set((spec, settings))
    try:
        yield
    finally:
        _BUILDING.reset(token)


def _context(pipeline: str) -> tuple[PipelineSpec, Settings]:
    """The pipeline's spec and the environment's settings, at DAG-build time (for pods and timeouts)."""
    given = _BUILDING.get()
    if given is not None and given[0].name == pipeline:
        return given
    from tasks.settings import get_settings
    from tasks.spec import load_spec

    return load_spec(pipeline), get_settings()


def heavy_stage(
    spec: PipelineSpec,
    settings: Settings,
    task_id: str,
    stage: str,
    inputs: dict[str, XComArg],
    build_args: BuildArgs,
) -> XComArg:
    """One heavy stage as a local task or, in kubernetes mode, as a pod; returns its result's XComArg.

    Args:
        spec: The pipeline.
        settings: Environment settings (``execution_mode``, cluster facts).
        task_id: Airflow task id.
        stage: Name in ``tasks.stages.STAGES`` (and the CLI sub-command a pod runs).
        inputs: Upstream results the stage needs.
        build_args: (resolved inputs, context) -> the stage's keyword arguments; shared by both modes.
    """
    if settings.execution_mode == "kubernetes":
        from mlops_airflow.pods import stage_pod

        pod = stage_pod(spec, settings, task_id=task_id, stage=stage, stage_inputs=inputs, build_args=build_args)
        return pod.output
    name = spec.name

    @task(task_id=task_id)
    def run_stage(**resolved: Any) -> Any:
        from tasks.stages import STAGES

        return call(STAGES[stage], name, **build_args(resolved, get_current_context()))

    return run_stage(**inputs)


def _heavy(pipeline: str, stage: str, inputs: dict[str, XComArg], build_args: BuildArgs) -> XComArg:
    """A heavy stage of ``pipeline`` whose task id is its stage name (the current environment's mode)."""
    return heavy_stage(*_context(pipeline), stage, stage, inputs, build_args)


# ---- the stages' arguments from their inputs and the run (shared by the local task and the pod) ----


def _validate_data_args(i: Result, ctx: Any) -> Result:
    return {"partitions": i["plan"]["partitions"], "run_key": ctx["run_id"]}


def _validate_partitions_args(i: Result, ctx: Any) -> Result:
    ingested = i["ingested"]
    return {
        "partitions": ingested["new"],
        "run_key": ctx["run_id"],
        "staged": ingested["staged"],
        "refused": ingested["refused"],
    }


def _features_args(i: Result, ctx: Any) -> Result:
    return {"partitions": i["validation"]["valid"], "run_id": ctx["run_id"]}


def _train_args(i: Result, ctx: Any) -> Result:
    run = ctx["dag_run"]
    lineage = {TAG_AIRFLOW_DAG_ID: run.dag_id, TAG_AIRFLOW_RUN_ID: run.run_id}
    return {"datasets": i["datasets"], "run_id": ctx["run_id"], "lineage": lineage}


def _train_search_args(i: Result, ctx: Any) -> Result:
    """Train after mapped trial batches: resume the candidate's run they nested under (``plan_search``'s)."""
    return _train_args(i, ctx) | {"search_run_id": i["search"][0]["parent_run_id"]}


def _search_trials_args(i: Result, ctx: Any) -> Result:
    return {"datasets": i["datasets"], "run_id": ctx["run_id"], "batch": i["batch"]}


def _evaluate_args(i: Result, ctx: Any) -> Result:
    return {"trained": i["trained"], "datasets": i["datasets"], "run_id": ctx["run_id"]}


def _score_args(i: Result, ctx: Any) -> Result:
    params = ctx.get("params") or {}
    days = _run_days(params, ctx.get("data_interval_start"), ctx.get("triggering_asset_events"))
    return {"days": days, "version": params.get("version") or i["champion"]["version"]}


def _check_drift_args(i: Result, ctx: Any) -> Result:
    run = ctx["dag_run"]
    window_end = run.logical_date or run.run_after
    return {"window_end": window_end.isoformat(), "run_id": ctx["run_id"]}


# ---- what some task bodies call (Airflow context in, one stage call, Airflow outcome out) ----


def _run_days(params: Any, interval_start: Any, events: Any) -> list[str]:
    """The run's days: its partition key (AIP-76) first; see :func:`mlops_airflow.events.run_partitions`."""
    key = getattr(get_current_context()["dag_run"], "partition_key", None)
    return run_partitions(key, params, interval_start, events)


def _landing_ready(pipeline: str, params: Any, interval_start: Any, events: Any) -> bool:
    from mlops_airflow.connections import export_source_url
    from tasks import stages

    export_source_url(pipeline)  # a SQL source's URL, from its Airflow connection (run time, never at parse)

    days = _run_days(params, interval_start, events)
    return all([call(stages.landing_ready, pipeline, day) for day in days])  # every day: an overdue one fails the run


def _ingest(pipeline: str, params: Any, interval_start: Any, events: Any) -> Result:
    from mlops_airflow.connections import export_source_url
    from tasks import stages

    export_source_url(pipeline)

    days = _run_days(params, interval_start, events)
    from_event = bool(events) and not (params or {}).get("partition")  # an announcement: identical files skip
    return call(stages.ingest_partitions, pipeline, days, from_event, get_current_context()["run_id"])


def _announce(pipeline: str, events: Any) -> Result:
    """Re-emit key-less landing announcements (watchers, REST without a key) as one partitioned event per day."""
    days = announced_partitions(events)
    sources = sorted({a.uri for a in (events or {})})
    landing = get_current_context()["outlet_events"][landing_asset(pipeline)]
    landing.extra = {"announced_by": sources}
    landing.add_partitions(days)
    return {"partitions": days, "announced_by": sources}


def _publish(pipeline: str, ingested: Result, validation: Result) -> Result:
    from airflow.sdk.exceptions import AirflowSkipException

    valid = validation["valid"]
    if not valid:  # nothing new, or all of it quarantined: no raw event, training is not disturbed
        raise AirflowSkipException("no new valid partition to announce")
    rows = {r["partition"]: r["rows"] for r in ingested["partitions"]}
    extra = {
        "partitions": valid,
        "skipped": [r["partition"] for r in ingested["partitions"] if r["skipped"]],
        "quarantined": [q["partition"] for q in validation["quarantined"]],
        "rows": sum(rows.get(d, 0) for d in valid),
    }
    raw = get_current_context()["outlet_events"][raw_asset(pipeline)]
    raw.extra = extra
    raw.add_partitions(valid)  # one event per valid day, keyed by it (the run's own key, for a one-day run)
    return extra


def _plan(pipeline: str, params: Any, events: Any, force: bool | None, as_of: str | None) -> Result | None:
    from tasks import stages

    p = params or {}
    uris = [a.uri for a in (events or [])]
    forced = bool(p.get("force")) if force is None else force
    plan = call(stages.plan_training, pipeline, uris, as_of or p.get("as_of"), forced)
    return plan if plan["train"] else None


def _plan_search(pipeline: str) -> list[Result]:
    from tasks import stages

    ctx = get_current_context()
    run = ctx["dag_run"]
    lineage = {TAG_AIRFLOW_DAG_ID: run.dag_id, TAG_AIRFLOW_RUN_ID: run.run_id}
    return call(stages.plan_search, pipeline, ctx["run_id"], lineage)


def _gate(pipeline: str, trained: Result, datasets: Result, evaluation: Result) -> Result:
    from mlops_airflow.links import MODEL_CARD_KEY
    from mlops_airflow.log_masking import mask_settings_secrets
    from tasks import stages
    from tasks.gate import GateFailedError

    mask_settings_secrets()
    ctx = get_current_context()
    ti = ctx["ti"]
    try:
        gated = stages.gate_model(pipeline, trained, datasets, evaluation, ctx["run_id"], actor(ctx))
    except GateFailedError as exc:  # the card and its link matter most when the gate says no
        card = exc.gated.xcom()
        ti.xcom_push(key=MODEL_CARD_KEY, value=card["model_card_url"] or _file_url(card))
        raise AirflowFailException(str(exc)) from exc
    except PermanentError as exc:  # e.g. evaluation's rows are gone, a stale upstream result: no retry
        raise AirflowFailException(str(exc)) from exc
    ti.xcom_push(key=MODEL_CARD_KEY, value=gated["model_card_url"] or _file_url(gated))
    ti.xcom_push(key="gate_summary", value=gated["summary"])
    return gated


def _file_url(result: Result) -> str:
    page = (result.get("model_card") or {}).get("html")
    return f"file://{page}" if page else ""


def _promote(pipeline: str, gated: Result, registered: Result, trained: Result) -> Result | None:
    from tasks import stages

    version, decision = registered["version"], gated["decision"]
    result = call(stages.promote_model, pipeline, version, decision, actor(), trained["mlflow_run_id"])
    # dry_run, or another run became champion since this one was judged (lost_race): nothing to deploy
    return result if result["promoted"] else None


def _rollback(pipeline: str, params: Any) -> Result:
    from tasks import stages

    p = params or {}
    return call(stages.rollback_model, pipeline, p.get("version"), actor(), p.get("reason"))


def _request_retrain(pipeline: str, report: Result) -> str:
    keep = ("drift_share", "drifted_columns", "window", "champion_version", "violations", "decision")
    retrain = get_current_context()["outlet_events"][retrain_asset(pipeline)]
    retrain.extra = {k: report.get(k) for k in keep}
    retrain.add_partitions(_window_day(report))  # the train DAG is partitioned: a key-less event starts no run
    return f"retrain requested: {report['decision']}"


def _window_day(report: Result) -> str:
    """The partition key of a retrain request: the last day of the monitored window."""
    window = report.get("window") or []
    return str(max(window))[:10] if window else get_current_context()["dag_run"].run_after.date().isoformat()


# ---- one task per stage ----


@task.sensor(mode="reschedule")
def wait_for_landing(
    pipeline: str, params: Any = None, data_interval_start: Any = None, triggering_asset_events: Any = None
) -> bool:
    """Whether every day of the run has its landing file complete (reschedule mode: no slot held between pokes)."""
    return _landing_ready(pipeline, params, data_interval_start, triggering_asset_events)


@task
def ingest_partitions(
    pipeline: str, params: Any = None, data_interval_start: Any = None, triggering_asset_events: Any = None
) -> Result:
    """Check and stage the run's days (the trigger form's, the events', or the interval's); refusals recorded."""
    return _ingest(pipeline, params, data_interval_start, triggering_asset_events)


def validate_partitions(pipeline: str, ingested: XComArg) -> XComArg:
    """Judge the staged batches with the suite; a valid one replaces its partition (heavy)."""
    return _heavy(pipeline, "validate_partitions", {"ingested": ingested}, _validate_partitions_args)


@task
def announce_partitions(pipeline: str, triggering_asset_events: Any = None) -> Result:
    """Re-emit the watchers' key-less events as partitioned landing events (give it ``outlets=[landing_asset]``)."""
    return _announce(pipeline, triggering_asset_events)


@task
def publish_partitions(pipeline: str, ingested: Upstream, validation: Upstream) -> Result:
    """Announce the valid new days on the raw Asset (give it ``outlets=[raw_asset(pipeline)]``); skip if none."""
    return _publish(pipeline, ingested, validation)


@task
def report_quarantine(pipeline: str, validation: Upstream) -> None:
    """Fail, saying which file failed what, when validation quarantined anything."""
    from tasks import stages

    call(stages.report_quarantine, pipeline, validation)


@task.short_circuit
def plan_training(
    pipeline: str,
    force: bool | None = None,
    as_of: str | None = None,
    params: Any = None,
    triggering_asset_events: Any = None,
) -> Result | None:
    """The retrain policy's plan; skips the rest of the run when it says no.

    ``force`` and ``as_of`` (a day, or an upstream task's XComArg) default to the run form's.
    """
    return _plan(pipeline, params, triggering_asset_events, force, as_of)


def validate_data(pipeline: str, plan: XComArg) -> XComArg:
    """Validate the plan's window again with the suite; quarantine failures (heavy)."""
    return _heavy(pipeline, "validate_data", {"plan": plan}, _validate_data_args)


def build_features(pipeline: str, validation: XComArg) -> XComArg:
    """Time split and features of the valid partitions (heavy)."""
    return _heavy(pipeline, "build_features", {"validation": validation}, _features_args)


def train_model(pipeline: str, datasets: XComArg, search: tuple[XComArg, Any] | None = None) -> XComArg:
    """Fit and log the model and its baseline (heavy).

    ``search``: ``search_trials``'s (plan, mapped batches): training runs after them, in the candidate's run the
    plan opened, and takes each family's best trial from its study instead of searching again.
    """
    if search is None:
        return _heavy(pipeline, "train_model", {"datasets": datasets}, _train_args)
    plan, batches = search
    trained = _heavy(pipeline, "train_model", {"datasets": datasets, "search": plan}, _train_search_args)
    batches >> trained
    return trained


@task
def plan_search(pipeline: str) -> list[Result]:
    """Open the candidate's MLflow run and cut the search budget into trial batches (one mapped pod each)."""
    return _plan_search(pipeline)


def search_trials(pipeline: str, datasets: XComArg) -> tuple[XComArg, Any] | None:
    """Kubernetes mode with ``training.search.trials_per_pod``: the trial batches as mapped pods, else None.

    ``plan_search`` (in the worker: one MLflow call) -> ``search_trials`` mapped over its batches (dynamic task
    mapping; each pod asks for ``resources.trial``). Every batch joins its family's study of this training run
    (Optuna's RDB storage from ``search_storage_url``, else the journal file in the run's folder on the shared
    store). In the local mode the train stage runs every trial itself (``n_jobs`` threads under a minutes budget).
    """
    spec, settings = _context(pipeline)
    search = spec.training.search
    if settings.execution_mode != "kubernetes" or search is None or search.trials_per_pod is None:
        return None
    from mlops_airflow.pods import mapped_stage_pods

    plan = plan_search(pipeline)
    datasets >> plan  # after the features exist, and skipped with the rest when plan_training says no
    batches = mapped_stage_pods(
        spec,
        settings,
        task_id="search_trials",
        stage="search_trials",
        stage_inputs={"datasets": datasets},
        build_args=_search_trials_args,
        batches=plan,
    )
    return plan, batches


def evaluate_model(pipeline: str, trained: XComArg, datasets: XComArg) -> XComArg:
    """Holdout metrics of candidate, baseline and champion (heavy)."""
    return _heavy(pipeline, "evaluate_model", {"trained": trained, "datasets": datasets}, _evaluate_args)


@task
def gate_model(pipeline: str, trained: Upstream, datasets: Upstream, evaluation: Upstream) -> Result:
    """The spec's gate and the model card (pushed for the *Model card* link, also when the gate says no)."""
    return _gate(pipeline, trained, datasets, evaluation)


@task
def register_model(pipeline: str, trained: Upstream, gated: Upstream) -> Result:
    """Register the candidate as a new version with the ``challenger`` alias."""
    from tasks import stages

    return call(stages.register_model, pipeline, trained, gated)


@task.short_circuit
def promote_model(pipeline: str, gated: Upstream, registered: Upstream, trained: Upstream) -> Result | None:
    """Move ``champion`` as the gate decided; skips the deploy when nothing was promoted."""
    return _promote(pipeline, gated, registered, trained)


@task
def deploy_model(pipeline: str, promoted: Upstream) -> Result:
    """Make the model server serve the promoted (or restored) version; a refusal puts the alias back."""
    from tasks import stages

    return call(stages.deploy_model, pipeline, promoted["version"], actor())


@task(retries=0)  # a retry after a committed rollback would roll back again
def rollback_model(pipeline: str, params: Any = None) -> Result:
    """Restore ``previous`` (or the form's ``version``) as champion."""
    return _rollback(pipeline, params)


def check_drift(pipeline: str) -> XComArg:
    """The nightly drift check of the served window (heavy); has the *Drift report* link."""
    report = _heavy(pipeline, "check_drift", {}, _check_drift_args)
    report.operator.operator_extra_links = (DriftReportLink(),)  # type: ignore[attr-defined]
    return report


@task
def resolve_champion(pipeline: str) -> Result:
    """The champion's version, resolved once per run (a retry of the scoring still uses it)."""
    from tasks import stages

    return call(stages.resolve_champion, pipeline)


def score_partitions(pipeline: str, champion: XComArg) -> XComArg:
    """Score the run's days (the raw events', the form's or the interval's) with one version (heavy)."""
    return _heavy(pipeline, "score_partitions", {"champion": champion}, _score_args)


@task.short_circuit
def drift_detected(report: Upstream) -> bool:
    """Whether the trigger policy asks for a retrain."""
    return bool(report["retrain"])


@task
def request_retrain(pipeline: str, report: Upstream) -> str:
    """Update the retrain Asset (give it ``outlets=[retrain_asset(pipeline)]``) with the decision."""
    return _request_retrain(pipeline, report)


# ---- one group per phase ----


@task_group(prefix_group_id=False)  # type: ignore[type-var]
def ingest(pipeline: str) -> XComArg:
    """Landing file -> staged batch -> validated partition -> raw Asset event; quarantine reported."""
    spec, settings = _context(pipeline)
    timeout = spec.landing_timeout_hours * 3600
    ingested = ingest_partitions(pipeline)
    wait_for_landing.override(poke_interval=min(300.0, timeout), timeout=timeout)(pipeline) >> ingested
    validation = validate_partitions(pipeline, ingested)
    publish_partitions.override(outlets=[raw_asset(pipeline)])(pipeline, ingested, validation)
    report_quarantine(pipeline, validation)
    return validation


def announce(pipeline: str) -> XComArg:
    """Watcher event (no partition key) -> one partitioned landing event per announced day."""
    return announce_partitions.override(outlets=[landing_asset(pipeline)])(pipeline)


def train_and_register(
    pipeline: str, force: bool | None = None, as_of: Upstream = None
) -> tuple[XComArg, XComArg, XComArg]:
    """Plan -> validate -> features -> train -> evaluate -> gate -> register; returns (gated, registered, trained).

    ``force``: train even if the retrain policy says no; ``as_of``: train on partitions up to this day (a
    date, or the XComArg of a task that returns one); both default to the run form's.
    """
    return cast("tuple[XComArg, XComArg, XComArg]", _train_and_register(pipeline, force, as_of))


@task_group(group_id="train_and_register", prefix_group_id=False)  # type: ignore[type-var]
def _train_and_register(pipeline: str, force: bool | None, as_of: Upstream) -> tuple[XComArg, XComArg, XComArg]:
    """Plan -> validate -> features -> train -> evaluate -> gate -> register."""
    plan = plan_training(pipeline, force, as_of)
    validation = validate_data(pipeline, plan)
    report_quarantine(pipeline, validation)
    datasets = build_features(pipeline, validation)
    trained = train_model(pipeline, datasets, search_trials(pipeline, datasets))
    evaluation = evaluate_model(pipeline, trained, datasets)
    gated = gate_model(pipeline, trained, datasets, evaluation)
    gated.operator.operator_extra_links = (ModelCardLink(),)  # type: ignore[attr-defined]
    return gated, register_model(pipeline, trained, gated), trained


@task_group(prefix_group_id=False)  # type: ignore[type-var]
def promote_and_deploy(pipeline: str, gated: XComArg, registered: XComArg, trained: XComArg) -> XComArg:
    """(A person's approval, when the spec asks) -> promote -> deploy."""
    spec, _ = _context(pipeline)
    promoted = promote_model(pipeline, gated, registered, trained)
    if spec.gate.approval.required:
        registered >> approval(spec) >> promoted
    return deploy_model(pipeline, promoted)


@task_group(prefix_group_id=False)  # type: ignore[type-var]
def monitor(pipeline: str) -> XComArg:
    """Drift check -> (when the policy says so) retrain request."""
    report = check_drift(pipeline)
    drift_detected(report) >> request_retrain.override(outlets=[retrain_asset(pipeline)])(pipeline, report)
    return report


@task_group(prefix_group_id=False)  # type: ignore[type-var]
def score(pipeline: str) -> XComArg:
    """Champion version (once) -> the new raw partitions scored into ``scores/<p>/dt=<day>/``."""
    return score_partitions(pipeline, resolve_champion(pipeline))


def approval(spec: PipelineSpec) -> Any:
    """Airflow's HITL approval between registration and promotion (Browse -> Required Actions).

    Approve: promotion proceeds. Reject: promotion and deploy are skipped; the version stays ``challenger``.
    Either answer needs a reason; both are recorded in the ledger, as is a timeout, which fails the run
    (:mod:`mlops_airflow.approval`).
    """
    from mlops_airflow.approval import PromotionApproval

    rule = spec.gate.approval
    users = [{"id": u, "name": u} for u in rule.assigned_users] or None
    return PromotionApproval(
        task_id="approve_promotion",
        pipeline=spec.name,
        subject=f"Promote {spec.name} v{{{{ ti.xcom_pull(task_ids='register_model')['version'] }}}} to champion?",
        body=(
            "The candidate passed the gate.\n\n"
            "Model card: {{ ti.xcom_pull(task_ids='gate_model', key='model_card_url') }}\n\n"
            "Gate verdicts:\n\n```\n{{ ti.xcom_pull(task_ids='gate_model', key='gate_summary') }}\n```"
        ),
        response_timeout=timedelta(hours=rule.timeout_hours),
        assigned_users=users,
    )
