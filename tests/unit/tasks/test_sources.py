"""Sources (tasks/sources.py): files through fsspec (CSV, Parquet, JSON lines; by file or by date column) and SQL.

Every pulled day lands as ``landing/<p>/<day>.csv`` and is then ingested like any landing file (checked, staged,
validated), so these tests end with the ingest of a pulled day.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pandas as pd
import pytest

from tasks.sources import SourceError, pull
from tasks.spec import FilesSourceSpec, SourceSpec, SqlSourceSpec, load_spec
from tests.unit.conftest import FIXTURES
from tests.unit.tasks.conftest import raw_rows
from tests.unit.tasks.landing_helpers import ingest

PG_USER = os.environ.get("MLP_TEST_PG_USER", "postgres")
PG_URL = f"postgresql+psycopg2://{PG_USER}@127.0.0.1:5432/test"


def _with_source(**source: Any) -> Any:
    spec = load_spec("bike_demand")
    fields = spec.source.model_dump(exclude={"dataset", "files", "sql"}) | source
    return spec.model_copy(update={"source": SourceSpec.model_validate(fields)})


def _bike(start: str, end: str) -> pd.DataFrame:
    return raw_rows(FIXTURES, start, end)


def test_one_csv_file_per_day_from_a_local_path_is_copied_as_delivered_and_ingested(layout, tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    _bike("2011-06-01", "2011-06-01").to_csv(folder / "2011-06-01.csv", index=False)
    spec = _with_source(files={"path": str(folder / "{day}.csv")})
    pulled = pull(spec, layout, "2011-06-01")
    assert pulled.outcome == "written"
    assert layout.landing_file("bike_demand", "2011-06-01").read_bytes() == (folder / "2011-06-01.csv").read_bytes()
    assert pull(spec, layout, "2011-06-01").outcome == "unchanged"  # the same bytes are not a new delivery
    assert pull(spec, layout, "2011-06-02").outcome == "absent"
    assert ingest(spec, layout, "2011-06-01").rows == 24
    assert layout.raw_partition("bike_demand", "2011-06-01").is_file()


def test_parquet_rows_by_their_date_column_through_an_fsspec_url(layout):
    import fsspec

    frame = _bike("2011-06-01", "2011-06-03")
    frame["when"] = pd.to_datetime(frame.dteday) + pd.to_timedelta(frame.hr, unit="h")
    name = f"memory://team-{uuid.uuid4().hex}/pm.parquet"
    with fsspec.open(name, "wb") as f:
        frame.drop(columns=["dteday"]).to_parquet(f)  # no calendar-date column: the day is written by the pull
    spec = _with_source(files={"path": name, "format": "parquet", "date_column": "when"})
    assert pull(spec, layout, "2011-06-02").rows == 24
    landed = pd.read_csv(layout.landing_file("bike_demand", "2011-06-02"))
    assert list(landed.columns) == list(spec.schema_.columns) and set(landed.dteday) == {"2011-06-02"}
    assert ingest(spec, layout, "2011-06-02").rows == 24


def test_date_less_json_lines_get_the_ingestion_day_as_their_partition(layout, tmp_path):
    rows = _bike("2011-06-05", "2011-06-05").drop(columns=["dteday"])
    (tmp_path / "2024-03-01.jsonl").write_text(rows.to_json(orient="records", lines=True))
    spec = _with_source(files={"path": f"file://{tmp_path}/{{day}}.jsonl", "format": "jsonl"})
    pull(spec, layout, "2024-03-01")
    landed = pd.read_csv(layout.landing_file("bike_demand", "2024-03-01"))
    assert set(landed.dteday) == {"2024-03-01"} and len(landed) == 24


def test_a_source_spec_names_one_way_to_find_each_day():
    with pytest.raises(ValueError, match="exactly one"):
        FilesSourceSpec(path="/data/*.csv")  # neither {day} nor date_column
    with pytest.raises(ValueError, match="exactly one of table or query"):
        SqlSourceSpec(url_env="X_URL", date_column="ts")
    with pytest.raises(ValueError, match=":start and :end"):
        SqlSourceSpec(url_env="X_URL", date_column="ts", query="SELECT * FROM t")
    with pytest.raises(ValueError, match="not both"):
        _with_source(files={"path": "/x/{day}.csv"}, sql={"url_env": "X_URL", "table": "t", "date_column": "ts"})
    with pytest.raises(ValueError, match="String should match pattern"):
        SqlSourceSpec(url_env="postgresql://u:p@h/db", table="t", date_column="ts")  # a URL is never in the spec


def test_sql_without_its_url_in_the_environment_names_the_variable(layout, monkeypatch):
    monkeypatch.delenv("MLP_TEST_SOURCE_URL", raising=False)
    spec = _with_source(sql={"url_env": "MLP_TEST_SOURCE_URL", "conn_id": "team_db", "table": "t", "date_column": "ts"})
    with pytest.raises(SourceError, match="MLP_TEST_SOURCE_URL .* not set.*'team_db'"):
        pull(spec, layout, "2011-06-01")


@pytest.fixture
def pg_table() -> Any:
    """A table of three bike days in the local PostgreSQL (db ``test``) with a timestamp column; dropped after."""
    import sqlalchemy as sa

    from tests.conftest import require

    engine = sa.create_engine(PG_URL)
    try:
        engine.connect().close()
    except sa.exc.OperationalError as exc:
        require(False, f"PostgreSQL is not reachable at 127.0.0.1:5432 db test ({type(exc).__name__})")
    table = f"bike_{uuid.uuid4().hex[:10]}"
    frame = _bike("2011-06-01", "2011-06-03")
    frame["ts"] = pd.to_datetime(frame.dteday) + pd.to_timedelta(frame.hr, unit="h")
    frame.loc[frame.index[30], "temp"] = None  # a NULL lands as an empty field
    frame.drop(columns=["dteday"]).to_sql(table, engine, index=False)
    yield table
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
    engine.dispose()


def test_sql_table_is_read_one_day_at_a_time_by_its_date_column(layout, monkeypatch, pg_table):
    monkeypatch.setenv("MLP_TEST_SOURCE_URL", PG_URL.replace("postgresql+psycopg2:", "postgres:"))  # Airflow's form
    spec = _with_source(sql={"url_env": "MLP_TEST_SOURCE_URL", "table": pg_table, "date_column": "ts"})
    pulled = pull(spec, layout, "2011-06-02")
    assert pulled.outcome == "written" and pulled.rows == 24
    landed = pd.read_csv(layout.landing_file("bike_demand", "2011-06-02"))
    assert set(landed.dteday) == {"2011-06-02"} and landed.temp.isna().sum() == 1
    assert pull(spec, layout, "2011-06-09").outcome == "absent"
    query = f'SELECT * FROM "{pg_table}" WHERE ts >= :start AND ts < :end ORDER BY ts'
    by_query = _with_source(sql={"url_env": "MLP_TEST_SOURCE_URL", "query": query, "date_column": "ts"})
    assert pull(by_query, layout, "2011-06-02").outcome == "unchanged"  # the same rows, the same bytes
    result = ingest(spec, layout, "2011-06-01")
    assert result.rows == 24 and layout.raw_partition("bike_demand", "2011-06-01").is_file()
