from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tasks.spec import REPO_ROOT, SpecError, load_spec
from tasks.suite import read_sample, starter_suite, suite_problems, write_suite
from tests.unit.conftest import FIXTURES


def test_shipped_suites_agree_with_their_schemas():
    for name in ("bike_demand", "adult_income"):
        spec = load_spec(name)
        raw = json.loads(spec.expectations_path.read_text())
        assert suite_problems(dict(spec.schema_.columns), raw) == []


def test_suite_and_schema_disagreements_are_each_named():
    columns = {"day": "str", "n": "int", "t": "float"}
    suite = {
        "expectations": [
            {"type": "expect_table_columns_to_match_set", "kwargs": {"column_set": ["day", "n", "x"]}},
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "gone"}},
            {"type": "expect_column_values_to_be_in_type_list", "kwargs": {"column": "t", "type_list": ["int64"]}},
        ]
    }
    problems = suite_problems(columns, suite)
    assert any("lacks schema columns ['t']" in p for p in problems)
    assert any("does not declare: ['x']" in p for p in problems)
    assert any("'gone'" in p for p in problems)
    assert any("'t' allows ['int64'], but the schema declares it float" in p for p in problems)


def test_loading_a_spec_whose_suite_disagrees_fails_with_the_reason(tmp_path, monkeypatch):
    spec = yaml.safe_load((REPO_ROOT / "config/pipelines/bike_demand.yaml").read_text())
    suite = json.loads((REPO_ROOT / spec["expectations"]).read_text())
    suite["expectations"][0]["kwargs"]["column_set"].remove("cnt")
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    spec["expectations"] = str(tmp_path / "suite.json")  # absolute: REPO_ROOT / abs is abs
    (tmp_path / "bike_demand.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=r"disagrees with schema.columns: .*lacks schema columns \['cnt'\]"):
        load_spec(tmp_path / "bike_demand.yaml")
    assert load_spec(tmp_path / "bike_demand.yaml", check_suite=False).name == "bike_demand"


def test_a_starter_suite_from_a_sample_validates_that_sample(tmp_path, monkeypatch):
    import pandas as pd

    from tasks.validate import load_suite, validate_frame

    spec = load_spec("adult_income")
    sample = read_sample(spec, FIXTURES / "adult.csv.gz")  # date-less: days come from rows_per_day
    assert sample["batch_date"].nunique() == 3
    suite = starter_suite(spec, sample)
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_column_values_to_be_in_set", "sex") in kinds
    assert ("expect_column_values_to_be_between", "age") in kinds
    assert ("expect_column_unique_value_count_to_be_between", "batch_date") in kinds
    assert suite_problems(dict(spec.schema_.columns), suite) == []
    ages = next(e for e in suite["expectations"] if e["kwargs"].get("column") == "age" and "min_value" in e["kwargs"])
    assert ages["kwargs"]["min_value"] < 17 and ages["kwargs"]["max_value"] > 90  # the sample's range, widened
    out = tmp_path / "suite.json"
    written = write_suite("adult_income", str(FIXTURES / "adult.csv.gz"), str(out))
    assert written["expectations"] == len(suite["expectations"])
    day = sample[sample.batch_date == "2024-01-01"].replace({"?": None})
    typed = day.astype({c: "int64" for c, k in spec.schema_.columns.items() if k == "int"})
    assert validate_frame(pd.DataFrame(typed), load_suite(out)) == []


def test_the_cli_writes_a_suite(tmp_path):
    import os
    import subprocess
    import sys

    sample = tmp_path / "sample.csv"
    shutil.copy(FIXTURES / "adult.csv.gz", tmp_path / "adult.csv.gz")
    sample = tmp_path / "adult.csv.gz"
    out = tmp_path / "out.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tasks",
            "suite",
            "--pipeline",
            "adult_income",
            "--sample",
            str(sample),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["name"] == "adult_income"
