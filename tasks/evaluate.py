"""Evaluate on the time-based holdout, and the promotion gate (a pure function with explicit modes).

:func:`evaluate_candidate` scores the candidate, the baseline and the *current champion* on the same holdout
rows and keeps every row's prediction (``predictions.parquet``), so the gate can bootstrap the comparison
and slice it by the spec's sensitive columns. :func:`decide_promotion` turns those arrays into one verdict
per check; it touches no store, so every edge case is a unit test.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tasks import metrics as m
from tasks.errors import PermanentError
from tasks.settings import Settings
from tasks.spec import GateSpec, PipelineSpec
from tasks.storage import DataLayout, atomic_path, write_json
from tasks.tracking import start_tracking

log = logging.getLogger(__name__)

SMOKE_ROWS = 200
SMOKE_ARTIFACT = "smoke/holdout_sample.parquet"
EXPECTED_COLUMN = "__expected_prediction__"


class GateFailed(PermanentError, RuntimeError):
    """The candidate did not pass the gate in ``enabled`` mode; the message lists every failed check.

    ``result`` is the gate's full result (decision, model card paths and URL) for callers that link it.
    """

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        """Keep the gate's result beside the message."""
        super().__init__(message)
        self.result = result


class EvaluationError(RuntimeError):
    """The holdout is empty or the model cannot score it."""


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """RMSE, MAE and R2 of one prediction vector, with the input checked (a convenience over :mod:`tasks.metrics`).

    Raises:
        EvaluationError: The arrays are empty or differ in length.
    """
    y_true = np.asarray(y_true, dtype="float64")
    y_pred = np.asarray(y_pred, dtype="float64")
    if y_true.size == 0 or y_true.shape != y_pred.shape:
        raise EvaluationError(f"cannot score {y_pred.shape} predictions against {y_true.shape} targets")
    r2 = m.r2(y_true, y_pred)
    return {"rmse": float(m.rmse(y_true, y_pred)), "mae": float(m.mae(y_true, y_pred)), "r2": float(np.nan_to_num(r2))}


def target_values(spec: PipelineSpec, column: pd.Series) -> np.ndarray:
    """The target as numbers: as-is for regression, 1.0 for the positive label (else 0.0) for classification."""
    if spec.task == "classification":
        return (column.astype(str) == str(spec.schema_.positive_label)).to_numpy(dtype="float64")
    return pd.to_numeric(column).to_numpy(dtype="float64")


@dataclass(frozen=True)
class Check:
    """One gate check with its own verdict and a reason a person can read."""

    name: str
    passed: bool
    observed: float | None
    threshold: float | None
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdicts and whether promotion may proceed in the configured mode."""

    mode: Literal["disabled", "dry_run", "enabled"]
    passed: bool
    promote: bool
    primary_metric: str
    champion_version: str | None
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    slices: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for XCom and the run's ``gate.json``."""
        return asdict(self)

    def summary(self) -> str:
        """One line per check, failed ones first."""
        ordered = sorted(self.checks, key=lambda c: c.passed)
        return "\n".join(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.reason}" for c in ordered)


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4g}"


def _threshold_checks(gate: GateSpec, candidate: dict[str, float | None]) -> list[Check]:
    checks = []
    for name, bound in gate.thresholds.items():
        value = candidate.get(name)
        for side, limit in (("min", bound.min), ("max", bound.max)):
            if limit is None:
                continue
            ok = value is not None and (value >= limit if side == "min" else value <= limit)
            op = (">=" if ok else "<") if side == "min" else ("<=" if ok else ">")
            checks.append(Check(f"{side}_{name}", ok, value, limit, f"{name} {_fmt(value)} {op} {side} {limit:.4g}"))
    return checks


def _baseline_check(gate: GateSpec, candidate: dict[str, float | None], baseline: dict[str, float | None]) -> Check:
    name, need = gate.primary_metric, gate.baseline_min_improvement
    cand, base = candidate.get(name), baseline.get(name)
    if cand is None or base is None:
        return Check("beats_baseline", False, None, need, f"{name} is undefined on this holdout: cannot compare")
    gain = float(m.improvement(name, cand, base))
    ok = gain >= need and (gain > 0 or need < 0)
    return Check(
        "beats_baseline",
        ok,
        gain,
        need,
        f"{name} {cand:.4g} vs baseline {base:.4g}: {gain:+.1%} ({'>=' if ok else '<'} required {need:.0%})",
    )


