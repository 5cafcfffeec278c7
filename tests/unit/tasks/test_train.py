"""Training on real rows: what the candidate's run records, the reference sample it keeps, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks import stages
from tasks.errors import PermanentError
from tasks.models.binary import PositiveProbability
from tasks.results import Datasets
from tasks.settings import get_settings
from tasks.spec import ModelSpec, load_spec
from tasks.storage import DataLayout
from tasks.tracking import client
from tasks.train import TrainingError, make_estimator, model_requirements, train_model
from tests.unit.tasks.conftest import run_without_team_package


def test_candidate_beats_baseline_on_the_real_holdout(use_champion_store):
    e = use_champion_store["evaluation"]
    assert e["candidate"]["rmse"] < 0.9 * e["baseline"]["rmse"]
    assert e["candidate"]["r2"] > 0.6
    assert use_champion_store["decision"]["passed"] is True


def test_run_logs_params_metrics_signature_example_and_lineage(use_champion_store):
    import mlflow

    settings = get_settings()
    trained = use_champion_store["trained"]
    run = client(settings).get_run(trained["mlflow_run_id"])
    assert run.data.params["model.family"] == "lightgbm" and run.data.params["seed"] == "42"
    assert {"train_rmse", "holdout_rmse", "baseline_holdout_rmse"} <= set(run.data.metrics)
    partitions = json.loads(run.data.tags["data.train_partitions"])
    assert partitions[0] == "2011-05-30" and "2011-06-26" not in partitions  # the last days are holdout
    assert run.data.tags["role"] == "candidate" and run.data.tags["airflow.run_id"] == "fixture"
    assert run.inputs.dataset_inputs, "training dataset lineage is logged"
    baseline = client(settings).get_run(trained["baseline_mlflow_run_id"])
    assert baseline.data.tags["role"] == "baseline" and baseline.data.tags["candidate_mlflow_run_id"] == run.info.run_id
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    info = mlflow.models.get_model_info(trained["model_uri"])
    inputs = [c.name for c in info.signature.inputs.inputs]
    assert "cnt" not in inputs and "casual" not in inputs and "hr" in inputs
    assert info.saved_input_example_info is not None
    # the model states what it needs to load, pinned to what trained it (no 16 s inference per model)
    requirements = Path(mlflow.pyfunc.get_model_dependencies(trained["model_uri"])).read_text()
    assert set(model_requirements("lightgbm")) <= set(requirements.split())
    assert any(r.startswith("lightgbm==") for r in requirements.split())


def test_model_requirements_pin_the_family_package_and_nothing_unknown():
    from importlib.metadata import version

    assert f"torch=={version('torch')}" in model_requirements("torch")
    assert not any(r.startswith(("torch==", "lightgbm==")) for r in model_requirements("ridge"))
    assert f"scikit-learn=={version('scikit-learn')}" in model_requirements("ridge")


def test_the_candidate_keeps_its_training_sample_as_the_drift_reference(use_champion_store):
    import mlflow

    spec = load_spec("bike_demand")
    trained = use_champion_store["trained"]
    local = DataLayout(use_champion_store["root"]).reference_inputs("bike_demand", "fixture")
    kept = pd.read_parquet(local)
    assert list(kept.columns) == [*spec.schema_.input_columns, "cnt"]  # inputs and target, no predictions
    assert len(kept) == trained["reference_rows"] == trained["train_rows"] == 21 * 24  # fewer rows than 5,000
    logged = mlflow.artifacts.download_artifacts(run_id=trained["mlflow_run_id"], artifact_path="reference")
    assert sorted(p.name for p in Path(logged).iterdir()) == [
        "inputs.parquet",
        "predictions.parquet",
        "profile.json",  # the sample's distinct values and counts: the monitor's one-pass statistics
    ]
    assert "reference.parquet" not in str(list(local.parent.iterdir()))  # the in-sample reference is gone
    baseline_artifacts = {a.path for a in client(get_settings()).list_artifacts(trained["baseline_mlflow_run_id"])}
    assert "reference" not in baseline_artifacts  # the baseline is never served: no reference


def test_unknown_hyperparameter_is_a_permanent_training_error():
    with pytest.raises(TrainingError, match="ridge does not accept") as err:
        make_estimator(ModelSpec(family="ridge", params={"alphaa": 1}), 0)
    assert isinstance(err.value, PermanentError)


def test_a_classification_pipeline_predicts_the_positive_class_probability():
    spec = load_spec("adult_income")
    estimator = make_estimator(spec.training.model, 0, spec)
    assert isinstance(estimator, PositiveProbability) and estimator.positive_label == ">50K"
    assert type(make_estimator(spec.training.model, 0)).__name__ == "LGBMRegressor"  # no spec: regression


def test_an_empty_featurised_dataset_is_refused_before_anything_is_logged(data_root, tmp_path):
    spec = load_spec("bike_demand")
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"cnt": pd.Series([], dtype="float64")}).to_parquet(empty)
    datasets = Datasets(
        train_raw=str(empty),
        train_features=str(empty),
        holdout=str(empty),
        train_partitions=[],
        holdout_partitions=[],
        train_rows=0,
        holdout_rows=0,
    )
    with pytest.raises(TrainingError, match="is empty or has no target column"):
        train_model(spec, get_settings(), DataLayout(data_root), datasets, "r1")
    assert not (data_root / "mlflow").exists()


def test_a_stale_datasets_result_is_refused_naming_the_field(data_root):
    from tasks.results import ResultError

    with pytest.raises(ResultError, match=r"Datasets expected.*train_features: Field required"):
        stages.train_model("bike_demand", {"train_raw": "x", "holdout": "y"}, "r1")


def test_a_custom_transformer_ships_inside_the_model_and_runs_where_its_module_is_not_importable(
    custom_model, tmp_path
):
    """features.custom names the team's own transformer (tests/fixtures/team_features); the model logged to MLflow
    carries its package (code_paths), so a process that cannot import it still loads the model and predicts what
    the training process predicts, and differently from the same model without the transformer."""

    import mlflow
    import numpy as np
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline

    from tasks.features import FeatureBuilder

    spec, datasets, trained = custom_model["spec"], custom_model["datasets"], custom_model["trained"]
    assert "feels_ratio" in pd.read_parquet(datasets.train_features).columns

    mlflow.set_tracking_uri(get_settings().mlflow_tracking_uri)
    local = mlflow.artifacts.download_artifacts(trained.model_uri, dst_path=str(tmp_path / "model"))
    assert (Path(local) / "code" / "team_features" / "ratios.py").is_file()
    inputs = spec.schema_.input_columns
    holdout = pd.read_parquet(datasets.holdout)[inputs]
    rows = tmp_path / "rows.parquet"
    holdout.to_parquet(rows)
    in_process = np.asarray(mlflow.pyfunc.load_model(local).predict(holdout), dtype="float64")

    script = (
        "import importlib.util, json, sys\n"
        "import mlflow, pandas as pd\n"
        "assert importlib.util.find_spec('team_features') is None, 'team_features is importable here'\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "import team_features\n"
        "out = [float(v) for v in model.predict(pd.read_parquet(sys.argv[2]))]\n"
        "print(json.dumps({'predictions': out, 'module': team_features.__file__}))\n"
    )
    served = run_without_team_package(script, local, str(rows), cwd=tmp_path)
    assert served["module"].startswith(str(Path(local) / "code")), served["module"]  # from the model, not the team
    np.testing.assert_allclose(served["predictions"], in_process, rtol=1e-9, atol=1e-9)

    train_raw = pd.read_parquet(datasets.train_raw)
    plain = FeatureBuilder.from_spec(spec.features.model_copy(update={"custom": []}))
    without = Pipeline([("features", plain), ("model", Ridge(alpha=1.0))]).fit(train_raw[inputs], train_raw["cnt"])
    assert not np.allclose(without.predict(holdout), in_process, rtol=1e-3)  # the transformer really ran
