"""Monitor: compare a window of served traffic with the champion's reference, then decide on a retrain.

:func:`check_drift` is a chain of immutable results, each step one function of the ones before:

``served_window`` (event days, or the hours up to the window's end for date-less data; a window ending in the
future is refused) -> :func:`collect` (:class:`Served`: the champion, the window's logged rows and batch-scored
rows (``scores/``, ``source`` ``batch``), labels joined on a declared unique key only)
-> :func:`load_reference` (:class:`Reference`: its training sample, its holdout predictions, its profile)
-> :func:`assess` (:class:`Assessment`: data drift, prediction drift, input quality, performance decay,
the violations; the statistics from every row in one pass against the reference profile, see
:mod:`tasks.drift_stats`, and Evidently's report from a bounded sample, labelled as such)
-> :func:`tasks.plan.judge_window` (the trigger policy) -> :func:`publish`, the one step that writes:
``drift.html`` and ``summary.json`` under ``monitoring/<pipeline>/<run_id>/``, the decision log and trend page,
the window's MLflow run. It returns a small :class:`~tasks.results.DriftReport`; per-column tables stay in
``summary.json``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.errors import PermanentError
from tasks.names import (
    LEGACY_REFERENCE,
    MODEL_ARTIFACT,
    PREDICTION,
    REFERENCE_INPUTS,
    REFERENCE_PREDICTIONS,
    REFERENCE_PROFILE,
    TAG_AIRFLOW_RUN_ID,
    TAG_CHAMPION_VERSION,
    TAG_PIPELINE,
    TAG_RETRAIN,
    TAG_STATUS,
    TAG_VIOLATIONS,
    TAG_WINDOW_END,
    holdout_metric,
)
from tasks.results import DriftReport, DriftStatus, Metrics, Registered

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from tasks.drift_stats import ReferenceProfile, WindowStats
    from tasks.plan import WindowVerdict
    from tasks.settings import Settings
    from tasks.spec import PipelineSpec
    from tasks.storage import DataLayout

log = logging.getLogger(__name__)


class MonitoringError(PermanentError, RuntimeError):
    """The champion's reference sample is missing or unreadable: every re-run would fail the same way."""


def window_dates(window_end: str, days: int) -> list[str]:
    """The ``days`` calendar dates before ``window_end`` (exclusive), oldest first.

    A run whose data interval ends at ``2012-06-25T02:00`` checks the days up to 2012-06-24: event time,
    not wall-clock time, so a backfilled or re-run check looks at exactly the same rows.
    """
    last = datetime.fromisoformat(window_end).date() - timedelta(days=1)
    return [(last - timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)]


class MonitoringWindowError(PermanentError, ValueError):
    """The window cannot be checked as asked (it ends in the future): every re-run would fail the same way."""


def _utc(moment: str | datetime) -> datetime:
    value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def check_window_end(window_end: str, now: datetime | None = None) -> datetime:
    """``window_end`` as an aware UTC time; a window that ends in the future is refused with the reason.

    Raises:
        MonitoringWindowError: ``window_end`` is later than now: its traffic has not been served yet.
    """
    try:
        end = _utc(window_end)
    except ValueError:
        raise MonitoringWindowError(f"window end {window_end[:60]!r} is not an ISO date/time") from None
    now = _utc(now or datetime.now(UTC))
    if end > now + timedelta(minutes=1):
        raise MonitoringWindowError(
            f"the monitoring window ends at {end.isoformat()}, in the future (now {now.isoformat()}): its traffic "
            "has not been served yet. Trigger the check with a logical date up to now (none: now)"
        )
    return end


def served_window(
    spec: PipelineSpec, window_end: str, now: datetime | None = None
) -> tuple[list[str], datetime | None]:
    """The window's days, and for serving-time windows its exact start (rows logged at or after it count).

    Event time (the rows carry ``source.partition_column``): the ``monitoring.window_days`` calendar days
    before ``window_end`` (:func:`window_dates`), so a backfill or re-run looks at the same rows. Serving time
    (date-less data): the ``window_days`` * 24 hours up to ``window_end`` itself, so today's traffic is checked
    today: a run triggered now sees every row served until now.

    Raises:
        MonitoringWindowError: ``window_end`` is in the future.
    """
    from tasks.prediction_log import event_column

    end = check_window_end(window_end, now)
    days = spec.monitoring.window_days
    if event_column(spec):
        return window_dates(window_end, days), None
    start = end - timedelta(days=days)
    first, last = start.date(), end.date()
    span = (last - first).days + 1
    return [(first + timedelta(days=i)).isoformat() for i in range(span)], start


# ---- the window's served rows ----


@dataclass(frozen=True)
class Served:
    """What was served in the window: the champion judged, its logged rows, those whose labels have landed.

    ``labels``: how labels were joined (the keys), or why rows were not (a refusal naming the missing key);
    ``label_join``: the rows each key joined and the rows none could (:meth:`LabelJoin.section`).
    """

    window_end: str
    window: list[str]
    champion: Registered | None
    rows: pd.DataFrame
    labelled: pd.DataFrame
    champion_on_labelled: Metrics | None = None
    labels: str = ""
    label_join: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelJoin:
    """How the window's labels were joined: the rows each key joined, and the rows no key could join, with why.

    ``note`` is the summary's ``labels`` line; :meth:`section` its ``label_join`` table.
    """

    note: str
    rows_by_key: dict[str, int] = field(default_factory=dict)
    not_joined_rows: int = 0
    not_joined_reason: str | None = None

    def section(self) -> dict[str, Any]:
        """The counts, for ``summary.json``: every served row is joined on a key or counted as not joined."""
        return {
            "rows_by_key": dict(self.rows_by_key),
            "not_joined_rows": self.not_joined_rows,
            "not_joined_reason": self.not_joined_reason,
        }


