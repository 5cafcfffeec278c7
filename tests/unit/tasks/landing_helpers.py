"""What the ingest and landing tests do to landing files: age them past the settle time, ingest a day."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tasks.ingest import ingest_partition
from tasks.validate import validate_staged


def age(path: Path, seconds: float) -> None:
    """Set the file's mtime ``seconds`` into the past."""
    os.utime(path, (time.time() - seconds, time.time() - seconds))


def settled(layout: Any, pipeline: str = "bike_demand") -> None:
    """Age the landing files past the settle time (as if upstream finished a while ago)."""
    for path in layout.landing_dir(pipeline).glob("*.csv"):
        age(path, 60)


def ingest(spec: Any, layout: Any, day: str, skip_if_unchanged: bool = False, run_key: str = "run") -> Any:
    """What the ingest DAG does for a day: stage the landing file, then validate (and promote) the batch."""
    result = ingest_partition(spec, layout, day, skip_if_unchanged, run_key)
    if not result.skipped:
        validate_staged(spec, layout, {day: result.sha256}, run_key)
    return result
