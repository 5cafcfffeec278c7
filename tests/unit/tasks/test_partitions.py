"""The life of one raw partition (tasks/partitions.py): staged batches, promotion, quarantine, the history.

Batches here are real rows of the committed fixture (one day of bike sharing) written as parquet the way
ingest stages them; a "bad" batch is the same day with impossible humidities. Which batch is bad is the
validator's call (test_validate.py); these tests check what happens to the files once it has decided.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.partitions import (
    LOCK,
    SOURCE,
    STAGED,
    VERSIONS,
    QuarantinedPartition,
    current_source,
    partition_dir,
    partition_lock,
    promote_staged,
    quarantine_batch,
    quarantine_current,
    quarantine_target,
    staged_batches,
    staged_dir,
    staging_stamp,
    versions,
)
from tasks.storage import DataLayout
from tests.unit.conftest import FIXTURES

P = "bike_demand"
DAY = "2011-06-05"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def day_rows() -> pd.DataFrame:
    rows = pd.read_csv(FIXTURES / "bike_sharing_hour.csv.gz")
    return rows[rows.dteday == DAY].reset_index(drop=True)


def _deliver(layout: DataLayout, rows: pd.DataFrame) -> tuple[Path, str]:
    """Upstream drops the day's landing file; returns it and its SHA-256."""
    landing = layout.landing_file(P, DAY)
    landing.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(landing, index=False)
    return landing, _sha(landing)


def _stage(layout: DataLayout, rows: pd.DataFrame, run: str) -> tuple[Path, str]:
    """Deliver and stage a batch as ingest does: ``.staged/<sha>/part.parquet`` and its ``_source.json``."""
    landing, sha = _deliver(layout, rows)
    folder = staged_dir(layout, P, DAY, sha)
    folder.mkdir(parents=True)
    rows.to_parquet(folder / "part.parquet", index=False)
    record = {
        "sha256": sha,
        "rows": len(rows),
        "parquet_sha256": _sha(folder / "part.parquet"),
        "source": str(landing),
        "staged_at_ns": staging_stamp(),
        "run": run,
    }
    (folder / SOURCE).write_text(json.dumps(record))
    return folder / "part.parquet", sha


