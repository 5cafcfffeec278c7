"""The landing contract: which day a request names, and when a landing file is complete enough to read.

One mechanism for every entry point: the ingest DAG's sensor, ingest itself (a scheduled run, the trigger
form, a REST / Redis / landing-watcher event, the stage CLI) and the landing-zone watcher in the triggerer
all ask :func:`readiness`. Light on purpose (no pandas): the triggerer imports it.

Completion rules (spec ``source.completion``):

- ``settle`` (default): a file is complete once its size, modification time and inode are the same at two
  looks ``settle_seconds`` apart. A caller without an earlier look (the sensor, ingest) counts the file's own
  modification time as the first look, so a file last written ``settle_seconds`` ago is complete at once
  (this trusts the writer's and the reader's clocks to agree to within ``settle_seconds``; an upstream on a
  skewed network share should use ``marker`` or ``rename``); otherwise it waits and looks again.
- ``marker``: complete once ``<day>.csv.done`` exists and is not older than the file (a file rewritten after
  its marker waits for a new one).
- ``rename``: upstream writes ``.<name>.tmp`` (or ``.<name>.<random>.tmp``, as :func:`tasks.storage.atomic_path`
  does) or ``<name>.partial`` and renames; a final name is complete, a temporary one is a file still being written.

How long ingest waits (:func:`landing_deadline`): for a day whose file is absent, until the key's scheduled run
(the first fire of the spec's ``ingest_schedule`` at or after the end of the day, UTC: 00:00 the next day with
``@daily``, 13:00 with ``0 13 * * *``) plus the spec's ``landing_timeout_hours``, measured from the day, not from
when its run started. The scheduled run waits the usual hours; the run Airflow makes when the DAG is unpaused after
the deadline, a backfill of old days or a re-run of an old key gives up at its first look when nothing is there
(:class:`LandingOverdueError`, naming the deadline) instead of holding a run for 12 hours. A file that is there
but still being written (under ``rename``, one of the day's temporary names: :attr:`Readiness.present`) keeps the
sensor's own timeout.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import PermanentError
from tasks.storage import LayoutError
from tasks.storage import strict_day as _layout_day

if TYPE_CHECKING:
    from tasks.spec import SourceSpec
    from tasks.storage import DataLayout

MARKER_SUFFIX = ".done"
_STRICT_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class BadPartitionError(LayoutError):
    """A partition day that is not a calendar date (``2011-02-30``, ``2011-6-1``, ``yesterday``)."""


def strict_day(value: Any) -> str:
    """``value`` if it is a calendar date written ``YYYY-MM-DD`` (:func:`tasks.storage.strict_day`).

    Raises:
        BadPartitionError: Anything else, saying so.
    """
    try:
        return _layout_day(str(value))
    except LayoutError:
        raise BadPartitionError(
            f"partition {str(value)[:80]!r} is not a calendar date (YYYY-MM-DD): nothing was read or written"
        ) from None


class LandingOverdueError(PermanentError, RuntimeError):
    """A day's landing file is absent after its deadline: waiting longer would wait for a file that is not coming."""


AIRFLOW_CRON_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}
"""Airflow's cron presets (``airflow.utils.dates.cron_presets``; croniter lacks ``@quarterly``)."""


def scheduled_run(day: str, schedule: str = "@daily") -> datetime:
    """When the ingest DAG's scheduled run for key ``day`` fires: ``schedule``'s first fire at or after the day's end.

    ``schedule`` is a cron expression or an Airflow preset, in UTC (the DAG's timetable is).

    The DAG's ``CronPartitionTimetable(schedule, run_offset=-1)`` keys a run by the fire before it, so the run
    for ``day`` is the first fire after the day's own (its last, for a cron that fires more than once a day).

    Raises:
        BadPartitionError: ``day`` is not a calendar date.
    """
    from croniter import croniter

    first = date.fromisoformat(strict_day(day))
    end = datetime(first.year, first.month, first.day, tzinfo=UTC) + timedelta(days=1)
    expression = AIRFLOW_CRON_PRESETS.get(schedule.strip(), schedule)
    fire: datetime = croniter(expression, end - timedelta(microseconds=1)).get_next(datetime)
    return fire.astimezone(UTC)


def landing_deadline(day: str, timeout_hours: float, schedule: str = "@daily") -> datetime:
    """When ingest stops waiting for ``day``'s absent landing file: its scheduled run + ``timeout_hours``.

    The scheduled run is :func:`scheduled_run` (00:00 the next day with ``@daily``).

    Raises:
        BadPartitionError: ``day`` is not a calendar date.
    """
    return scheduled_run(day, schedule) + timedelta(hours=timeout_hours)


