"""Turn a pipeline spec into its three DAGs: ``<p>_ingest``, ``<p>_train`` and ``<p>_monitor``.

Wiring only. Each task body is one call into ``tasks.stages`` (imported inside the task, so parsing a
DAG file never imports pandas, MLflow, Great Expectations or Evidently). XCom carries the small dicts
the stages return: paths, ids and metrics.

Heavy stages (validation, ``build_features``, ``train_model``, ``evaluate_model``, ``check_drift``) go
through :func:`heavy_stage`: in the ``local`` execution mode they are TaskFlow tasks calling the stage in
the worker; in ``kubernetes`` mode they are :class:`mlops_airflow.pods.StagePodOperator` pods running
``python -m tasks <stage>`` in the task image. Both build the stage's arguments with the same function, so
the DAG shape is identical. A stage's name is its task id.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import (
    DAG,
    Asset,
    AssetOrTimeSchedule,
    AssetWatcher,
    CronDataIntervalTimetable,
    Param,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow.links import DriftReportLink, ModelCardLink
from tasks.errors import PermanentError
from tasks.names import LANDING_ASSET, RAW_ASSET, RETRAIN_ASSET, TAG_AIRFLOW_DAG_ID, TAG_AIRFLOW_RUN_ID

if TYPE_CHECKING:
    from airflow.sdk.definitions.xcom_arg import XComArg

    from tasks.settings import Settings
    from tasks.spec import PipelineSpec

BuildArgs = Callable[[dict[str, Any], Any], dict[str, Any]]


def _common(spec: PipelineSpec, stage: str) -> dict[str, Any]:
    """DAG arguments every generated DAG shares: owner, retries, start, no implicit catchup, tags."""
    return {
        "start_date": datetime.fromisoformat(spec.start_date),
        "catchup": False,
        "default_args": {"owner": spec.owner, "retries": 1, "retry_delay": timedelta(seconds=30)},
        "tags": [f"domain:{spec.domain}", f"pipeline:{spec.name}", f"stage:{stage}"],
    }


def _call(stage: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a stage; a deterministic failure (bad data, config, gate verdict) fails at once, without retries.

    The settings' secrets are handed to Airflow's log masker first, so no credential reaches the task log.
    """
    from mlops_airflow.log_masking import mask_settings_secrets

    mask_settings_secrets()
    try:
        return stage(*args, **kwargs)
    except PermanentError as exc:
        raise AirflowFailException(str(exc)) from exc


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

        return _call(STAGES[stage], name, **build_args(resolved, get_current_context()))

    return run_stage(**inputs)


def _heavy(
    spec: PipelineSpec, settings: Settings, stage: str, inputs: dict[str, XComArg], build_args: BuildArgs
) -> XComArg:
    """A heavy stage whose task id is its stage name."""
    return heavy_stage(spec, settings, stage, stage, inputs, build_args)


def _validate_data_args(i: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"partitions": i["plan"]["partitions"], "run_key": ctx["run_id"]}


def _validate_partitions_args(i: dict[str, Any], ctx: Any) -> dict[str, Any]:
    ingested = i["ingested"]
    return {
        "partitions": ingested["new"],
        "run_key": ctx["run_id"],
        "staged": ingested.get("staged", {}),
        "refused": ingested.get("refused", []),
    }


def _features_args(i: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"partitions": i["validation"]["valid"], "run_id": ctx["run_id"]}


def _train_args(i: dict[str, Any], ctx: Any) -> dict[str, Any]:
    run = ctx["dag_run"]
    lineage = {TAG_AIRFLOW_DAG_ID: run.dag_id, TAG_AIRFLOW_RUN_ID: run.run_id}
    return {"datasets": i["datasets"], "run_id": ctx["run_id"], "lineage": lineage}


def _evaluate_args(i: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"trained": i["trained"], "datasets": i["datasets"], "run_id": ctx["run_id"]}


def actor(ctx: Any) -> str:
    """Who acts, for the promotion ledger: the DAG run, and the user who triggered it when there is one."""
    run = ctx["dag_run"]
    user = getattr(run, "triggering_user_name", None)
    return f"airflow:{run.dag_id}/{run.run_id}" + (f" by {user}" if user else "")


