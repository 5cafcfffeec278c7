from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks import cache, validate
from tasks.features import build_features
from tasks.ingest import ingest_partition
from tasks.partitions import partition_lock, promote_staged
from tasks.replay import replay_days
from tasks.validate import validate_partitions, validate_staged
from tests.unit.conftest import FIXTURES
from tests.unit.tasks.landing_helpers import settled

DAYS = ["2011-06-01", "2011-06-02", "2011-06-03"]


@pytest.fixture
def judged(spec, layout):
    """Three days ingested and validated (at ingest): each batch has its verdict kept."""
    replay_days(spec, layout, FIXTURES, DAYS[0], DAYS[-1])
    settled(layout)
    staged = {day: ingest_partition(spec, layout, day, run_key="ingest").sha256 for day in DAYS}
    validate_staged(spec, layout, staged, "ingest")  # one suite context for the three batches
    return DAYS


@pytest.fixture
def suite_runs(monkeypatch):
    """Counts the batches Great Expectations actually judges."""
    calls: list[int] = []
    real = validate.validate_frame

    def counted(frame, *args, **kwargs):
        calls.append(len(frame))
        return real(frame, *args, **kwargs)

    monkeypatch.setattr(validate, "validate_frame", counted)
    return calls


def test_training_reuses_the_verdicts_ingest_recorded(spec, layout, judged, suite_runs):
    entries = list(layout.cache_dir("bike_demand", "validation").glob("*.json"))
    assert len(entries) == 3
    result = validate_partitions(spec, layout, judged, "train1")
    assert result.valid == judged and result.cached == judged and suite_runs == []
    kept = json.loads(entries[0].read_text())
    assert kept["failures"] == [] and kept["report"].endswith("ingest/validation.json")


def test_a_changed_suite_is_a_miss(spec, layout, judged, suite_runs, tmp_path):
    suite = json.loads(spec.expectations_path.read_text())
    suite["meta"] = {**(suite.get("meta") or {}), "tightened": "2026-11-26"}
    edited = tmp_path / "suite.json"
    edited.write_text(json.dumps(suite))
    changed = spec.model_copy(update={"expectations": str(edited)})
    result = validate_partitions(changed, layout, judged, "train1")
    assert result.cached == [] and len(suite_runs) == 3
    again = validate_partitions(changed, layout, judged, "train2")  # the new suite's verdicts are kept in turn
    assert again.cached == judged and len(suite_runs) == 3
    reordered = tmp_path / "reordered.json"  # same suite, other key order and spacing: the same hash
    reordered.write_text(json.dumps(dict(reversed(list(suite.items()))), indent=4))
    assert cache.suite_hash(reordered) == cache.suite_hash(edited) != cache.suite_hash(spec.expectations_path)


def test_a_changed_library_version_is_a_miss(spec, layout, judged, suite_runs, monkeypatch):
    real = cache.library_version
    monkeypatch.setattr(cache, "library_version", lambda p: "99.0" if p == "great_expectations" else real(p))
    result = validate_partitions(spec, layout, judged, "train1")
    assert result.cached == [] and len(suite_runs) == 3


def test_changed_bytes_are_a_miss_and_a_kept_failure_quarantines_without_the_suite(spec, layout, judged, suite_runs):
    path = layout.raw_partition("bike_demand", DAYS[1])
    frame = pd.read_parquet(path)
    frame.loc[:5, "hum"] = 7.0  # out of the suite's range: bytes ingest never judged
    frame.to_parquet(path, index=False)
    first = validate_partitions(spec, layout, judged, "train1")
    assert first.cached == [DAYS[0], DAYS[2]] and suite_runs == [24]
    assert [q.partition for q in first.quarantined] == [DAYS[1]]
    # the same bad bytes delivered again: the kept verdict quarantines them, no suite run
    quarantined = layout.quarantine_dir("bike_demand", DAYS[1]) / "train1" / "part.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(quarantined.read_bytes())
    second = validate_partitions(spec, layout, [DAYS[1]], "train2")
    assert second.cached == [DAYS[1]] and suite_runs == [24]
    assert second.quarantined[0].reasons == first.quarantined[0].reasons
    assert any("column 'hum': 6 of 24 rows unexpected" in r for r in second.quarantined[0].reasons)