def check_overdue(
    day: str, present: bool, timeout_hours: float, now: datetime | None = None, schedule: str = "@daily"
) -> None:
    """Give up on ``day`` when its landing file is absent and its deadline (:func:`landing_deadline`) has passed.

    A file that is there, even one still being written, is waited for (the sensor's own timeout bounds that).

    Raises:
        LandingOverdueError: No file, and the deadline has passed; the message names both and what to do.
    """
    deadline = landing_deadline(day, timeout_hours, schedule)
    now = now or datetime.now(UTC)
    if present or now < deadline:
        return
    run = scheduled_run(day, schedule)
    raise LandingOverdueError(
        f"no landing file for {day}, and its deadline {deadline:%Y-%m-%d %H:%M} UTC (its scheduled run at "
        f"{run:%Y-%m-%d %H:%M} UTC, ingest_schedule {schedule!r}, + landing_timeout_hours={timeout_hours:g}) passed "
        f"{_ago(now - deadline)} ago: not waiting for it. This is the run Airflow makes for the last key when the "
        "DAG is unpaused after that deadline, or an old key whose file never came; deliver the file and re-run the "
        "key (or record a landing event), or leave the day out"
    )


def _ago(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.0f} days"


@dataclass(frozen=True)
class Contract:
    """The completion rule of one pipeline's landing files (from ``source``; serialisable for the triggerer)."""

    completion: str = "settle"
    settle_seconds: float = 5.0

    @classmethod
    def of(cls, source: SourceSpec) -> Contract:
        """The contract a spec's ``source`` declares (a pulled source lands each file by renaming it)."""
        if source.files is not None or source.sql is not None:
            return cls("rename", float(source.settle_seconds))
        return cls(source.completion, float(source.settle_seconds))


@dataclass(frozen=True)
class Look:
    """One look at a file: what changes when anybody writes it, and when we looked (wall clock)."""

    size: int
    mtime_ns: int
    inode: int
    at: float

    @classmethod
    def of(cls, path: Path, clock: Callable[[], float] = time.time) -> Look | None:
        """Look at ``path`` now; None when it does not exist."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, clock())

    def same_file(self, other: Look | None) -> bool:
        """Nothing was written between the two looks."""
        return other is not None and (self.size, self.mtime_ns, self.inode) == (other.size, other.mtime_ns, other.inode)

    @property
    def quiet_seconds(self) -> float:
        """Seconds between the file's last write and this look."""
        return self.at - self.mtime_ns / 1e9


@dataclass(frozen=True)
class Readiness:
    """Whether a landing file may be read now, and why (or why not) in words."""

    ready: bool
    reason: str
    look: Look | None = None
    temporary: str | None = None
    """``rename``: the temporary name the day's file is being written under while its final name is absent."""

    @property
    def present(self) -> bool:
        """There is a file for the day, complete or not (its final name, or under ``rename`` a temporary one)."""
        return self.look is not None or self.temporary is not None


def temporary_names(path: Path) -> list[Path]:
    """The temporary names ``path`` is being written under (``source.completion: rename``), sorted by name.

    ``.<name>.tmp``, ``.<name>.<random>.tmp`` (six or more letters, digits or ``_``: the names of
    :func:`tasks.storage.atomic_path`, which the replay and the pulled sources write through) and
    ``<name>.partial``; not the temporary names of other files beside it (``.<name>.done.tmp``, a marker's).
    """
    if not path.parent.is_dir():
        return []
    hidden = re.compile(rf"^\.{re.escape(path.name)}(\.[A-Za-z0-9_]{{6,}})?\.tmp$")
    found = [p for p in path.parent.glob(f".{path.name}*.tmp") if hidden.match(p.name)]
    found += [path.with_name(path.name + ".partial")]
    return sorted(p for p in found if p.is_file())


def marker_path(path: Path) -> Path:
    """The completion marker of a landing file: ``<day>.csv.done``."""
    return path.with_name(path.name + MARKER_SUFFIX)


