"""Turn a pipeline spec into its DAGs: ingest, ingest_announced, announce, train, score, monitor.

Daily partitions are Airflow partitions (AIP-76): every ingest run is the run of one partition key (the day),
the raw-asset events it emits carry that key, and ``<p>_train`` is scheduled on them per key.

Wiring only, and only from the building blocks in :mod:`mlops_airflow.blocks` (one ``@task`` per stage,
one ``@task_group`` per phase), the same ones a hand-written DAG uses. Each task body is one call into
``tasks.stages``; XCom carries the small results the stages return (:mod:`tasks.results`): paths, ids and
metrics. Heavy stages go through :func:`heavy_stage` (local task or pod, by the execution mode).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, CronPartitionTimetable, Param, PartitionedAssetTimetable, dag

from mlops_airflow import blocks
from mlops_airflow.blocks import (  # noqa: F401 - the public names
    heavy_stage,
    landing_asset,
    raw_asset,
    retrain_asset,
    watched_asset,
)
from tasks.names import PARTITION_KEY_FORMAT, RAW_ASSET, RETRAIN_ASSET

if TYPE_CHECKING:
    from tasks.settings import Settings
    from tasks.spec import PipelineSpec


def _common(spec: PipelineSpec, stage: str) -> dict[str, Any]:
    """DAG arguments every generated DAG shares: owner, retries, start, no implicit catchup, tags."""
    return {
        "start_date": datetime.fromisoformat(spec.start_date),
        "catchup": False,
        "default_args": {"owner": spec.owner, "retries": 1, "retry_delay": timedelta(seconds=30)},
        "tags": [f"domain:{spec.domain}", f"pipeline:{spec.name}", f"stage:{stage}"],
    }


def _partition_param() -> dict[str, Param]:
    return {
        "partition": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Ingest this day (only where no partition key can be given, e.g. dag.test()).",
        )
    }


def ingest_dag(spec: PipelineSpec, settings: Settings) -> DAG:
    """One run per daily partition (``CronPartitionTimetable``): landing file -> validated raw partition."""
    name, raw = spec.name, raw_asset(spec.name)

    @dag(
        dag_id=f"{name}_ingest",
        description=f"Ingest {name} landing files into the raw store, one run per daily partition.",
        doc_md=f"""### {name}: ingest
One run per day, **keyed by the day** (an Airflow partition key, `YYYY-MM-DD`, shown on every run): the
run `{spec.ingest_schedule}` schedules after the day ends takes the day before. Waits (reschedule mode) until
`landing/{name}/<key>.csv` is complete (`source.completion: {spec.source.completion}`: a file still being written is
never read), for an absent file until the key's scheduled run (the first fire of `{spec.ingest_schedule}` at or after
the end of the day, UTC) plus {spec.landing_timeout_hours:g} h (`landing_timeout_hours`): the scheduled run waits
about that long, while the run Airflow makes for yesterday's key when the DAG is **unpaused** after that deadline,
or a re-run of an old key with no file, fails `wait_for_landing` at its first look, naming the deadline, instead of
waiting {spec.landing_timeout_hours:g} h for a file that is not coming. Then it checks it
(encoding, header, rows, values, every row of the day, the row count)
and stages it beside `raw/{name}/dt=<key>/part.parquet`; a refused file is quarantined with its reasons and
nothing reaches raw. `validate_partitions` judges the staged batch with `{spec.expectations}`: only a valid
batch replaces the partition (a bad re-delivery never touches the last valid version); `report_quarantine`
fails the run, saying why, when anything was quarantined. `publish_partitions` then records an event on
`{raw.uri}` **with the partition key**, which schedules `{name}_train` for that key. Every version of a day is
in `raw/{name}/dt=<day>/_versions.jsonl`.

Backfill by key: `airflow backfill create --dag-id {name}_ingest --from-date 2011-01-01 --to-date 2011-01-31`
makes one run per partition key in the range; re-run one day with `POST /api/v2/dags/{name}_ingest/dagRuns`
and `"partition_key": "2011-01-05"` (or a backfill with `reprocess_behavior: completed`).
Upstream announcements are taken by `{name}_ingest_announced`.
""",
        schedule=CronPartitionTimetable(
            spec.ingest_schedule, timezone="UTC", run_offset=-1, key_format=PARTITION_KEY_FORMAT
        ),
        max_active_runs=8,
        **_common(spec, "ingest"),
        params=_partition_param(),
    )
    def pipeline() -> None:
        blocks.ingest(name)

    return pipeline()


def ingest_announced_dag(spec: PipelineSpec, settings: Settings) -> DAG:
    """One run per partition key recorded on the landing Asset: the same ingest, started by upstream."""
    name, landing = spec.name, landing_asset(spec.name)

    @dag(
        dag_id=f"{name}_ingest_announced",
        description=f"Ingest the {name} days upstream announces, one run per partition key.",
        doc_md=f"""### {name}: ingest what upstream announces
