from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.ingest import ingest_partition
from tasks.partitions import current_source, partition_lock, promote_staged, versions
from tasks.replay import replay_days
from tasks.validate import ValidationFailedError, load_suite, quarantine_message, validate_partitions, validate_staged
from tests.unit.conftest import FIXTURES


def _age(layout):
    import os
    import time

    for path in layout.landing_dir("bike_demand").glob("*.csv"):
        os.utime(path, (time.time() - 60, time.time() - 60))


@pytest.fixture
def three_days(spec, layout):
    """Three raw partitions; 2011-06-02's breaks today's suite (as if it was ingested before the suite tightened)."""
    replay_days(spec, layout, FIXTURES, "2011-06-01", "2011-06-03", corrupt=frozenset({"2011-06-02"}))
    _age(layout)
    for day in ("2011-06-01", "2011-06-02", "2011-06-03"):
        staged = ingest_partition(spec, layout, day, run_key="old")
        with partition_lock(layout, "bike_demand", day):  # promoted without today's suite
            promote_staged(layout, "bike_demand", day, Path(staged.staged), "old")
    return ["2011-06-01", "2011-06-02", "2011-06-03"]


def test_bad_partition_is_quarantined_with_reasons_and_good_ones_pass(spec, layout, three_days):
    bad_bytes = layout.raw_partition("bike_demand", "2011-06-02").read_bytes()
    sidecar = layout.raw_partition("bike_demand", "2011-06-02").with_name("_source.json")
    landing_sha = json.loads(sidecar.read_text())["sha256"]
    result = validate_partitions(spec, layout, three_days, "run1")
    assert result.valid == ["2011-06-01", "2011-06-03"]
    assert [q.partition for q in result.quarantined] == ["2011-06-02"]
    # moved, not deleted: the exact bytes sit in quarantine beside the reasons
    assert not layout.raw_partition("bike_demand", "2011-06-02").exists()
    qdir = layout.quarantine_dir("bike_demand", "2011-06-02") / "run1"
    assert (qdir / "part.parquet").read_bytes() == bad_bytes
    assert json.loads((qdir / "_source.json").read_text())["sha256"] == landing_sha  # the sidecar travelled too
    assert not sidecar.exists()
    history = versions(layout, "bike_demand", "2011-06-02")  # the history stays in raw/, and says what happened
    assert [v["outcome"] for v in history] == ["accepted", "quarantined"]
    assert history[-1]["stage"] == "validation (training)" and history[-1]["landing_sha256"] == landing_sha
    reasons = json.loads((qdir / "reasons.json").read_text())
    failed = {(f["expectation"], f["column"]): f for f in reasons["failures"]}
    hum = failed[("expect_column_values_to_be_between", "hum")]
    assert hum["unexpected_count"] == 6 and hum["element_count"] == 24
    assert ("expect_column_values_to_not_be_null", "temp") in failed
    assert any("column 'hum': 6 of 24 rows unexpected" in r for r in reasons["reasons"])
    assert layout.raw_partitions("bike_demand") == ["2011-06-01", "2011-06-03"]


def test_quarantine_message_names_file_expectation_and_rows(spec, layout, three_days):
    result = validate_partitions(spec, layout, three_days, "run1").to_dict()
    msg = quarantine_message("bike_demand", result["quarantined"], len(result["valid"]))
    assert "partition 2011-06-02" in msg and "landing/bike_demand/2011-06-02.csv" in msg
    assert "expect_column_values_to_be_between on column 'hum': 6 of 24 rows unexpected" in msg
    assert "re-run the ingest DAG" in msg