def readiness(
    contract: Contract,
    path: Path,
    earlier: Look | None = None,
    wait: bool = False,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Readiness:
    """Is the landing file at ``path`` complete under ``contract``?

    Args:
        contract: The pipeline's completion rule.
        path: The landing file.
        earlier: A previous look at the file, by a caller that remembers (the landing watcher).
        wait: ``settle`` only: when the file changed less than ``settle_seconds`` ago, wait out the rest and
            look again (the sensor and ingest; at most ``settle_seconds``) instead of answering "not yet".
        clock: Wall clock (tests).
        sleep: How to wait (tests).

    Returns:
        Ready or not, the reason, and the look taken (for the next call's ``earlier``).
    """
    now = Look.of(path, clock)
    if now is None and contract.completion == "rename" and (temporary := temporary_names(path)):
        why = f"{path.name} is still being written as {temporary[0].name} (source.completion: rename)"
        return Readiness(False, why, temporary=temporary[0].name)
    if now is None:
        return Readiness(False, f"no landing file {path.name} yet")
    if contract.completion == "rename":
        return Readiness(True, f"{path.name} has its final name (source.completion: rename)", now)
    if contract.completion == "marker":
        return _marked(path, now, clock)
    return _settled(contract.settle_seconds, path, now, earlier, wait, clock, sleep)


def _marked(path: Path, now: Look, clock: Callable[[], float]) -> Readiness:
    marker = Look.of(marker_path(path), clock)
    if marker is None:
        return Readiness(False, f"waiting for the marker {marker_path(path).name} (source.completion: marker)", now)
    if marker.mtime_ns < now.mtime_ns:
        why = f"{path.name} was written after its marker {marker_path(path).name}: waiting for a new marker"
        return Readiness(False, why, now)
    return Readiness(True, f"{path.name} is marked complete by {marker_path(path).name}", now)


def _settled(
    settle: float,
    path: Path,
    now: Look,
    earlier: Look | None,
    wait: bool,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Readiness:
    if earlier is not None and earlier.same_file(now) and now.at - earlier.at >= settle:
        return Readiness(True, f"{path.name} unchanged over two looks {now.at - earlier.at:.1f}s apart", now)
    if now.quiet_seconds >= settle:
        return Readiness(True, f"{path.name} unchanged for {now.quiet_seconds:.0f}s (settle_seconds={settle:g})", now)
    if not wait:
        quiet = max(now.quiet_seconds, 0)
        why = f"{path.name} changed {quiet:.1f}s ago: waiting until it has been unchanged for {settle:g}s"
        return Readiness(False, why, now)
    sleep(settle - min(max(now.quiet_seconds, 0.0), settle))
    again = Look.of(path, clock)
    if again is None:
        return Readiness(False, f"{path.name} disappeared while it was watched", None)
    if again.same_file(now):
        return Readiness(True, f"{path.name} unchanged over two looks {again.at - now.at:.1f}s apart", again)
    return Readiness(
        False,
        f"{path.name} is still being written: {now.size} -> {again.size} bytes between two looks "
        f"{again.at - now.at:.1f}s apart (source.completion: settle)",
        again,
    )


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


Seen = dict[str, tuple[Look, str, bool]]
"""The landing watcher's memory across looks: day -> (last look, sha256 once read, already judged)."""


def pending_landing_files(
    layout: DataLayout, pipeline: str, seen: Seen, contract: Contract | None = None
) -> list[tuple[str, str]]:
    """Landing files that are complete and not yet judged as they are now: ``[(day, sha256)]``.

    Completeness is :func:`readiness` with the previous poll as the earlier look, so a file still being
    written is not announced half-written. A complete file's SHA-256 is then compared with the one recorded
    beside the raw partition and in every quarantine record of the day, so a file already ingested (or
    refused) is not announced again and a corrected re-delivery is. An unchanged file already judged is not
    read again. Only final names ``<YYYY-MM-DD>.csv`` count (not ``.tmp``, ``.partial`` or hidden files).
    """
    contract = contract or Contract()
    folder = layout.landing_dir(pipeline)
    pending = []
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        day = path.stem
        if not _STRICT_DAY.match(day):
            continue
        before = seen.get(day)
        state = readiness(contract, path, before[0] if before else None)
        if state.look is None:  # moved away between the listing and now
            seen.pop(day, None)
            continue
        unchanged = before is not None and before[0].same_file(state.look)
        if not state.ready:
            # keep the first look of an unchanged file: two looks settle_seconds apart are what settles it
            seen[day] = (before[0], "", False) if unchanged and before else (state.look, "", False)
            continue
        if unchanged and before and before[2]:
            continue  # unchanged since it was found ingested or quarantined
        digest = before[1] if unchanged and before and before[1] else sha256_of(path)
        judged = digest in judged_digests(layout, pipeline, day)
        seen[day] = (state.look, digest, judged)
        if not judged:
            pending.append((day, digest))
    return pending


def judged_digests(layout: DataLayout, pipeline: str, day: str) -> set[str]:
    """SHA-256 of the landing files of ``day`` already ingested (the raw partition's) or already quarantined."""
    raw_dir = layout.raw_partition(pipeline, day).parent
    records = [raw_dir / "_source.json"] if (raw_dir / "part.parquet").is_file() else []
    records += layout.quarantine_dir(pipeline, day).glob("*/_source.json")
    digests = set()
    for record in records:
        try:
            digests.add(json.loads(record.read_text()).get("sha256"))
        except (OSError, json.JSONDecodeError):
            continue
    return digests
