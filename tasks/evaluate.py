"""Evaluate on the time-based holdout, and the promotion gate (a pure function with explicit modes)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from tasks.errors import PermanentError
from tasks.settings import Settings
from tasks.spec import GateSpec, PipelineSpec
from tasks.storage import write_json
from tasks.tracking import start_tracking

log = logging.getLogger(__name__)


class GateFailed(PermanentError, RuntimeError):
    """The candidate did not pass the gate in ``enabled`` mode; the message lists every failed check."""


class EvaluationError(RuntimeError):
    """The holdout is empty or the model cannot score it."""


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """RMSE, MAE and R2.

    Raises:
        EvaluationError: The arrays are empty or differ in length.
    """
    y_true = np.asarray(y_true, dtype="float64")
    y_pred = np.asarray(y_pred, dtype="float64")
    if y_true.size == 0 or y_true.shape != y_pred.shape:
        raise EvaluationError(f"cannot score {y_pred.shape} predictions against {y_true.shape} targets")
    err = y_pred - y_true
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "r2": float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else 0.0,
    }


@dataclass(frozen=True)
class Check:
    """One gate check with its own verdict."""

    name: str
    passed: bool
    observed: float
    threshold: float
    reason: str


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and whether promotion may proceed in the configured mode."""

    mode: Literal["disabled", "dry_run", "enabled"]
    passed: bool
    promote: bool
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for XCom and MLflow tags."""
        return asdict(self)

    def summary(self) -> str:
        """One line per check, failed ones first."""
        ordered = sorted(self.checks, key=lambda c: c.passed)
        return "\n".join(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.reason}" for c in ordered)


def _upper(name: str, observed: float, limit: float | None) -> Check | None:
    if limit is None:
        return None
    ok = observed <= limit
    return Check(name, ok, observed, limit, f"{observed:.4g} {'<=' if ok else '>'} max {limit:.4g}")


def decide_promotion(candidate: dict[str, float], baseline: dict[str, float], gate: GateSpec) -> GateDecision:
    """Judge a candidate's holdout metrics against the spec's thresholds and the baseline model.

    Args:
        candidate: Holdout metrics of the candidate (``rmse``, ``mae``, ``r2``).
        baseline: Holdout metrics of the baseline model on the same holdout.
        gate: Thresholds and mode.

    Returns:
        The decision. ``promote`` is the verdict in ``enabled`` mode, always True when ``disabled`` and
        always False in ``dry_run`` (verdicts are still computed and recorded).
    """
    checks = [
        c
        for c in (
            _upper("max_rmse", candidate["rmse"], gate.max_rmse),
            _upper("max_mae", candidate["mae"], gate.max_mae),
        )
        if c is not None
    ]
    if gate.min_r2 is not None:
        ok = candidate["r2"] >= gate.min_r2
        checks.append(
            Check(
                "min_r2",
                ok,
                candidate["r2"],
                gate.min_r2,
                f"{candidate['r2']:.4g} {'>=' if ok else '<'} min {gate.min_r2:.4g}",
            )
        )
    improvement = 1 - candidate["rmse"] / baseline["rmse"] if baseline["rmse"] > 0 else 0.0
    ok = improvement >= gate.min_improvement_over_baseline
    checks.append(
        Check(
            "beats_baseline",
            ok,
            improvement,
            gate.min_improvement_over_baseline,
            f"RMSE {candidate['rmse']:.4g} vs baseline {baseline['rmse']:.4g}: "
            f"{improvement:+.1%} improvement ({'>=' if ok else '<'} required {gate.min_improvement_over_baseline:.0%})",
        )
    )
    passed = all(c.passed for c in checks)
    promote = {"enabled": passed, "disabled": True, "dry_run": False}[gate.mode]
    return GateDecision(mode=gate.mode, passed=passed, promote=promote, checks=checks)


def evaluate_candidate(
    spec: PipelineSpec, settings: Settings, trained: dict[str, Any], holdout_uri: str
) -> dict[str, Any]:
    """Score candidate and baseline, loaded back from MLflow exactly as the server loads them.

    Returns:
        ``{"candidate": metrics, "baseline": metrics, "holdout_rows": n}``; metrics are also logged
        to the candidate's run as ``holdout_*`` and ``baseline_holdout_*``.

    Raises:
        EvaluationError: The holdout is empty.
    """
    import mlflow

    holdout = pd.read_parquet(holdout_uri)
    if holdout.empty:
        raise EvaluationError(f"holdout {holdout_uri} is empty")
    start_tracking(settings, spec.name)
    X = holdout[spec.schema_.input_columns]  # noqa: N806 - ML convention
    y = holdout[spec.schema_.target]
    scores = {}
    for role, uri in (("candidate", trained["model_uri"]), ("baseline", trained["baseline_model_uri"])):
        scores[role] = regression_metrics(y, mlflow.pyfunc.load_model(uri).predict(X))
    with mlflow.start_run(run_id=trained["run_id"]):
        mlflow.log_metrics({f"holdout_{k}": v for k, v in scores["candidate"].items()})
        mlflow.log_metrics({f"baseline_holdout_{k}": v for k, v in scores["baseline"].items()})
    log.info("holdout (%d rows): candidate %s, baseline %s", len(holdout), scores["candidate"], scores["baseline"])
    return {**scores, "holdout_rows": len(holdout)}


def record_decision(settings: Settings, pipeline: str, run_id: str, decision: GateDecision, report_path: Any) -> None:
    """Keep the decision beside the run's outputs and on the MLflow run (tags + gate.json artifact)."""
    import mlflow

    write_json(report_path, decision.to_dict())
    start_tracking(settings, pipeline)
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tags(
            {"gate.mode": decision.mode, "gate.passed": str(decision.passed), "gate.promote": str(decision.promote)}
        )
        mlflow.log_artifact(str(report_path))