def test_an_unreadable_entry_is_a_miss(spec, layout, judged, suite_runs):
    for entry in layout.cache_dir("bike_demand", "validation").glob("*.json"):
        entry.write_text("{not json")
    assert validate_partitions(spec, layout, judged, "train1").cached == [] and len(suite_runs) == 3


def test_a_feature_set_is_reused_for_the_same_inputs_and_rebuilt_when_they_change(spec, layout, monkeypatch):
    days = [f"2011-06-{d:02d}" for d in range(1, 10)]
    replay_days(spec, layout, FIXTURES, days[0], days[-1])
    settled(layout)
    for day in days:  # promoted without the suite: this test is about features
        staged = Path(ingest_partition(spec, layout, day).staged)
        with partition_lock(layout, "bike_demand", day):
            promote_staged(layout, "bike_demand", day, staged, "old")
    first = build_features(spec, layout, days, "run1")
    built: list[str] = []
    import tasks.features as features

    real = features._build
    monkeypatch.setattr(features, "_build", lambda s, lay, d, r: built.append(r) or real(s, lay, d, r))
    second = build_features(spec, layout, list(reversed(days)), "run2")
    assert built == [] and second.train_partitions == first.train_partitions and second.train_rows == first.train_rows
    assert second.train_features == str(layout.train_features("bike_demand", "run2"))
    for a, b in [(first.train_raw, second.train_raw), (first.train_features, second.train_features)]:
        assert Path(a).read_bytes() == Path(b).read_bytes() and Path(a).stat().st_ino == Path(b).stat().st_ino
    # another features section: a miss
    fewer = spec.model_copy(update={"features": spec.features.model_copy(update={"cyclical": {"hr": 24}})})
    build_features(fewer, layout, days, "run3")
    assert built == ["run3"]
    # another partition's bytes: a miss
    path = layout.raw_partition("bike_demand", days[0])
    pd.read_parquet(path).head(20).to_parquet(path, index=False)
    rebuilt = build_features(spec, layout, days, "run4")
    assert built == ["run3", "run4"] and rebuilt.train_rows == first.train_rows - 4


def test_cache_clear_is_one_command(spec, layout, judged, capsys):
    from tasks.__main__ import main

    build_features(
        spec.model_copy(update={"training": spec.training.model_copy(update={"holdout_days": 1})}),
        layout,
        judged,
        "run1",
    )
    assert main(["cache", "clear", "--pipeline", "bike_demand", "--kind", "validation"]) == 0
    said = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert said == {"pipeline": "bike_demand", "removed": {"validation": 3}}
    assert not layout.cache_dir("bike_demand", "validation").exists()
    assert layout.cache_dir("bike_demand", "features").is_dir()
    assert main(["cache", "clear", "--pipeline", "bike_demand"]) == 0
    said = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert said["removed"] == {"validation": 0, "features": 1}
    assert not (layout.root / "cache" / "bike_demand" / "features").exists()
    with pytest.raises(ValueError, match="cache kind"):
        cache.clear(layout, "bike_demand", "models")


def test_a_window_with_every_verdict_kept_never_imports_great_expectations(judged, data_root):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "import sys\nfrom tasks.spec import load_spec\nfrom tasks.storage import DataLayout\n"
        "from tasks.validate import validate_partitions\n"
        f"result = validate_partitions(load_spec('bike_demand'), DataLayout({str(data_root)!r}), {judged!r}, 't')\n"
        "print(result.cached, 'great_expectations' in sys.modules, 'pandas' in sys.modules)"
    )
    env = dict(os.environ) | {"MLP_DATA_ROOT": str(data_root)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"{judged!r} False False"
