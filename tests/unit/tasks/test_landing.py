"""The landing contract (tasks/landing.py): strict days, completeness, the watcher's look."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tasks.errors import PermanentError
from tasks.ingest import ingest_partition
from tasks.landing import BadPartitionError, Contract, Look, marker_path, pending_landing_files, readiness, strict_day
from tasks.reader import LandingFileRefusedError
from tasks.replay import replay_days
from tests.ingest_corpus import real
from tests.unit.conftest import FIXTURES
from tests.unit.tasks.landing_helpers import age, ingest, settled


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


def test_marker_and_rename_contracts(tmp_path):
    path = tmp_path / "2011-07-01.csv"
    assert not readiness(Contract("rename"), path).ready  # only the temporary name exists yet
    path.with_name(".2011-07-01.csv.tmp").write_bytes(real("2011-07-01"))
    assert readiness(Contract("rename"), path).reason == (
        "2011-07-01.csv is still being written as .2011-07-01.csv.tmp (source.completion: rename)"
    )
    os.replace(path.with_name(".2011-07-01.csv.tmp"), path)
    assert readiness(Contract("rename"), path).ready  # a final name is complete at once
    marker = Contract("marker")
    assert "waiting for the marker 2011-07-01.csv.done" in readiness(marker, path).reason
    marker_path(path).write_bytes(b"")
    assert readiness(marker, path).ready
    age(marker_path(path), 60)  # upstream rewrites the file after marking it: the old marker does not vouch
    assert "written after its marker" in readiness(marker, path).reason


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


def test_settle_needs_two_equal_looks_settle_seconds_apart(tmp_path):
    path = tmp_path / "2011-07-01.csv"
    path.write_bytes(real("2011-07-01"))
    contract = Contract("settle", 30)
    first = readiness(contract, path)
    assert not first.ready and "waiting until it has been unchanged for 30s" in first.reason
    later = Look(first.look.size, first.look.mtime_ns, first.look.inode, first.look.at + 31)  # type: ignore[union-attr]
    assert readiness(contract, path, earlier=first.look, clock=lambda: later.at).ready
    age(path, 31)  # nobody wrote it for 31 s: the file's own last write counts as the first look
    assert readiness(contract, path).ready
    path.write_bytes(real("2011-07-01") + b"4547,")  # a write resets it
    assert not readiness(contract, path, earlier=first.look).ready


def test_strict_days_only():
    assert strict_day("2011-02-28") == "2011-02-28"
    for bad in ("2011-02-30", "2011-6-1", "2011-06-01T00:00", "yesterday", "", "2011-13-01"):
        with pytest.raises(BadPartitionError, match="not a calendar date"):
            strict_day(bad)
    assert issubclass(BadPartitionError, PermanentError)  # no retry can make 2011-02-30 exist


def test_landing_watcher_skips_files_already_refused_and_temporary_names(spec, layout):
    replay_days(spec, layout, FIXTURES, "2011-06-02", "2011-06-02")
    landing = layout.landing_file("bike_demand", "2011-06-02")
    landing.write_text(landing.read_text().replace("hum", "humidity", 1))
    landing.with_name(".2011-06-03.csv.tmp").write_text("instant,dteday\n")  # upstream still writing aside
    landing.with_name("2011-06-04.csv.partial").write_text("instant,dteday\n")
    settled(layout)
    with pytest.raises(LandingFileRefusedError, match="column 'hum' is missing"):
        ingest_partition(spec, layout, "2011-06-02", run_key="r1")
    seen: dict = {}
    assert pending_landing_files(layout, "bike_demand", seen, Contract("rename")) == []  # judged: not announced


def test_landing_watcher_announces_complete_new_files_once_and_a_correction_again(spec, layout):
    import os
    import time

    seen: dict = {}
    contract = Contract("settle", 30)
    replay_days(spec, layout, FIXTURES, "2011-06-02", "2011-06-03")
    assert pending_landing_files(layout, "bike_demand", seen, contract) == []  # just written: maybe not complete
    settled(layout)  # a minute without a write
    pending = pending_landing_files(layout, "bike_demand", seen, contract)
    assert [day for day, _ in pending] == ["2011-06-02", "2011-06-03"]
    ingest(spec, layout, "2011-06-02")
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


def test_the_deadline_is_the_end_of_the_day_plus_the_landing_timeout():
    from datetime import UTC, datetime

    from tasks.landing import landing_deadline

    assert landing_deadline("2026-11-25", 12) == datetime(2026, 11, 26, 12, tzinfo=UTC)
    assert landing_deadline("2024-02-29", 0.5) == datetime(2024, 3, 1, 0, 30, tzinfo=UTC)
    with pytest.raises(BadPartitionError):
        landing_deadline("2026-02-30", 12)


def test_the_deadline_is_the_keys_scheduled_run_under_ingest_schedule_plus_the_landing_timeout():
    """The run for key D fires at the first cron time at or after the end of D (``CronPartitionTimetable``,
    ``run_offset=-1``): a 13:00 schedule does not fail at its first poke, a 06:00 one still waits 12 h."""
    from datetime import UTC, datetime

    from tasks.landing import landing_deadline, scheduled_run

    day = "2026-11-25"
    assert landing_deadline(day, 12, "@daily") == datetime(2026, 11, 26, 12, tzinfo=UTC)
    assert landing_deadline(day, 12, "0 0 * * *") == datetime(2026, 11, 26, 12, tzinfo=UTC)
    assert scheduled_run(day, "0 13 * * *") == datetime(2026, 11, 26, 13, tzinfo=UTC)
    assert landing_deadline(day, 12, "0 13 * * *") == datetime(2026, 11, 27, 1, tzinfo=UTC)
    assert landing_deadline(day, 12, "0 6 * * *") == datetime(2026, 11, 26, 18, tzinfo=UTC)
    assert landing_deadline(day, 2, "@hourly") == datetime(2026, 11, 26, 2, tzinfo=UTC)  # the key's last run
    assert scheduled_run(day, "@weekly") == datetime(2026, 11, 29, tzinfo=UTC)  # the next Sunday
    assert scheduled_run(day, "@quarterly") == datetime(2027, 1, 1, tzinfo=UTC)  # Airflow's preset, not croniter's
    assert scheduled_run("2026-11-30", "@monthly") == datetime(2026, 12, 1, tzinfo=UTC)


def test_a_run_scheduled_in_the_afternoon_waits_its_full_timeout():
    """``ingest_schedule: "0 13 * * *"``: the scheduled run for 2026-11-25 fires at 13:00 on the 26th; with no file
    yet it keeps waiting (until 01:00 on the 27th), where a deadline counted from midnight failed its first poke."""
    from datetime import UTC, datetime

    from tasks.landing import LandingOverdueError, check_overdue

    fires = datetime(2026, 11, 26, 13, 0, 30, tzinfo=UTC)
    check_overdue("2026-11-25", present=False, timeout_hours=12, now=fires, schedule="0 13 * * *")
    with pytest.raises(LandingOverdueError, match=r"2026-11-27 01:00 UTC .*'0 13 \* \* \*'"):
        check_overdue("2026-11-25", False, 12, now=datetime(2026, 11, 27, 1, 1, tzinfo=UTC), schedule="0 13 * * *")
    early = datetime(2026, 11, 26, 17, 0, tzinfo=UTC)  # "0 6 * * *": waits until 18:00, not only until noon
    check_overdue("2026-11-25", present=False, timeout_hours=12, now=early, schedule="0 6 * * *")


def test_an_absent_file_is_waited_for_until_its_deadline_and_a_present_one_always():
    """Unpausing the ingest DAG at 15:00 makes the run of yesterday's key: with no file it gives up at once, not
    12 h later; the run the scheduler makes just after midnight still waits until noon."""
    from datetime import UTC, datetime

    from tasks.landing import LandingOverdueError, check_overdue

    yesterday = "2026-11-25"
    for now in (datetime(2026, 11, 26, 0, 5, tzinfo=UTC), datetime(2026, 11, 26, 11, 59, tzinfo=UTC)):
        check_overdue(yesterday, present=False, timeout_hours=12, now=now)  # keep waiting
    unpaused = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
    with pytest.raises(LandingOverdueError) as refused:
        check_overdue(yesterday, present=False, timeout_hours=12, now=unpaused)
    assert "2026-11-26 12:00 UTC" in str(refused.value) and "3.0 h ago" in str(refused.value)
    assert isinstance(refused.value, PermanentError)  # the sensor fails at once, no retry
    check_overdue(yesterday, present=True, timeout_hours=12, now=unpaused)  # being written: the sensor's timeout
    with pytest.raises(LandingOverdueError, match="days ago"):
        check_overdue("2011-06-01", present=False, timeout_hours=12, now=unpaused)  # a re-run of an old key


def test_the_sensor_stage_gives_up_on_an_old_absent_day_and_waits_for_today(data_root):
    from datetime import UTC, datetime

    from tasks import stages
    from tasks.landing import LandingOverdueError

    with pytest.raises(LandingOverdueError, match="no landing file for 2011-06-01"):
        stages.landing_ready("bike_demand", "2011-06-01")
    assert stages.landing_ready("bike_demand", datetime.now(UTC).date().isoformat()) is False
    stages.replay("bike_demand", "2011-06-01", "2011-06-01")
    assert stages.landing_ready("bike_demand", "2011-06-01") is True  # an old day whose file is there


def test_the_sensor_stage_counts_the_deadline_from_the_specs_ingest_schedule(data_root, monkeypatch):
    """Yesterday's key under ``0 13 * * *`` (+12 h) is waited for all day today, whatever the hour."""
    from datetime import UTC, datetime, timedelta

    from tasks import stages
    from tasks.spec import load_spec

    spec = load_spec("bike_demand").model_copy(update={"ingest_schedule": "0 13 * * *", "landing_timeout_hours": 12})
    monkeypatch.setattr(stages, "load_spec", lambda _, **_kw: spec)
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    assert stages.landing_ready("bike_demand", yesterday) is False