def _check_drift_args(i: dict[str, Any], ctx: Any) -> dict[str, Any]:
    run = ctx["dag_run"]
    window_end = run.logical_date or run.run_after
    return {"window_end": window_end.isoformat(), "run_id": ctx["run_id"]}


def raw_asset(pipeline: str) -> Asset:
    """Updated each time a partition lands in the raw store."""
    return Asset(RAW_ASSET.format(pipeline=pipeline), group="ml")


def retrain_asset(pipeline: str) -> Asset:
    """Updated when monitoring asks for a retrain."""
    return Asset(RETRAIN_ASSET.format(pipeline=pipeline), group="ml")


def landing_asset(pipeline: str, spec: PipelineSpec | None = None, settings: Settings | None = None) -> Asset:
    """Updated when a day's file has landed.

    By upstream over REST (``extra = {"partition": day}``) and by the spec's watchers (``source.events``): a
    Redis channel, the landing zone itself. Both watchers run in the triggerer.
    """
    uri = LANDING_ASSET.format(pipeline=pipeline)
    source = spec.source if spec is not None else None
    events = source.events if source is not None else None
    watchers = []
    if events is not None and events.redis_channel:
        from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

        queue = MessageQueueTrigger(
            scheme="redis+pubsub",
            channels=[events.redis_channel],
            redis_conn_id=events.redis_conn_id,
            poll_interval=events.poll_seconds,
        )
        watchers.append(AssetWatcher(name=f"{pipeline}_redis_announcements", trigger=queue))
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


def _partitions(params: dict[str, Any] | None, data_interval_start: Any, events: Any) -> list[str]:
    """The days one ingest run handles: the trigger form's, the upstream events' (deduplicated), or the interval's."""
    if (params or {}).get("partition"):
        return [str(params["partition"])]  # type: ignore[index]
    if events:
        from tasks.landing import partitions_from_event

        days = []
        for asset, asset_events in events.items():
            for event in asset_events:
                named = partitions_from_event(event.extra)
                if not named:
                    raise AirflowFailException(
                        f"an event on {asset.uri} names no partition (extra {event.extra!r}): record it with "
                        'extra {"partition": "YYYY-MM-DD"}, or publish {"partition": "YYYY-MM-DD"} on the channel'
                    )
                days += named
        return sorted(set(days))  # duplicate events merged into one run are one partition
    if data_interval_start:
        return [data_interval_start.date().isoformat()]
    raise AirflowFailException("no data interval: trigger with a 'partition' date (YYYY-MM-DD)")


