"""Batch scoring with the session's real champion: byte-identical re-runs, one file per version, clear refusals,
and scored rows reaching the monitoring window as ``source=batch``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from tasks import stages
from tasks.monitor import collect
from tasks.score import ScoreError, read_scored
from tasks.settings import get_settings
from tasks.spec import load_spec
from tasks.storage import DataLayout

P = "bike_demand"


@pytest.fixture
def scoring(use_champion_store: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The champion store; its ``scores/`` is removed afterwards (other tests' windows stay served-only)."""
    yield use_champion_store
    shutil.rmtree(use_champion_store["root"] / "scores", ignore_errors=True)


def test_rescoring_a_day_with_the_same_version_rewrites_the_same_bytes(scoring):
    day = scoring["days"][-1]
    champion = stages.resolve_champion(P)["version"]
    first = stages.score_partitions(P, [day])
    path = scoring["root"] / "scores" / P / f"dt={day}" / f"v{champion}.parquet"
    assert first["model_version"] == champion and first["partitions"][0]["path"] == str(path)
    before = path.read_bytes()
    again = stages.score_partitions(P, [day], champion)
    assert path.read_bytes() == before and again == first  # byte-identical, same digest
    rows = pd.read_parquet(path)
    raw = pd.read_parquet(scoring["root"] / "raw" / P / f"dt={day}" / "part.parquet")
    assert len(rows) == len(raw) == first["partitions"][0]["rows"]
    assert rows["hr"].is_monotonic_increasing and set(rows["model_version"]) == {champion}
    assert rows["prediction"].notna().all() and "cnt" not in rows.columns  # inputs and keys, never the target


def test_another_version_writes_its_own_file_and_becomes_the_days_scoring(scoring):
    day = scoring["days"][-2]
    champion = stages.resolve_champion(P)["version"]
    other = str(stages.register_model(P, scoring["trained"], scoring["gated"])["version"])  # cheap: no training
    stages.score_partitions(P, [day], champion)
    scored = stages.score_partitions(P, [day], other)
    folder = scoring["root"] / "scores" / P / f"dt={day}"
    assert {p.name for p in folder.glob("*.parquet")} == {f"v{champion}.parquet", f"v{other}.parquet"}
    assert scored["partitions"][0]["path"] == str(folder / f"v{other}.parquet")
    current = read_scored(load_spec(P), DataLayout(scoring["root"]), [day])
    assert set(current["model_version"]) == {other} and len(current) == scored["partitions"][0]["rows"]


def test_a_day_without_a_raw_partition_is_refused_before_anything_is_written(scoring):
    day = scoring["days"][-1]
    with pytest.raises(ScoreError, match=r"no raw partition for 2011-01-01: ingest it first \(raw partitions: 2011-"):
        stages.score_partitions(P, [day, "2011-01-01"])
    assert not (scoring["root"] / "scores").exists()
    with pytest.raises(ScoreError, match="no version 999"):
        stages.score_partitions(P, [day], "999")


def test_scored_rows_join_the_monitoring_window_as_batch_rows(scoring):
    day = scoring["days"][-1]
    scored = stages.score_partitions(P, [day])
    spec, settings = load_spec(P), get_settings()
    window_end = (pd.Timestamp(day) + pd.Timedelta(days=1)).isoformat()
    served = collect(spec, settings, DataLayout(scoring["root"]), window_end)
    batch = served.rows[served.rows["source"] == "batch"]
    assert len(batch) == scored["partitions"][0]["rows"]
    assert set(batch["request_id"]) == {f"batch:{day}:v{scored['model_version']}"}
    assert batch[spec.schema_.target].notna().all()  # labels joined from the raw partition, like served rows'
