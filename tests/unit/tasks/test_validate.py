from __future__ import annotations

import json

import pandas as pd
import pytest

from tasks.ingest import ingest_partition
from tasks.replay import replay_days
from tasks.validate import ValidationFailed, load_suite, quarantine_message, validate_partitions
from tests.conftest import SHARED

pytestmark = pytest.mark.needs_data


@pytest.fixture
def three_days(spec, layout):
    replay_days(spec, layout, SHARED, "2011-06-01", "2011-06-03", corrupt=frozenset({"2011-06-02"}))
    for day in ("2011-06-01", "2011-06-02", "2011-06-03"):
        ingest_partition(spec, layout, day)
    return ["2011-06-01", "2011-06-02", "2011-06-03"]


def test_bad_partition_is_quarantined_with_reasons_and_good_ones_pass(spec, layout, three_days):
    bad_bytes = layout.raw_partition("bike_demand", "2011-06-02").read_bytes()
    sidecar = layout.raw_partition("bike_demand", "2011-06-02").with_name("_source.json")
    sidecar.write_text('{"sha256": "abc"}')  # what ingest keeps beside a partition
    result = validate_partitions(spec, layout, three_days, "run1")
    assert result.valid == ["2011-06-01", "2011-06-03"]
    assert [q.partition for q in result.quarantined] == ["2011-06-02"]
    # moved, not deleted: the exact bytes sit in quarantine beside the reasons
    assert not layout.raw_partition("bike_demand", "2011-06-02").exists()
    qdir = layout.quarantine_dir("bike_demand", "2011-06-02") / "run1"
    assert (qdir / "part.parquet").read_bytes() == bad_bytes
    assert (qdir / "_source.json").is_file() and not sidecar.parent.exists()  # the whole partition moved
    reasons = json.loads((qdir / "reasons.json").read_text())
    failed = {(f["expectation"], f["column"]): f for f in reasons["failures"]}
    hum = failed[("expect_column_values_to_be_between", "hum")]
    assert hum["unexpected_count"] == 6 and hum["element_count"] == 24
    assert ("expect_column_values_to_not_be_null", "temp") in failed
    assert layout.raw_partitions("bike_demand") == ["2011-06-01", "2011-06-03"]


def test_quarantine_message_names_file_expectation_and_rows(spec, layout, three_days):
    result = validate_partitions(spec, layout, three_days, "run1").to_dict()
    msg = quarantine_message("bike_demand", result["quarantined"], len(result["valid"]))
    assert "partition 2011-06-02" in msg and "landing/bike_demand/2011-06-02.csv" in msg
    assert "expect_column_values_to_be_between on column 'hum': 6 of 24 rows unexpected" in msg
    assert "re-run the ingest DAG" in msg


def test_wrong_schema_is_quarantined(spec, layout):
    replay_days(spec, layout, SHARED, "2011-06-05", "2011-06-05")
    path = layout.landing_file("bike_demand", "2011-06-05")
    pd.read_csv(path).drop(columns=["weathersit"]).rename(columns={"hum": "humidity"}).to_csv(path, index=False)
    ingest_partition(spec, layout, "2011-06-05")
    result = validate_partitions(spec, layout, ["2011-06-05"], "run2")
    assert result.valid == []
    kinds = {f.expectation for f in result.quarantined[0].failures}
    assert "expect_table_columns_to_match_set" in kinds


def test_missing_partition_and_missing_suite_are_errors(spec, layout, tmp_path):
    with pytest.raises(ValidationFailed, match="not in the raw store"):
        validate_partitions(spec, layout, ["2011-06-09"], "run3")
    with pytest.raises(ValidationFailed, match="suite not found"):
        load_suite(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValidationFailed, match="not a valid expectation suite"):
        load_suite(tmp_path / "bad.json")


def test_too_few_valid_partitions_refuses_to_train(data_root, three_days):
    from tasks import stages

    with pytest.raises(ValidationFailed, match="only 2 valid partitions, fewer than min_partitions=21") as err:
        stages.validate("bike_demand", three_days, "run4")
    assert "partition 2011-06-02" in str(err.value)  # the quarantine explanation comes with it
