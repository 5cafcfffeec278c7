"""A team's PostgreSQL table for the SQL-source tests: the Beijing PM2.5 cut, loaded with a timestamp column.

The local PostgreSQL (127.0.0.1:5432, trust authentication, database ``test``) holds it; each caller gets its own
table name, dropped afterwards. The table is what a team would have: the dataset's columns as they are (``No``,
``year`` .. ``hour``, ``pm2.5`` with NULLs for missing readings) plus ``ts``, the hour as a timestamp.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_USER = os.environ.get("MLP_TEST_PG_USER", "postgres")
PG_URL = f"postgresql+psycopg2://{PG_USER}@127.0.0.1:5432/test"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "datasets"


def require_postgres() -> None:
    """Skip (under CI=true: fail) the calling test when the local PostgreSQL does not answer."""
    import sqlalchemy as sa

    from tests.conftest import require

    engine = sa.create_engine(PG_URL)
    try:
        engine.connect().close()
    except sa.exc.OperationalError as exc:
        require(False, f"PostgreSQL is not reachable at 127.0.0.1:5432 db test ({type(exc).__name__})")
    finally:
        engine.dispose()


@contextmanager
def beijing_table(prefix: str = "beijing_pm25") -> Iterator[str]:
    """Load ``tests/fixtures/datasets/beijing_pm25.csv.gz`` into a fresh table; yields its name, drops it after."""
    import pandas as pd
    import sqlalchemy as sa

    require_postgres()
    data = pd.read_csv(FIXTURES / "beijing_pm25.csv.gz")  # "NA" readings become NULL
    data["ts"] = pd.to_datetime(data[["year", "month", "day", "hour"]])
    table = f"{prefix}_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(PG_URL)
    try:
        data.to_sql(table, engine, index=False)
        yield table
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
        engine.dispose()
