"""The promotion gate: checks, the decision (a pure function with explicit modes), and recording it.

:func:`decide_promotion` turns the holdout rows' predictions (candidate, baseline, champion) into one
verdict per check: absolute thresholds, the baseline, the champion with a bootstrap confidence interval,
and the gap between groups of each sensitive column. It touches no store, so every edge case is a unit test.
:func:`gate_model` (the ``gate_model`` stage) runs it on what evaluation kept, writes the model card,
records the decision on the candidate's run (tags, ``gate.json``, the card) and, when the gate rejects the
candidate in ``enabled`` mode, appends ``rejected`` to the promotion ledger and raises
:class:`GateFailedError`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tasks import metrics as m
from tasks.errors import PermanentError
from tasks.evaluate import EvaluationError
from tasks.names import (
    MODEL_CARD_DIR,
    MODEL_CARD_HTML,
    TAG_GATE_MODE,
    TAG_GATE_PASSED,
    TAG_GATE_PROMOTE,
    gate_check_tag,
)
from tasks.results import Check, Datasets, Evaluation, Gated, GateDecision, ModelCardFiles, Trained
from tasks.spec import GateSpec

if TYPE_CHECKING:
    from tasks.settings import Settings
    from tasks.spec import PipelineSpec
    from tasks.storage import DataLayout

log = logging.getLogger(__name__)


class GateFailedError(PermanentError, RuntimeError):
    """The candidate did not pass the gate in ``enabled`` mode; the message lists every failed check.

    ``gated`` is the gate's full result (decision, model card paths and URL) for callers that link it.
    """

    def __init__(self, message: str, gated: Gated) -> None:
        """Keep the gate's result beside the message."""
        super().__init__(message)
        self.gated = gated


def _check(
    name: str,
    passed: Any,
    observed: Any,
    threshold: float | None,
    reason: str,
    details: dict[str, Any] | None = None,
) -> Check:
    """A :class:`Check` from numpy or plain values (numpy booleans and floats become plain ones)."""
    return Check(
        name=name,
        passed=bool(passed),
        observed=None if observed is None else float(observed),
        threshold=threshold,
        reason=reason,
        details=details or {},
    )


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
            checks.append(_check(f"{side}_{name}", ok, value, limit, f"{name} {_fmt(value)} {op} {side} {limit:.4g}"))
    return checks


