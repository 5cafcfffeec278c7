from __future__ import annotations

import pandas as pd
import pytest

from tasks.ingest import IngestError, ingest_partition
from tasks.landing import Contract, pending_landing_files
from tasks.partitions import current_source, versions
from tasks.reader import LandingFileRefusedError
from tasks.replay import ReplayError, replay_days
from tasks.validate import validate_staged
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


def _settled(layout, pipeline="bike_demand"):
    """Age the landing files past the settle time (as if upstream finished a while ago)."""
    import os
    import time

    for path in layout.landing_dir(pipeline).glob("*.csv"):
        os.utime(path, (time.time() - 60, time.time() - 60))


def _ingest(spec, layout, day, skip_if_unchanged=False, run_key="run"):
    """What the ingest DAG does for a day: stage the landing file, then validate (and promote) the batch."""
    result = ingest_partition(spec, layout, day, skip_if_unchanged, run_key)
    if not result.skipped:
        validate_staged(spec, layout, {day: result.sha256}, run_key)
    return result


def test_ingest_writes_typed_partition_and_rerun_is_byte_identical(spec, layout):
    replay_days(spec, layout, SHARED, "2011-06-01", "2011-06-01")
    _settled(layout)
    first = ingest_partition(spec, layout, "2011-06-01")
    raw = layout.raw_partition("bike_demand", "2011-06-01")
    assert first.outcome == "staged" and not raw.exists()  # nothing in raw/ before validation
    assert layout.raw_partitions("bike_demand") == []  # training never sees a staged batch
    validate_staged(spec, layout, {"2011-06-01": first.sha256}, "run")
    frame = pd.read_parquet(raw)
    assert first.rows == 24 and list(frame.columns) == list(spec.schema_.columns)
    assert frame["hr"].dtype == "int64" and frame["temp"].dtype == "float64"
    assert list(frame["hr"]) == list(range(24))
    before = raw.read_bytes()
    _ingest(spec, layout, "2011-06-01")
    assert raw.read_bytes() == before
    assert [v["outcome"] for v in versions(layout, "bike_demand", "2011-06-01")] == ["accepted", "accepted"]


def test_missing_landing_file_says_what_to_do(spec, layout):
    with pytest.raises(IngestError, match="no landing file for bike_demand partition 2011-07-01.*Re-run"):
        ingest_partition(spec, layout, "2011-07-01")


def test_duplicate_event_skips_an_unchanged_file_but_a_corrected_delivery_is_ingested(spec, layout):
    replay_days(spec, layout, SHARED, "2011-06-02", "2011-06-02")
    _settled(layout)
    first = _ingest(spec, layout, "2011-06-02", skip_if_unchanged=True)
    assert not first.skipped and len(first.sha256) == 64
    again = ingest_partition(spec, layout, "2011-06-02", skip_if_unchanged=True)  # the same event, twice
    assert again.skipped and again.rows == 24 and "identical landing file" in again.reason
    landing = layout.landing_file("bike_demand", "2011-06-02")
    landing.write_text(landing.read_text().replace(",0.8,", ",0.81,", 1))  # upstream re-delivers a correction
    _settled(layout)
    corrected = _ingest(spec, layout, "2011-06-02", skip_if_unchanged=True)
    assert not corrected.skipped and corrected.sha256 != first.sha256
    assert current_source(layout, "bike_demand", "2011-06-02")["sha256"] == corrected.sha256


def test_landing_watcher_announces_complete_new_files_once_and_a_correction_again(spec, layout):
    import os
    import time

    seen: dict = {}
    contract = Contract("settle", 30)
    replay_days(spec, layout, SHARED, "2011-06-02", "2011-06-03")
    assert pending_landing_files(layout, "bike_demand", seen, contract) == []  # just written: maybe not complete
    _settled(layout)  # a minute without a write
    pending = pending_landing_files(layout, "bike_demand", seen, contract)
    assert [day for day, _ in pending] == ["2011-06-02", "2011-06-03"]
    _ingest(spec, layout, "2011-06-02")
    assert [day for day, _ in pending_landing_files(layout, "bike_demand", seen, contract)] == ["2011-06-03"]
    # a file rewritten just now is not announced until it has been left alone for settle_seconds
    landing = layout.landing_file("bike_demand", "2011-06-02")
    landing.write_text(landing.read_text().replace(",0.8,", ",0.81,", 1))
    assert [day for day, _ in pending_landing_files(layout, "bike_demand", seen, contract)] == ["2011-06-03"]
    os.utime(landing, (time.time() - 31, time.time() - 31))
    assert [day for day, _ in pending_landing_files(layout, "bike_demand", seen, contract)] == [
        "2011-06-02",
        "2011-06-03",
    ]


def test_landing_watcher_skips_files_already_refused_and_temporary_names(spec, layout):
    replay_days(spec, layout, SHARED, "2011-06-02", "2011-06-02")
    landing = layout.landing_file("bike_demand", "2011-06-02")
    landing.write_text(landing.read_text().replace("hum", "humidity", 1))
    landing.with_name(".2011-06-03.csv.tmp").write_text("instant,dteday\n")  # upstream still writing aside
    landing.with_name("2011-06-04.csv.partial").write_text("instant,dteday\n")
    _settled(layout)
    with pytest.raises(LandingFileRefusedError, match="column 'hum' is missing"):
        ingest_partition(spec, layout, "2011-06-02", run_key="r1")
    seen: dict = {}
    assert pending_landing_files(layout, "bike_demand", seen, Contract("rename")) == []  # judged: not announced