def ingest_dag(spec: PipelineSpec, settings: Settings) -> DAG:
    """Daily, or on a landing event: landing files become validated raw partitions; updates the raw Asset."""
    name, raw, landing = spec.name, raw_asset(spec.name), landing_asset(spec.name, spec, settings)

    @dag(
        dag_id=f"{name}_ingest",
        description=f"Ingest {name} landing files into the raw store, one partition per day.",
        doc_md=f"""### {name}: ingest
Waits (reschedule mode, up to {spec.landing_timeout_hours} h) until `landing/{name}/<day>.csv` of the run's data
interval is complete (`source.completion: {spec.source.completion}`: a file still being written is never read),
then checks it (encoding, header, rows, values, every row of the day, the row count) and stages it beside
`raw/{name}/dt=<day>/part.parquet`; a refused file is quarantined with its reasons and nothing reaches raw.
`validate_partitions` judges the staged batch with `{spec.expectations}`: only a valid batch replaces the
partition (a bad re-delivery never touches the last valid version); `report_quarantine` fails the run, saying
why, when anything was quarantined. `publish_partitions` then updates the Asset `{raw.uri}` with the valid days,
which schedules `{name}_train`. Every version of a day is in `raw/{name}/dt=<day>/_versions.jsonl`.
Backfill history with
`airflow backfill create --dag-id {name}_ingest --from-date 2011-01-01 --to-date 2011-01-31`.

Upstream systems can also start it: an event on the Asset `{landing.uri}` with `extra = {{"partition": "YYYY-MM-DD"}}`
(Airflow REST API `POST /api/v2/assets/events`) ingests that day at once; so do the spec's watchers
(`source.events`: a Redis channel, the landing zone itself), which run in the triggerer. Events for a file
already ingested (or quarantined) unchanged are skipped and say so; a re-delivered, corrected file is
ingested again.
""",
        schedule=AssetOrTimeSchedule(
            timetable=CronDataIntervalTimetable(spec.ingest_schedule, timezone="UTC"), assets=[landing]
        ),
        max_active_runs=8,
        **_common(spec, "ingest"),
        params={
            "partition": Param(
                None,
                type=["null", "string"],
                format="date",
                description="Ingest this day instead of the run's data interval.",
            )
        },
    )
    def pipeline() -> None:
        # reschedule mode: no worker slot is held between pokes while upstream has not delivered yet; the
        # same completeness check ingest makes (it never reads the file)
        timeout = spec.landing_timeout_hours * 3600

        @task.sensor(poke_interval=min(300.0, timeout), timeout=timeout, mode="reschedule")
        def wait_for_landing(
            params: dict[str, Any] | None = None, data_interval_start: Any = None, triggering_asset_events: Any = None
        ) -> bool:
            from tasks import stages

            days = _partitions(params, data_interval_start, triggering_asset_events)
            return all(_call(stages.landing_ready, name, day) for day in days)

        @task
        def ingest_partitions(
            params: dict[str, Any] | None = None, data_interval_start: Any = None, triggering_asset_events: Any = None
        ) -> dict[str, Any]:
            from tasks import stages

            days = _partitions(params, data_interval_start, triggering_asset_events)
            from_event = bool(triggering_asset_events) and not (params or {}).get("partition")
            run_id = get_current_context()["run_id"]
            return _call(stages.ingest_partitions, name, days, from_event, run_id)

        @task(outlets=[raw])
        def publish_partitions(ingested: dict[str, Any], validation: dict[str, Any]) -> dict[str, Any]:
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
            get_current_context()["outlet_events"][raw].extra = extra
            return extra

        @task
        def report_quarantine(validation: dict[str, Any]) -> None:
            from tasks import stages

            _call(stages.report_quarantine, name, validation)

        ingested = ingest_partitions()
        wait_for_landing() >> ingested
        validation = _heavy(spec, settings, "validate_partitions", {"ingested": ingested}, _validate_partitions_args)
        publish_partitions(ingested, validation)
        report_quarantine(validation)

    return pipeline()


