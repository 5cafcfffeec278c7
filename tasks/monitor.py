"""Monitor: compare recently served inputs with the champion's training sample using Evidently.

Writes ``drift.html`` (the Evidently report) and ``summary.json`` under
``monitoring/<pipeline>/<run_key>/`` and says whether a retrain should be requested.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.registry import champion_version
from tasks.settings import Settings
from tasks.spec import PipelineSpec
from tasks.storage import DataLayout, atomic_path, write_json
from tasks.tracking import use_store

log = logging.getLogger(__name__)


class MonitoringError(RuntimeError):
    """The reference sample or prediction log cannot be read."""


def window_days(window_end: str, days: int) -> list[str]:
    """The ``days`` calendar dates before ``window_end`` (exclusive), oldest first.

    A run whose data interval ends at ``2012-06-25T02:00`` checks the days up to 2012-06-24: event time,
    not wall-clock time, so a backfilled or re-run check looks at exactly the same rows.
    """
    last = datetime.fromisoformat(window_end).date() - timedelta(days=1)
    return [(last - timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)]


def served_inputs(log_path: Path, model_name: str, day_column: str | None, days: list[str]) -> pd.DataFrame:
    """Rows the server logged for ``model_name`` whose event date is in ``days``.

    The event date is the inputs' ``day_column`` when callers send one (bike demand's ``dteday``), else
    the date the server logged the row.
    """
    if not log_path.is_file() or not days:
        return pd.DataFrame()
    day = "json_extract(inputs, ?)" if day_column else "substr(logged_at, 1, 10)"
    params = (f"$.{day_column}",) if day_column else ()
    with sqlite3.connect(log_path) as conn:
        rows = conn.execute(
            "SELECT inputs, prediction, model_version FROM predictions WHERE model_name = ?"
            f" AND {day} BETWEEN ? AND ? ORDER BY id",
            (model_name, *params, days[0], days[-1]),
        ).fetchall()
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame.from_records([json.loads(r[0]) for r in rows])
    frame["prediction"] = [r[1] for r in rows]
    frame["model_version"] = [str(r[2]) for r in rows]
    return frame


def attach_labels(spec: PipelineSpec, layout: DataLayout, served: pd.DataFrame) -> pd.DataFrame:
    """Join the true target from landed raw partitions onto served rows (delayed labels), where present."""
    day_col, target = spec.source.partition_column, spec.schema_.target
    keys = [day_col, *spec.source.order_by]
    if not set(keys) <= set(served.columns):  # callers do not send the event keys: labels cannot be joined
        return served.assign(**{target: float("nan")})
    frames = [
        pd.read_parquet(layout.raw_partition(spec.name, d), columns=[*keys, target])
        for d in sorted(served[day_col].astype(str).unique())
        if layout.raw_partition(spec.name, d).is_file()
    ]
    if not frames:
        return served.assign(**{target: float("nan")})
    labels = pd.concat(frames, ignore_index=True).drop_duplicates(keys)
    return served.drop(columns=[target], errors="ignore").merge(labels, on=keys, how="left")


def reference_sample(settings: Settings, run_id: str) -> pd.DataFrame:
    """The training sample logged with a model's run (``reference/reference.parquet``).

    Raises:
        MonitoringError: The run has no reference artifact.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    use_store(settings)
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reference/reference.parquet")
    except (MlflowException, OSError) as exc:
        raise MonitoringError(f"run {run_id} has no reference sample (reference/reference.parquet): {exc}") from exc
    return pd.read_parquet(local)


