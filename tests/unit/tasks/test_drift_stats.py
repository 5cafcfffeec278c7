"""The monitor's one-pass statistics give scipy's figures on the same data, whatever the chunking."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tasks.drift_stats import ReferenceProfile, WindowStats


def _window(profile: ReferenceProfile, frame: pd.DataFrame, cuts: list[int], prediction: str | None = None):
    window = WindowStats(profile, [c for c in frame.columns if c != prediction], prediction)
    for start, stop in zip([0, *cuts], [*cuts, len(frame)], strict=True):
        window.add(frame.iloc[start:stop])
    return window


@pytest.mark.parametrize(
    ("n_ref", "n_cur", "ties"),
    [(300, 200, False), (300, 200, True), (5000, 9000, True), (2000, 60_000, False), (2000, 60_000, True)],
)
def test_ks_is_scipys_exact_and_asymptotic_statistic_and_p_value(n_ref, n_cur, ties):
    rng = np.random.default_rng(n_ref + n_cur + ties)
    ref, cur = rng.normal(0, 1, n_ref), rng.normal(0.05, 1.1, n_cur)
    if ties:  # rounded values: ties inside and across the samples
        ref, cur = np.round(ref, 1), np.round(cur, 1)
    cur[::97] = np.nan  # missing values are dropped, as Evidently drops them before the test
    profile = ReferenceProfile.from_json(
        json.loads(json.dumps(ReferenceProfile.of(pd.DataFrame({"x": ref}), []).to_json()))
    )
    window = _window(profile, pd.DataFrame({"x": cur}), [n_cur // 3, n_cur // 3, n_cur - 5])
    d, p = window.ks("x")
    expected = stats.ks_2samp(ref, cur[~np.isnan(cur)])
    assert d == pytest.approx(expected.statistic, abs=1e-12) and p == pytest.approx(
        expected.pvalue, rel=1e-9, abs=1e-300
    )
    assert window.drift(0.05)["x"]["drifted"] == (expected.pvalue < 0.05)


def test_window_values_outside_the_reference_range_count_in_the_statistic():
    ref = np.arange(100.0)
    cur = np.concatenate([np.full(50, -5.0), np.arange(100.0), np.full(30, 500.0)])
    window = _window(ReferenceProfile.of(pd.DataFrame({"x": ref}), []), pd.DataFrame({"x": cur}), [60])
    assert window.ks("x")[0] == pytest.approx(stats.ks_2samp(ref, cur).statistic)
    quality = window.quality("x")
    assert quality["out_of_range"] == pytest.approx(80 / 180) and quality["reference_range"] == [0.0, 99.0]


def test_categorical_columns_use_the_two_sample_chi_square_on_all_categories():
    ref = pd.Series(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    cur = pd.Series(["a"] * 300 + ["b"] * 100 + ["d"] * 10 + [None] * 5)
    profile = ReferenceProfile.from_json(
        json.loads(json.dumps(ReferenceProfile.of(pd.DataFrame({"k": ref}), ["k"]).to_json()))
    )
    window = _window(profile, pd.DataFrame({"k": cur}), [200])
    table = np.array([[50, 30, 20, 0], [300, 100, 0, 10]]).T
    p_value, categories = window.chi2("k")
    assert categories == 4 and p_value == pytest.approx(stats.chi2_contingency(table, correction=False)[1])
    assert window.quality("k")["missing_served"] == pytest.approx(5 / 415)
    # one category on both sides: nothing can have drifted, and nothing is tested
    same = _window(ReferenceProfile.of(pd.DataFrame({"k": [1] * 10}), ["k"]), pd.DataFrame({"k": [1] * 30}), [])
    assert same.chi2("k") is None and same.drift(0.05)["k"]["drifted"] is False


def test_prediction_drift_is_evidentlys_normalised_wasserstein_distance():
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(100, 10, 400), rng.normal(130, 10, 3000)
    profile = ReferenceProfile.of(pd.DataFrame({"x": ref}), [], predictions=ref)
    window = _window(profile, pd.DataFrame({"x": cur, "prediction": cur}), [1000], prediction="prediction")
    expected = stats.wasserstein_distance(ref, cur) / np.std(ref)
    result = window.drift(0.05, 0.1)["prediction"]
    assert result["score"] == pytest.approx(expected) and result["drifted"] and result["method"] == "wasserstein"


def test_a_stuck_column_reports_its_value_as_served():
    window = _window(ReferenceProfile.of(pd.DataFrame({"n": np.arange(20)}), []), pd.DataFrame({"n": [7] * 40}), [10])
    quality = window.quality("n")
    assert (
        quality["distinct_served"] == 1
        and quality["constant_value"] == 7
        and isinstance(quality["constant_value"], int)
    )


def test_chi_square_is_the_same_to_the_last_bit_whatever_order_the_chunks_meet_new_categories():
    """The window's categories the reference lacks enter the table in a fixed order, not first-seen order:
    chunks of 1,000 rows meet them in another order than one chunk does, and the p-value must not move."""
    levels = [f"a{i}" for i in range(15)] + [f"n{i}" for i in range(25)]
    weights = np.r_[np.full(15, 0.99 / 15), np.full(25, 0.01 / 25)]
    for seed in range(30):
        rng = np.random.default_rng(seed)
        reference = pd.DataFrame({"c": rng.choice(levels[:15], 2000)})
        profile = ReferenceProfile.of(reference, ["c"])
        current = pd.DataFrame({"c": rng.choice(levels, 6000, p=weights)})
        one = WindowStats(profile, ["c"]).add(current)
        assert _window(profile, current, list(range(1000, 6000, 1000))).chi2("c") == one.chi2("c"), seed
        table = pd.crosstab(np.r_[np.zeros(2000), np.ones(6000)], np.r_[reference["c"], current["c"]]).to_numpy()
        assert one.chi2("c")[0] == pytest.approx(stats.chi2_contingency(table.T, correction=False)[1])
