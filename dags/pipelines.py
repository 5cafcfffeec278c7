"""One set of DAGs per pipeline spec in `config/pipelines/`: `<p>_ingest`, `<p>_train`, `<p>_monitor`.

Add a pipeline by adding a spec (and its expectation suite); no DAG code changes.
"""

from __future__ import annotations

from mlops_airflow.factory import build_pipeline_dags
from tasks.spec import list_specs

for _spec in list_specs():
    globals().update(build_pipeline_dags(_spec))