def _bad(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(hum=rows.hum + 1.0)  # humidities above 1: what validation refuses


def _refusal(sha: str, landing: Path, stage: str = "validation") -> QuarantinedPartition:
    return QuarantinedPartition(
        partition=DAY,
        source=str(landing),
        quarantined_at="",
        reasons=["column 'hum': 24 of 24 rows unexpected"],
        sha256=sha,
        stage=stage,
    )


@pytest.fixture
def accepted(layout: DataLayout, day_rows: pd.DataFrame) -> dict[str, Any]:
    """The day's first delivery, staged and promoted: the current partition."""
    staged, sha = _stage(layout, day_rows, "r1")
    with partition_lock(layout, P, DAY):
        assert promote_staged(layout, P, DAY, staged, "r1") == "accepted"
    raw = layout.raw_partition(P, DAY)
    return {"sha": sha, "bytes": raw.read_bytes(), "source": (raw.with_name(SOURCE)).read_text()}


def test_a_staged_batch_waits_beside_the_partition_and_is_not_listed(layout, day_rows):
    staged, sha = _stage(layout, day_rows, "r1")
    assert staged.parent == partition_dir(layout, P, DAY) / STAGED / sha
    assert layout.raw_partitions(P) == [] and current_source(layout, P, DAY) is None  # training never reads it
    assert staged_batches(layout, P, DAY) == [staged]


def test_a_validated_batch_becomes_the_partition_with_its_record_and_history(layout, day_rows, accepted):
    raw = layout.raw_partition(P, DAY)
    assert pd.read_parquet(raw).equals(day_rows)
    assert layout.raw_partitions(P) == [DAY]
    assert current_source(layout, P, DAY)["sha256"] == accepted["sha"]
    assert not (partition_dir(layout, P, DAY) / STAGED / accepted["sha"]).exists()  # moved, nothing left staged
    [entry] = versions(layout, P, DAY)
    assert entry["outcome"] == "accepted" and entry["run"] == "r1" and entry["stage"] == "validation"
    assert (entry["landing_sha256"], entry["parquet_sha256"], entry["rows"]) == (accepted["sha"], _sha(raw), 24)
    assert entry["at"].endswith("+00:00")


def test_a_bad_redelivery_keeps_the_old_version_and_its_history(layout, day_rows, accepted):
    staged, bad_sha = _stage(layout, _bad(day_rows), "r2")
    bad_parquet = staged.read_bytes()
    landing = layout.landing_file(P, DAY)
    with partition_lock(layout, P, DAY):
        entry = quarantine_batch(layout, P, DAY, "r2", _refusal(bad_sha, landing), landing, staged.parent)
    raw = layout.raw_partition(P, DAY)
    assert raw.read_bytes() == accepted["bytes"]  # the last valid version, byte for byte
    assert raw.with_name(SOURCE).read_text() == accepted["source"]
    assert layout.raw_partitions(P) == [DAY]
    target = layout.quarantine_dir(P, DAY) / "r2"
    assert entry.record == str(target / "reasons.json") and entry.quarantined_at == str(target / "part.parquet")
    assert entry.run == "r2" and entry.stage == "validation"
    assert json.loads((target / "reasons.json").read_text()) == entry.to_dict()
    assert (target / "part.parquet").read_bytes() == bad_parquet  # the evidence: the refused batch itself
    assert json.loads((target / SOURCE).read_text())["sha256"] == bad_sha
    assert (target / landing.name).read_bytes() == landing.read_bytes()  # and the landing file it came from
    assert not staged.parent.exists()
    history = versions(layout, P, DAY)
    assert [(v["outcome"], v["landing_sha256"]) for v in history] == [
        ("accepted", accepted["sha"]),
        ("quarantined", bad_sha),
    ]
    assert history[1]["reasons"] == ["column 'hum': 24 of 24 rows unexpected"] and history[1]["record"] == entry.record
    assert history[1]["parquet_sha256"] == hashlib.sha256(bad_parquet).hexdigest()


def test_a_refused_landing_file_is_copied_only_while_it_still_has_the_judged_bytes(layout, day_rows):
    landing, sha = _deliver(layout, _bad(day_rows))
    landing.write_text(landing.read_text() + "\n")  # upstream rewrote it after the judgement
    with partition_lock(layout, P, DAY):
        entry = quarantine_batch(layout, P, DAY, "r1", _refusal(sha, landing, "ingest"), landing)
    target = Path(entry.record).parent
    assert sorted(p.name for p in target.iterdir()) == [SOURCE, "reasons.json"]  # the record, not other bytes
    assert entry.quarantined_at == str(target / landing.name)
    assert [(v["outcome"], v["stage"], v["parquet_sha256"]) for v in versions(layout, P, DAY)] == [
        ("quarantined", "ingest", None)
    ]
    assert layout.raw_partitions(P) == []


def test_a_second_different_batch_of_one_run_gets_its_own_quarantine_folder(layout, day_rows):
    landing, first = _deliver(layout, _bad(day_rows))
    with partition_lock(layout, P, DAY):
        a = quarantine_batch(layout, P, DAY, "run/1", _refusal(first, landing), landing)
    assert Path(a.record).parent == layout.quarantine_dir(P, DAY) / "run_1"  # the run key made a safe name
    assert quarantine_target(layout, P, DAY, "run/1", first) == Path(a.record).parent  # same batch: same folder
    landing, second = _deliver(layout, _bad(day_rows).assign(temp=None))
    with partition_lock(layout, P, DAY):
        b = quarantine_batch(layout, P, DAY, "run/1", _refusal(second, landing), landing)
    assert Path(b.record).parent == layout.quarantine_dir(P, DAY) / f"run_1-{second[:12]}"
    assert json.loads(Path(a.record).read_text())["sha256"] == first  # the first record is not overwritten


def test_a_batch_validated_after_a_newer_one_is_superseded_not_promoted(layout, day_rows):
    older, old_sha = _stage(layout, day_rows, "r1")
    time.sleep(0.001)
    newer, new_sha = _stage(layout, day_rows.assign(cnt=day_rows.cnt + 1), "r2")
    assert staged_batches(layout, P, DAY) == [older, newer]  # oldest staging first
    with partition_lock(layout, P, DAY):
        assert promote_staged(layout, P, DAY, newer, "r2") == "accepted"
        kept = layout.raw_partition(P, DAY).read_bytes()
        assert promote_staged(layout, P, DAY, older, "r1") == "superseded"
    assert layout.raw_partition(P, DAY).read_bytes() == kept
    assert current_source(layout, P, DAY)["sha256"] == new_sha
    assert not older.parent.exists() and staged_batches(layout, P, DAY) == []
    history = versions(layout, P, DAY)
    assert [(v["outcome"], v["landing_sha256"]) for v in history] == [("accepted", new_sha), ("superseded", old_sha)]
    assert history[1]["by"] == new_sha


def test_quarantining_the_current_partition_moves_it_with_its_record_and_keeps_the_history(layout, accepted):
    raw = layout.raw_partition(P, DAY)
    judged = _sha(raw)
    refusal = _refusal(accepted["sha"], layout.landing_file(P, DAY), "validation (training)")
    entry = quarantine_current(layout, P, DAY, "r9", refusal, judged)
    assert entry is not None and entry.run == "r9"
    target = layout.quarantine_dir(P, DAY) / "r9"
    assert (target / "part.parquet").read_bytes() == accepted["bytes"]  # moved, not deleted
    assert (target / SOURCE).read_text() == accepted["source"]  # the landing file's hash travels with it
    assert sorted(p.name for p in partition_dir(layout, P, DAY).iterdir()) == sorted([LOCK, STAGED, VERSIONS])
    assert layout.raw_partitions(P) == [] and current_source(layout, P, DAY) is None
    history = versions(layout, P, DAY)
    assert [v["outcome"] for v in history] == ["accepted", "quarantined"]
    assert history[1]["stage"] == "validation (training)" and history[1]["parquet_sha256"] == judged


def test_a_partition_replaced_while_it_was_judged_is_left_in_place(layout, accepted):
    refusal = _refusal(accepted["sha"], layout.landing_file(P, DAY))
    assert quarantine_current(layout, P, DAY, "r9", refusal, "0" * 64) is None  # not the bytes that were judged
    assert layout.raw_partition(P, DAY).read_bytes() == accepted["bytes"]
    assert not layout.quarantine_dir(P, DAY).exists()
    assert [v["outcome"] for v in versions(layout, P, DAY)] == ["accepted"]


def test_the_history_survives_a_line_cut_by_a_crash(layout, accepted, caplog):
    path = partition_dir(layout, P, DAY) / VERSIONS
    with path.open("a") as f:
        f.write('{"outcome": "quaran')  # the process died mid-line
    assert [v["outcome"] for v in versions(layout, P, DAY)] == ["accepted"]
    assert "skipping an unreadable line" in caplog.text
    assert versions(layout, P, "2011-06-06") == []  # a day never delivered has no history


def test_one_ingest_or_promotion_of_a_day_at_a_time(layout):
    order: list[str] = []
    held = threading.Event()

    def second() -> None:
        held.wait(10)
        with partition_lock(layout, P, DAY):
            order.append("second in")

    thread = threading.Thread(target=second)
    thread.start()
    with partition_lock(layout, P, DAY):
        held.set()
        time.sleep(0.3)  # the other holder waits, however long this one takes
        order.append("first out")
    thread.join(10)
    assert order == ["first out", "second in"]
    with partition_lock(layout, P, "2011-06-06"), partition_lock(layout, P, DAY):  # other days are independent
        pass
