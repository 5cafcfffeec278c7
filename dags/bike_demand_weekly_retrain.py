"""A hand-written DAG from the building blocks: retrain bike_demand every week on the last full week.

The spec factory (`dags/pipelines.py`) builds each pipeline's DAGs from `mlops_airflow.blocks`; this file
uses the same blocks the way a data engineer would: a custom pre-step, then the train phase and the
promote/deploy phase. Its task ids are the stages' names, so the model card link, the ledger and the
model server see a run of this DAG exactly like one of `bike_demand_train`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from mlops_airflow import blocks

PIPELINE = "bike_demand"


@task
def last_full_week(pipeline: str) -> str:
    """Custom pre-step: the last Sunday on or before the newest raw partition (train on whole weeks only)."""
    from airflow.sdk.exceptions import AirflowFailException

    from tasks.settings import get_settings
    from tasks.storage import DataLayout

    days = DataLayout(get_settings().data_root).raw_partitions(pipeline)
    if not days:
        raise AirflowFailException(f"no raw partition of {pipeline} yet: run {pipeline}_ingest first")
    newest = datetime.fromisoformat(days[-1])
    return (newest - timedelta(days=(newest.weekday() + 1) % 7)).date().isoformat()


@dag(
    dag_id=f"{PIPELINE}_weekly_retrain",
    description="Retrain bike_demand every Monday on the partitions up to the last full week.",
    doc_md=__doc__,
    schedule="@weekly",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=30)},
    tags=["domain:mobility", f"pipeline:{PIPELINE}", "stage:train"],
)
def bike_demand_weekly_retrain() -> None:
    """Last full week, then the train phase (forced) and the promote/deploy phase."""
    as_of = last_full_week(PIPELINE)
    gated, registered, trained = blocks.train_and_register(PIPELINE, force=True, as_of=as_of)
    blocks.promote_and_deploy(PIPELINE, gated, registered, trained)


bike_demand_weekly_retrain()
