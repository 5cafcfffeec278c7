from __future__ import annotations

import pytest

from tasks.evaluate import EvaluationError, decide_promotion, regression_metrics
from tasks.spec import GateSpec

GOOD = {"rmse": 50.0, "mae": 30.0, "r2": 0.9}
BASE = {"rmse": 100.0, "mae": 70.0, "r2": 0.5}


def test_regression_metrics_on_known_values():
    m = regression_metrics([1, 2, 3, 4], [1, 2, 3, 6])
    assert m["rmse"] == pytest.approx(1.0) and m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - 4 / 5)


def test_empty_or_mismatched_predictions_are_refused():
    with pytest.raises(EvaluationError):
        regression_metrics([], [])
    with pytest.raises(EvaluationError):
        regression_metrics([1, 2], [1])


def test_enabled_gate_passes_a_good_candidate():
    d = decide_promotion(GOOD, BASE, GateSpec(max_rmse=60, min_r2=0.8, min_improvement_over_baseline=0.1))
    assert d.passed and d.promote
    assert {c.name for c in d.checks} == {"max_rmse", "min_r2", "beats_baseline"}


def test_each_failed_check_has_its_own_verdict_and_reason():
    d = decide_promotion(
        {"rmse": 95.0, "mae": 60.0, "r2": 0.55},
        BASE,
        GateSpec(max_rmse=60, min_r2=0.8, min_improvement_over_baseline=0.1),
    )
    verdicts = {c.name: c.passed for c in d.checks}
    assert verdicts == {"max_rmse": False, "min_r2": False, "beats_baseline": False}
    assert not d.promote
    assert "+5.0% improvement (< required 10%)" in d.summary()


def test_tie_with_baseline_does_not_count_as_improvement():
    d = decide_promotion(BASE, BASE, GateSpec(min_improvement_over_baseline=0.01))
    assert not d.passed


@pytest.mark.parametrize(("mode", "promote"), [("enabled", False), ("dry_run", False), ("disabled", True)])
def test_modes_decide_promotion_of_a_failing_candidate(mode, promote):
    d = decide_promotion(BASE | {"rmse": 500.0}, BASE, GateSpec(mode=mode, max_rmse=60))
    assert not d.passed and d.promote is promote


def test_dry_run_never_promotes_even_a_passing_candidate():
    assert not decide_promotion(GOOD, BASE, GateSpec(mode="dry_run")).promote