def _bootstrap_gain(
    name: str, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, samples: int, seed: int, threshold: float
) -> np.ndarray:
    """Relative improvement of challenger over champion on ``samples`` paired resamples of the holdout rows."""
    gains = []
    for start in range(0, samples, 250):  # chunks bound memory: 250 x n weights at a time
        w = m.poisson_weights(len(y), min(250, samples - start), seed + start)
        a = m.score(name, y, challenger, w, threshold)
        b = m.score(name, y, champion, w, threshold)
        gains.append(m.improvement(name, a, b))
    out = np.concatenate(gains)
    return out[~np.isnan(out)]


def _champion_check(
    gate: GateSpec,
    y: np.ndarray,
    predictions: dict[str, np.ndarray],
    champion_version: str | None,
    champion_error: str | None,
    seed: int,
) -> Check:
    rule = gate.champion
    required = rule.required_improvement
    need = required if required is not None else -float(rule.max_regression or 0.0)
    if champion_version is None:
        return Check(
            "beats_champion", True, None, need, "no champion yet: first model of this pipeline (baseline check applies)"
        )
    if "champion" not in predictions:
        why = champion_error or "no predictions"
        return Check(
            "beats_champion", False, None, need, f"champion v{champion_version} could not score this holdout: {why}"
        )
    name = gate.primary_metric
    point = float(
        m.improvement(
            name,
            m.score(name, y, predictions["candidate"], threshold=gate.decision_threshold),
            m.score(name, y, predictions["champion"], threshold=gate.decision_threshold),
        )
    )
    gains = _bootstrap_gain(
        name,
        y,
        predictions["candidate"],
        predictions["champion"],
        rule.bootstrap_samples,
        seed,
        gate.decision_threshold,
    )
    if gains.size == 0 or np.isnan(point):
        return Check("beats_champion", False, None, need, f"{name} is undefined on this holdout: cannot compare")
    alpha = (1 - rule.confidence) / 2
    low, high = (float(v) for v in np.quantile(gains, [alpha, 1 - alpha]))
    ci = f"{rule.confidence:.0%} CI [{low:+.2%}, {high:+.2%}] over {gains.size} bootstrap resamples"
    details = {"ci_low": low, "ci_high": high, "point": point, "samples": int(gains.size), "champion": champion_version}
    if required is not None:
        tied = low == 0 and high == 0
        ok = low >= required and not tied and point > 0
        if tied:
            reason = f"tied with champion v{champion_version} on {name} ({ci}): a tie never promotes"
        else:
            verdict = "reaches" if ok else "does not reach"
            reason = (
                f"{name} {point:+.2%} vs champion v{champion_version}; {ci}: lower bound {verdict} "
                f"the required {required:+.2%}"
            )
    else:
        ok = low >= need
        verdict = "within" if ok else "beyond"
        reason = (
            f"{name} {point:+.2%} vs champion v{champion_version}; {ci}: lower bound {verdict} "
            f"the allowed regression of {rule.max_regression:.2%}"
        )
    return Check("beats_champion", ok, point, need, reason, details)


def _slice_checks(
    gate: GateSpec, y: np.ndarray, candidate: np.ndarray, groups: dict[str, np.ndarray]
) -> tuple[list[Check], dict[str, dict[str, dict[str, Any]]]]:
    if gate.slices is None:
        return [], {}
    rule = gate.slices
    name = rule.metric or gate.primary_metric
    checks, table = [], {}
    for column, values in groups.items():
        per_group: dict[str, dict[str, Any]] = {}
        for group in sorted(pd.unique(values.astype(str))):
            mask = values.astype(str) == group
            rows = int(mask.sum())
            value = (
                float(m.score(name, y[mask], candidate[mask], threshold=gate.decision_threshold)) if rows else np.nan
            )
            ok = rows >= rule.min_rows and not np.isnan(value)
            note = "" if ok else (f"fewer than {rule.min_rows} rows" if rows < rule.min_rows else f"{name} undefined")
            per_group[group] = {"rows": rows, name: None if np.isnan(value) else value, "judged": ok, "note": note}
        table[column] = per_group
        judged = {g: r[name] for g, r in per_group.items() if r["judged"]}
        skipped = sorted(g for g, r in per_group.items() if not r["judged"])
        skip_note = f"; not judged: {', '.join(skipped)}" if skipped else ""
        if len(judged) < 2:
            reason = (
                f"fewer than 2 groups of {column} with >= {rule.min_rows} rows and a defined {name}: "
                f"no gap to judge{skip_note}"
            )
            checks.append(Check(f"slice_gap_{column}", True, None, rule.max_gap, reason, {"groups": per_group}))
            continue
        best, worst = max(judged, key=lambda g: judged[g]), min(judged, key=lambda g: judged[g])
        gap = float(judged[best] - judged[worst])
        ok = gap <= rule.max_gap
        reason = (
            f"{name} ranges from {judged[worst]:.4g} ({column}={worst}) to {judged[best]:.4g} ({column}={best}): "
            f"gap {gap:.4g} {'<=' if ok else '>'} max {rule.max_gap:.4g}{skip_note}"
        )
        checks.append(Check(f"slice_gap_{column}", ok, gap, rule.max_gap, reason, {"groups": per_group}))
    return checks, table