def _column_results(snapshot: dict[str, Any], p_value: float) -> tuple[float, dict[str, dict[str, Any]]]:
    share = 0.0
    columns: dict[str, dict[str, Any]] = {}
    for metric in snapshot["metrics"]:
        cfg = metric["config"]
        if cfg["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif cfg["type"].endswith("ValueDrift"):
            value = float(metric["value"])
            entry: dict[str, Any] = {"method": cfg.get("method")}
            if math.isnan(value):
                # chi-square of a category constant in both windows (season in June): nothing can have drifted
                entry |= {"score": None, "drifted": False, "note": "constant in reference and current: no test"}
            else:
                # check_drift pins both tests to p-value tests (KS, chi-square): drift is a small p-value
                entry |= {"score": value, "drifted": value < p_value}
            columns[cfg["column"]] = entry
    return share, columns


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numerical: list[str],
    categorical: list[str],
    drift_share: float,
    p_value: float,
) -> tuple[Any, float, dict[str, dict[str, Any]]]:
    """Evidently's data-drift preset over the columns: KS for numeric, chi-square for categorical columns.

    Returns:
        The Evidently snapshot (``save_html``), the share of drifted columns and one result per column.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    columns = numerical + categorical
    report = Report(
        [
            DataDriftPreset(
                columns=columns, drift_share=drift_share, num_method="ks", cat_method="chisquare", threshold=p_value
            )
        ]
    )
    snapshot = report.run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    share, per_column = _column_results(snapshot.dict(), p_value)
    return snapshot, share, per_column


def _performance_decay(
    spec: PipelineSpec, settings: Settings, run_id: str, summary: dict[str, Any], labelled_rows: int
) -> dict[str, Any] | None:
    """The champion's primary metric on labelled served rows against its own holdout figure."""
    limit = spec.monitoring.max_performance_decay
    on_labelled = summary.get("champion_on_labelled") or {}
    name = spec.gate.primary_metric
    if limit is None or labelled_rows < spec.monitoring.min_rows or on_labelled.get(name) is None:
        return None
    from tasks.metrics import improvement
    from tasks.tracking import client

    holdout = client(settings).get_run(run_id).data.metrics.get(f"holdout_{name}")
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


def _decide(spec: PipelineSpec, layout: DataLayout, summary: dict[str, Any], violations: list[str]) -> None:
    """Apply the trigger policy to this window, log the decision, and report on the last retrain's effect."""
    from tasks.monitor_policy import DecisionLog, decide, render_trend, requests_before

    decisions = DecisionLog(layout.root / "monitoring" / spec.name / "decisions.jsonl")
    history = decisions.read()
    champion = summary.get("champion_version")
    decision = decide(spec.monitoring.trigger, history, summary["window_end"], violations, champion)
    figures = {k: summary[k] for k in ("drift_share", "performance_decay") if k in summary}
    record = decision.to_dict() | {"figures": figures, "status": summary.get("status")}
    requested = requests_before(history, summary["window_end"])
    if requested and requested[-1].get("champion_version") != champion and champion is not None:
        then = requested[-1]
        before, after = then.get("figures", {}), figures
        closed = not violations
        summary["after_retrain"] = {
            "requested_for_window": then["window_end"],
            "champion_then": then.get("champion_version"),
            "champion_now": champion,
            "violations_then": then["violations"],
            "violations_now": violations,
            "drift_share": {"then": before.get("drift_share"), "now": after.get("drift_share")},
            "performance_decay": {
                "then": (before.get("performance_decay") or {}).get("relative_worsening"),
                "now": (after.get("performance_decay") or {}).get("relative_worsening"),
            },
            "gap_closed": closed,
            "verdict": (
                f"champion v{champion} (retrained after the window ending {then['window_end']}) "
                + ("closed the gap: no violation now" if closed else f"did not close it: still {', '.join(violations)}")
            ),
        }
        log.info("after retrain: %s", summary["after_retrain"]["verdict"])
    decisions.append_record(record)
    trend = decisions.path.with_name("trend.html")
    with atomic_path(trend) as tmp:
        tmp.write_text(render_trend(spec.name, [*history, record], spec.monitoring.drift_share_threshold))
    summary |= {
        "violations": violations,
        "retrain": decision.retrain,
        "decision": decision.reason,
        "trend_html": str(trend),
    }
    log.info("trigger policy: %s", decision.reason)


