"""Replay a shipped dataset into the landing zone, one file per day, as an upstream system would deliver it.

The files keep the landing contract ingest checks: UTF-8 CSV with the header line, a final newline, one day's
rows per file, written under a temporary name and renamed (and, for ``source.completion: marker``, followed
by ``<day>.csv.done``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.landing import marker_path
from tasks.spec import PipelineSpec
from tasks.storage import DataLayout, atomic_path, parse_day

log = logging.getLogger(__name__)


class ReplayError(ValueError):
    """The dataset is missing or has no rows for the requested days."""


@dataclass(frozen=True)
class ReplayResult:
    """Files written to the landing zone."""

    files: list[str]
    rows: int
    corrupted: list[str]


def _delimiter(path: Path) -> str:
    """The dataset's field separator, sniffed from its header line (``,``, ``;``, tab or ``|``)."""
    import csv
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        header = f.readline()
    try:
        return csv.Sniffer().sniff(header, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def load_dataset(spec: PipelineSpec, datasets_dir: Path) -> pd.DataFrame:
    """Read the spec's source dataset with every column as text, exactly as shipped (any separator).

    A dataset without a date column (``source.rows_per_day``) gets one: row ``i`` is delivered on day
    ``start_date + i // rows_per_day``, in file order, written into the partition column.
    """
    if spec.source.dataset is None:
        raise ReplayError(
            f"{spec.name} names no source.dataset: the replay tool (demos, tests) has nothing to replay; its data "
            "comes from its source (files, sql) or from upstream"
        )
    path = Path(datasets_dir) / spec.source.dataset
    if not path.is_file():
        raise ReplayError(f"dataset {spec.source.dataset} not found under {datasets_dir}")
    data = pd.read_csv(path, dtype=str, keep_default_na=False, sep=_delimiter(path))
    per_day = spec.source.rows_per_day
    if per_day:
        offsets = pd.to_timedelta(np.arange(len(data)) // per_day, unit="D")
        days = (pd.Timestamp(spec.start_date) + offsets).strftime("%Y-%m-%d")
        data.insert(0, spec.source.partition_column, days)
    return data


def corrupt_batch(spec: PipelineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Damage a day's batch the way broken upstream exports do: out-of-range values and a missing value.

    A quarter of the rows get an impossible value in the first numeric feature (bike demand: humidity 1.7,
    any other pipeline: -999) and the last row loses the second one.
    """
    bad = frame.copy()
    rows = bad.index[: max(1, len(bad) // 4)]
    if "hum" in bad.columns and "temp" in bad.columns:  # the bike-demand story the docs tell
        bad.loc[rows, "hum"] = "1.7"
        bad.loc[bad.index[-1], "temp"] = ""
        return bad
    numeric = spec.features.numeric
    bad.loc[rows, numeric[0]] = "-999"
    bad.loc[bad.index[-1], numeric[min(1, len(numeric) - 1)]] = ""
    return bad


def replay_days(
    spec: PipelineSpec,
    layout: DataLayout,
    datasets_dir: Path,
    start: str,
    end: str,
    corrupt: frozenset[str] = frozenset(),
) -> ReplayResult:
    """Write one landing file per day in ``[start, end]`` (inclusive).

    Args:
        spec: The pipeline whose dataset is replayed.
        layout: Data root layout.
        datasets_dir: Folder holding the shipped datasets.
        start: First day, ``YYYY-MM-DD``.
        end: Last day, inclusive.
        corrupt: Days whose file is deliberately damaged (demos and tests of the quarantine path).

    Returns:
        The files written and the number of rows.

    Raises:
        ReplayError: ``end`` is before ``start`` or the dataset has no row in the range.
    """
    start, end = parse_day(start), parse_day(end)
    if end < start:
        raise ReplayError(f"end {end} is before start {start}")
    data = load_dataset(spec, datasets_dir)
    day_col = spec.source.partition_column
    window = data[(data[day_col] >= start) & (data[day_col] <= end)]
    if window.empty:
        raise ReplayError(f"{spec.source.dataset} has no rows between {start} and {end}")
    files, corrupted = [], []
    for day, batch in window.groupby(day_col, sort=True):
        day = str(day)
        if day in corrupt:
            batch = corrupt_batch(spec, batch)
            corrupted.append(day)
        target = layout.landing_file(spec.name, day)
        with atomic_path(target) as tmp:  # written aside and renamed: the landing contract's "rename"
            batch.to_csv(tmp, index=False)
        if spec.source.completion == "marker":  # the marker goes after the file it vouches for
            with atomic_path(marker_path(target)) as tmp:
                tmp.write_bytes(b"")
        files.append(str(target))
    log.info("replayed %d rows into %d landing files (%s .. %s)", len(window), len(files), start, end)
    return ReplayResult(files=files, rows=len(window), corrupted=corrupted)
