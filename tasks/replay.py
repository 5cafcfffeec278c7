"""Replay a shipped dataset into the landing zone, one file per day, as an upstream system would deliver it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

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


def load_dataset(spec: PipelineSpec, datasets_dir: Path) -> pd.DataFrame:
    """Read the spec's source dataset with every column as text, exactly as shipped."""
    path = Path(datasets_dir) / spec.source.dataset
    if not path.is_file():
        raise ReplayError(f"dataset {spec.source.dataset} not found under {datasets_dir}")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def corrupt_batch(frame: pd.DataFrame) -> pd.DataFrame:
    """Damage a day's batch the way broken upstream exports do: out-of-range humidity and a missing value."""
    bad = frame.copy()
    rows = bad.index[: max(1, len(bad) // 4)]
    bad.loc[rows, "hum"] = "1.7"
    bad.loc[bad.index[-1], "temp"] = ""
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
            batch = corrupt_batch(batch)
            corrupted.append(day)
        target = layout.landing_file(spec.name, day)
        with atomic_path(target) as tmp:
            batch.to_csv(tmp, index=False)
        files.append(str(target))
    log.info("replayed %d rows into %d landing files (%s .. %s)", len(window), len(files), start, end)
    return ReplayResult(files=files, rows=len(window), corrupted=corrupted)
