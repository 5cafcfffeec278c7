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


def test_adult_income_is_a_classification_spec_with_sensitive_slices():
    spec = load_spec("adult_income")
    assert spec.task == "classification" and spec.schema_.positive_label == ">50K"
    assert set(spec.schema_.sensitive) == {"sex", "race"}
    assert not {"sex", "race", "fnlwgt", "batch_date"} & set(spec.schema_.input_columns)
    assert spec.gate.slices is not None and spec.gate.primary_metric == "roc_auc"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gate.primary_metric": "roc_auc"}, "not defined for regression"),
        ({"gate.thresholds": {"f1": {"min": 0.5}}}, "not defined for regression"),
        ({"training.baseline": {"family": "logistic_regression"}}, "classification family"),
        ({"task": "classification", "gate.primary_metric": "roc_auc", "gate.thresholds": {}}, "positive_label"),
        ({"gate.slices": {"max_gap": 0.1}}, "schema.sensitive"),
        ({"gate.thresholds": {"rmse": {}}}, "needs min or max"),
    ],
)
def test_gate_and_task_mismatches_are_spec_errors(tmp_path, changes, message):
    with pytest.raises(SpecError, match=message):
        load_spec(_write_variant(tmp_path, **changes))


def test_each_heavy_stage_takes_its_resources_from_its_spec_entry(spec):
    from tasks.spec import HEAVY_STAGES

    assert spec.stage_resources("train_model").memory_limit == "8Gi"  # resources.train in the shipped spec
    assert (
        spec.stage_resources("validate_partitions").memory_request
        == "2Gi"
        == spec.stage_resources("validate_data").memory_request
    )
    assert spec.stage_resources("check_drift").memory_limit == "4Gi"  # resources.default
    assert set(HEAVY_STAGES.values()) == {"validate", "features", "train", "evaluate", "monitor", "score", "trial"}
    assert spec.stage_resources("search_trials").memory_limit == "4Gi"  # resources.trial, else resources.default
    with pytest.raises(SpecError, match="'gate_model' is not a heavy stage"):
        spec.stage_resources("gate_model")
    with pytest.raises(SpecError, match="'train' is not a heavy stage"):  # the spec's key is not a stage name
        spec.stage_resources("train")


@pytest.mark.parametrize("name", ["../../config/pipelines/bike_demand", "bike_demand.yaml", "/etc/passwd", "Bike"])
def test_load_spec_takes_names_only_from_a_string(name):
    with pytest.raises(SpecError, match="is not a pipeline name.*available pipelines: .*bike_demand"):
        load_spec(name)
    assert load_spec(Path("config/pipelines/bike_demand.yaml")).name == "bike_demand"  # a Path stays allowed


def test_bank_marketing_keeps_the_leaking_duration_out_and_slices_age_in_bands():
    spec = load_spec("bank_marketing")
    assert "duration" not in spec.schema_.input_columns and "duration" not in spec.features.source_columns
    assert spec.schema_.columns["job"] == "category" and "unknown" in spec.features.categorical["job"]
    assert spec.features.unseen == "other"
    assert spec.gate.slices is not None and spec.gate.slices.rule("age").bands == [30, 40, 50, 60]


def test_slice_rules_name_only_sensitive_columns(tmp_path):
    raw = yaml.safe_load((Path(__file__).parents[3] / "config/pipelines/adult_income.yaml").read_text())
    raw["gate"]["slices"]["columns"] = {"age": {"bands": [30, 50]}}  # age is not in schema.sensitive
    path = tmp_path / "adult_income.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"gate.slices.columns names columns that are not schema.sensitive: \['age'\]"):
        load_spec(path)


TEAM_FEATURES = Path(__file__).resolve().parents[2] / "fixtures"  # holds the team_features package


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        ({"transformer": "no_such_team_pkg.mod:Thing"}, r"module 'no_such_team_pkg.mod' does not import"),
        ({"transformer": "team_features.ratios:Missing"}, r"team_features.ratios has no attribute 'Missing'"),
        ({"transformer": "team_features.ratios:NoTransform"}, r"is not a transformer: a class with fit\(X"),
        ({"transformer": "team_features.ratios:np"}, r"is not a transformer"),
        ({"transformer": "team_features/ratios.py"}, r"features.custom.0.transformer"),  # not an import path
        ({"params": {"clipping": 3}}, r"does not take params \['clipping'\]"),
        ({"columns": ["temp", "cnt"]}, r"callers cannot send.*cnt"),
    ],
)
def test_a_custom_transformer_that_does_not_resolve_is_refused_when_the_spec_loads(
    tmp_path, monkeypatch, custom, message
):
    monkeypatch.syspath_prepend(str(TEAM_FEATURES))
    step = {"name": "feels", "transformer": "team_features.ratios:RatioFeature", "columns": ["atemp", "temp"]}
    path = _write_variant(tmp_path, **{"features.custom": [step | custom]})
    with pytest.raises(SpecError, match=message) as refused:
        load_spec(path)
    assert str(path) in str(refused.value)


def test_where_the_model_carries_the_code_a_custom_transformer_is_not_imported_but_its_path_is_still_checked(
    tmp_path,
):
    """The model server and scoring load specs with resolve_code=False: no import, the path's syntax still checked."""
    step = {"name": "feels", "transformer": "no_such_team_pkg.mod:Thing", "columns": ["atemp", "temp"]}
    path = _write_variant(tmp_path, **{"features.custom": [step | {"params": {"anything": 1}}]})
    assert load_spec(path, resolve_code=False).features.custom[0].transformer == "no_such_team_pkg.mod:Thing"
    with pytest.raises(SpecError, match=r"module 'no_such_team_pkg.mod' does not import"):
        load_spec(path)  # training, DAG parsing, `python -m tasks`: resolved
    malformed = _write_variant(tmp_path, **{"features.custom": [step | {"transformer": "team_features/ratios.py"}]})
    with pytest.raises(SpecError, match=r"features.custom.0.transformer"):
        load_spec(malformed, resolve_code=False)


def test_a_custom_transformer_by_import_path_loads_and_its_columns_are_features_sources(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TEAM_FEATURES))
    step = {"name": "feels", "transformer": "team_features.ratios:RatioFeature", "columns": ["atemp", "temp"]}
    spec = load_spec(_write_variant(tmp_path, **{"features.custom": [step | {"params": {"clip": 3.0}}]}))
    assert spec.features.custom[0].params == {"clip": 3.0}
    assert {"atemp", "temp"} <= set(spec.features.source_columns)
    twice = _write_variant(tmp_path, **{"features.custom": [step, step]})
    with pytest.raises(SpecError, match=r"names must be unique, repeated: \['feels'\]"):
        load_spec(twice)
