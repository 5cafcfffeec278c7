"""The life of one raw partition: staged batches, promotion, quarantine records and the version history.

Under ``raw/<p>/dt=<day>/``::

    part.parquet              the current, validated partition (the only file training reads)
    _source.json              its landing file's SHA-256, rows, when and by which run it was staged
    _versions.jsonl           append-only history: every batch accepted, quarantined or superseded, with hashes
    .staged/<sha256>/         a new batch waiting for validation (part.parquet + _source.json), keyed by the
                              landing file's SHA-256; ``DataLayout.raw_partitions`` never lists it
    .ingest.lock              one ingest / promotion of the day at a time

A staged batch replaces ``part.parquet`` (one rename) only once validation passed it; a refused or invalid
one goes to ``quarantine/<p>/dt=<day>/<run>/`` with ``reasons.json`` and the current partition stays byte
for byte.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.landing import sha256_of
from tasks.storage import DataLayout, copy_atomic, safe_key, write_json

log = logging.getLogger(__name__)

SOURCE = "_source.json"
VERSIONS = "_versions.jsonl"
STAGED = ".staged"
LOCK = ".ingest.lock"
_KEEP = {VERSIONS, LOCK, STAGED}  # what stays in raw/ when the partition itself is quarantined


@dataclass(frozen=True)
class QuarantinedPartition:
    """A batch refused at ingest or failed by validation, and where its evidence is kept.

    ``reasons`` are the sentences a person acts on; ``failures`` the Great Expectations details (validation
    only); ``record`` the ``reasons.json`` beside the quarantined data.
    """

    partition: str
    source: str
    quarantined_at: str
    failures: list[Any] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    sha256: str = ""
    stage: str = "validation"
    record: str = ""
    run: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (XCom, reasons.json)."""
        return asdict(self)

    def version(self, run_key: str, parquet_sha256: str | None) -> dict[str, Any]:
        """Its line in the partition's ``_versions.jsonl`` (the quarantined data's hash, when it has data)."""
        return {
            "outcome": "quarantined",
            "stage": self.stage,
            "run": run_key,
            "landing_sha256": self.sha256,
            "parquet_sha256": parquet_sha256,
            "reasons": self.reasons[:5],
            "record": self.record,
        }


def partition_dir(layout: DataLayout, pipeline: str, day: str) -> Path:
    """``raw/<p>/dt=<day>/``."""
    return layout.raw_partition(pipeline, day).parent


def staged_dir(layout: DataLayout, pipeline: str, day: str, sha256: str) -> Path:
    """Where a batch from the landing file with this SHA-256 waits for validation."""
    return partition_dir(layout, pipeline, day) / STAGED / sha256


@contextmanager
def partition_lock(layout: DataLayout, pipeline: str, day: str) -> Iterator[None]:
    """Hold the day's lock: one ingest or promotion of a partition at a time (across processes)."""
    folder = partition_dir(layout, pipeline, day)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON record, or None when it is absent or unreadable."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def current_source(layout: DataLayout, pipeline: str, day: str) -> dict[str, Any] | None:
    """The record of the landing file the current raw partition came from (None: no partition)."""
    folder = partition_dir(layout, pipeline, day)
    return read_json(folder / SOURCE) if (folder / "part.parquet").is_file() else None


def now_iso() -> str:
    """UTC now, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def append_version(layout: DataLayout, pipeline: str, day: str, entry: dict[str, Any]) -> None:
    """Append one line to the day's ``_versions.jsonl`` (callers hold the partition lock)."""
    folder = partition_dir(layout, pipeline, day)
    folder.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"at": now_iso(), **entry}, sort_keys=True, default=str)
    with (folder / VERSIONS).open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def versions(layout: DataLayout, pipeline: str, day: str) -> list[dict[str, Any]]:
    """The day's version history, oldest first (a line cut by a crash is skipped)."""
    path = partition_dir(layout, pipeline, day) / VERSIONS
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: skipping an unreadable line", path)
    return entries


def staged_batches(layout: DataLayout, pipeline: str, day: str) -> list[Path]:
    """Staged ``part.parquet`` files of a day, oldest staging first."""
    base = partition_dir(layout, pipeline, day) / STAGED
    found = [d / "part.parquet" for d in base.iterdir() if (d / "part.parquet").is_file()] if base.is_dir() else []
    return sorted(found, key=lambda p: int((read_json(p.with_name(SOURCE)) or {}).get("staged_at_ns", 0)))


def quarantine_target(layout: DataLayout, pipeline: str, day: str, run_key: str, sha256: str) -> Path:
    """A quarantine folder for this run; a second, different batch of the same day in the same run gets its own."""
    base = layout.quarantine_dir(pipeline, day) / safe_key(run_key)
    if base.exists() and (read_json(base / SOURCE) or {}).get("sha256") not in (None, sha256):
        return base.with_name(f"{base.name}-{sha256[:12]}")
    return base


