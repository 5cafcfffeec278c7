"""The gate as a pure function: metrics, and one test per check and edge case (no store involved)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from tasks import metrics as m
from tasks.evaluate import EvaluationError, decide_promotion, regression_metrics
from tasks.spec import CLASSIFICATION_METRICS, REGRESSION_METRICS, GateSpec

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


# ---- metrics ----


def test_classification_metrics_match_scikit_learn_with_and_without_weights():
    w = RNG.poisson(1.0, N).astype(float)
    p = GOOD.round(2)  # ties exercise the tie handling of AUC and AP
    for weights in (None, w):
        assert m.roc_auc(Y, p, weights) == pytest.approx(sk.roc_auc_score(Y, p, sample_weight=weights))
        assert m.pr_auc(Y, p, weights) == pytest.approx(sk.average_precision_score(Y, p, sample_weight=weights))
        assert m.log_loss(Y, GOOD, weights) == pytest.approx(sk.log_loss(Y, GOOD, sample_weight=weights))
        assert m.f1(Y, p, weights) == pytest.approx(sk.f1_score(Y, p >= 0.5, sample_weight=weights))


def test_metrics_vectorise_over_bootstrap_resamples():
    weights = m.poisson_weights(N, 5, seed=3)
    batch = m.roc_auc(Y, GOOD, weights)
    assert batch.shape == (5,)
    assert batch[2] == pytest.approx(sk.roc_auc_score(Y, GOOD, sample_weight=weights[2]))
    assert m.r2(Y, GOOD, weights)[4] == pytest.approx(sk.r2_score(Y, GOOD, sample_weight=weights[4]))


def test_calibration_error_is_zero_for_calibrated_bins_and_large_when_off():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1], dtype=float)
    p = np.array([0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75])  # 25 % and 75 % positives: calibrated
    assert m.calibration_error(y, p) == pytest.approx(0.0)
    assert m.calibration_error(y, 1 - p) == pytest.approx(0.5)


def test_undefined_metrics_are_none_not_errors():
    ones = np.ones(10)
    scores = m.score_all(CLASSIFICATION_METRICS, ones, np.full(10, 0.9))
    assert scores["roc_auc"] is None and scores["pr_auc"] is not None
    assert m.score_all(REGRESSION_METRICS, ones, ones)["r2"] is None


def test_regression_metrics_on_known_values_and_bad_input():
    got = regression_metrics([1, 2, 3, 4], [1, 2, 3, 6])
    assert got["rmse"] == pytest.approx(1.0) and got["mae"] == pytest.approx(0.5) and got["r2"] == pytest.approx(0.2)
    with pytest.raises(EvaluationError):
        regression_metrics([1, 2], [1])


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