The same tasks as `{name}_ingest`, scheduled on the partitioned Asset `{landing.uri}`
(`PartitionedAssetTimetable`): each event's partition key (the day) becomes one run with that key. Upstream
records one over REST: `POST /api/v2/assets/events` with `"partition_key": "YYYY-MM-DD"`; the spec's watchers
reach it through `{name}_announce`. Events for a file already ingested (or quarantined) unchanged are skipped
and say so; a re-delivered, corrected file is ingested again.
""",
        schedule=PartitionedAssetTimetable(assets=landing),
        max_active_runs=8,
        **_common(spec, "ingest"),
        params=_partition_param(),
    )
    def pipeline() -> None:
        blocks.ingest(name)

    return pipeline()


def announce_dag(spec: PipelineSpec, settings: Settings) -> DAG:
    """The watchers' key-less events -> partitioned landing events (AssetWatcher events carry no key in 3.3)."""
    name, watched = spec.name, watched_asset(spec.name, spec, settings)

    @dag(
        dag_id=f"{name}_announce",
        description=f"Re-emit the {name} watchers' announcements as partitioned landing events.",
        doc_md=f"""### {name}: announce
Scheduled on `{watched.uri}`, where the spec's AssetWatchers (`source.events`: a Redis channel, the landing
zone) record what they see. In Airflow 3.3 a watcher's event has no partition key, so a partition-aware DAG
gets no run from it: `announce_partitions` reads the day(s) from the message and records one event per day on
`{landing_asset(name).uri}` **with that day as partition key**, which starts one `{name}_ingest_announced` run
per day. Upstream may also record a key-less event here (`extra = {{"partition": "YYYY-MM-DD"}}`).
""",
        schedule=watched,
        max_active_runs=1,
        **_common(spec, "ingest"),
    )
    def pipeline() -> None:
        blocks.announce(name)

    return pipeline()


def train_dag(spec: PipelineSpec, settings: Settings) -> DAG:
    """On new raw data or a retrain request: validate, features, train, evaluate, gate, register, deploy."""
    name = spec.name

    @dag(
        dag_id=f"{name}_train",
        description=f"Validate, train, evaluate, gate, register and deploy the {name} model.",
        doc_md=f"""### {name}: train
Scheduled, per partition key, on `{RAW_ASSET.format(pipeline=name)}` (a new day) **or**
`{RETRAIN_ASSET.format(pipeline=name)}` (monitoring asks for a retrain; keyed by the window's last day): the run
shows the key that started it. `plan_training` decides whether a run is worth it (see ARCHITECTURE.md,
*retrain policy*) and skips the rest otherwise. Each partition is validated with the Great Expectations suite
`{spec.expectations}`; failures are quarantined and reported by `report_quarantine` after the good data
was used. The model is logged to MLflow, gated ({spec.gate.mode}), registered as `{name}` with alias
`challenger`, promoted to `champion` and deployed to the model server.
""",
        # one run per partition key: each new day (``IdentityMapper``) or retrain request; the policy consolidates
        schedule=PartitionedAssetTimetable(assets=raw_asset(name) | retrain_asset(name)),
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
        gated, registered, trained = blocks.train_and_register(name)
        blocks.promote_and_deploy(name, gated, registered, trained)

    return pipeline()


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
        pipeline_name = "{{ params.pipeline }}"  # op_args are templated: the form's pipeline, at run time
        blocks.deploy_model(pipeline_name, blocks.rollback_model(pipeline_name))

    return pipeline()


def score_dag(spec: PipelineSpec, settings: Settings) -> DAG:
    """On new raw partitions (or a backfill): score them with the champion into ``scores/<p>/dt=<day>/``."""
    from airflow.sdk.api.datamodels._generated import DagRunType

    name, raw = spec.name, raw_asset(spec.name)

    @dag(
        dag_id=f"{name}_score",
        description=f"Batch-score new {name} partitions with the champion.",
        doc_md=f"""### {name}: score
Scheduled on `{raw.uri}`: each new valid partition is scored by the model holding the `champion` alias
(`resolve_champion` resolves it once per run; `score_partitions` loads that version once) and written to
`scores/{name}/dt=<day>/v<version>.parquet` with `scored.json` naming the day's current scoring. A re-run for
the same day and version writes the same bytes; another version writes its own file. A day without a raw
partition fails with the days that exist. The nightly `{name}_monitor` counts scored rows beside served ones
(`source: batch`). Each run is the run of one partition key (the raw event's); score a past day by
triggering with `partition` (and `version` to score with another version than the champion).
""",
        # one run per partition key: each new valid day (its raw event's key); a past day by the trigger form
        schedule=PartitionedAssetTimetable(assets=raw),
        allowed_run_types=[DagRunType.ASSET_TRIGGERED, DagRunType.MANUAL],
        max_active_runs=4,
        **_common(spec, "score"),
        params={
            "partition": Param(
                None, type=["null", "string"], format="date", description="Score this day (default: the run's)."
            ),
            "version": Param(
                None, type=["null", "string"], description="Score with this version (default: the champion)."
            ),
        },
    )
    def pipeline() -> None:
        blocks.score(name)

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
        blocks.monitor(name)

    return pipeline()


def build_pipeline_dags(spec: PipelineSpec, settings: Settings | None = None) -> dict[str, DAG]:
    """All DAGs of one pipeline, keyed by dag_id (settings: the current environment's by default)."""
    if settings is None:
        from tasks.settings import get_settings

        settings = get_settings()
    with blocks.building(spec, settings):
        dags = (
            ingest_dag(spec, settings),
            ingest_announced_dag(spec, settings),
            announce_dag(spec, settings),
            train_dag(spec, settings),
            score_dag(spec, settings),
            monitor_dag(spec, settings),
        )
    return {d.dag_id: d for d in dags}
