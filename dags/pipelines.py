"""DAGs of every pipeline spec in `config/pipelines/`, and one `rollback` DAG for all of them.

Each spec yields `<p>_ingest`, `<p>_ingest_announced`, `<p>_announce`, `<p>_train` and `<p>_monitor`. Add a
pipeline by adding a spec (and its expectation suite); no DAG code changes.
"""

from __future__ import annotations

from mlops_airflow.factory import build_pipeline_dags, rollback_dag
from tasks.spec import list_specs

_specs = list_specs()
for _spec in _specs:
    globals().update(build_pipeline_dags(_spec))
rollback = rollback_dag(_specs)
