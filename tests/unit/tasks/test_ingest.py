"""Ingest (tasks/ingest.py): stage a landing file, refuse it with a record, skip an unchanged one."""

from __future__ import annotations

import json
import os
import threading
import time

import pandas as pd
import pytest

from tasks.errors import PermanentError
from tasks.ingest import IngestError, LandingNotReadyError, ingest_partition
from tasks.landing import BadPartitionError
from tasks.partitions import current_source, versions
from tasks.reader import LandingFileRefusedError
from tasks.replay import replay_days
from tasks.validate import validate_staged
from tests.ingest_corpus import real
from tests.unit.conftest import FIXTURES
from tests.unit.tasks.landing_helpers import age, ingest, settled


def test_the_stage_cli_reports_a_refusal_as_permanent_with_the_record(data_root, tmp_path):
    import subprocess
    import sys

    landing = data_root / "landing" / "bike_demand" / "2011-07-02.csv"
    landing.parent.mkdir(parents=True)
    landing.write_bytes(real("2011-07-01"))  # yesterday's rows under today's name
    age(landing, 60)
    manifest = tmp_path / "result.json"
    out = subprocess.run(
        [sys.executable, "-m", "tasks", "ingest_partition", "--pipeline", "bike_demand",
         "--args", '{"day": "2011-07-02"}', "--result", str(manifest)],
        capture_output=True, text=True, env=dict(os.environ), timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    failure = json.loads(manifest.read_text())
    assert failure["permanent"] is True and failure["error_type"] == "LandingFileRefusedError"
    assert "rows of other days in the file for 2011-07-02: 2011-07-01 (24 rows)" in failure["error"]
    assert list((data_root / "quarantine" / "bike_demand" / "dt=2011-07-02").glob("manual__*/reasons.json"))


def test_the_sensor_and_ingest_refuse_a_day_that_does_not_exist(data_root):
    from tasks import stages

    for call in (
        lambda: stages.landing_status("bike_demand", "2011-02-30"),
        lambda: stages.ingest_partitions("bike_demand", ["2011-02-30"]),
    ):
        with pytest.raises(BadPartitionError, match="'2011-02-30' is not a calendar date"):
            call()
    assert not (data_root / "raw").exists() and not (data_root / "quarantine").exists()


def test_an_empty_file_is_refused_for_good_with_a_quarantine_record(spec, layout):
    landing = layout.landing_file("bike_demand", "2011-07-01")
    landing.parent.mkdir(parents=True)
    landing.write_bytes(b"")
    age(landing, 60)
    with pytest.raises(LandingFileRefusedError, match="the file is empty") as refused:
        ingest_partition(spec, layout, "2011-07-01", run_key="scheduled__2011-07-02")
    assert isinstance(refused.value, PermanentError)
    record = layout.quarantine_dir("bike_demand", "2011-07-01") / "scheduled__2011-07-02" / "reasons.json"
    reasons = json.loads(record.read_text())
    assert refused.value.record == str(record) and reasons["stage"] == "ingest"
    assert reasons["reasons"] == ["the file is empty (0 bytes): nothing was delivered"]
    assert (record.parent / "2011-07-01.csv").read_bytes() == b""  # the landing file, copied
    assert landing.is_file()  # upstream's file stays where upstream put it
    assert not layout.raw_partition("bike_demand", "2011-07-01").exists()
    assert [v["outcome"] for v in versions(layout, "bike_demand", "2011-07-01")] == ["quarantined"]
    # an event announcing the same file again is not judged twice
    again = ingest_partition(spec, layout, "2011-07-01", skip_if_unchanged=True, run_key="event")
    assert again.skipped and "already quarantined" in again.reason and str(record) in again.reason


def test_a_file_still_changing_is_a_retryable_error_and_nothing_is_kept(spec, layout):
    landing = layout.landing_file("bike_demand", "2011-07-01")
    landing.parent.mkdir(parents=True)
    landing.write_bytes(real("2011-07-01")[:900])
    stop = threading.Event()

    def append() -> None:
        with landing.open("ab") as f:
            while not stop.is_set():
                f.write(b" ")
                f.flush()
                time.sleep(0.2)

    writer = threading.Thread(target=append, daemon=True)
    writer.start()
    try:
        fast = spec.model_copy(update={"source": spec.source.model_copy(update={"settle_seconds": 1})})
        with pytest.raises(LandingNotReadyError, match="still being written") as err:
            ingest_partition(fast, layout, "2011-07-01")
        assert not isinstance(err.value, PermanentError)  # the task retries: the file may yet complete
    finally:
        stop.set()
        writer.join(5)
    assert not layout.raw_partition("bike_demand", "2011-07-01").parent.exists()
    assert not layout.quarantine_dir("bike_demand", "2011-07-01").exists()


def test_duplicate_event_skips_an_unchanged_file_but_a_corrected_delivery_is_ingested(spec, layout):
    replay_days(spec, layout, FIXTURES, "2011-06-02", "2011-06-02")
    settled(layout)
    first = ingest(spec, layout, "2011-06-02", skip_if_unchanged=True)
    assert not first.skipped and len(first.sha256) == 64
    again = ingest_partition(spec, layout, "2011-06-02", skip_if_unchanged=True)  # the same event, twice
    assert again.skipped and again.rows == 24 and "identical landing file" in again.reason
    landing = layout.landing_file("bike_demand", "2011-06-02")
    landing.write_text(landing.read_text().replace(",0.8,", ",0.81,", 1))  # upstream re-delivers a correction
    settled(layout)
    corrected = ingest(spec, layout, "2011-06-02", skip_if_unchanged=True)
    assert not corrected.skipped and corrected.sha256 != first.sha256
    assert current_source(layout, "bike_demand", "2011-06-02")["sha256"] == corrected.sha256


def test_missing_landing_file_says_what_to_do(spec, layout):
    with pytest.raises(IngestError, match="no landing file for bike_demand partition 2011-07-01.*Re-run"):
        ingest_partition(spec, layout, "2011-07-01")


def test_ingest_writes_typed_partition_and_rerun_is_byte_identical(spec, layout):
    replay_days(spec, layout, FIXTURES, "2011-06-01", "2011-06-01")
    settled(layout)
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
    ingest(spec, layout, "2011-06-01")
    assert raw.read_bytes() == before
    assert [v["outcome"] for v in versions(layout, "bike_demand", "2011-06-01")] == ["accepted", "accepted"]