def test_a_bad_redelivery_is_judged_beside_the_valid_partition_which_stays(spec, layout):
    replay_days(spec, layout, FIXTURES, "2011-06-05", "2011-06-05")
    _age(layout)
    good = ingest_partition(spec, layout, "2011-06-05", run_key="r1")
    assert validate_staged(spec, layout, {"2011-06-05": good.sha256}, "r1").valid == ["2011-06-05"]
    raw = layout.raw_partition("bike_demand", "2011-06-05")
    kept = raw.read_bytes()
    # upstream re-delivers the day with impossible humidities and a missing temperature
    replay_days(spec, layout, FIXTURES, "2011-06-05", "2011-06-05", corrupt=frozenset({"2011-06-05"}))
    _age(layout)
    bad = ingest_partition(spec, layout, "2011-06-05", run_key="r2")
    assert Path(bad.staged).is_file() and raw.read_bytes() == kept  # staged beside it, not over it
    result = validate_staged(spec, layout, {"2011-06-05": bad.sha256}, "r2")
    assert result.valid == [] and result.quarantined[0].stage == "validation"
    assert raw.read_bytes() == kept  # the last valid version, byte for byte
    assert current_source(layout, "bike_demand", "2011-06-05")["sha256"] == good.sha256
    qdir = layout.quarantine_dir("bike_demand", "2011-06-05") / "r2"
    assert pd.read_parquet(qdir / "part.parquet")["hum"].max() == 1.7  # the refused batch is kept, with reasons
    assert json.loads((qdir / "reasons.json").read_text())["sha256"] == bad.sha256
    assert (qdir / "2011-06-05.csv").read_bytes() == layout.landing_file("bike_demand", "2011-06-05").read_bytes()
    assert not Path(bad.staged).parent.exists()
    history = versions(layout, "bike_demand", "2011-06-05")
    assert [(v["outcome"], v["landing_sha256"]) for v in history] == [
        ("accepted", good.sha256),
        ("quarantined", bad.sha256),
    ]
    assert history[0]["parquet_sha256"] == hashlib.sha256(kept).hexdigest()


def test_batches_validated_out_of_order_never_replace_a_newer_delivery(spec, layout):
    replay_days(spec, layout, FIXTURES, "2011-06-06", "2011-06-06")
    _age(layout)
    older = ingest_partition(spec, layout, "2011-06-06", run_key="r1")  # run 1 stages the first delivery
    landing = layout.landing_file("bike_demand", "2011-06-06")
    landing.write_text(landing.read_text().replace(",0.8,", ",0.81,", 1))  # a correction arrives
    _age(layout)
    newer = ingest_partition(spec, layout, "2011-06-06", run_key="r2")  # run 2 stages it
    assert validate_staged(spec, layout, {"2011-06-06": newer.sha256}, "r2").valid == ["2011-06-06"]
    assert validate_staged(spec, layout, {"2011-06-06": older.sha256}, "r1").valid == ["2011-06-06"]  # late
    assert current_source(layout, "bike_demand", "2011-06-06")["sha256"] == newer.sha256
    assert [v["outcome"] for v in versions(layout, "bike_demand", "2011-06-06")] == ["accepted", "superseded"]


def test_missing_partition_and_missing_suite_are_errors(spec, layout, tmp_path):
    with pytest.raises(ValidationFailedError, match="not in the raw store"):
        validate_partitions(spec, layout, ["2011-06-09"], "run3")
    with pytest.raises(ValidationFailedError, match="suite not found"):
        load_suite(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValidationFailedError, match="not a valid expectation suite"):
        load_suite(tmp_path / "bad.json")


def test_too_few_valid_partitions_refuses_to_train(data_root, three_days):
    from tasks import stages

    with pytest.raises(ValidationFailedError, match="only 2 valid partitions, fewer than min_partitions=21") as err:
        stages.validate_data("bike_demand", three_days, "run4")
    assert "partition 2011-06-02" in str(err.value)  # the quarantine explanation comes with it


def test_two_runs_judging_the_same_staged_batch_at_once_promote_it_once(spec, layout, monkeypatch):
    import threading

    from tasks import validate

    replay_days(spec, layout, FIXTURES, "2011-06-07", "2011-06-07")
    _age(layout)
    staged = ingest_partition(spec, layout, "2011-06-07", run_key="r1")
    ingest_partition(spec, layout, "2011-06-07", run_key="r2")  # a duplicate announcement stages the same bytes
    both_read = threading.Barrier(2, timeout=60)
    judge = validate.validate_frame

    def judge_together(*args, **kwargs):  # both runs have read the batch before either takes the lock
        failures = judge(*args, **kwargs)
        both_read.wait()
        return failures

    monkeypatch.setattr(validate, "validate_frame", judge_together)
    results: dict[str, validate.ValidationResult] = {}

    def run(key: str) -> None:
        results[key] = validate_staged(spec, layout, {"2011-06-07": staged.sha256}, key)

    threads = [threading.Thread(target=run, args=(k,)) for k in ("r1", "r2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert {k: r.valid for k, r in results.items()} == {"r1": ["2011-06-07"], "r2": ["2011-06-07"]}
    assert [v["outcome"] for v in versions(layout, "bike_demand", "2011-06-07")] == ["accepted"]
    assert current_source(layout, "bike_demand", "2011-06-07")["sha256"] == staged.sha256
