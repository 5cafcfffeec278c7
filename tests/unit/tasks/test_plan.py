"""Plans: the training plan (pure policy, then on a real store) and the monitoring trigger policy (k of n,
cooldown, cap), its decision log, the after-retrain report and the trend page."""

from __future__ import annotations

import json
import threading

import pytest

from tasks import stages
from tasks.errors import PermanentError
from tasks.plan import DecisionLog, PlanError, decide, decide_training, judge_window, plan_training, render_trend
from tasks.results import TrainingPlan
from tasks.settings import get_settings
from tasks.spec import SpecError, TrainingSpec, TriggerPolicySpec, load_spec
from tasks.storage import DataLayout

TRAINING = TrainingSpec.model_validate(
    {"window_days": 10, "holdout_days": 2, "min_partitions": 5, "retrain_after_new_partitions": 3}
    | {"model": {"family": "lightgbm"}, "baseline": {"family": "ridge"}}
)
DAYS = [f"2011-06-{d:02d}" for d in range(1, 13)]


# ---- the training plan ----


def test_no_training_on_too_few_partitions_even_when_forced_or_requested():
    plan = decide_training(TRAINING, DAYS[:4], None, None, retrain_requested=True, force=True)
    assert plan == TrainingPlan(train=False, reason="waiting for data: 4 of 5 partitions ingested", partitions=DAYS[:4])


def test_the_window_is_the_most_recent_partitions():
    plan = decide_training(TRAINING, DAYS, None, None)
    assert plan.train and plan.reason == "no champion yet: first model" and plan.partitions == DAYS[2:]


@pytest.mark.parametrize(
    ("requested", "force", "reason"),
    [(True, False, "retrain requested by monitoring"), (False, True, "forced from the trigger form")],
)
def test_a_retrain_request_or_force_trains_without_new_data(requested, force, reason):
    plan = decide_training(TRAINING, DAYS, "3", DAYS[-1], retrain_requested=requested, force=force)
    assert plan.train and plan.reason == reason and plan.new_partitions == 0 and plan.champion_version == "3"


def test_new_partitions_consolidate_into_one_retrain():
    two_new = decide_training(TRAINING, DAYS, "3", DAYS[-3])
    assert not two_new.train and two_new.new_partitions == 2
    assert two_new.reason == "champion v3 trained on data up to 2011-06-10; 2 newer partition(s) < 3: no retrain"
    three_new = decide_training(TRAINING, DAYS, "3", DAYS[-4])
    assert three_new.train and three_new.reason == "3 partitions newer than champion v3's data (>= 3)"


def test_plan_training_on_the_real_champion(use_champion_store):
    plan = stages.plan_training("bike_demand")
    assert plan["train"] is False and "no retrain" in plan["reason"] and plan["champion_data_end"] == "2011-06-26"
    assert stages.plan_training("bike_demand", triggered_by=["ml://bike_demand/retrain"])["train"] is True
    assert stages.plan_training("bike_demand", triggered_by=["ml://adult_income/retrain"])["train"] is False
    assert stages.plan_training("bike_demand", force=True)["reason"].startswith("forced")
    assert stages.plan_training("bike_demand", as_of="2011-06-10")["reason"].startswith("waiting for data")


def test_as_of_that_is_not_a_date_is_refused(data_root):
    spec = load_spec("bike_demand")
    with pytest.raises(PlanError, match="not a calendar date") as err:
        plan_training(spec, get_settings(), DataLayout(data_root), as_of="yesterday")
    assert isinstance(err.value, PermanentError)


def test_an_empty_raw_store_waits_without_asking_the_registry(data_root):
    plan = plan_training(load_spec("bike_demand"), get_settings(), DataLayout(data_root))
    assert not plan.train and plan.reason.startswith("waiting for data: 0 of")
    assert not (data_root / "mlflow").exists()  # the registry was not opened


# ---- the monitoring trigger policy ----


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


def _judge(history: list[dict], day: int, champion: str, violations: list[str], share: float, status: str):
    policy = load_spec("bike_demand").monitoring.trigger  # k=1 of n=1, cooldown 3 days
    verdict = judge_window(policy, history, _end(day), violations, champion, {"drift_share": share}, status)
    history.append(verdict.record)
    return verdict


def test_every_window_is_logged_and_the_next_one_after_a_retrain_says_if_the_gap_closed():
    history: list[dict] = []
    drifted = _judge(history, 9, "1", ["data_drift"], 0.8, "drift")
    assert drifted.decision.retrain and drifted.after_retrain is None
    assert drifted.record["figures"] == {"drift_share": 0.8} and drifted.record["status"] == "drift"
    calm = _judge(history, 10, "2", [], 0.1, "no_drift").after_retrain
    assert calm["gap_closed"] and calm["champion_then"] == "1" and calm["champion_now"] == "2"
    assert calm["drift_share"] == {"then": 0.8, "now": 0.1} and "closed the gap" in calm["verdict"]
    still = _judge(history, 11, "2", ["data_drift"], 0.7, "drift")
    assert not still.after_retrain["gap_closed"] and "did not close it" in still.after_retrain["verdict"]
    assert still.decision.retrain is False and "cooldown" in still.decision.reason  # within the 3-day cooldown
    same_champion = _judge(history, 20, "1", [], 0.1, "no_drift")  # judged against the champion it asked about
    assert same_champion.after_retrain is None


def test_trend_page_marks_retrains_and_escapes_what_it_shows():
    history: list[dict] = []
    _judge(history, 9, "1", ["data_drift"], 0.8, "drift")
    _judge(history, 10, "2", [], 0.1, "no_drift")
    history.append(history[-1] | {"window_end": _end(11), "reason": "<script>alert(1)</script>", "retrain": False})
    trend = render_trend("bike_demand", history, 0.3)
    assert trend.count("<circle") == 3 and trend.count("class=retrain") == 1 and "threshold 0.3" in trend
    assert "<script>" not in trend and "&lt;script&gt;" in trend