def _baseline_check(gate: GateSpec, candidate: dict[str, float | None], baseline: dict[str, float | None]) -> Check:
    name, need = gate.primary_metric, gate.baseline_min_improvement
    cand, base = candidate.get(name), baseline.get(name)
    if cand is None or base is None:
        return _check("beats_baseline", False, None, need, f"{name} is undefined on this holdout: cannot compare")
    gain = float(m.improvement(name, cand, base))
    ok = gain >= need and (gain > 0 or need < 0)
    return _check(
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
        return _check(
            "beats_champion", True, None, need, "no champion yet: first model of this pipeline (baseline check applies)"
        )
    if "champion" not in predictions:
        why = champion_error or "no predictions"
        return _check(
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
        return _check("beats_champion", False, None, need, f"{name} is undefined on this holdout: cannot compare")
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
    return _check("beats_champion", ok, point, need, reason, details)


def _slice_checks(
    gate: GateSpec, y: np.ndarray, candidate: np.ndarray, groups: dict[str, np.ndarray]
) -> tuple[list[Check], dict[str, dict[str, dict[str, Any]]]]:
    if gate.slices is None:
        return [], {}
    rule = gate.slices
    name = rule.metric or gate.primary_metric
    checks, table = [], {}
    for column, values in groups.items():
        own = rule.rule(column)
        min_rows, max_gap = own.min_rows or rule.min_rows, own.max_gap or rule.max_gap
        per_group: dict[str, dict[str, Any]] = {}
        for group in sorted(pd.unique(values.astype(str))):
            mask = values.astype(str) == group
            rows = int(mask.sum())
            value = (
                float(m.score(name, y[mask], candidate[mask], threshold=gate.decision_threshold)) if rows else np.nan
            )
            ok = rows >= min_rows and not np.isnan(value)
            note = "" if ok else (f"fewer than {min_rows} rows" if rows < min_rows else f"{name} undefined")
            per_group[group] = {"rows": rows, name: None if np.isnan(value) else value, "judged": ok, "note": note}
        table[column] = per_group
        judged = {g: r[name] for g, r in per_group.items() if r["judged"]}
        skipped = sorted(g for g, r in per_group.items() if not r["judged"])
        skip_note = f"; not judged: {', '.join(skipped)}" if skipped else ""
        if len(judged) < 2:
            reason = (
                f"fewer than 2 groups of {column} with >= {min_rows} rows and a defined {name}: "
                f"no gap to judge{skip_note}"
            )
            checks.append(_check(f"slice_gap_{column}", True, None, max_gap, reason, {"groups": per_group}))
            continue
        best, worst = max(judged, key=lambda g: judged[g]), min(judged, key=lambda g: judged[g])
        gap = float(judged[best] - judged[worst])
        ok = gap <= max_gap
        reason = (
            f"{name} ranges from {judged[worst]:.4g} ({column}={worst}) to {judged[best]:.4g} ({column}={best}): "
            f"gap {gap:.4g} {'<=' if ok else '>'} max {max_gap:.4g}{skip_note}"
        )
        checks.append(_check(f"slice_gap_{column}", ok, gap, max_gap, reason, {"groups": per_group}))
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


def gate_from_predictions(spec: PipelineSpec, evaluation: Evaluation) -> GateDecision:
    """Run :func:`decide_promotion` on the holdout rows evaluation kept (``predictions.parquet``).

    Raises:
        EvaluationError: The predictions file is missing (evaluation of another run, or a cleaned data root).
    """
    path = Path(evaluation.predictions_uri)
    if not path.is_file():
        raise EvaluationError(f"evaluation's holdout predictions {path} are missing: re-run evaluate_model")
    frame = pd.read_parquet(path)
    roles = [r for r in ("candidate", "baseline", "champion") if r in frame.columns]
    groups = {c: frame[f"group:{c}"].to_numpy() for c in spec.schema_.sensitive if f"group:{c}" in frame.columns}
    return decide_promotion(
        spec.metric_names,
        spec.gate,
        frame["y"].to_numpy(),
        {r: frame[r].to_numpy() for r in roles},
        groups,
        evaluation.champion_version,
        evaluation.champion_error,
        seed=spec.training.seed,
    )


def record_decision(
    settings: Settings, pipeline: str, mlflow_run_id: str, decision: GateDecision, report: Path, card: ModelCardFiles
) -> None:
    """Keep the decision beside the run's outputs and on the candidate's MLflow run, in one visit to the run.

    Tags (mode, verdict, one per check), ``gate.json`` and the model card (``model_card/``).
    """
    import mlflow

    from tasks.storage import write_json
    from tasks.tracking import start_tracking

    write_json(report, decision.xcom())
    start_tracking(settings, pipeline)
    with mlflow.start_run(run_id=mlflow_run_id):
        tags = {
            TAG_GATE_MODE: decision.mode,
            TAG_GATE_PASSED: str(decision.passed),
            TAG_GATE_PROMOTE: str(decision.promote),
        }
        tags |= {gate_check_tag(c.name): "pass" if c.passed else "fail" for c in decision.checks}
        mlflow.set_tags(tags)
        mlflow.log_artifact(str(report))
        for path in (card.markdown, card.html):
            mlflow.log_artifact(path, artifact_path=MODEL_CARD_DIR)


def gate_model(
    spec: PipelineSpec,
    settings: Settings,
    layout: DataLayout,
    trained: Trained,
    datasets: Datasets,
    evaluation: Evaluation,
    run_id: str,
    actor: str | None = None,
) -> Gated:
    """Apply the spec's gate to the evaluation; write the model card; record both on the candidate's run.

    A candidate rejected in ``enabled`` mode is also recorded in the promotion ledger as ``rejected``
    (``dry_run`` verdicts are recorded at promotion).

    Raises:
        GateFailedError: In ``enabled`` mode, when any check fails (carrying the result, card included).
    """
    from tasks.model_card import write_card
    from tasks.registry import record_outcome
    from tasks.tracking import artifact_url

    decision = gate_from_predictions(spec, evaluation)
    card = write_card(spec, trained, datasets, evaluation, decision, layout, run_id)
    report = layout.gate_report(spec.name, run_id)
    record_decision(settings, spec.name, trained.mlflow_run_id, decision, report, card)
    gated = Gated(
        decision=decision,
        model_card=card,
        model_card_url=artifact_url(settings, trained.mlflow_run_id, MODEL_CARD_HTML),
        summary=decision.summary(),
        report_uri=str(report),
    )
    log.info("gate (%s): %s\n%s", decision.mode, "passed" if decision.passed else "FAILED", gated.summary)
    log.info("model card: %s", gated.model_card_url or card.html)
    if decision.mode == "enabled" and not decision.passed:
        record_outcome(
            settings,
            spec.registered_model_name,
            "rejected",
            f"gate failed: {', '.join(decision.failed())}",
            None,
            actor,
            trained.mlflow_run_id,
            {"checks": {c.name: c.reason for c in decision.checks}},
        )
        raise GateFailedError(
            f"{spec.name} candidate (MLflow run {trained.mlflow_run_id}) failed the gate:\n{gated.summary}", gated
        )
    return gated