def decide_promotion(
    metric_names: tuple[str, ...],
    gate: GateSpec,
    y: np.ndarray,
    predictions: dict[str, np.ndarray],
    groups: dict[str, np.ndarray] | None = None,
    champion_version: str | None = None,
    champion_error: str | None = None,
    seed: int = 0,
) -> GateDecision:
    """Judge a candidate on the holdout rows: thresholds, baseline, champion (bootstrap CI), slices.

    Args:
        metric_names: The task's metrics (regression or classification).
        gate: The spec's gate.
        y: Holdout targets (0/1 for classification).
        predictions: Per-row predictions by role: ``candidate`` and ``baseline``, and ``champion`` when the
            current champion scored the same rows.
        groups: Sensitive column -> each row's group, for the slice checks.
        champion_version: The champion when evaluation ran (None: this is the pipeline's first model).
        champion_error: Why the champion could not score the holdout, if it could not.
        seed: Seed of the bootstrap, so a re-run reproduces the interval.

    Returns:
        The decision. ``promote`` is the verdict in ``enabled`` mode, always True when ``disabled`` and
        always False in ``dry_run`` (verdicts are computed and recorded in every mode).
    """
    y = np.asarray(y, dtype="float64")
    if y.size == 0:
        raise EvaluationError("the holdout has no rows: nothing to judge")
    scored = {
        role: m.score_all(metric_names, y, np.asarray(p, dtype="float64"), gate.decision_threshold)
        for role, p in predictions.items()
    }
    checks = _threshold_checks(gate, scored["candidate"])
    checks.append(_baseline_check(gate, scored["candidate"], scored["baseline"]))
    checks.append(_champion_check(gate, y, predictions, champion_version, champion_error, seed))
    slice_checks, slices = _slice_checks(gate, y, np.asarray(predictions["candidate"], dtype="float64"), groups or {})
    checks += slice_checks
    passed = all(c.passed for c in checks)
    promote = {"enabled": passed, "disabled": True, "dry_run": False}[gate.mode]
    return GateDecision(
        mode=gate.mode,
        passed=passed,
        promote=promote,
        primary_metric=gate.primary_metric,
        champion_version=champion_version,
        checks=checks,
        metrics=scored,
        slices=slices,
    )


