"""Batch scoring: a day's raw partition scored by one model version, kept beside the data for monitoring.

:func:`score_partitions` scores each day's ``raw/<p>/dt=<day>/part.parquet`` with one registered version
(the ``<p>_score`` DAG resolves the champion alias once per run and passes it here) and writes::

    scores/<p>/dt=<day>/v<version>.parquet    the day's rows (event keys, inputs), prediction, model_version
    scores/<p>/dt=<day>/scored.json           which version's file is the day's current scoring, and its digest

Idempotent and backfillable: the rows are sorted by the spec's event keys, the file holds no timestamp and
is written to a temporary name and renamed, so scoring the same raw partition with the same version again
writes the same bytes; another version writes its own file and becomes the day's current one.

Scored rows feed monitoring the way served rows do: :func:`read_scored` returns the current scoring of a
window's days in the prediction log's shape, with ``source`` ``batch`` (the monitor adds them to the
window beside the served rows).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING

import pandas as pd

from tasks.errors import PermanentError
from tasks.names import PREDICTION
from tasks.results import Scored, ScoredPartition
from tasks.storage import atomic_path, strict_day, write_json

if TYPE_CHECKING:
    from pathlib import Path

    from tasks.settings import Settings
    from tasks.spec import PipelineSpec
    from tasks.storage import DataLayout

log = logging.getLogger(__name__)

MODEL_VERSION = "model_version"
BATCH = "batch"


class ScoreError(PermanentError, ValueError):
    """A day that cannot be scored as asked (no raw partition, no champion, a version that cannot score it)."""


def _keys(spec: PipelineSpec) -> list[str]:
    """The columns that order a day's rows (its partition column, then ``source.order_by``)."""
    return list(dict.fromkeys([spec.source.partition_column, *spec.source.order_by]))


def _columns(spec: PipelineSpec) -> list[str]:
    """A scored file's row columns: the event keys, then the model's inputs."""
    return list(dict.fromkeys([*_keys(spec), *spec.schema_.input_columns]))


def resolve_version(settings: Settings, spec: PipelineSpec) -> str:
    """The version holding the ``champion`` alias now.

    Raises:
        ScoreError: The pipeline has no champion yet.
    """
    from tasks.registry import champion

    current = champion(settings, spec.registered_model_name)
    if current is None:
        raise ScoreError(f"{spec.name} has no champion to score with: train and promote one first")
    return current.version


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scored_rows(spec: PipelineSpec, model: object, raw: pd.DataFrame, version: str) -> pd.DataFrame:
    """One day's rows in a fixed order with the model's prediction and version (no timestamp: reproducible)."""
    import numpy as np

    keys = _keys(spec)
    rows = raw[_columns(spec)].sort_values(keys, kind="mergesort").reset_index(drop=True)
    predictions = np.asarray(model.predict(rows[spec.schema_.input_columns]), dtype="float64")  # type: ignore[attr-defined]
    rows[PREDICTION] = predictions
    rows[MODEL_VERSION] = str(version)
    return rows


def score_day(spec: PipelineSpec, layout: DataLayout, model: object, version: str, day: str) -> ScoredPartition:
    """Score one day's raw partition with ``model`` (version ``version``) and make it the day's current scoring.

    Raises:
        ScoreError: The day has no raw partition.
    """
    day = strict_day(day)
    raw_path = layout.raw_partition(spec.name, day)
    if not raw_path.is_file():
        days = layout.raw_partitions(spec.name)
        held = f"{days[0]} .. {days[-1]} ({len(days)} days)" if days else "none yet"
        raise ScoreError(
            f"{spec.name} has no raw partition for {day} ({raw_path}): ingest it first; raw partitions: {held}"
        )
    frame = scored_rows(spec, model, pd.read_parquet(raw_path), version)
    target = layout.scores_file(spec.name, day, version)
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
    digest = _digest(target)
    write_json(
        layout.scores_manifest(spec.name, day),
        {
            "pipeline": spec.name,
            "partition": day,
            MODEL_VERSION: str(version),
            "file": target.name,
            "rows": len(frame),
            "sha256": digest,
            "raw_sha256": _digest(raw_path),
        },
    )
    log.info("%s %s: %d rows scored by v%s -> %s", spec.name, day, len(frame), version, target)
    return ScoredPartition(partition=day, path=str(target), rows=len(frame), sha256=digest)


def score_partitions(
    spec: PipelineSpec, settings: Settings, layout: DataLayout, days: list[str], version: str | None = None
) -> Scored:
    """Score each of ``days`` with one model version (default: the champion now), loaded once.

    Raises:
        ScoreError: No day given, no champion, a day without a raw partition (checked before any file is written),
            or a version the registry does not have.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from tasks.tracking import use_store

    days = sorted({strict_day(d) for d in days})
    if not days:
        raise ScoreError(f"no day to score for {spec.name}: name one (YYYY-MM-DD)")
    missing = [d for d in days if not layout.raw_partition(spec.name, d).is_file()]
    if missing:
        held = layout.raw_partitions(spec.name)
        span = f"{held[0]} .. {held[-1]} ({len(held)} days)" if held else "none yet"
        raise ScoreError(
            f"{spec.name} has no raw partition for {', '.join(missing)}: ingest it first (raw partitions: {span})"
        )
    version = str(version) if version else resolve_version(settings, spec)
    use_store(settings)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{spec.registered_model_name}/{version}")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ScoreError(f"{spec.registered_model_name} has no version {version} to score with") from exc
        raise
    scored = [score_day(spec, layout, model, version, d) for d in days]
    return Scored(pipeline=spec.name, model_version=version, partitions=scored)


def read_scored(spec: PipelineSpec, layout: DataLayout, days: list[str]) -> pd.DataFrame:
    """The current scoring of each of ``days`` (where there is one), in the prediction log's shape.

    Columns: the rows' inputs (and the event keys when they identify a row, so landed labels can be joined),
    ``prediction``, ``model_version``, ``event_time`` (the day), ``served_at`` (empty: batch rows were not
    served), ``source`` (``batch``) and ``request_id`` (``batch:<day>:v<version>``). Empty when none is scored.
    """
    keep = [*spec.schema_.input_columns, *(_keys(spec) if spec.source.order_by else [])]
    frames = []
    for day in days:
        manifest = layout.scores_manifest(spec.name, day)
        if not manifest.is_file():
            continue
        current = json.loads(manifest.read_text())
        version = str(current[MODEL_VERSION])
        rows = pd.read_parquet(manifest.parent / current["file"])
        frame = rows[list(dict.fromkeys(keep))].copy()
        frame[PREDICTION] = rows[PREDICTION]
        frame[MODEL_VERSION] = version
        frame["event_time"] = day
        frame["served_at"] = None
        frame["source"] = BATCH
        frame["request_id"] = f"batch:{day}:v{version}"
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