def label_keys(spec: PipelineSpec) -> tuple[list[str], list[str]]:
    """The declared unique keys labels may be joined on (either may be empty).

    ``schema.id_column``, and the event day with ``source.order_by`` (bike demand: ``dteday`` + ``hr``, one row
    per hour of a day).
    """
    ident = [spec.schema_.id_column] if spec.schema_.id_column else []
    dated = [spec.source.partition_column, *spec.source.order_by] if spec.source.order_by else []
    return ident, dated


def _carries(served: pd.DataFrame, key: list[str]) -> pd.Series:
    """Which rows carry every column of ``key`` (a column the frame lacks: none does)."""
    if not key or not set(key) <= set(served.columns):
        return pd.Series(False, index=served.index)
    return served[key].notna().all(axis=1)


def _why_not_joined(spec: PipelineSpec, served: pd.DataFrame, rows: pd.Series) -> str:
    """Why the ``rows`` of ``served`` can be joined on no declared key (they lack its columns, or none is declared)."""
    ident, dated = label_keys(spec)
    if not ident and not dated:
        return (
            f"no unique row key is declared ({spec.source.partition_column!r} alone names a partition, not a row). "
            "Declare schema.id_column (a column unique across partitions) and have callers send it with each row, "
            "or source.order_by (unique within a day, with the partition column sent)"
        )
    lacking = []
    if ident:
        lacking.append(f"{ident} (schema.id_column)")
    if dated:
        missing = [c for c in dated if c not in served.columns or served.loc[rows, c].isna().any()]
        lacking.append(f"{missing} (source.partition_column + source.order_by)")
    return f"served rows lack the key column(s) {' and '.join(lacking)}; callers must send them"


def _key_labels(
    spec: PipelineSpec, layout: DataLayout, key: list[str], served: pd.DataFrame
) -> tuple[pd.DataFrame | None, str | None]:
    """The landed labels by ``key`` (None: none landed yet), or why they cannot be joined (the key repeats)."""
    target = spec.schema_.target
    day_col = spec.source.partition_column
    # a key naming the day reads only the served days' partitions; an id may be in any of them
    days = sorted(served[day_col].astype(str).unique()) if day_col in key else layout.raw_partitions(spec.name)
    frames = [
        pd.read_parquet(layout.raw_partition(spec.name, d), columns=list(dict.fromkeys([*key, target])))
        for d in days
        if layout.raw_partition(spec.name, d).is_file()
    ]
    if not frames:
        return None, None
    labels = pd.concat(frames, ignore_index=True)
    repeated = labels.duplicated(key, keep=False)
    if repeated.any():
        example = labels.loc[repeated, key].iloc[0].to_dict()
        return None, (
            f"the key {key} is not unique in the landed rows ({int(repeated.sum())} rows share a key, e.g. "
            f"{example}). Declare schema.id_column (unique across partitions) and have callers send it"
        )
    return labels, None


def _matched(served: pd.DataFrame, labels: pd.DataFrame, key: list[str], target: str) -> pd.Series:
    """``target`` of the label row whose ``key`` each served row has (NaN: none), indexed like ``served``."""
    left = served[key].copy()
    for column in key:  # a logged id next to rows without one reads back as a float: 5.0 is the label's 5
        if pd.api.types.is_integer_dtype(labels[column]) and pd.api.types.is_float_dtype(left[column]):
            left[column] = left[column].astype("int64")
    joined = left.merge(labels, on=key, how="left", validate="many_to_one")  # a left join keeps the left order
    return pd.Series(joined[target].to_numpy(), index=served.index, name=target)


def join_labels(spec: PipelineSpec, layout: DataLayout, served: pd.DataFrame) -> tuple[pd.DataFrame, LabelJoin]:
    """Join the true target from landed raw partitions onto served rows (delayed labels), on unique keys only.

    A row that carries ``schema.id_column`` joins on its id; a row without one (a caller that sent none, a
    batch-scored row) joins on the event day with ``source.order_by`` when the spec declares it and the row
    carries them. A row neither key can join is counted, with the reason, and logged as a warning: the metrics
    on labelled rows never silently cover fewer rows than landed. A key that is not unique in the landed rows
    is refused for its rows (a join on it would score the wrong rows), with the reason.

    Returns:
        The rows (target NaN where no label landed or no key could join) and how labels were joined.
    """
    target = spec.schema_.target
    rows = served.drop(columns=[target], errors="ignore").reset_index(drop=True)
    if rows.empty:
        return rows.assign(**{target: float("nan")}), LabelJoin("")
    ident, dated = label_keys(spec)
    by_id = _carries(rows, ident)
    by_day = ~by_id & _carries(rows, dated)
    neither = ~by_id & ~by_day
    found: list[pd.Series] = []
    joined: list[str] = []
    counts: dict[str, int] = {}
    refused: list[tuple[int, str]] = []
    for key, chosen in ((ident, by_id), (dated, by_day)):
        if not chosen.any():
            continue
        labels, why = _key_labels(spec, layout, key, rows[chosen])
        if why is not None:
            refused.append((int(chosen.sum()), why))
            continue
        counts["+".join(key)] = int(chosen.sum())
        joined.append(f"{key}" + ("" if labels is not None else ": none landed yet"))
        if labels is not None:
            found.append(_matched(rows[chosen], labels, key, target))
    if neither.any():
        refused.insert(0, (int(neither.sum()), _why_not_joined(spec, rows, neither)))
    column = pd.concat(found) if found else pd.Series(dtype="float64")
    rows[target] = column.reindex(rows.index) if len(column) else float("nan")
    several = len(joined) > 1 or bool(refused)
    parts = []
    if joined:
        parts.append(
            "labels joined on "
            + " and on ".join(f"{j} ({n} rows)" if several else j for j, n in zip(joined, counts.values(), strict=True))
        )
    not_joined = sum(n for n, _ in refused)
    reason = "; ".join(why for _, why in refused) or None
    if refused:
        if not joined and not_joined == len(rows):
            parts.append(f"labels not joined: {reason}")
        else:
            parts.append(f"{not_joined} of {len(rows)} rows not joined: {reason}")
        log.warning("%s: %s", spec.name, "; ".join(parts))
    return rows, LabelJoin("; ".join(parts), counts, not_joined, reason)


