"""The gate: one test per check and edge case of the pure decision, then the stage on a real champion store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks import stages
from tasks.errors import PermanentError
from tasks.evaluate import EvaluationError
from tasks.gate import GateFailedError, decide_promotion, gate_from_predictions
from tasks.ledger import PromotionLedger
from tasks.registry import champion
from tasks.results import Evaluation
from tasks.settings import get_settings
from tasks.spec import CLASSIFICATION_METRICS, REGRESSION_METRICS, GateSpec, load_spec

RNG = np.random.default_rng(7)
N = 4000
Y = (RNG.random(N) < 0.3).astype(float)
GOOD = np.clip(0.3 + 0.45 * (Y - 0.3) + RNG.normal(0, 0.18, N), 0.001, 0.999)  # AUC ~0.95
WEAK = np.clip(0.3 + 0.15 * (Y - 0.3) + RNG.normal(0, 0.18, N), 0.001, 0.999)  # AUC ~0.72


def _gate(**changes) -> GateSpec:
    base = {"primary_metric": "roc_auc", "champion": {"bootstrap_samples": 400}}
    return GateSpec.model_validate(base | changes)


def _decide(gate, predictions, champion_version=None, groups=None, **kw):
    return decide_promotion(CLASSIFICATION_METRICS, gate, Y, predictions, groups, champion_version, seed=1, **kw)


def _check(decision, name):
    return next(c for c in decision.checks if c.name == name)


# ---- thresholds and baseline ----


def test_each_threshold_has_its_own_verdict_and_reason():
    gate = _gate(thresholds={"roc_auc": {"min": 0.99}, "calibration_error": {"max": 0.5}, "log_loss": {"max": 0.1}})
    d = _decide(gate, {"candidate": GOOD, "baseline": WEAK})
    verdicts = {c.name: c.passed for c in d.checks}
    assert verdicts["min_roc_auc"] is False and verdicts["max_calibration_error"] is True
    assert verdicts["max_log_loss"] is False
    assert "roc_auc 0.9" in _check(d, "min_roc_auc").reason and "< min 0.99" in _check(d, "min_roc_auc").reason
    assert not d.passed and not d.promote


def test_baseline_check_needs_the_required_relative_improvement():
    passed = _decide(_gate(baseline_min_improvement=0.10), {"candidate": GOOD, "baseline": WEAK})
    assert _check(passed, "beats_baseline").passed
    tie = _decide(_gate(), {"candidate": WEAK, "baseline": WEAK})
    assert not _check(tie, "beats_baseline").passed  # a tie with the baseline is no improvement


# ---- challenger vs champion ----


def test_first_model_has_no_champion_to_beat():
    d = _decide(_gate(), {"candidate": GOOD, "baseline": WEAK}, champion_version=None)
    check = _check(d, "beats_champion")
    assert check.passed and "first model" in check.reason and d.promote


def test_clearly_better_challenger_passes_with_its_confidence_interval():
    d = _decide(_gate(), {"candidate": GOOD, "baseline": WEAK, "champion": WEAK}, champion_version="3")
    check = _check(d, "beats_champion")
    assert check.passed and check.details["ci_low"] > 0 and "95% CI" in check.reason and "v3" in check.reason


def test_tie_with_the_champion_never_promotes():
    d = _decide(_gate(), {"candidate": GOOD, "baseline": WEAK, "champion": GOOD.copy()}, champion_version="3")
    check = _check(d, "beats_champion")
    assert not check.passed and "tie never promotes" in check.reason and not d.promote


def test_improvement_within_noise_does_not_promote():
    noisy = np.clip(GOOD + RNG.normal(0, 0.01, N), 0.001, 0.999)  # a hair better or worse: noise
    d = _decide(_gate(), {"candidate": noisy, "baseline": WEAK, "champion": GOOD}, champion_version="3")
    check = _check(d, "beats_champion")
    assert check.details["ci_low"] < 0 < check.details["ci_high"]
    assert not check.passed and "does not reach" in check.reason


def test_max_regression_rule_accepts_a_tie_but_not_a_measurable_regression():
    gate = _gate(champion={"max_regression": 0.01, "bootstrap_samples": 400})
    tie = _decide(gate, {"candidate": GOOD, "baseline": WEAK, "champion": GOOD.copy()}, champion_version="3")
    assert _check(tie, "beats_champion").passed
    worse = _decide(gate, {"candidate": WEAK, "baseline": WEAK, "champion": GOOD}, champion_version="3")
    assert not _check(worse, "beats_champion").passed and "beyond" in _check(worse, "beats_champion").reason


def test_bootstrap_is_reproducible_for_a_seed():
    preds = {"candidate": GOOD, "baseline": WEAK, "champion": WEAK}
    a, b = (_check(_decide(_gate(), preds, champion_version="1"), "beats_champion") for _ in range(2))
    assert a.details == b.details


def test_champion_that_cannot_score_the_holdout_fails_the_check_with_the_reason():
    d = _decide(_gate(), {"candidate": GOOD, "baseline": WEAK}, champion_version="2", champion_error="KeyError: 'hum'")
    check = _check(d, "beats_champion")
    assert not check.passed and "v2 could not score" in check.reason and "hum" in check.reason


def test_both_champion_rules_at_once_is_a_spec_error():
    with pytest.raises(ValueError, match="not both"):
        GateSpec.model_validate({"primary_metric": "rmse", "champion": {"min_improvement": 0, "max_regression": 0.1}})


# ---- slices ----


def _groups(sizes: dict[str, int]) -> np.ndarray:
    labels = np.concatenate([[g] * n for g, n in sizes.items()])
    assert len(labels) == N
    return labels


def test_slice_gap_within_the_limit_passes_and_reports_every_group():
    groups = {"sex": _groups({"Female": 1500, "Male": 2500})}
    d = _decide(_gate(slices={"max_gap": 0.05}), {"candidate": GOOD, "baseline": WEAK}, groups=groups)
    check = _check(d, "slice_gap_sex")
    assert check.passed and check.observed < 0.05
    assert set(d.slices["sex"]) == {"Female", "Male"} and d.slices["sex"]["Male"]["rows"] == 2500


def test_slice_gap_beyond_the_limit_fails_naming_both_groups():
    mixed = np.where(np.arange(N) < 2000, GOOD, WEAK)  # the model is much worse on the second group
    groups = {"race": _groups({"A": 2000, "B": 2000})}
    d = _decide(_gate(slices={"max_gap": 0.05}), {"candidate": mixed, "baseline": WEAK}, groups=groups)
    check = _check(d, "slice_gap_race")
    assert not check.passed and "race=A" in check.reason and "race=B" in check.reason and not d.promote


def test_small_and_single_class_groups_are_reported_not_judged():
    y_sorted = np.argsort(Y, kind="stable")  # put 30 negatives first: a group with one class only
    order = np.r_[y_sorted[:30], y_sorted[30:]]
    preds = {"candidate": GOOD[order], "baseline": WEAK[order]}
    groups = {"race": _groups({"one-class": 30, "tiny": 20, "big": N - 50})}
    d = decide_promotion(
        CLASSIFICATION_METRICS, _gate(slices={"max_gap": 0.05, "min_rows": 25}), Y[order], preds, groups, seed=1
    )
    check = _check(d, "slice_gap_race")
    assert check.passed and check.observed is None  # only one judged group: no gap to judge
    assert "no gap to judge" in check.reason and "not judged: one-class, tiny" in check.reason
    assert d.slices["race"]["tiny"]["note"] == "fewer than 25 rows"
    assert d.slices["race"]["one-class"]["note"] == "roc_auc undefined"


def test_empty_holdout_is_refused():
    with pytest.raises(EvaluationError, match="no rows"):
        decide_promotion(
            CLASSIFICATION_METRICS, _gate(), np.array([]), {"candidate": np.array([]), "baseline": np.array([])}
        )


# ---- modes ----


@pytest.mark.parametrize(("mode", "promote"), [("enabled", False), ("dry_run", False), ("disabled", True)])
def test_modes_decide_promotion_of_a_failing_candidate(mode, promote):
    d = _decide(_gate(mode=mode, thresholds={"roc_auc": {"min": 0.99}}), {"candidate": GOOD, "baseline": WEAK})
    assert not d.passed and d.promote is promote


def test_dry_run_never_promotes_a_passing_candidate():
    d = _decide(_gate(mode="dry_run"), {"candidate": GOOD, "baseline": WEAK})
    assert d.passed and not d.promote


def test_regression_gate_uses_rmse_in_the_right_direction():
    y = RNG.normal(100, 30, 500)
    good, bad = y + RNG.normal(0, 5, 500), y + RNG.normal(0, 25, 500)
    gate = GateSpec.model_validate({"primary_metric": "rmse", "thresholds": {"rmse": {"max": 10}, "r2": {"min": 0.9}}})
    d = decide_promotion(REGRESSION_METRICS, gate, y, {"candidate": good, "baseline": bad, "champion": bad}, None, "1")
    assert d.passed and _check(d, "beats_champion").observed > 0.5  # RMSE ~5 vs ~25: 80 % lower


def test_decision_summary_lists_failed_checks_first_and_round_trips_as_json():
    d = _decide(_gate(thresholds={"roc_auc": {"min": 0.99}}), {"candidate": GOOD, "baseline": WEAK})
    lines = d.summary().splitlines()
    assert lines[0].startswith("[FAIL] min_roc_auc") and all(line.startswith("[PASS]") for line in lines[1:])
    assert d.failed() == ["min_roc_auc"]
    assert type(d).parse(d.xcom()) == d  # what XCom carries is the decision, nothing lost


# ---- the stage, on files and stores ----


def _evaluation(path: Path, **extra) -> Evaluation:
    return Evaluation(
        candidate={},
        baseline={},
        holdout_rows=N,
        predictions_uri=str(path),
        smoke_sample_uri="unused",
        reference_predictions_uri="unused",
        **extra,
    )


def test_gate_reads_the_rows_evaluation_kept_with_their_groups(tmp_path):
    spec = load_spec("adult_income")
    path = tmp_path / "predictions.parquet"
    groups = np.where(np.arange(N) < 2000, "Female", "Male")
    pd.DataFrame({"y": Y, "candidate": GOOD, "baseline": WEAK, "champion": WEAK, "group:sex": groups}).to_parquet(path)
    decision = gate_from_predictions(spec, _evaluation(path, champion_version="4"))
    assert decision.champion_version == "4" and decision.check("beats_champion").passed
    assert set(decision.slices["sex"]) == {"Female", "Male"} and decision.metrics["champion"]["roc_auc"] < 0.8
    assert "race" not in decision.slices  # no group column kept for it: not judged, not invented


def test_gate_without_evaluations_rows_is_a_permanent_error_naming_the_file(tmp_path):
    with pytest.raises(EvaluationError, match="predictions.parquet are missing") as err:
        gate_from_predictions(load_spec("bike_demand"), _evaluation(tmp_path / "predictions.parquet"))
    assert isinstance(err.value, PermanentError)


def test_retrain_identical_to_the_champion_is_rejected_recorded_and_still_gets_its_card(use_champion_store):
    c = use_champion_store
    v1 = c["registered"]["version"]
    before = len(PromotionLedger(get_settings().ledger_uri).read("bike_demand"))
    evaluation = stages.evaluate_model("bike_demand", c["trained"], c["datasets"], "tie")  # judged against itself
    assert evaluation["champion_version"] == v1 and evaluation["champion"] == evaluation["candidate"]
    with pytest.raises(GateFailedError, match="tie never promotes") as failed:
        stages.gate_model("bike_demand", c["trained"], c["datasets"], evaluation, "tie", actor="cli:tie-test")
    assert isinstance(failed.value, PermanentError)  # a verdict: no retry
    gated = failed.value.gated
    card = Path(gated.model_card.html).read_text()
    assert "beats_champion" in card and f"champion v{v1}" in card and 'class="fail"' in card
    assert Path(gated.report_uri).name == "gate.json" and not gated.decision.promote
    entries = PromotionLedger(get_settings().ledger_uri).read("bike_demand")
    assert len(entries) == before + 1
    entry = entries[-1]
    assert (entry.action, entry.actor, entry.from_version, entry.to_version) == ("rejected", "cli:tie-test", v1, None)
    assert entry.reason == "gate failed: beats_champion" and "tie" in entry.details["checks"]["beats_champion"]
    assert entry.mlflow_run_id == c["trained"]["mlflow_run_id"]
    assert champion(get_settings(), "bike_demand").version == v1


def test_gate_records_its_verdicts_on_the_candidates_run(use_champion_store):
    from tasks.tracking import client

    c = use_champion_store
    run = client(get_settings()).get_run(c["trained"]["mlflow_run_id"])
    assert run.data.tags["gate.mode"] == "enabled" and run.data.tags["gate.check.beats_baseline"] == "pass"
    artifacts = {a.path for a in client(get_settings()).list_artifacts(run.info.run_id, "model_card")}
    assert artifacts == {"model_card/model_card.md", "model_card/model_card.html"}
    assert c["gated"]["summary"].count("[PASS]") == len(c["decision"]["checks"])


def test_a_numeric_sensitive_column_is_sliced_in_bands_with_its_own_gap():
    from tasks.spec import SliceColumnSpec

    rule = SliceColumnSpec(bands=[25, 40, 60])
    assert [rule.group(v) for v in (18, 25, 39.5, 40, 60, 95, float("nan"), "x")] == [
        "<25",
        "25-40",
        "25-40",
        "40-60",
        ">=60",
        ">=60",
        "missing",
        "x",
    ]
    with pytest.raises(ValueError, match="strictly ascending"):
        SliceColumnSpec(bands=[40, 25])
    mixed = np.where(np.arange(N) < 2000, GOOD, WEAK)
    groups = {"race": _groups({"A": 2000, "B": 2000})}
    gate = _gate(slices={"max_gap": 0.05, "columns": {"race": {"max_gap": 0.9}}})
    check = _check(_decide(gate, {"candidate": mixed, "baseline": WEAK}, groups=groups), "slice_gap_race")
    assert check.passed and check.threshold == 0.9  # the column's own gap, not the default
