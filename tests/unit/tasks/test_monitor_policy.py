"""The retrain trigger policy (k of n, cooldown, cap), its decision log, and the after-retrain report."""

from __future__ import annotations

import json
import threading

import pytest

from tasks.monitor import _decide
from tasks.monitor_policy import DecisionLog, decide
from tasks.spec import SpecError, TriggerPolicySpec, load_spec
from tasks.storage import DataLayout


def _end(day: int) -> str:
    return f"2012-07-{day:02d}T02:00:00+00:00"


def _run(policy: TriggerPolicySpec, nights: dict[int, list[str]], champion: str = "1") -> dict[int, bool]:
    """Decide night after night, feeding each decision back as history; return night -> retrain."""
    history: list[dict] = []
    out = {}
    for day, violations in sorted(nights.items()):
        d = decide(policy, history, _end(day), violations, champion)
        history.append(d.to_dict())
        out[day] = d.retrain
    return out


def test_clean_window_never_retrains():
    d = decide(TriggerPolicySpec(), [], _end(1), [], "1")
    assert not d.retrain and d.reason == "no violation in this window"


def test_single_violation_retrains_with_the_default_policy():
    assert _run(TriggerPolicySpec(), {1: ["data_drift"]}) == {1: True}


def test_k_of_n_waits_for_persistence_and_needs_the_latest_window_to_violate():
    policy = TriggerPolicySpec(k=2, n=3)
    got = _run(policy, {1: ["data_drift"], 2: [], 3: ["data_drift"], 4: []})
    assert got == {1: False, 2: False, 3: True, 4: False}
    spaced = _run(policy, {1: ["data_drift"], 2: [], 3: [], 4: ["data_drift"]})  # 1 and 4 are not within n=3
    assert spaced == {1: False, 2: False, 3: False, 4: False}
    d = decide(policy, [], _end(1), ["performance_decay"], "1")
    assert "1 of the last 1 window(s)" in d.reason and "waiting to see if it persists" in d.reason


def test_cooldown_then_cap_turn_a_storm_into_few_retrains():
    policy = TriggerPolicySpec(k=1, n=1, cooldown_days=3, max_retrains=2, period_days=30)
    got = _run(policy, {day: ["data_drift"] for day in range(1, 15)})  # two weeks of a broken upstream
    assert [day for day, retrain in got.items() if retrain] == [1, 4]  # then the cap holds
    history = [decide(policy, [], _end(1), ["data_drift"], "1").to_dict()]
    assert "cooldown" in decide(policy, history, _end(2), ["data_drift"], "1").reason
    history.append(decide(policy, history, _end(4), ["data_drift"], "1").to_dict())
    assert "cap reached, 2 retrain(s)" in decide(policy, history, _end(8), ["data_drift"], "1").reason


def test_windows_judged_against_an_earlier_champion_do_not_count():
    policy = TriggerPolicySpec(k=2, n=3)
    history = [decide(policy, [], _end(1), ["data_drift"], "1").to_dict()]
    assert not decide(policy, history, _end(2), ["data_drift"], "2").retrain  # v2 gets its own k of n
    assert decide(policy, history, _end(2), ["data_drift"], "1").retrain


def test_a_rerun_window_replaces_its_earlier_decision():
    policy = TriggerPolicySpec(k=2, n=2)
    history = [
        decide(policy, [], _end(1), ["data_drift"], "1").to_dict(),
        decide(policy, [], _end(1), [], "1").to_dict(),  # the same night, re-run after a fix: clean
    ]
    assert not decide(policy, history, _end(2), ["data_drift"], "1").retrain


def test_k_above_n_is_a_spec_error(tmp_path):
    with pytest.raises(ValueError, match="cannot exceed"):
        TriggerPolicySpec(k=3, n=2)
    raw = load_spec("bike_demand").model_dump(by_alias=True, mode="json")
    raw["monitoring"]["trigger"] = {"k": 4, "n": 2}
    path = tmp_path / "bike.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    with pytest.raises(SpecError, match="cannot exceed"):
        load_spec(path)


def test_decision_log_keeps_every_line_under_concurrent_appends(tmp_path):
    log = DecisionLog(tmp_path / "decisions.jsonl")
    policy = TriggerPolicySpec()

    def write(worker: int) -> None:
        for i in range(50):
            log.append(decide(policy, [], _end(1 + i % 28), ["data_drift"] if worker % 2 else [], str(worker)))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = log.read()
    assert len(rows) == 200 and {r["champion_version"] for r in rows} == {"0", "1", "2", "3"}


def test_every_window_is_logged_and_the_next_one_after_a_retrain_says_if_the_gap_closed(tmp_path):
    spec = load_spec("bike_demand")
    layout = DataLayout(tmp_path)
    drifted = {"window_end": _end(9), "champion_version": "1", "status": "drift", "drift_share": 0.8}
    _decide(spec, layout, drifted, ["data_drift"])
    assert drifted["retrain"] is True and drifted["violations"] == ["data_drift"]
    calm = {"window_end": _end(10), "champion_version": "2", "status": "no_drift", "drift_share": 0.1}
    _decide(spec, layout, calm, [])
    after = calm["after_retrain"]
    assert after["gap_closed"] and after["champion_then"] == "1" and after["champion_now"] == "2"
    assert after["drift_share"] == {"then": 0.8, "now": 0.1} and "closed the gap" in after["verdict"]
    still = {"window_end": _end(11), "champion_version": "2", "status": "drift", "drift_share": 0.7}
    _decide(spec, layout, still, ["data_drift"])
    assert not still["after_retrain"]["gap_closed"] and "did not close it" in still["after_retrain"]["verdict"]
    lines = (tmp_path / "monitoring" / "bike_demand" / "decisions.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["drift", "no_drift", "drift"]
    trend = (tmp_path / "monitoring" / "bike_demand" / "trend.html").read_text()
    assert still["trend_html"].endswith("trend.html") and trend.count("<circle") == 3
    assert trend.count("class=retrain") == 1 and "threshold 0.3" in trend  # window 9 only:
    assert still["retrain"] is False and "cooldown" in still["decision"]  # 11 is within the 3-day cooldown