def attach_labels(spec: PipelineSpec, layout: DataLayout, served: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """:func:`join_labels`'s rows and its ``labels`` line (how labels were joined, or why rows were not)."""
    rows, how = join_labels(spec, layout, served)
    return rows, how.note


def with_batch_scores(spec: PipelineSpec, layout: DataLayout, logged: pd.DataFrame, window: list[str]) -> pd.DataFrame:
    """The served rows and the window's batch-scored rows (``scores/``, ``source`` ``batch``) as one frame."""
    from tasks.score import read_scored

    batch = read_scored(spec, layout, window)
    if batch.empty:
        return logged
    return batch if logged.empty else pd.concat([logged, batch], ignore_index=True)


def collect(
    spec: PipelineSpec, settings: Settings, layout: DataLayout, window_end: str, now: datetime | None = None
) -> Served:
    """The champion and the window's logged rows (labels joined where they have landed, on a unique key).

    Raises:
        MonitoringWindowError: ``window_end`` is in the future.
    """
    from tasks.prediction_log import log_store, read_window
    from tasks.registry import champion

    window, start = served_window(spec, window_end, now)
    current = champion(settings, spec.registered_model_name)
    logged = read_window(log_store(settings), spec.registered_model_name, window)
    if start is not None and not logged.empty:  # serving time: exactly the hours up to the window's end
        when = pd.to_datetime(logged["event_time"], utc=True, format="ISO8601")
        logged = logged[(when >= start) & (when < check_window_end(window_end, now))].reset_index(drop=True)
    rows, labels = join_labels(spec, layout, with_batch_scores(spec, layout, logged, window))
    labelled = rows.dropna(subset=[spec.schema_.target])
    scored = None
    if len(labelled):
        from tasks.evaluate import target_values
        from tasks.metrics import score_all

        y = target_values(spec, labelled[spec.schema_.target])
        scored = score_all(spec.metric_names, y, labelled[PREDICTION].to_numpy())
    return Served(window_end, window, current, rows, labelled, scored, labels.note, labels.section())


# ---- the champion's reference ----


@dataclass(frozen=True)
class Reference:
    """The champion's reference: its training sample (inputs, target) and its predictions to compare with."""

    inputs: pd.DataFrame
    predictions: pd.Series | None
    kind: str  # "holdout" | "in-sample (legacy)" | "none"
    note: str | None = None
    profile: ReferenceProfile | None = None  # reference/profile.json, when the champion was trained with one


def _download(settings: Settings, mlflow_run_id: str, path: str, read: Any = pd.read_parquet) -> Any:
    """One artifact of a run read with ``read`` (parquet), or None when the run does not have it (an outage raises)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from tasks.tracking import use_store

    use_store(settings)
    try:
        return read(mlflow.artifacts.download_artifacts(run_id=mlflow_run_id, artifact_path=path))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    except FileNotFoundError:
        return None


def load_reference(settings: Settings, champion: Registered) -> Reference:
    """The reference logged with the champion's run: ``reference/inputs.parquet`` and the holdout predictions.

    A champion trained before the holdout reference existed has ``reference/reference.parquet`` (its training
    sample with its *in-sample* predictions): it is read, and the summary says so.

    Raises:
        MonitoringError: The run has no reference sample at all.
    """
    run = champion.mlflow_run_id
    inputs = _download(settings, run, REFERENCE_INPUTS)
    if inputs is not None:
        profile = _stored_profile(settings, run)
        predictions = _download(settings, run, REFERENCE_PREDICTIONS)
        if predictions is None:
            note = f"champion v{champion.version} has no {REFERENCE_PREDICTIONS}: prediction drift not compared"
            return Reference(inputs, None, "none", note, profile)
        return Reference(inputs, predictions[PREDICTION].reset_index(drop=True), "holdout", profile=profile)
    legacy = _download(settings, run, LEGACY_REFERENCE)
    if legacy is None:
        raise MonitoringError(
            f"champion v{champion.version} (MLflow run {run}) has no reference sample ({REFERENCE_INPUTS} or "
            f"{LEGACY_REFERENCE}): retrain it, or roll back to a version trained by this code"
        )
    if PREDICTION not in legacy.columns:
        note = (
            f"champion v{champion.version} predates prediction-drift tracking ({LEGACY_REFERENCE} has no "
            "predictions): not compared"
        )
        return Reference(legacy, None, "none", note)
    note = (
        f"champion v{champion.version} predates holdout reference predictions: its predictions are compared with "
        f"its in-sample predictions on the training sample ({LEGACY_REFERENCE}); retrain for a holdout reference"
    )
    return Reference(legacy.drop(columns=[PREDICTION]), legacy[PREDICTION].reset_index(drop=True), "in-sample", note)


def _stored_profile(settings: Settings, mlflow_run_id: str) -> ReferenceProfile | None:
    """``reference/profile.json`` of the run (None: trained before it existed, computed from the sample instead)."""
    import json
    from pathlib import Path

    from tasks.drift_stats import ReferenceProfile

    doc = _download(settings, mlflow_run_id, REFERENCE_PROFILE, lambda p: json.loads(Path(p).read_text()))
    return None if doc is None else ReferenceProfile.from_json(doc)


def reference_profile(reference: Reference, columns: list[str], categorical: list[str]) -> ReferenceProfile:
    """The decision statistics' reference: the stored profile, or (older champions) one computed from the sample.

    A stored profile that lacks a column, or profiles a categorical column as numeric (the spec changed since
    training), is recomputed from the reference sample. The reference predictions are added either way.
    """
    from tasks.drift_stats import ReferenceProfile

    stored = reference.profile
    cats = set(categorical)
    if stored is not None and all(
        c in (stored.categorical if c in cats else {**stored.numeric, **stored.categorical}) for c in columns
    ):
        return stored.with_predictions(reference.predictions)
    present = [c for c in columns if c in reference.inputs.columns]
    return ReferenceProfile.of(reference.inputs[present], categorical, reference.predictions)


def reference_frame(reference: Reference, seed: int = 0) -> pd.DataFrame:
    """The inputs sample with the reference predictions as its ``prediction`` column, for one Evidently report.

    Drift is judged per column and Evidently drops missing values of each column, so the predictions (the
    holdout's, a different set of rows) fill the first rows and the rest stay empty; more predictions than
    sample rows are subsampled (seeded). The inputs are unchanged.
    """
    if reference.predictions is None:
        return reference.inputs
    preds = reference.predictions
    n = len(reference.inputs)
    if len(preds) > n:
        preds = preds.sample(n=n, random_state=seed).reset_index(drop=True)
    import numpy as np

    column = np.full(n, np.nan)
    column[: len(preds)] = preds.to_numpy(dtype="float64")
    return reference.inputs.assign(**{PREDICTION: column})


# ---- drift, quality, decay ----


TWO_SAMPLE_CHI2 = "chisquare_two_sample"


def _two_sample_chi2(
    reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float
) -> tuple[float, bool]:
    """Chi-square test of homogeneity on the 2 x k table of category counts (reference vs current).

    Evidently's ``chisquare`` is a goodness-of-fit test: it treats the reference proportions as exact, so
    with a small reference sample and a large window its own sampling noise reads as drift (at 10^5 served
    rows it flagged 3x the columns scipy's two-sample test did). Both samples are samples; this test says so.
    """
    from scipy.stats import chi2_contingency

    table = pd.concat([reference.value_counts(), current.value_counts()], axis=1).fillna(0).to_numpy()
    table = table[table.sum(axis=1) > 0]
    if table.shape[0] < 2:  # one category in both windows: nothing can have drifted
        return 1.0, False
    p_value = float(chi2_contingency(table, correction=False)[1])
    return p_value, p_value < threshold


def _register_two_sample_chi2() -> None:
    from evidently.legacy.calculations.stattests.registry import StatTest, _registered_stat_tests, register_stattest
    from evidently.legacy.core import ColumnType

    if TWO_SAMPLE_CHI2 in _registered_stat_tests:
        return
    register_stattest(
        StatTest(
            name=TWO_SAMPLE_CHI2,
            display_name="chi-square two-sample p_value",
            allowed_feature_types=[ColumnType.Categorical],
        ),
        default_impl=_two_sample_chi2,
    )


def _column_results(snapshot: dict[str, Any], p_value: float, distances: dict[str, float]) -> dict[str, dict[str, Any]]:
    columns: dict[str, dict[str, Any]] = {}
    for metric in snapshot["metrics"]:
        cfg = metric["config"]
        if not cfg["type"].endswith("ValueDrift"):
            continue
        value = float(metric["value"])
        column = cfg["column"]
        entry: dict[str, Any] = {"method": cfg.get("method")}
        if math.isnan(value):
            # a category constant in both windows (season in June): nothing can have drifted
            entry |= {"score": None, "drifted": False, "note": "constant in reference and current: no test"}
        elif column in distances:  # a distance: drift is a large value
            entry |= {"score": value, "threshold": distances[column], "drifted": value >= distances[column]}
        else:  # KS / two-sample chi-square p-values: drift is a small value
            entry |= {"score": value, "drifted": value < p_value}
        columns[column] = entry
    return columns


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numerical: list[str],
    categorical: list[str],
    drift_share: float,
    p_value: float,
    prediction_threshold: float | None = None,
    summary: bool = False,
) -> tuple[Any, float, dict[str, dict[str, Any]]]:
    """Evidently's data-drift preset: KS for numeric, two-sample chi-square for categorical columns.

    When both frames carry a ``prediction`` column it is compared too (prediction drift), by normalised
    Wasserstein distance against ``prediction_threshold`` (default 0.1), and is left out of the drifted share,
    which is about the inputs (and the target). ``summary`` adds Evidently's data summary preset (missing
    values, ranges, constant and duplicated columns of both frames) to the same report.

    Returns:
        The Evidently snapshot (``save_html``), the share of drifted input columns and one result per column.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    _register_two_sample_chi2()
    numeric = list(numerical)
    with_prediction = PREDICTION in reference.columns and PREDICTION in current.columns
    distances = {PREDICTION: prediction_threshold or 0.1} if with_prediction else {}
    if with_prediction:
        numeric.append(PREDICTION)
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    columns = numeric + categorical
    presets: list[Any] = [
        DataDriftPreset(
            columns=columns,
            drift_share=drift_share,
            num_method="ks",
            cat_method=TWO_SAMPLE_CHI2,
            threshold=p_value,
            per_column_method={c: "wasserstein" for c in distances},
            per_column_threshold=distances,
        )
    ]
    if summary:
        presets.append(DataSummaryPreset(columns=[c for c in columns if c != PREDICTION]))
    snapshot = Report(presets).run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    per_column = _column_results(snapshot.dict(), p_value, distances)
    inputs = [r for c, r in per_column.items() if c != PREDICTION]
    share = sum(r["drifted"] for r in inputs) / len(inputs) if inputs else 0.0
    return snapshot, share, per_column


REPORT_SAMPLE_ROWS = 20_000
"""Served rows (a seeded sample) drawn into Evidently's HTML report; the verdicts use every row of the window."""


WINDOW_CHUNK_ROWS = 250_000
"""Rows per chunk the monitor aggregates the window in."""


def frame_chunks(frame: pd.DataFrame, chunk_rows: int = WINDOW_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """``frame`` in consecutive slices of at most ``chunk_rows`` rows (one empty slice for an empty frame)."""
    for start in range(0, max(len(frame), 1), chunk_rows):
        yield frame.iloc[start : start + chunk_rows]


class ReportSample:
    """A seeded uniform sample of at most ``rows`` of the window's rows, drawn chunk by chunk (for the report).

    Every row gets a key from one seeded random stream, in window order (numpy's PCG64 doubles: drawing n then
    m values equals drawing n + m), and the sample is the ``rows`` rows with the smallest keys, in window order:
    the same rows whatever the chunks' sizes. Memory: the sample and one chunk.
    """

    def __init__(self, rows: int = REPORT_SAMPLE_ROWS, seed: int = 0) -> None:
        """Keep at most ``rows`` rows; ``seed`` fixes which."""
        import numpy as np

        self.rows = rows
        self.seen = 0
        self._rng = np.random.default_rng(seed)
        self._kept: pd.DataFrame | None = None
        self._keys = np.empty(0)
        self._positions = np.empty(0, dtype="int64")

    def add(self, chunk: pd.DataFrame) -> ReportSample:
        """Offer the next rows of the window."""
        import numpy as np

        keys = self._rng.random(len(chunk))
        positions = np.arange(self.seen, self.seen + len(chunk), dtype="int64")
        self.seen += len(chunk)
        if self.rows < 1:
            return self
        if len(self._keys) >= self.rows:  # only rows that beat the largest kept key can enter
            beat = keys < self._keys.max()
            chunk, keys, positions = chunk[beat], keys[beat], positions[beat]
        if not len(chunk) and self._kept is not None:
            return self
        frames = [chunk] if self._kept is None else [self._kept, chunk]
        kept = pd.concat(frames, ignore_index=True) if len(frames) > 1 else chunk.reset_index(drop=True)
        keys, positions = np.concatenate([self._keys, keys]), np.concatenate([self._positions, positions])
        if len(keys) > self.rows:
            chosen = np.sort(np.argsort(keys, kind="stable")[: self.rows])  # smallest keys, in window order
            kept, keys, positions = kept.iloc[chosen].reset_index(drop=True), keys[chosen], positions[chosen]
        self._kept, self._keys, self._positions = kept, keys, positions
        return self

    @property
    def frame(self) -> pd.DataFrame:
        """The sampled rows, in window order."""
        return pd.DataFrame() if self._kept is None else self._kept


def window_statistics(
    profile: ReferenceProfile,
    current: pd.DataFrame | Iterable[pd.DataFrame],
    columns: list[str],
    chunk_rows: int = WINDOW_CHUNK_ROWS,
) -> WindowStats:
    """The window aggregated against the reference profile in one pass over ``current`` (a frame, or its chunks)."""
    stats, _ = window_pass(profile, current, columns, chunk_rows=chunk_rows)
    return stats


def window_pass(
    profile: ReferenceProfile,
    current: pd.DataFrame | Iterable[pd.DataFrame],
    columns: list[str],
    sample_rows: int = 0,
    seed: int = 0,
    chunk_rows: int = WINDOW_CHUNK_ROWS,
) -> tuple[WindowStats, ReportSample]:
    """One pass over the window: its statistics against the profile, and the report's sample of it.

    ``current`` is one frame (read in slices of ``chunk_rows``) or any iterable of chunks (such as
    :func:`tasks.prediction_log.read_window_chunks`): each chunk is counted and offered to the sample, then
    dropped. The statistics and the sample are the same whatever the chunks' sizes.
    """
    from tasks.drift_stats import WindowStats

    stats = WindowStats(profile, columns, PREDICTION if profile.predictions is not None else None)
    sample = ReportSample(sample_rows, seed)
    for chunk in frame_chunks(current, chunk_rows) if isinstance(current, pd.DataFrame) else current:
        stats.add(chunk)
        if sample_rows:
            sample.add(chunk)
    return stats, sample


def drift_statistics(
    stats: WindowStats, p_value: float, prediction_threshold: float | None = None
) -> tuple[float, dict[str, dict[str, Any]]]:
    """The drifted share of input columns and one result per column (the decision: every row of the window).

    KS p-values for numeric columns, two-sample chi-square for categorical ones (scipy's figures on the same
    data, see :mod:`tasks.drift_stats`), the normalised Wasserstein distance for the prediction, which is
    left out of the share.
    """
    per_column = stats.drift(p_value, prediction_threshold)
    inputs = [r for c, r in per_column.items() if c != PREDICTION]
    share = sum(r["drifted"] for r in inputs) / len(inputs) if inputs else 0.0
    return share, per_column


def sample_report(
    reference: pd.DataFrame,
    current: pd.DataFrame | ReportSample,
    numerical: list[str],
    categorical: list[str],
    drift_share: float,
    p_value: float,
    prediction_threshold: float | None = None,
    rows: int = REPORT_SAMPLE_ROWS,
    seed: int = 0,
    summary: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Evidently's drift report on at most ``rows`` served rows (seeded), and what it was drawn from.

    ``current`` is the window, or its :class:`ReportSample` drawn during the statistics' pass (``rows`` and
    ``seed`` are then the sample's own).

    Its cost is mostly plotting, per column whatever the rows: the data summary preset (``summary``) doubles
    it and repeats what the quality checks in ``summary.json`` say, so check_drift leaves it out.

    Returns:
        The snapshot (``save_html``) and ``{"rows", "of", "note"}`` — the note heads the HTML page.
    """
    drawn = current if isinstance(current, ReportSample) else ReportSample(rows, seed).add(current)
    sample, of = drawn.frame, drawn.seen
    snapshot, _, _ = drift_report(
        reference, sample, numerical, categorical, drift_share, p_value, prediction_threshold, summary=summary
    )
    if len(sample) < of:
        note = (
            f"This report is drawn from a random sample of {len(sample):,} of the window's {of:,} served "
            "rows. The drift verdicts, the drifted share and the quality checks in summary.json are computed on "
            "every row of the window; per-column figures here may differ from them."
        )
    else:
        note = f"This report shows all {of:,} served rows of the window."
    return snapshot, {"rows": len(sample), "of": of, "note": note}


def input_quality(
    spec: PipelineSpec,
    reference: pd.DataFrame | ReferenceProfile,
    current: pd.DataFrame | WindowStats,
    numerical: list[str],
    categorical: list[str],
    unseen: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Data quality of served inputs against the reference: missing values, stuck columns, range.

    ``reference`` and ``current`` are frames, or the profile and the window aggregated against it (what
    :func:`assess` passes: the figures come from the same one pass as the drift statistics).

    Returns:
        ``{"columns": {column: figures}, "breaches": [one sentence per breach]}``.
    """
    from tasks.drift_stats import ReferenceProfile

    columns_ = [*numerical, *categorical]
    if isinstance(current, pd.DataFrame):
        from tasks.features import unseen_levels

        unseen = unseen_levels(spec.features, current)  # values outside a column's categories (zeros or other)
        profile = reference if isinstance(reference, ReferenceProfile) else ReferenceProfile.of(reference, categorical)
        current = window_statistics(profile, current, [c for c in columns_ if c in current.columns])
    rules = spec.monitoring.quality
    columns: dict[str, dict[str, Any]] = {}
    breaches: list[str] = []
    for col in columns_:
        if col not in current.columns or col in current.absent:
            breaches.append(f"{col}: absent from every served row")
            columns[col] = {"absent": True}
            continue
        figures = current.quality(col)
        miss_ref, miss_cur = figures["missing_reference"], figures["missing_served"]
        entry: dict[str, Any] = {"missing_reference": miss_ref, "missing_served": miss_cur}
        if miss_cur - miss_ref > rules.max_missing_increase:
            breaches.append(f"{col}: {miss_cur:.1%} missing in served rows vs {miss_ref:.1%} in the reference")
        distinct_ref, served_rows = figures["distinct_reference"], figures["served_rows"]
        # a measurement stuck at one value (a client default); calendar-like columns are legitimately
        # constant over a short window, so only columns with many reference values qualify
        if rules.flag_constant and figures["distinct_served"] <= 1 and distinct_ref >= 10 and served_rows > 1:  # noqa: PLR2004
            value = figures["constant_value"]
            breaches.append(
                f"{col}: constant ({value!r}) in all {served_rows} served rows, {distinct_ref} values in the reference"
            )
            entry["constant"] = True
        if "reference_range" in figures:
            lo, hi = figures["reference_range"]
            outside = figures["out_of_range"]
            entry |= {"reference_range": [lo, hi], "out_of_range": outside}
            limit = rules.max_out_of_range_share
            if limit is not None and outside > limit:
                breaches.append(f"{col}: {outside:.1%} of served values outside the reference range [{lo:g}, {hi:g}]")
        if unseen and col in unseen:
            entry["unseen_levels"] = unseen[col]
        columns[col] = entry
    return {"columns": columns, "breaches": breaches}


def performance_decay(
    spec: PipelineSpec, settings: Settings, champion: Registered, served: Served
) -> dict[str, Any] | None:
    """The champion's primary metric on labelled served rows against its own holdout figure (None: not judged)."""
    limit = spec.monitoring.max_performance_decay
    name = spec.gate.primary_metric
    on_labelled = served.champion_on_labelled or {}
    if limit is None or len(served.labelled) < spec.monitoring.min_rows or on_labelled.get(name) is None:
        return None
    from tasks.metrics import improvement
    from tasks.tracking import client

    holdout = client(settings).get_run(champion.mlflow_run_id).data.metrics.get(holdout_metric(name))
    if holdout is None:
        return None
    worse = -float(improvement(name, on_labelled[name], holdout))
    return {
        "metric": name,
        "holdout": holdout,
        "served": on_labelled[name],
        "relative_worsening": worse,
        "max": limit,
        "violated": worse > limit,
    }


@dataclass(frozen=True)
class Assessment:
    """The window's verdict before the trigger policy: status, reason, violations and the report's sections."""

    status: DriftStatus
    reason: str
    violations: list[str] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    snapshot: Any = None  # the Evidently report, saved by publish
    report_note: str | None = None  # heads the HTML report (it is drawn from a sample of the window)

    @property
    def figures(self) -> dict[str, Any]:
        """Headline figures kept in the decision log."""
        return {k: self.sections[k] for k in ("drift_share", "performance_decay") if k in self.sections}


def _prediction_drift(per_column: dict[str, dict[str, Any]], reference: Reference) -> dict[str, Any]:
    if PREDICTION not in per_column:
        return {"note": reference.note or "no reference predictions: not compared"}
    rows = len(reference.predictions) if reference.predictions is not None else 0
    drift = per_column[PREDICTION] | {"reference_rows": rows, "reference": reference.kind}
    return drift | ({"note": reference.note} if reference.note else {})


def _attribution_drift(
    spec: PipelineSpec, settings: Settings, champion: Registered | None, reference: Reference, rows: pd.DataFrame
) -> dict[str, Any]:
    """Which input columns the champion leans on, served vs reference (see :func:`tasks.explain.attribution_drift`)."""
    import mlflow

    from tasks.explain import ExplainError, attribution_drift
    from tasks.tracking import use_store

    if champion is None:
        return {"note": "no champion"}
    use_store(settings)
    model = mlflow.sklearn.load_model(f"runs:/{champion.mlflow_run_id}/{MODEL_ARTIFACT}")
    inputs = spec.schema_.input_columns
    threshold = spec.monitoring.attribution_drift_threshold
    try:
        return attribution_drift(model, reference.inputs[inputs], rows[inputs], threshold, spec.training.seed)
    except ExplainError as exc:
        return {"note": f"champion v{champion.version} cannot be explained: {exc}"}


def assess(spec: PipelineSpec, settings: Settings, reference: Reference, served: Served) -> Assessment:
    """Judge the window: data drift (inputs, and the target once labelled), prediction drift, quality, decay."""
    mon = spec.monitoring
    target = spec.schema_.target
    categorical = list(spec.features.categorical)
    numerical = [c for c in spec.features.source_columns if c not in categorical]
    compared, current = list(numerical), served.rows
    if mon.include_target and len(served.labelled) >= mon.min_rows:
        # demand itself shifting is the strongest retrain signal once its labels have landed
        compared, current = [*numerical, target], served.labelled
    # the decision: every row of the window, in one pass, against the reference profile stored with the model
    # and, in the same pass over its chunks, the picture's rows: a bounded sample for Evidently, labelled as such
    profile = reference_profile(reference, [*compared, *categorical], categorical)
    columns = [c for c in [*compared, *categorical] if c in profile.columns]
    stats, sample = window_pass(profile, current, columns, REPORT_SAMPLE_ROWS, spec.training.seed)
    share, per_column = drift_statistics(stats, mon.column_p_value, mon.prediction_drift_threshold)
    snapshot, drawn = sample_report(
        reference_frame(reference, spec.training.seed),
        sample,
        compared,
        categorical,
        mon.drift_share_threshold,
        mon.column_p_value,
        mon.prediction_drift_threshold,
    )
    inputs = {c: r for c, r in per_column.items() if c != PREDICTION}
    drifted = sorted(c for c, r in inputs.items() if r["drifted"])
    status: DriftStatus = "drift" if share >= mon.drift_share_threshold else "no_drift"
    violations = ["data_drift"] if status == "drift" else []
    prediction = _prediction_drift(per_column, reference)
    if mon.prediction_drift_threshold is not None and prediction.get("drifted"):
        violations.append("prediction_drift")
    from tasks.features import unseen_levels

    quality = input_quality(spec, profile, stats, numerical, categorical, unseen_levels(spec.features, served.rows))
    if quality["breaches"]:
        violations.append("data_quality")
        log.warning("served-input quality: %s", "; ".join(quality["breaches"]))
    attribution = _attribution_drift(spec, settings, served.champion, reference, current)
    if attribution.get("drifted"):
        violations.append("attribution_drift")
    decay = performance_decay(spec, settings, served.champion, served) if served.champion else None
    if decay is not None and decay["violated"]:
        violations.append("performance_decay")
    sections: dict[str, Any] = {
        "reference_rows": len(reference.inputs),
        "reference_profile": profile.source,
        "report_sample": drawn,
        "drift_share": share,
        "drifted_columns": drifted,
        "target_drifted": bool(per_column.get(target, {}).get("drifted", False)),
        "columns": inputs,
        "served_versions": sorted(current["model_version"].astype(str).unique()),
        "prediction_drift": prediction,
        "input_quality": quality,
        "attribution_drift": attribution,
    }
    if decay is not None:
        sections["performance_decay"] = decay
    if served.champion_on_labelled is not None:
        sections |= {"champion_on_labelled": served.champion_on_labelled, "labelled_rows": len(served.labelled)}
    reason = f"{len(drifted)}/{len(inputs)} columns drifted (share {share:.2f}, threshold {mon.drift_share_threshold})"
    return Assessment(status, reason, violations, sections, snapshot, drawn["note"])


def _judge(spec: PipelineSpec, settings: Settings, served: Served) -> Assessment:
    """Assess the window, unless it cannot be judged (no champion, too few rows)."""
    if served.champion is None:
        return Assessment("no_champion", "no champion to compare against")
    if len(served.rows) < spec.monitoring.min_rows:
        why = f"{len(served.rows)} served rows in the window, fewer than min_rows={spec.monitoring.min_rows}"
        return Assessment("insufficient_data", why)
    return assess(spec, settings, load_reference(settings, served.champion), served)


# ---- the one step that writes ----


def _keep_on_mlflow(
    spec: PipelineSpec, settings: Settings, run_id: str, summary: dict[str, Any], files: list[Any], summary_path: Any
) -> str | None:
    """Keep the window's reports on an MLflow run (experiment ``<p>-monitoring``); returns the report's URL.

    One MLflow run per Airflow run: a re-run replaces its artifacts rather than adding a second record.
    ``summary.json`` is rewritten there with the URL before it is logged. The files under the data root
    are written first and stay whatever happens to MLflow: a tracking-store outage costs the link, not
    the report.
    """
    import mlflow

    from tasks.storage import write_json
    from tasks.tracking import artifact_url, start_tracking

    try:
        experiment_id = start_tracking(settings, f"{spec.name}-monitoring")
        found = mlflow.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_AIRFLOW_RUN_ID}` = '{run_id}'",
            max_results=1,
            output_format="list",
        )
        previous = found[0].info.run_id if found else None
        with mlflow.start_run(run_id=previous, run_name=f"window-{summary['window_end'][:10]}") as run:
            page = "drift.html" if summary.get("report_html") else "summary.json"
            url = artifact_url(settings, run.info.run_id, page, experiment_id)
            write_json(summary_path, summary | {"report_url": url})
            mlflow.set_tags(
                {
                    TAG_PIPELINE: spec.name,
                    TAG_AIRFLOW_RUN_ID: run_id,
                    TAG_WINDOW_END: summary["window_end"],
                    TAG_STATUS: summary["status"],
                    TAG_CHAMPION_VERSION: str(summary.get("champion_version")),
                    TAG_VIOLATIONS: ",".join(summary.get("violations", [])) or "none",
                    TAG_RETRAIN: str(summary.get("retrain")),
                }
            )
            figures = {"rows": summary.get("rows", 0), "drift_share": summary.get("drift_share")}
            figures["prediction_drift"] = (summary.get("prediction_drift") or {}).get("score")
            figures["performance_decay"] = (summary.get("performance_decay") or {}).get("relative_worsening")
            mlflow.log_metrics({k: float(v) for k, v in figures.items() if v is not None})
            for path in files:
                mlflow.log_artifact(str(path))
        return url
    except Exception as exc:  # noqa: BLE001 - the reports are on disk; the MLflow copy is a convenience
        log.warning("could not keep the monitoring reports on MLflow (%s); they are under %s", exc, summary_path.parent)
        write_json(summary_path, summary)
        return None


def _rows_by_source(rows: pd.DataFrame) -> dict[str, int]:
    """How many of the window's rows were served over HTTP and how many scored in batch."""
    if rows.empty or "source" not in rows.columns:
        return {}
    return {str(k): int(v) for k, v in rows["source"].value_counts().sort_index().items()}


def _summary(
    spec: PipelineSpec, served: Served, assessment: Assessment, verdict: WindowVerdict, trend: Path, html: Path | None
) -> dict[str, Any]:
    """Everything the window produced, per-column tables included (``summary.json``)."""
    summary: dict[str, Any] = {
        "pipeline": spec.name,
        "window": served.window,
        "window_end": served.window_end,
        "drift_share_threshold": spec.monitoring.drift_share_threshold,
        "rows": len(served.rows),
        "rows_by_source": _rows_by_source(served.rows),
        "labels": served.labels,
        "label_join": served.label_join,
        "champion_version": served.champion.version if served.champion else None,
        "status": assessment.status,
        "reason": assessment.reason,
        **assessment.sections,
        "violations": verdict.decision.violations,
        "retrain": verdict.decision.retrain,
        "decision": verdict.decision.reason,
        "trend_html": str(trend),
    }
    if html is not None:
        summary["report_html"] = str(html)
    if verdict.after_retrain is not None:
        summary["after_retrain"] = verdict.after_retrain
        log.info("after retrain: %s", verdict.after_retrain["verdict"])
    return summary


def _label_report(path: Path, note: str) -> None:
    """Head the saved HTML report with ``note`` (what it was drawn from), above Evidently's own page."""
    import html

    page = path.read_text(encoding="utf-8")
    banner = (
        '<div id="mlp-report-sample" style="padding:12px 16px;margin:0;background:#fff4ce;border-bottom:1px solid '
        f'#e0c060;font:14px sans-serif">{html.escape(note)}</div>'
    )
    body = page.find("<body")
    at = page.find(">", body) + 1 if body >= 0 else 0
    path.write_text(page[:at] + banner + page[at:], encoding="utf-8")


def publish(
    spec: PipelineSpec,
    settings: Settings,
    layout: DataLayout,
    run_id: str,
    served: Served,
    assessment: Assessment,
    verdict: WindowVerdict,
) -> DriftReport:
    """Write everything the window produced, in one place; return the small report XCom carries.

    ``drift.html`` (when the window was judged), the decision-log line and the trend page, ``summary.json``
    (every figure, per-column tables included) and the window's MLflow run.
    """
    from tasks.plan import DecisionLog, render_trend
    from tasks.storage import atomic_path, write_json, write_text

    name = spec.name
    html = layout.drift_html(name, run_id) if assessment.snapshot is not None else None
    if html is not None:
        with atomic_path(html) as tmp:
            assessment.snapshot.save_html(str(tmp))
            if assessment.report_note:
                _label_report(tmp, assessment.report_note)
    decisions = DecisionLog(layout.decision_log(name))
    history = decisions.read()
    decisions.append_record(verdict.record)
    trend = write_text(
        layout.trend_page(name), render_trend(name, [*history, verdict.record], spec.monitoring.drift_share_threshold)
    )
    summary = _summary(spec, served, assessment, verdict, trend, html)
    summary_path = write_json(layout.drift_summary(name, run_id), summary)
    files = [p for p in (html, summary_path, trend) if p is not None]
    url = _keep_on_mlflow(spec, settings, run_id, summary, files, summary_path)
    log.info("drift check %s: %s; %s; report %s", assessment.status, assessment.reason, verdict.decision.reason, html)
    return DriftReport(
        pipeline=name,
        window_end=served.window_end,
        window=served.window,
        status=assessment.status,
        rows=len(served.rows),
        champion_version=summary["champion_version"],
        drift_share=assessment.sections.get("drift_share"),
        drifted_columns=assessment.sections.get("drifted_columns", []),
        violations=verdict.decision.violations,
        retrain=verdict.decision.retrain,
        decision=verdict.decision.reason,
        reason=assessment.reason,
        report_html=str(html) if html is not None else None,
        summary_json=str(summary_path),
        report_url=url,
    )


def check_drift(
    spec: PipelineSpec, settings: Settings, layout: DataLayout, window_end: str, run_id: str
) -> DriftReport:
    """The drift check of the window ending at ``window_end`` (the ``check_drift`` stage).

    Args:
        spec: The pipeline (monitoring thresholds, feature columns, trigger policy).
        settings: Environment settings.
        layout: Data root layout.
        window_end: End of the monitoring window (ISO datetime, the DAG run's data interval end).
        run_id: The Airflow run (output folder, the window's MLflow run).

    Returns:
        ``status`` is ``drift``, ``no_drift``, ``no_champion`` or ``insufficient_data``; ``retrain`` says
        whether the trigger policy requests a retrain.

    Raises:
        MonitoringError: The champion has no reference sample.
    """
    from tasks.plan import DecisionLog, judge_window

    served = collect(spec, settings, layout, window_end)
    assessment = _judge(spec, settings, served)
    champion_version = served.champion.version if served.champion else None
    verdict = judge_window(
        spec.monitoring.trigger,
        DecisionLog(layout.decision_log(spec.name)).read(),
        window_end,
        assessment.violations,
        champion_version,
        assessment.figures,
        assessment.status,
    )
    return publish(spec, settings, layout, run_id, served, assessment, verdict)
