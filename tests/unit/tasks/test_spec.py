from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.spec import SpecError, list_specs, load_spec


def test_bike_demand_inputs_exclude_target_id_and_leakage(spec):
    assert spec.schema_.target == "cnt"
    for col in ("cnt", "instant", "casual", "registered"):
        assert col not in spec.schema_.input_columns
    assert {"dteday", "hr", "temp", "weathersit"} <= set(spec.schema_.input_columns)


def test_every_shipped_spec_loads():
    names = [s.name for s in list_specs()]
    assert "bike_demand" in names


def test_unknown_pipeline_lists_available():
    with pytest.raises(SpecError, match="available pipelines: .*bike_demand"):
        load_spec("no_such_pipeline")


def _write_variant(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(Path("config/pipelines/bike_demand.yaml").read_text())
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_feature_on_a_leakage_column_is_rejected(tmp_path):
    path = _write_variant(tmp_path, **{"features.numeric": ["temp", "casual"]})
    with pytest.raises(SpecError, match="callers cannot send.*casual"):
        load_spec(path)


def test_holdout_must_leave_training_data(tmp_path):
    path = _write_variant(tmp_path, **{"training.holdout_days": 21})
    with pytest.raises(SpecError, match="holdout_days must be smaller"):
        load_spec(path)


def test_unknown_key_is_an_error_not_ignored(tmp_path):
    path = _write_variant(tmp_path, **{"gate.max_rmsee": 3})
    with pytest.raises(SpecError, match="max_rmsee"):
        load_spec(path)


def test_pipelines_dir_override(tmp_path, monkeypatch):
    (tmp_path / "bike_demand.yaml").write_text(Path("config/pipelines/bike_demand.yaml").read_text())
    monkeypatch.setenv("MLP_PIPELINES_DIR", str(tmp_path))
    assert [s.name for s in list_specs()] == ["bike_demand"]
    monkeypatch.setenv("MLP_PIPELINES_DIR", str(tmp_path / "empty"))
    assert list_specs() == []