def _champion_predictions(
    settings: Settings, spec: PipelineSpec, X: pd.DataFrame
) -> tuple[str | None, Any, str | None]:  # noqa: N803
    """The current champion's version and its predictions on ``X`` (or why it could not predict)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from tasks.registry import champion_version

    champion = champion_version(settings, spec.registered_model_name)
    if champion is None:
        return None, None, None
    try:
        model = mlflow.pyfunc.load_model(f"models:/{spec.registered_model_name}/{champion.version}")
        return champion.version, np.asarray(model.predict(X), dtype="float64"), None
    except (MlflowException, ValueError, KeyError, TypeError) as exc:
        log.warning("champion v%s cannot score this holdout: %s", champion.version, exc)
        return champion.version, None, f"{type(exc).__name__}: {exc}"


def evaluate_candidate(
    spec: PipelineSpec, settings: Settings, trained: dict[str, Any], holdout_uri: str, run_key: str = "adhoc"
) -> dict[str, Any]:
    """Score candidate, baseline and the current champion on the holdout, as the server would load them.

    Keeps every row's prediction in ``runs/<p>/<run>/predictions.parquet`` (with the sensitive columns) for
    the gate, and logs a sample of holdout rows with the candidate's offline predictions to its run
    (``smoke/holdout_sample.parquet``): the model server's deploy smoke test must reproduce them.

    Returns:
        ``{"candidate", "baseline", "champion"}`` metric dicts (champion None before the first model),
        ``champion_version``, ``champion_error``, ``holdout_rows`` and ``predictions_uri``.

    Raises:
        EvaluationError: The holdout is empty.
    """
    import mlflow

    holdout = pd.read_parquet(holdout_uri)
    if holdout.empty:
        raise EvaluationError(f"holdout {holdout_uri} is empty")
    start_tracking(settings, spec.name)
    X = holdout[spec.schema_.input_columns]  # noqa: N806 - ML convention
    y = target_values(spec, holdout[spec.schema_.target])
    preds = {
        role: np.asarray(mlflow.pyfunc.load_model(trained[key]).predict(X), dtype="float64")
        for role, key in (("candidate", "model_uri"), ("baseline", "baseline_model_uri"))
    }
    champion, champion_preds, champion_error = _champion_predictions(settings, spec, X)
    if champion_preds is not None:
        preds["champion"] = champion_preds
    threshold = spec.gate.decision_threshold
    scores = {role: m.score_all(spec.metric_names, y, p, threshold) for role, p in preds.items()}

    frame = pd.DataFrame({"y": y, **preds})
    for col in spec.schema_.sensitive:
        frame[f"group:{col}"] = holdout[col].astype(str).to_numpy()
    out = DataLayout(settings.data_root).run_dir(spec.name, run_key)
    predictions_uri = out / "predictions.parquet"
    with atomic_path(predictions_uri) as tmp:
        frame.to_parquet(tmp, index=False)
    smoke = X.head(SMOKE_ROWS).assign(**{EXPECTED_COLUMN: preds["candidate"][:SMOKE_ROWS]})
    smoke_path = out / Path(SMOKE_ARTIFACT).name
    with atomic_path(smoke_path) as tmp:
        smoke.to_parquet(tmp, index=False)

    with mlflow.start_run(run_id=trained["run_id"]):
        for role, prefix in (
            ("candidate", "holdout_"),
            ("baseline", "baseline_holdout_"),
            ("champion", "champion_holdout_"),
        ):
            mlflow.log_metrics({f"{prefix}{k}": v for k, v in scores.get(role, {}).items() if v is not None})
        mlflow.log_artifact(str(smoke_path), artifact_path=str(Path(SMOKE_ARTIFACT).parent))
    log.info(
        "holdout (%d rows): candidate %s, baseline %s, champion v%s %s",
        len(holdout),
        scores["candidate"],
        scores["baseline"],
        champion,
        scores.get("champion"),
    )
    return {
        "candidate": scores["candidate"],
        "baseline": scores["baseline"],
        "champion": scores.get("champion"),
        "champion_version": champion,
        "champion_error": champion_error,
        "holdout_rows": len(holdout),
        "predictions_uri": str(predictions_uri),
    }


def gate_from_predictions(spec: PipelineSpec, evaluation: dict[str, Any]) -> GateDecision:
    """Run :func:`decide_promotion` on the rows :func:`evaluate_candidate` kept."""
    frame = pd.read_parquet(evaluation["predictions_uri"])
    roles = [r for r in ("candidate", "baseline", "champion") if r in frame.columns]
    groups = {c: frame[f"group:{c}"].to_numpy() for c in spec.schema_.sensitive if f"group:{c}" in frame.columns}
    return decide_promotion(
        spec.metric_names,
        spec.gate,
        frame["y"].to_numpy(),
        {r: frame[r].to_numpy() for r in roles},
        groups,
        evaluation.get("champion_version"),
        evaluation.get("champion_error"),
        seed=spec.training.seed,
    )


def record_decision(
    settings: Settings,
    pipeline: str,
    run_id: str,
    decision: GateDecision,
    report_path: Any,
    extra_artifacts: dict[str, list[str]] | None = None,
) -> None:
    """Keep the decision beside the run's outputs and on the MLflow run, in one visit to the run.

    Tags (mode, verdict, one per check), ``gate.json``, and ``extra_artifacts`` (artifact folder -> files,
    e.g. the model card).
    """
    import mlflow

    write_json(report_path, decision.to_dict())
    start_tracking(settings, pipeline)
    with mlflow.start_run(run_id=run_id):
        tags = {"gate.mode": decision.mode, "gate.passed": str(decision.passed), "gate.promote": str(decision.promote)}
        tags |= {f"gate.check.{c.name}": "pass" if c.passed else "fail" for c in decision.checks}
        mlflow.set_tags(tags)
        mlflow.log_artifact(str(report_path))
        for folder, files in (extra_artifacts or {}).items():
            for path in files:
                mlflow.log_artifact(path, artifact_path=folder)
