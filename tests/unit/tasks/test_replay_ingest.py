from __future__ import annotations

import pandas as pd
import pytest

from tasks.ingest import IngestError, ingest_partition
from tasks.replay import ReplayError, replay_days
from tests.conftest import SHARED

pytestmark = pytest.mark.needs_data


def test_replay_writes_one_file_per_day_with_the_real_rows(spec, layout):
    result = replay_days(spec, layout, SHARED, "2011-01-01", "2011-01-03")
    assert [p.rsplit("/", 1)[1] for p in result.files] == ["2011-01-01.csv", "2011-01-02.csv", "2011-01-03.csv"]
    day = pd.read_csv(layout.landing_file("bike_demand", "2011-01-01"))
    assert len(day) == 24 and day["cnt"].sum() == 985  # the real first day of the dataset
    assert result.rows == 24 + 23 + 22  # hours missing in the original file stay missing


def test_replay_outside_the_dataset_is_an_error(spec, layout):
    with pytest.raises(ReplayError, match="no rows between 2015-01-01"):
        replay_days(spec, layout, SHARED, "2015-01-01", "2015-01-02")
    with pytest.raises(ReplayError, match="before start"):
        replay_days(spec, layout, SHARED, "2011-01-02", "2011-01-01")


def test_ingest_writes_typed_partition_and_rerun_is_byte_identical(spec, layout):
    replay_days(spec, layout, SHARED, "2011-06-01", "2011-06-01")
    first = ingest_partition(spec, layout, "2011-06-01")
    raw = layout.raw_partition("bike_demand", "2011-06-01")
    frame = pd.read_parquet(raw)
    assert first.rows == 24 and first.uncast_columns == []
    assert frame["hr"].dtype == "int64" and frame["temp"].dtype == "float64"
    assert list(frame["hr"]) == list(range(24))
    before = raw.read_bytes()
    ingest_partition(spec, layout, "2011-06-01")
    assert raw.read_bytes() == before


def test_ingest_keeps_a_bad_batch_for_validation_to_judge(spec, layout):
    replay_days(spec, layout, SHARED, "2011-06-02", "2011-06-02")
    path = layout.landing_file("bike_demand", "2011-06-02")
    frame = pd.read_csv(path, dtype=str)
    frame.loc[3, "temp"] = "warm"
    frame.to_csv(path, index=False)
    result = ingest_partition(spec, layout, "2011-06-02")
    assert result.uncast_columns == ["temp"]
    assert pd.read_parquet(result.uri)["temp"].tolist()[3] == "warm"


def test_missing_landing_file_says_what_to_do(spec, layout):
    with pytest.raises(IngestError, match="no landing file for bike_demand partition 2011-07-01.*Re-run"):
        ingest_partition(spec, layout, "2011-07-01")


def test_duplicate_event_skips_an_unchanged_file_but_a_corrected_delivery_is_ingested(spec, layout):
    replay_days(spec, layout, SHARED, "2011-06-02", "2011-06-02")
    first = ingest_partition(spec, layout, "2011-06-02", skip_if_unchanged=True)
    assert not first.skipped and len(first.sha256) == 64
    again = ingest_partition(spec, layout, "2011-06-02", skip_if_unchanged=True)  # the same event, twice
    assert again.skipped and again.rows == 24 and "identical landing file" in again.reason
    landing = layout.landing_file("bike_demand", "2011-06-02")
    landing.write_text(landing.read_text().replace(",0.8,", ",0.81,", 1))  # upstream re-delivers a correction
    corrected = ingest_partition(spec, layout, "2011-06-02", skip_if_unchanged=True)
    assert not corrected.skipped and corrected.sha256 != first.sha256


def test_landing_watcher_announces_settled_new_files_once_and_a_correction_again(spec, layout):
    import os

    from tasks.ingest import pending_landing_files

    seen: dict[str, tuple[int, int, str, bool]] = {}
    replay_days(spec, layout, SHARED, "2011-06-02", "2011-06-03")
    assert pending_landing_files(layout, "bike_demand", seen) == []  # first sight: maybe still being written
    pending = pending_landing_files(layout, "bike_demand", seen)
    assert [day for day, _ in pending] == ["2011-06-02", "2011-06-03"]
    ingest_partition(spec, layout, "2011-06-02")
    assert [day for day, _ in pending_landing_files(layout, "bike_demand", seen)] == ["2011-06-03"]
    # a file still growing between two looks is not announced until it has settled
    landing = layout.landing_file("bike_demand", "2011-06-02")
    landing.write_text(landing.read_text().replace(",0.8,", ",0.81,", 1))
    os.utime(landing, ns=(1, 1))
    assert [day for day, _ in pending_landing_files(layout, "bike_demand", seen)] == ["2011-06-03"]
    assert [day for day, _ in pending_landing_files(layout, "bike_demand", seen)] == ["2011-06-02", "2011-06-03"]


def test_landing_trigger_puts_one_look_into_one_event(spec, layout):
    import asyncio

    from mlops_airflow.triggers import LandingFileTrigger

    replay_days(spec, layout, SHARED, "2011-06-02", "2011-06-04")
    trigger = LandingFileTrigger("bike_demand", str(layout.root), poll_seconds=0.05)
    classpath, kwargs = trigger.serialize()
    assert classpath == "mlops_airflow.triggers.LandingFileTrigger" and kwargs["data_root"] == str(layout.root)

    async def first_event() -> dict:
        events = trigger.run()
        try:
            return (await asyncio.wait_for(anext(events), 10)).payload
        finally:
            await events.aclose()

    payload = asyncio.run(first_event())
    assert payload["partitions"] == ["2011-06-02", "2011-06-03", "2011-06-04"]
    assert payload["source"] == "landing_file" and len(payload["sha256"]["2011-06-03"]) == 64
