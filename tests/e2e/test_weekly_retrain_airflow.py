"""End to end through Airflow: the hand-written ``bike_demand_weekly_retrain`` DAG (built from the blocks).

Real rows from the committed fixtures (no ``../shared``), a real (SQLite) Airflow metadata DB, MLflow store and
model server; the DAG runs with ``dag.test()`` like the other end-to-end modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, write_spec
from tests.e2e.conftest import airflow_stack

pytestmark = [pytest.mark.e2e]
DAYS = [f"2011-06-{d:02d}" for d in range(1, 21)]  # Wednesday 1 .. Monday 20: the last full week ends Sunday 19
FIXTURES = REPO / "tests" / "fixtures" / "datasets"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, session_state: Path, airflow_db: None) -> Any:
    tmp = tmp_path_factory.mktemp("weekly")
    write_spec(tmp / "specs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLP_SHARED_DATASETS", str(FIXTURES))
        with airflow_stack(tmp, tmp / "specs", ["--pipelines", "bike_demand"]) as stack:
            yield stack


def _ti(run: Any, task_id: str) -> Any:
    return next(t for t in run.get_task_instances() if t.task_id == task_id)


def test_weekly_retrain_trains_on_the_last_full_week_and_the_server_serves_it(stack: dict[str, Any]) -> None:
    from tasks import stages
    from tasks.registry import champion
    from tasks.settings import get_settings

    dag = stack["dags"]["bike_demand_weekly_retrain"]
    empty = dag.test()  # bad input first: nothing ingested yet, the pre-step says so and nothing trains
    assert str(_ti(empty, "last_full_week").state) == "failed"
    assert {str(t.state) for t in empty.get_task_instances() if t.task_id != "last_full_week"} == {"upstream_failed"}

    stages.replay("bike_demand", DAYS[0], DAYS[-1])
    for day in DAYS:
        stages.ingest_partition("bike_demand", day)
    run = dag.test()
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert set(states.values()) == {"success"}, states
    plan = _ti(run, "plan_training").xcom_pull(task_ids="plan_training")
    assert plan["partitions"][-1] == "2011-06-19" and "2011-06-20" not in plan["partitions"]
    v1 = champion(get_settings(), "bike_demand")
    assert v1 is not None
    assert httpx.get(f"{stack['url']}/health").json()["version"] == v1.version