def train_dag(spec: PipelineSpec, settings: Settings) -> DAG:
    """On new raw data or a retrain request: validate, features, train, evaluate, gate, register, deploy."""
    name = spec.name

    @dag(
        dag_id=f"{name}_train",
        description=f"Validate, train, evaluate, gate, register and deploy the {name} model.",
        doc_md=f"""### {name}: train
Scheduled on `{RAW_ASSET.format(pipeline=name)}` (new partitions) **or** `{RETRAIN_ASSET.format(pipeline=name)}`
(monitoring asks for a retrain). `plan_training` decides whether a run is worth it (see ARCHITECTURE.md,
*retrain policy*) and skips the rest otherwise. Each partition is validated with the Great Expectations suite
`{spec.expectations}`; failures are quarantined and reported by `report_quarantine` after the good data
was used. The model is logged to MLflow, gated ({spec.gate.mode}), registered as `{name}` with alias
`challenger`, promoted to `champion` and deployed to the model server.
""",
        schedule=(raw_asset(name) | retrain_asset(name)),
        max_active_runs=1,
        **_common(spec, "train"),
        params={
            "force": Param(False, type="boolean", description="Train even if the retrain policy says no."),
            "as_of": Param(
                None,
                type=["null", "string"],
                format="date",
                description="Use partitions up to this day (default: all ingested).",
            ),
        },
    )
    def pipeline() -> None:
        @task.short_circuit
        def plan_training(
            params: dict[str, Any] | None = None, triggering_asset_events: Any = None
        ) -> dict[str, Any] | None:
            from tasks import stages

            uris = [a.uri for a in (triggering_asset_events or [])]
            p = params or {}
            plan = _call(stages.plan_training, name, uris, p.get("as_of"), bool(p.get("force")))
            return plan if plan["train"] else None

        @task
        def report_quarantine(validation: dict[str, Any]) -> None:
            from tasks import stages

            _call(stages.report_quarantine, name, validation)

        @task
        def gate_model(trained: dict[str, Any], datasets: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
            from mlops_airflow.links import MODEL_CARD_KEY
            from mlops_airflow.log_masking import mask_settings_secrets
            from tasks import stages
            from tasks.gate import GateFailedError

            mask_settings_secrets()
            ctx = get_current_context()
            ti = ctx["ti"]
            try:
                gated = stages.gate_model(name, trained, datasets, evaluation, ctx["run_id"], actor(ctx))
            except GateFailedError as exc:  # the card and its link matter most when the gate says no
                card = exc.gated.xcom()
                ti.xcom_push(key=MODEL_CARD_KEY, value=card["model_card_url"] or _file_url(card))
                raise AirflowFailException(str(exc)) from exc
            except PermanentError as exc:  # e.g. evaluation's rows are gone, a stale upstream result: no retry
                raise AirflowFailException(str(exc)) from exc
            ti.xcom_push(key=MODEL_CARD_KEY, value=gated["model_card_url"] or _file_url(gated))
            ti.xcom_push(key="gate_summary", value=gated["summary"])
            return gated

        @task
        def register_model(trained: dict[str, Any], gated: dict[str, Any]) -> dict[str, Any]:
            from tasks import stages

            return _call(stages.register_model, name, trained, gated)

        @task.short_circuit
        def promote_model(
            gated: dict[str, Any], registered: dict[str, Any], trained: dict[str, Any]
        ) -> dict[str, Any] | None:
            from tasks import stages

            version, decision, by = registered["version"], gated["decision"], actor(get_current_context())
            result = _call(stages.promote_model, name, version, decision, by, trained["mlflow_run_id"])
            # dry_run, or another run became champion since this one was judged (lost_race): nothing to deploy
            return result if result["promoted"] else None

        @task
        def deploy_model(promoted: dict[str, Any]) -> dict[str, Any]:
            from tasks import stages

            return _call(stages.deploy_model, name, promoted["version"], actor(get_current_context()))

        plan = plan_training()
        validation = _heavy(spec, settings, "validate_data", {"plan": plan}, _validate_data_args)
        report_quarantine(validation)
        datasets = _heavy(spec, settings, "build_features", {"validation": validation}, _features_args)
        trained = _heavy(spec, settings, "train_model", {"datasets": datasets}, _train_args)
        evaluation = _heavy(
            spec, settings, "evaluate_model", {"trained": trained, "datasets": datasets}, _evaluate_args
        )
        gated = gate_model(trained, datasets, evaluation)
        gated.operator.operator_extra_links = (ModelCardLink(),)  # type: ignore[attr-defined]
        registered = register_model(trained, gated)
        promoted = promote_model(gated, registered, trained)
        if spec.gate.approval.required:
            approval = _approval(spec)
            registered >> approval >> promoted
        deploy_model(promoted)

    return pipeline()


def _file_url(result: dict[str, Any]) -> str:
    page = (result.get("model_card") or {}).get("html")
    return f"file://{page}" if page else ""


def _approval(spec: PipelineSpec) -> Any:
    """Airflow's HITL ApprovalOperator between registration and promotion (Browse -> Required Actions).

    Approve: promotion proceeds. Reject: promotion and deploy are skipped; the version stays ``challenger``.
    """
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    rule = spec.gate.approval
    users = [{"id": u, "name": u} for u in rule.assigned_users] or None
    return ApprovalOperator(
        task_id="approve_promotion",
        subject=f"Promote {spec.name} v{{{{ ti.xcom_pull(task_ids='register_model')['version'] }}}} to champion?",
        body=(
            "The candidate passed the gate.\n\n"
            "Model card: {{ ti.xcom_pull(task_ids='gate_model', key='model_card_url') }}\n\n"
            "Gate verdicts:\n\n```\n{{ ti.xcom_pull(task_ids='gate_model', key='gate_summary') }}\n```"
        ),
        response_timeout=timedelta(hours=rule.timeout_hours),
        assigned_users=users,
    )


def rollback_dag(specs: list[PipelineSpec]) -> DAG:
    """Manual: restore a pipeline's ``previous`` champion (or a named version) and redeploy it."""
    names = [s.name for s in specs]

    @dag(
        dag_id="rollback",
        description="Restore a pipeline's previous champion (or a given version) and redeploy it.",
        doc_md="""### rollback
Trigger with `pipeline` (and optionally `version`; default: the version holding the `previous` alias).
`rollback_model` moves the `champion` alias back (the replaced version becomes `previous`, so a second
rollback undoes the first) under the promotion lock and records it in the ledger
(`python -m tasks ledger --pipeline <p>`); `deploy_model` makes the model server serve it (blue/green,
smoke-tested). From the CLI: `airflow dags trigger rollback --conf '{"pipeline": "adult_income"}'`.
""",
        schedule=None,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=30)},
        tags=["stage:rollback"],
        params={
            "pipeline": Param(names[0] if names else "", type="string", enum=names or [""], description="Pipeline."),
            "version": Param(None, type=["null", "string"], description="Version to restore (default: previous)."),
            "reason": Param("rollback requested", type="string", description="Why: kept in the promotion ledger."),
        },
    )
    def pipeline() -> None:
        @task(retries=0)  # a retry after a committed rollback would roll back again
        def rollback_model(params: dict[str, Any] | None = None) -> dict[str, Any]:
            from tasks import stages

            p = params or {}
            ctx = get_current_context()
            return _call(stages.rollback_model, p["pipeline"], p.get("version"), actor(ctx), p.get("reason"))

        @task
        def deploy_model(restored: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
            from tasks import stages

            pipeline_name = (params or {})["pipeline"]
            return _call(stages.deploy_model, pipeline_name, restored["version"], actor(get_current_context()))

        deploy_model(rollback_model())

    return pipeline()


def monitor_dag(spec: PipelineSpec, settings: Settings) -> DAG:
    """Nightly: Evidently drift of served inputs (and landed labels) vs the champion's training sample."""
    name, retrain = spec.name, retrain_asset(spec.name)
    mon = spec.monitoring

    @dag(
        dag_id=f"{name}_monitor",
        description=f"Nightly drift check of the {name} model's served traffic.",
        doc_md=f"""### {name}: monitor
Compares the model server's logged inputs whose event date falls in the {mon.window_days} day(s) before the
run's logical date with the champion's training sample (Evidently; KS / two-sample chi-square,
p < {mon.column_p_value}). Once labels for those rows have landed in the raw store the target is compared too.
The window violates on: data drift (share of drifted columns >= {mon.drift_share_threshold}), prediction drift
(normalised Wasserstein distance of the champion's predictions >= {mon.prediction_drift_threshold}), data quality
of served inputs (missing values, stuck columns), and performance decay on labelled rows
(`max_performance_decay`); the trigger policy (k={mon.trigger.k} of n={mon.trigger.n} windows,
cooldown {mon.trigger.cooldown_days} days, at most {mon.trigger.max_retrains} per {mon.trigger.period_days} days)
decides, every decision goes to `monitoring/{name}/decisions.jsonl`, and `request_retrain` updates
`{retrain.uri}`, which schedules `{name}_train`. Reports: `monitoring/{name}/<run_id>/drift.html` and
`summary.json` under the data root, also on the MLflow experiment `{name}-monitoring` (the **Drift report**
link on `check_drift`), and `monitoring/{name}/trend.html` across windows.
""",
        schedule=mon.schedule,
        max_active_runs=1,
        **_common(spec, "monitor"),
    )
    def pipeline() -> None:
        @task.short_circuit
        def drift_detected(report: dict[str, Any]) -> bool:
            return bool(report["retrain"])

        @task(outlets=[retrain])
        def request_retrain(report: dict[str, Any]) -> str:
            keep = ("drift_share", "drifted_columns", "window", "champion_version", "violations", "decision")
            get_current_context()["outlet_events"][retrain].extra = {k: report.get(k) for k in keep}
            return f"retrain requested: {report['decision']}"

        report = _heavy(spec, settings, "check_drift", {}, _check_drift_args)
        report.operator.operator_extra_links = (DriftReportLink(),)  # type: ignore[attr-defined]
        drift_detected(report) >> request_retrain(report)

    return pipeline()


def build_pipeline_dags(spec: PipelineSpec, settings: Settings | None = None) -> dict[str, DAG]:
    """All DAGs of one pipeline, keyed by dag_id (settings: the current environment's by default)."""
    if settings is None:
        from tasks.settings import get_settings

        settings = get_settings()
    dags = (ingest_dag(spec, settings), train_dag(spec, settings), monitor_dag(spec, settings))
    return {d.dag_id: d for d in dags}