def test_rename_counts_a_temporary_name_of_the_days_file_as_present():
    """Under ``rename`` a file still being uploaded as ``.<name>.tmp`` / ``<name>.partial`` is there: not ready,
    but present, so a sensor past the deadline keeps waiting instead of failing mid-upload."""
    import tempfile
    from pathlib import Path

    from tasks.storage import atomic_path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "2011-07-01.csv"
        assert not readiness(Contract("rename"), path).present
        (Path(folder) / "2011-07-02.csv.partial").write_bytes(b"")  # another day's upload
        (Path(folder) / ".2011-07-01.csv.done.tmp").write_bytes(b"")  # a marker's, not the file's
        assert not readiness(Contract("rename"), path).present
        for temporary in (".2011-07-01.csv.tmp", "2011-07-01.csv.partial", ".2011-07-01.csv.k3x9q_2a.tmp"):
            (Path(folder) / temporary).write_bytes(real("2011-07-01")[:100])
            state = readiness(Contract("rename"), path)
            assert (state.ready, state.present, state.look) == (False, True, None)
            assert f"still being written as {state.temporary}" in state.reason
            (Path(folder) / temporary).unlink()
        with atomic_path(path) as tmp:  # the replay's and the pulled sources' own temporary name counts too
            tmp.write_bytes(real("2011-07-01")[:100])
            assert readiness(Contract("rename"), path).present
        assert readiness(Contract("rename"), path).ready
        (Path(folder) / "2011-07-03.csv.partial").write_bytes(b"")
        assert not readiness(Contract("settle"), Path(folder) / "2011-07-03.csv").present  # written in place