def quarantine_batch(
    layout: DataLayout,
    pipeline: str,
    day: str,
    run_key: str,
    entry: QuarantinedPartition,
    landing: Path | None,
    data_dir: Path | None = None,
) -> QuarantinedPartition:
    """Keep a refused or invalid batch out of raw/, with its reasons (callers hold the partition lock).

    Writes ``reasons.json`` first, then the evidence: the landing file copied (upstream owns ``landing/``; only
    when it still has the judged SHA-256), and the files of ``data_dir`` (a staged batch) moved. The day's
    version history records the outcome; the current partition is not touched.
    """
    target = quarantine_target(layout, pipeline, day, run_key, entry.sha256)
    target.mkdir(parents=True, exist_ok=True)
    copy = target / (landing.name if landing else "landing.csv")
    data = target / "part.parquet" if data_dir is not None and (data_dir / "part.parquet").is_file() else copy
    entry = QuarantinedPartition(
        **{**asdict(entry), "quarantined_at": str(data), "record": str(target / "reasons.json"), "run": run_key}
    )
    write_json(target / "reasons.json", entry.to_dict())
    if landing is not None and landing.is_file() and sha256_of(landing) == entry.sha256:
        copy_atomic(landing, copy)
    if data_dir is not None and data_dir.is_dir():
        for item in data_dir.iterdir():
            os.replace(item, target / item.name)
        shutil.rmtree(data_dir, ignore_errors=True)
    if not (target / SOURCE).is_file():
        write_json(target / SOURCE, {"sha256": entry.sha256, "source": entry.source, "quarantined_at": now_iso()})
    parquet = target / "part.parquet"
    append_version(layout, pipeline, day, entry.version(run_key, sha256_of(parquet) if parquet.is_file() else None))
    return entry


def promote_staged(layout: DataLayout, pipeline: str, day: str, staged: Path, run_key: str) -> str:
    """Make a validated staged batch the day's partition (one rename); callers hold the partition lock.

    A batch staged before the current partition's own batch is not promoted over it (two deliveries of one
    day validated out of order): it is dropped as ``superseded``.

    Returns:
        ``"accepted"`` or ``"superseded"``.
    """
    folder = partition_dir(layout, pipeline, day)
    record = read_json(staged.with_name(SOURCE)) or {}
    current = current_source(layout, pipeline, day) or {}
    entry = {
        "run": run_key,
        "landing_sha256": record.get("sha256"),
        "parquet_sha256": record.get("parquet_sha256"),
        "rows": record.get("rows"),
        "stage": "validation",
    }
    if int(current.get("staged_at_ns", 0)) > int(record.get("staged_at_ns", 0)):
        shutil.rmtree(staged.parent, ignore_errors=True)
        append_version(layout, pipeline, day, {**entry, "outcome": "superseded", "by": current.get("sha256")})
        return "superseded"
    os.replace(staged, folder / "part.parquet")
    os.replace(staged.with_name(SOURCE), folder / SOURCE)
    shutil.rmtree(staged.parent, ignore_errors=True)
    append_version(layout, pipeline, day, {**entry, "outcome": "accepted"})
    return "accepted"


def quarantine_current(
    layout: DataLayout, pipeline: str, day: str, run_key: str, entry: QuarantinedPartition, expected_sha256: str
) -> QuarantinedPartition | None:
    """Move the current raw partition and its sidecars to quarantine (training-time validation failed it).

    ``expected_sha256`` is the parquet that was judged: if another run replaced the partition meanwhile (with a
    batch validated at ingest), nothing is moved and None is returned. The history stays in raw/.
    """
    with partition_lock(layout, pipeline, day):
        folder = partition_dir(layout, pipeline, day)
        raw = folder / "part.parquet"
        if not raw.is_file() or sha256_of(raw) != expected_sha256:
            log.warning("%s partition %s changed while it was validated: left in place", pipeline, day)
            return None
        target = quarantine_target(layout, pipeline, day, run_key, entry.sha256)
        target.mkdir(parents=True, exist_ok=True)
        entry = QuarantinedPartition(
            **{
                **asdict(entry),
                "quarantined_at": str(target / "part.parquet"),
                "record": str(target / "reasons.json"),
                "run": run_key,
            }
        )
        # reasons first, then the move: a crash in between leaves the data in raw/, never nowhere
        write_json(target / "reasons.json", entry.to_dict())
        os.replace(raw, target / "part.parquet")
        for sidecar in folder.iterdir():  # _source.json (the landing file's hash) travels with the data
            if sidecar.name not in _KEEP and sidecar.is_file():
                os.replace(sidecar, target / sidecar.name)
        append_version(layout, pipeline, day, entry.version(run_key, expected_sha256))
        return entry


def staging_stamp() -> int:
    """Orders batches of one day by when they were staged (nanoseconds since the epoch)."""
    return time.time_ns()
