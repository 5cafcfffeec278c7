"""Where data lives under the data root, and atomic writes.

Layout (``<root>`` is ``Settings.data_root``)::

    landing/<pipeline>/<YYYY-MM-DD>.csv                 files delivered by upstream (or the replay tool)
    raw/<pipeline>/dt=<YYYY-MM-DD>/part.parquet         ingested partitions, one per day
    quarantine/<pipeline>/dt=<YYYY-MM-DD>/<stamp>/      partitions that failed validation + reasons.json
    runs/<pipeline>/<run_id>/...                        per-run datasets, reports, model card, references
    runs/<pipeline>/<run_id>/results/<task>.tryN.json   result manifests of stage pods (kubernetes mode)
    scores/<pipeline>/dt=<YYYY-MM-DD>/v<version>.parquet  a day scored in batch by one model version
    scores/<pipeline>/dt=<YYYY-MM-DD>/scored.json       which version's file is the day's current scoring
    monitoring/<pipeline>/<run_id>/                     drift report (HTML) and summary (JSON) of a window
    monitoring/<pipeline>/{decisions.jsonl,trend.html}  every window's retrain decision; the trend page
    serving/predictions.sqlite                          the model server's prediction log
    mlflow/                                             MLflow SQLite store and artifacts (local default)
    cache/<pipeline>/{validation,features}/             verdicts and feature sets by content (tasks.cache)

Every writer goes through :func:`atomic_path`: it writes to a temporary name in the target folder and
renames into place, so readers never see half-written files and a re-run overwrites the same path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

from tasks.errors import PermanentError
from tasks.names import REFERENCE_INPUTS, REFERENCE_PREDICTIONS, SMOKE_SAMPLE

_PARTITION_RE = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
_PIPELINE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_DAY_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class LayoutError(PermanentError, ValueError):
    """A pipeline name or day that would build a path outside the data root, or is not what it claims."""


def check_pipeline(name: str) -> str:
    """``name`` if it is a pipeline name (``^[a-z][a-z0-9_]*$``).

    Raises:
        LayoutError: Anything else (a path, ``..``, upper case, empty).
    """
    if not isinstance(name, str) or not _PIPELINE_RE.match(name):
        raise LayoutError(f"not a pipeline name (lower-case letters, digits and _): {str(name)[:80]!r}")
    return name


def strict_day(value: str) -> str:
    """``value`` if it is exactly a calendar day ``YYYY-MM-DD`` (no prefix of a longer string, no 2011-02-30).

    Raises:
        LayoutError: Anything else.
    """
    if isinstance(value, str) and _DAY_RE.match(value):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise LayoutError(f"not a calendar date (YYYY-MM-DD): {str(value)[:80]!r}")


class DataLayout:
    """Paths of one data root.

    Every path it builds is inside the root: pipeline names must match ``^[a-z][a-z0-9_]*$`` and days be
    strict ``YYYY-MM-DD`` (:class:`LayoutError` otherwise), run keys and task ids are sanitised. So no entry
    point (CLI, Airflow task, pod) can read, write or move a file outside the data root through them.
    """

    def __init__(self, root: Path) -> None:
        """Create a layout rooted at ``root`` (created lazily by writers)."""
        self.root = Path(root)

    def landing_dir(self, pipeline: str) -> Path:
        """Landing-zone folder of a pipeline (one ``<day>.csv`` per day)."""
        return self.root / "landing" / check_pipeline(pipeline)

    def landing_file(self, pipeline: str, day: str) -> Path:
        """Landing-zone file for one day."""
        return self.landing_dir(pipeline) / f"{strict_day(day)}.csv"

    def raw_partition(self, pipeline: str, day: str) -> Path:
        """Ingested partition file for one day."""
        return self.root / "raw" / check_pipeline(pipeline) / f"dt={strict_day(day)}" / "part.parquet"

    def quarantine_dir(self, pipeline: str, day: str) -> Path:
        """Folder holding every quarantined version of one day's partition."""
        return self.root / "quarantine" / check_pipeline(pipeline) / f"dt={strict_day(day)}"

    def run_dir(self, pipeline: str, run_id: str) -> Path:
        """Per-run output folder of an Airflow run (datasets, reports, model card, references)."""
        return self.root / "runs" / check_pipeline(pipeline) / safe_key(run_id)

    def result_manifest(self, pipeline: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> Path:
        """Where a stage pod writes its outcome for Airflow to read (one file per task try, and per mapped pod)."""
        mapped = f".map{map_index}" if map_index >= 0 else ""
        return self.run_dir(pipeline, run_id) / "results" / f"{safe_key(task_id)}{mapped}.try{try_number}.json"

    def monitoring_dir(self, pipeline: str, run_id: str) -> Path:
        """Per-run monitoring output folder."""
        return self.root / "monitoring" / check_pipeline(pipeline) / safe_key(run_id)

    def scores_dir(self, pipeline: str, day: str) -> Path:
        """Folder of one day's batch scorings (one file per model version, and the current one's manifest)."""
        return self.root / "scores" / check_pipeline(pipeline) / f"dt={strict_day(day)}"

    def scores_file(self, pipeline: str, day: str, version: str) -> Path:
        """One day's rows as scored by one model version."""
        if not str(version).isdigit():
            raise LayoutError(f"not a model version number: {str(version)[:40]!r}")
        return self.scores_dir(pipeline, day) / f"v{int(version)}.parquet"

    def scores_manifest(self, pipeline: str, day: str) -> Path:
        """Which version's file is the day's current scoring (rows, digest)."""
        return self.scores_dir(pipeline, day) / "scored.json"

    def cache_dir(self, pipeline: str, kind: str) -> Path:
        """A pipeline's content-addressed cache of one kind (``validation``, ``features``; :mod:`tasks.cache`)."""
        if kind not in ("validation", "features"):
            raise LayoutError(f"cache kind is validation or features, not {str(kind)[:80]!r}")
        return self.root / "cache" / check_pipeline(pipeline) / kind

    @property
    def prediction_log(self) -> Path:
        """SQLite file the model server appends every prediction to."""
        return self.root / "serving" / "predictions.sqlite"

    # ---- files of one training run ----

    def train_raw(self, pipeline: str, run_id: str) -> Path:
        """Training rows as ingested (inputs, target, sensitive columns)."""
        return self.run_dir(pipeline, run_id) / "train_raw.parquet"

    def train_features(self, pipeline: str, run_id: str) -> Path:
        """Training rows after the feature transformation, with the target."""
        return self.run_dir(pipeline, run_id) / "train_features.parquet"

    def holdout(self, pipeline: str, run_id: str) -> Path:
        """Holdout rows as ingested (the most recent partitions of the window)."""
        return self.run_dir(pipeline, run_id) / "holdout.parquet"

    def holdout_predictions(self, pipeline: str, run_id: str) -> Path:
        """Every holdout row's target and each evaluated model's prediction (the gate's input)."""
        return self.run_dir(pipeline, run_id) / "predictions.parquet"

    def smoke_sample(self, pipeline: str, run_id: str) -> Path:
        """Holdout rows with the candidate's offline predictions (the deploy smoke test's rows)."""
        return self.run_dir(pipeline, run_id) / SMOKE_SAMPLE  # the artifact's path on the run, mirrored

    def explanations(self, pipeline: str, run_id: str, name: str) -> Path:
        """The candidate's global explanation files (``importance.json``, ``importance.png``)."""
        return self.run_dir(pipeline, run_id) / "explanations" / name

    def search_journal(self, pipeline: str, run_id: str) -> Path:
        """Optuna's journal of the run's hyperparameter search (local storage)."""
        return self.run_dir(pipeline, run_id) / "search" / "journal.log"

    def reference_inputs(self, pipeline: str, run_id: str) -> Path:
        """Training sample kept with the candidate: the reference of input and target drift."""
        return self.run_dir(pipeline, run_id) / REFERENCE_INPUTS

    def reference_predictions(self, pipeline: str, run_id: str) -> Path:
        """The candidate's holdout predictions: the reference of prediction drift."""
        return self.run_dir(pipeline, run_id) / REFERENCE_PREDICTIONS

    def gate_report(self, pipeline: str, run_id: str) -> Path:
        """The gate's decision (every check's verdict)."""
        return self.run_dir(pipeline, run_id) / "gate.json"

    def model_card(self, pipeline: str, run_id: str, kind: str) -> Path:
        """The model card, ``kind`` ``md`` (the registry description) or ``html`` (to open)."""
        if kind not in ("md", "html"):
            raise ValueError(f"model card kind is md or html, not {kind!r}")
        return self.run_dir(pipeline, run_id) / f"model_card.{kind}"

    # ---- monitoring ----

    def drift_html(self, pipeline: str, run_id: str) -> Path:
        """A window's Evidently report."""
        return self.monitoring_dir(pipeline, run_id) / "drift.html"

    def drift_summary(self, pipeline: str, run_id: str) -> Path:
        """A window's full summary (per-column tables included)."""
        return self.monitoring_dir(pipeline, run_id) / "summary.json"

    def decision_log(self, pipeline: str) -> Path:
        """Every monitoring window's retrain decision, one JSON line each."""
        return self.root / "monitoring" / check_pipeline(pipeline) / "decisions.jsonl"

    def trend_page(self, pipeline: str) -> Path:
        """Drift share per window and every decision, as one HTML page."""
        return self.root / "monitoring" / check_pipeline(pipeline) / "trend.html"

    def raw_partitions(self, pipeline: str) -> list[str]:
        """Dates of all ingested partitions, oldest first."""
        base = self.root / "raw" / check_pipeline(pipeline)
        if not base.is_dir():
            return []
        days = []
        for child in base.iterdir():
            m = _PARTITION_RE.match(child.name)
            if m and (child / "part.parquet").is_file():
                days.append(m.group(1))
        return sorted(days)


def safe_key(key: str) -> str:
    """Turn an Airflow run id (``scheduled__2011-01-01T00:00:00+00:00``) into a folder name (never ``.``/``..``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")
    if not cleaned.strip("."):
        raise ValueError(f"run key {key!r} has no usable characters")
    return cleaned


def parse_day(value: str) -> str:
    """The day of a ``YYYY-MM-DD`` string or of an ISO datetime (Airflow's logical dates): ``YYYY-MM-DD``.

    The whole value must parse: ``2011-06-01T00:00:00+00:00`` is 2011-06-01, ``2011-06-01/../x`` is an error.

    Raises:
        LayoutError: The value is not a calendar day or an ISO datetime (a ``ValueError``).
    """
    text = str(value)
    if len(text) == 10:
        return strict_day(text)
    try:
        if _DAY_RE.match(text[:10]) and text[10:11] in ("T", " "):
            return datetime.fromisoformat(text).date().isoformat()
    except ValueError:
        pass
    raise LayoutError(f"not a calendar date (YYYY-MM-DD): {text[:80]!r}")


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    The temporary file is removed if the body raises, so a failed write leaves the old file intact.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(target: Path, payload: Any) -> Path:
    """Atomically write ``payload`` as pretty, key-sorted JSON."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return target


def write_text(target: Path, text: str) -> Path:
    """Atomically write a text file (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def copy_atomic(src: Path, target: Path) -> Path:
    """Atomically copy a file."""
    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)
    return target


def database_url(url: str) -> str:
    """A SQLAlchemy URL with the PostgreSQL driver the lock installs.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` (or ``postgres://``) as psycopg 3, which the lock does not
    install; the lock has psycopg2. Every store this project opens by URL (prediction log, SQL sources, Optuna's
    trials) goes through here; other URLs are returned as they are.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        return "postgresql+psycopg2://" + rest
    return url