def test_the_sensor_stage_waits_past_the_deadline_for_a_file_being_uploaded_under_rename(data_root, monkeypatch):
    from tasks import stages
    from tasks.landing import LandingOverdueError
    from tasks.settings import get_settings
    from tasks.spec import load_spec
    from tasks.storage import DataLayout

    shipped = load_spec("bike_demand")
    spec = shipped.model_copy(update={"source": shipped.source.model_copy(update={"completion": "rename"})})
    monkeypatch.setattr(stages, "load_spec", lambda _, **_kw: spec)
    with pytest.raises(LandingOverdueError):
        stages.landing_ready("bike_demand", "2011-06-01")
    landing = DataLayout(get_settings().data_root).landing_file("bike_demand", "2011-06-01")
    landing.parent.mkdir(parents=True, exist_ok=True)
    landing.with_name(".2011-06-01.csv.tmp").write_bytes(real("2011-06-01")[:100])
    assert stages.landing_ready("bike_demand", "2011-06-01") is False  # mid-upload: the sensor's timeout decides
    assert stages.landing_status("bike_demand", "2011-06-01")["present"] is True


def test_the_cron_presets_are_airflows_own():
    """tasks/ cannot import Airflow, so landing keeps a copy of its preset table; this keeps the copy exact."""
    from airflow.utils.dates import cron_presets

    from tasks.landing import AIRFLOW_CRON_PRESETS

    assert AIRFLOW_CRON_PRESETS == cron_presets