def check_drift(
    spec: PipelineSpec, settings: Settings, window_end: str, run_key: str, layout: DataLayout | None = None
) -> dict[str, Any]:
    """Run the drift check for the window ending at ``window_end``.

    Args:
        spec: The pipeline (monitoring thresholds, feature columns).
        settings: Environment settings.
        window_end: End of the monitoring window (ISO datetime, the DAG run's data interval end).
        run_key: Output folder key.
        layout: Data root layout (defaults to the settings' data root).

    Returns:
        The summary also written to ``summary.json``: ``status`` is ``drift``, ``no_drift``, ``no_champion``
        or ``insufficient_data``; ``retrain`` says whether to request a retrain.
    """
    layout = layout or DataLayout(settings.data_root)
    mon = spec.monitoring
    days = window_days(window_end, mon.window_days)
    out = layout.monitoring_dir(spec.name, run_key)
    summary: dict[str, Any] = {
        "pipeline": spec.name,
        "window_days": days,
        "window_end": window_end,
        "drift_share_threshold": mon.drift_share_threshold,
        "retrain": False,
    }
    champion = champion_version(settings, spec.registered_model_name)
    day_column = spec.source.partition_column if spec.source.partition_column in spec.schema_.input_columns else None
    current = served_inputs(layout.prediction_log, spec.registered_model_name, day_column, days)
    summary |= {"rows": len(current), "champion_version": champion.version if champion else None}
    if champion is None or len(current) < mon.min_rows:
        summary["status"] = "no_champion" if champion is None else "insufficient_data"
        summary["reason"] = (
            "no champion to compare against"
            if champion is None
            else f"{len(current)} served rows in the window, fewer than min_rows={mon.min_rows}"
        )
        _decide(spec, layout, summary, [])
        write_json(out / "summary.json", summary)
        log.info("drift check skipped: %s", summary["reason"])
        return summary
    reference = reference_sample(settings, champion.run_id)
    categorical = list(spec.features.categorical)
    numerical = [c for c in spec.features.source_columns if c not in categorical]
    target = spec.schema_.target
    current = attach_labels(spec, layout, current)
    labelled = current.dropna(subset=[target])
    if len(labelled):
        from tasks.evaluate import target_values
        from tasks.metrics import score_all

        y = target_values(spec, labelled[target])
        summary["champion_on_labelled"] = score_all(spec.metric_names, y, labelled["prediction"].to_numpy())
        summary["labelled_rows"] = len(labelled)
    if mon.include_target and len(labelled) >= mon.min_rows:
        # demand itself shifting is the strongest retrain signal once its labels have landed
        numerical.append(target)
        current = labelled
    snapshot, share, per_column = drift_report(
        reference, current, numerical, categorical, mon.drift_share_threshold, mon.column_p_value
    )
    html = out / "drift.html"
    with atomic_path(html) as tmp:
        snapshot.save_html(str(tmp))
    drifted = sorted(c for c, r in per_column.items() if r["drifted"])
    summary |= {
        "status": "drift" if share >= mon.drift_share_threshold else "no_drift",
        "reference_rows": len(reference),
        "drift_share": share,
        "drifted_columns": drifted,
        "target_drifted": bool(per_column.get(target, {}).get("drifted", False)),
        "columns": per_column,
        "report_html": str(html),
        "served_versions": sorted(current["model_version"].astype(str).unique()),
    }
    summary["reason"] = (
        f"{len(drifted)}/{len(per_column)} columns drifted (share {share:.2f}, threshold {mon.drift_share_threshold})"
    )
    violations = ["data_drift"] if summary["status"] == "drift" else []
    decay = _performance_decay(spec, settings, champion.run_id, summary, len(labelled))
    if decay is not None:
        summary["performance_decay"] = decay
        if decay["violated"]:
            violations.append("performance_decay")
    _decide(spec, layout, summary, violations)
    write_json(out / "summary.json", summary)
    log.info("drift check %s: %s; report %s", summary["status"], summary["reason"], html)
    return summary
