"""The landing contract: completeness (settle, marker, rename), strict days, and what a refusal leaves behind."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tasks.errors import PermanentError
from tasks.ingest import LandingNotReadyError, ingest_partition
from tasks.landing import BadPartitionError, Contract, Look, marker_path, readiness, strict_day
from tasks.partitions import versions
from tasks.reader import LandingFileRefusedError
from tests.ingest_corpus import real

pytestmark = pytest.mark.needs_data


def _age(path: Path, seconds: float) -> None:
    os.utime(path, (time.time() - seconds, time.time() - seconds))


def test_strict_days_only():
    assert strict_day("2011-02-28") == "2011-02-28"
    for bad in ("2011-02-30", "2011-6-1", "2011-06-01T00:00", "yesterday", "", "2011-13-01"):
        with pytest.raises(BadPartitionError, match="not a calendar date"):
            strict_day(bad)
    assert issubclass(BadPartitionError, PermanentError)  # no retry can make 2011-02-30 exist


def test_settle_needs_two_equal_looks_settle_seconds_apart(tmp_path):
    path = tmp_path / "2011-07-01.csv"
    path.write_bytes(real("2011-07-01"))
    contract = Contract("settle", 30)
    first = readiness(contract, path)
    assert not first.ready and "waiting until it has been unchanged for 30s" in first.reason
    later = Look(first.look.size, first.look.mtime_ns, first.look.inode, first.look.at + 31)  # type: ignore[union-attr]
    assert readiness(contract, path, earlier=first.look, clock=lambda: later.at).ready
    _age(path, 31)  # nobody wrote it for 31 s: the file's own last write counts as the first look
    assert readiness(contract, path).ready
    path.write_bytes(real("2011-07-01") + b"4547,")  # a write resets it
    assert not readiness(contract, path, earlier=first.look).ready


def test_settle_waits_out_a_quiet_writer_but_not_a_busy_one(tmp_path):
    path = tmp_path / "2011-07-01.csv"
    data = real("2011-07-01")
    path.write_bytes(data[:500])
    stop = threading.Event()

    def trickle() -> None:  # upstream still writing, a byte every 0.1 s
        with path.open("ab") as f:
            for i in range(500, len(data)):
                if stop.is_set():
                    return
                f.write(data[i : i + 1])
                f.flush()
                time.sleep(0.1)

    writer = threading.Thread(target=trickle, daemon=True)
    writer.start()
    try:
        busy = readiness(Contract("settle", 0.5), path, wait=True)
        assert not busy.ready and "is still being written" in busy.reason
    finally:
        stop.set()
        writer.join(5)
    quiet = readiness(Contract("settle", 0.5), path, wait=True)  # waited 0.5 s, looked again: unchanged
    assert quiet.ready and "unchanged over two looks" in quiet.reason


def test_marker_and_rename_contracts(tmp_path):
    path = tmp_path / "2011-07-01.csv"
    assert not readiness(Contract("rename"), path).ready  # only the temporary name exists yet
    path.with_name(".2011-07-01.csv.tmp").write_bytes(real("2011-07-01"))
    assert readiness(Contract("rename"), path).reason == "no landing file 2011-07-01.csv yet"
    os.replace(path.with_name(".2011-07-01.csv.tmp"), path)
    assert readiness(Contract("rename"), path).ready  # a final name is complete at once
    marker = Contract("marker")
    assert "waiting for the marker 2011-07-01.csv.done" in readiness(marker, path).reason
    marker_path(path).write_bytes(b"")
    assert readiness(marker, path).ready
    _age(marker_path(path), 60)  # upstream rewrites the file after marking it: the old marker does not vouch
    assert "written after its marker" in readiness(marker, path).reason


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


def test_an_empty_file_is_refused_for_good_with_a_quarantine_record(spec, layout):
    landing = layout.landing_file("bike_demand", "2011-07-01")
    landing.parent.mkdir(parents=True)
    landing.write_bytes(b"")
    _age(landing, 60)
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


def test_the_sensor_and_ingest_refuse_a_day_that_does_not_exist(data_root):
    from tasks import stages

    for call in (
        lambda: stages.landing_status("bike_demand", "2011-02-30"),
        lambda: stages.ingest_partitions("bike_demand", ["2011-02-30"]),
    ):
        with pytest.raises(BadPartitionError, match="'2011-02-30' is not a calendar date"):
            call()
    assert not (data_root / "raw").exists() and not (data_root / "quarantine").exists()


def test_the_stage_cli_reports_a_refusal_as_permanent_with_the_record(data_root, tmp_path):
    import subprocess
    import sys

    landing = data_root / "landing" / "bike_demand" / "2011-07-02.csv"
    landing.parent.mkdir(parents=True)
    landing.write_bytes(real("2011-07-01"))  # yesterday's rows under today's name
    _age(landing, 60)
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


def test_the_source_rules_are_validated_when_the_spec_loads(tmp_path):
    import yaml

    from tasks.spec import SpecError, load_spec
    from tests.conftest import REPO

    shipped = load_spec("bike_demand").source
    assert (shipped.completion, shipped.settle_seconds, shipped.max_bytes) == ("settle", 5, 100 * 1024 * 1024)
    assert shipped.encoding == "utf-8" and shipped.final_newline is True
    for change, error in (
        ({"completion": "eventually"}, "completion"),
        ({"encoding": "klingon-8"}, "not a known text encoding"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"rows_per_partition": {"expected": 24, "exceptions": {"2012-02-30": 3}}}, "'2012-02-30' is not a calendar"),
        ({"rows_per_partition": {"expected": 24, "surplus": 1}}, "surplus"),
    ):
        raw = yaml.safe_load((REPO / "config" / "pipelines" / "bike_demand.yaml").read_text())
        raw["source"] |= change
        path = tmp_path / "variant.yaml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(SpecError, match=error):
            load_spec(path)
