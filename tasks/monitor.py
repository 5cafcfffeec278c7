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


PREDICTION = "prediction"
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


def input_quality(
    spec: PipelineSpec, reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str], categorical: list[str]
) -> dict[str, Any]:
    """Data quality of served inputs against the reference sample: missing values, stuck columns, range.

    Returns:
        ``{"columns": {column: figures}, "breaches": [one sentence per breach]}``.
    """
    rules = spec.monitoring.quality
    columns: dict[str, dict[str, Any]] = {}
    breaches: list[str] = []
    for col in [*numerical, *categorical]:
        if col not in current.columns:
            breaches.append(f"{col}: absent from every served row")
            columns[col] = {"absent": True}
            continue
        ref, cur = reference[col], current[col]
        miss_ref, miss_cur = float(ref.isna().mean()), float(cur.isna().mean())
        entry: dict[str, Any] = {"missing_reference": miss_ref, "missing_served": miss_cur}
        if miss_cur - miss_ref > rules.max_missing_increase:
            breaches.append(f"{col}: {miss_cur:.1%} missing in served rows vs {miss_ref:.1%} in the reference")
        distinct_ref, distinct_cur = ref.nunique(), cur.nunique()
        # a measurement stuck at one value (a client default); calendar-like columns are legitimately
        # constant over a short window, so only columns with many reference values qualify
        if rules.flag_constant and distinct_cur <= 1 and distinct_ref >= 10 and len(cur) > 1:
            first: Any = cur.dropna().iloc[0] if cur.notna().any() else None
            value = first.item() if hasattr(first, "item") else first  # numpy scalar -> plain, text stays text
            breaches.append(
                f"{col}: constant ({value!r}) in all {len(cur)} served rows, {distinct_ref} values in the reference"
            )
            entry["constant"] = True
        if col in numerical:
            values = pd.to_numeric(cur, errors="coerce").dropna()
            lo, hi = float(ref.min()), float(ref.max())
            outside = float(((values < lo) | (values > hi)).mean()) if len(values) else 0.0
            entry |= {"reference_range": [lo, hi], "out_of_range": outside}
            limit = rules.max_out_of_range_share
            if limit is not None and outside > limit:
                breaches.append(f"{col}: {outside:.1%} of served values outside the reference range [{lo:g}, {hi:g}]")
        columns[col] = entry
    return {"columns": columns, "breaches": breaches}


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


def _publish(spec: PipelineSpec, settings: Settings, run_key: str, summary: dict[str, Any], out: Path) -> None:
    """Write ``summary.json`` and keep the window's reports on an MLflow run (experiment ``<p>-monitoring``).

    One MLflow run per monitoring run key: a re-run of the same Airflow run replaces its artifacts rather
    than adding a second record. ``summary["report_url"]`` is where a person opens the report (the
    ``check_drift`` task's *Drift report* link). The files under the data root are written first and stay
    whatever happens to MLflow: a tracking-store outage costs the link, not the report.
    """
    import mlflow

    from tasks.tracking import artifact_url, start_tracking

    try:
        experiment_id = start_tracking(settings, f"{spec.name}-monitoring")
        found = mlflow.search_runs(
            [experiment_id], filter_string=f"tags.run_key = '{run_key}'", max_results=1, output_format="list"
        )
        run_id = found[0].info.run_id if found else None
        with mlflow.start_run(run_id=run_id, run_name=f"window-{summary['window_end'][:10]}") as run:
            page = "drift.html" if "report_html" in summary else "summary.json"
            summary["report_url"] = artifact_url(settings, run.info.run_id, page, experiment_id)
            write_json(out / "summary.json", summary)
            mlflow.set_tags(
                {
                    "pipeline": spec.name,
                    "run_key": run_key,
                    "window_end": summary["window_end"],
                    "status": summary["status"],
                    "champion_version": str(summary.get("champion_version")),
                    "violations": ",".join(summary.get("violations", [])) or "none",
                    "retrain": str(summary.get("retrain")),
                }
            )
            figures = {"rows": summary.get("rows", 0), "drift_share": summary.get("drift_share")}
            figures["prediction_drift"] = (summary.get("prediction_drift") or {}).get("score")
            figures["performance_decay"] = (summary.get("performance_decay") or {}).get("relative_worsening")
            mlflow.log_metrics({k: float(v) for k, v in figures.items() if v is not None})
            for name in ("drift.html", "summary.json"):
                if (out / name).is_file():
                    mlflow.log_artifact(str(out / name))
            if summary.get("trend_html"):
                mlflow.log_artifact(summary["trend_html"])
    except Exception as exc:  # noqa: BLE001 - the reports are on disk; the MLflow copy is a convenience
        log.warning("could not keep the monitoring reports on MLflow (%s); they are under %s", exc, out)
        summary.pop("report_url", None)
        write_json(out / "summary.json", summary)


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
        _publish(spec, settings, run_key, summary, out)
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
    compared = list(numerical)
    if mon.include_target and len(labelled) >= mon.min_rows:
        # demand itself shifting is the strongest retrain signal once its labels have landed
        compared.append(target)
        current = labelled
    snapshot, share, per_column = drift_report(
        reference,
        current,
        compared,
        categorical,
        mon.drift_share_threshold,
        mon.column_p_value,
        mon.prediction_drift_threshold,
        summary=True,
    )
    html = out / "drift.html"
    with atomic_path(html) as tmp:
        snapshot.save_html(str(tmp))
    inputs = {c: r for c, r in per_column.items() if c != PREDICTION}
    drifted = sorted(c for c, r in inputs.items() if r["drifted"])
    summary |= {
        "status": "drift" if share >= mon.drift_share_threshold else "no_drift",
        "reference_rows": len(reference),
        "drift_share": share,
        "drifted_columns": drifted,
        "target_drifted": bool(per_column.get(target, {}).get("drifted", False)),
        "columns": inputs,
        "report_html": str(html),
        "served_versions": sorted(current["model_version"].astype(str).unique()),
    }
    summary["reason"] = (
        f"{len(drifted)}/{len(inputs)} columns drifted (share {share:.2f}, threshold {mon.drift_share_threshold})"
    )
    violations = ["data_drift"] if summary["status"] == "drift" else []
    if PREDICTION in per_column:
        summary["prediction_drift"] = per_column[PREDICTION] | {"reference_rows": len(reference)}
        if mon.prediction_drift_threshold is not None and per_column[PREDICTION]["drifted"]:
            violations.append("prediction_drift")
    else:
        summary["prediction_drift"] = {
            "note": "the champion's reference sample has no predictions (trained before "
            "prediction drift was tracked): not compared"
        }
    quality = input_quality(spec, reference, current, numerical, categorical)
    summary["input_quality"] = quality
    if quality["breaches"]:
        violations.append("data_quality")
        log.warning("served-input quality: %s", "; ".join(quality["breaches"]))
    decay = _performance_decay(spec, settings, champion.run_id, summary, len(labelled))
    if decay is not None:
        summary["performance_decay"] = decay
        if decay["violated"]:
            violations.append("performance_decay")
    _decide(spec, layout, summary, violations)
    _publish(spec, settings, run_key, summary, out)
    log.info("drift check %s: %s; report %s", summary["status"], summary["reason"], html)
    return summary
