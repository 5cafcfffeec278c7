"""Search, selection and calibration on real rows (the committed UCI Adult cut).

The adult_income spec's training block is varied per test; the rows are the fixture's first 4,000 as the
training window (two replayed days of 2,000) and the next 2,000 as the gate's holdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.evaluate import target_values
from tasks.features import FeatureBuilder
from tasks.metrics import calibration_error
from tasks.results import Datasets
from tasks.search import SelectionError
from tasks.settings import get_settings
from tasks.spec import PipelineSpec, SpecError, load_spec
from tasks.storage import DataLayout
from tasks.tracking import client
from tasks.train import train_model
from tests.unit.conftest import FIXTURES

SEARCH = {
    "trials": 3,
    "seed": 7,
    "space": {
        "lightgbm": {
            "num_leaves": {"type": "int", "low": 4, "high": 64, "log": True},
            "learning_rate": {"type": "float", "low": 0.02, "high": 0.3, "log": True},
            "min_child_samples": {"type": "categorical", "choices": [10, 40]},
        }
    },
}
FAST_LGBM = {"family": "lightgbm", "params": {"n_estimators": 60}}


def adult_spec(**training: Any) -> PipelineSpec:
    """The shipped adult_income spec with its training block changed (validated like a file would be)."""
    raw = load_spec("adult_income").model_dump(by_alias=True, exclude_none=True)
    raw["training"] = {k: v for k, v in raw["training"].items() if k not in ("search", "candidates")}
    raw["training"] |= {"model": FAST_LGBM, **training}
    return PipelineSpec.model_validate(raw)


def adult_datasets(folder: Path) -> Datasets:
    """Training window (rows 0..3,999, two days) and holdout (4,000..5,999) from the fixture, as build_features
    would write them."""
    spec = load_spec("adult_income")
    data = pd.read_csv(FIXTURES / "adult.csv.gz", na_values=["?"], keep_default_na=False)
    data["batch_date"] = np.where(data.index < 2000, "2024-01-01", np.where(data.index < 4000, "2024-01-02", "x"))
    train, holdout = data.iloc[:4000].reset_index(drop=True), data.iloc[4000:].reset_index(drop=True)
    features = FeatureBuilder.from_spec(spec.features).transform(train)
    features["income"] = train["income"].to_numpy()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {n: folder / f"{n}.parquet" for n in ("train_raw", "train_features", "holdout")}
    train.to_parquet(paths["train_raw"])
    features.to_parquet(paths["train_features"])
    holdout.to_parquet(paths["holdout"])
    return Datasets(
        train_raw=str(paths["train_raw"]),
        train_features=str(paths["train_features"]),
        holdout=str(paths["holdout"]),
        train_partitions=["2024-01-01", "2024-01-02"],
        holdout_partitions=["2024-01-03"],
        train_rows=4000,
        holdout_rows=2000,
    )


@pytest.fixture
def adult(data_root: Path, tmp_path: Path) -> Datasets:
    return adult_datasets(tmp_path / "datasets")


def _train(spec: PipelineSpec, datasets: Datasets, run_id: str, search_run_id: str | None = None) -> Any:
    settings = get_settings()
    return train_model(spec, settings, DataLayout(settings.data_root), datasets, run_id, search_run_id=search_run_id)


def test_search_is_reproducible_and_every_trial_is_a_nested_run(adult, monkeypatch):
    spec = adult_spec(search=SEARCH)
    first = _train(spec, adult, "r1")
    monkeypatch.setenv("MLP_SEARCH_MAX_TRIALS", "3")  # the environment's cap lowers a 50-trial budget to 3
    get_settings.cache_clear()
    second = _train(adult_spec(search=SEARCH | {"trials": 50}), adult, "r2")
    assert first.params == second.params  # same seed, same data, same trial count: the same best trial
    assert set(first.params) >= {"num_leaves", "learning_rate", "min_child_samples", "n_estimators"}
    assert first.trials == second.trials == {"lightgbm": 3} and first.selection_metric == "roc_auc"
    mlflow = client(get_settings())
    parent = mlflow.get_run(first.mlflow_run_id)
    children = mlflow.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{first.mlflow_run_id}'"
    )
    assert len(children) == 3
    assert all("validation_roc_auc" in c.data.metrics and "model.num_leaves" in c.data.params for c in children)
    best = max(c.data.metrics["validation_roc_auc"] for c in children)
    assert parent.data.metrics["validation_lightgbm_roc_auc"] == pytest.approx(best)
    assert parent.data.params["model.num_leaves"] == str(first.params["num_leaves"])  # the chosen params logged
    journal = DataLayout(get_settings().data_root).search_journal("adult_income", "r1")
    assert journal.is_file() and journal.stat().st_size > 0  # Optuna's journal under the run's folder


def test_the_best_family_on_validation_becomes_the_candidate_not_the_holdout(adult, monkeypatch):
    """Selection scores on the validation split of the training window: the holdout file is never read."""
    import tasks.search as search

    seen: list[int] = []
    real = search._validation_score

    def spy(spec, model, data, metric):
        seen.append(len(data.X_val))
        return real(spec, model, data, metric)

    monkeypatch.setattr(search, "_validation_score", spy)
    candidates = [{"family": "logistic_regression", "params": {"C": 1.0}}]
    spec = adult_spec(candidates=candidates, model={"family": "random_forest", "params": {"n_estimators": 5}})
    holdout = Path(adult.holdout)
    holdout.rename(holdout.with_suffix(".hidden"))  # training cannot touch the gate's holdout
    trained = _train(spec, adult, "r1")
    assert set(trained.validation_scores) == {"random_forest", "logistic_regression"}
    assert trained.family == max(trained.validation_scores, key=trained.validation_scores.__getitem__)
    assert trained.family == "logistic_regression"  # 5 shallow-sampled trees rank worse than the linear model
    assert seen == [800, 800]  # date-less data: a stratified 20 % of the 4,000 training rows
    run = client(get_settings()).get_run(trained.mlflow_run_id)
    assert run.data.tags["model_family"] == "logistic_regression"
    assert run.data.tags["data.validation_split"].startswith("stratified")
    baseline = client(get_settings()).get_run(trained.baseline_mlflow_run_id)
    assert baseline.data.tags["model_family"] == "logistic_regression"  # the baseline stays the baseline


def test_calibration_passes_the_gate_bar_the_uncalibrated_model_fails(adult):
    """Class weighting ranks well but inflates probabilities; calibration on the validation split fixes it."""
    import mlflow

    from tasks.search import validation_split
    from tasks.train import _final_fit

    weighted = {"family": "lightgbm", "params": {"n_estimators": 100, "class_weight": "balanced"}}
    holdout = pd.read_parquet(adult.holdout)
    spec = load_spec("adult_income")
    X, y = holdout[spec.schema_.input_columns], target_values(spec, holdout["income"])  # noqa: N806
    bar = spec.gate.thresholds["calibration_error"].max
    trained = _train(adult_spec(model=weighted, calibration="isotonic"), adult, "r1")
    assert trained.calibration == "isotonic"
    errors = {"isotonic": float(calibration_error(y, mlflow.sklearn.load_model(trained.model_uri).predict(X)))}
    features, train_raw = pd.read_parquet(adult.train_features), pd.read_parquet(adult.train_raw)
    for method in (None, "sigmoid"):
        variant = adult_spec(model=weighted, calibration=method)
        fitted = _final_fit(variant, variant.training.model, features, validation_split(variant, train_raw))
        builder = FeatureBuilder.from_spec(spec.features)
        errors[str(method)] = float(calibration_error(y, fitted.predict(builder.transform(X))))
    assert errors["None"] > bar, errors  # the uncalibrated candidate fails the gate's calibration bar
    assert errors["isotonic"] < bar and errors["sigmoid"] < bar, errors  # the calibrated ones pass it
    assert errors["isotonic"] < errors["None"] / 2


def test_search_spec_is_strict():
    with pytest.raises(ValueError, match="needs a budget"):
        adult_spec(search={k: v for k, v in SEARCH.items() if k != "trials"})
    with pytest.raises(ValueError, match="low < high"):
        adult_spec(search=SEARCH | {"space": {"lightgbm": {"num_leaves": {"type": "int", "low": 9, "high": 3}}}})
    with pytest.raises(ValueError, match="log-scale range needs low > 0"):
        adult_spec(search=SEARCH | {"space": {"lightgbm": {"x": {"type": "float", "low": 0, "high": 1, "log": True}}}})
    with pytest.raises(ValueError, match="not candidates"):
        adult_spec(search=SEARCH | {"space": {"random_forest": {"max_depth": {"type": "int", "low": 2, "high": 9}}}})
    with pytest.raises(ValueError, match="not one of"):
        adult_spec(search=SEARCH | {"metric": "rmse"})
    with pytest.raises(ValueError, match="name a family twice"):
        adult_spec(candidates=[FAST_LGBM])
    with pytest.raises(ValueError, match="Extra inputs"):
        adult_spec(search=SEARCH | {"trails": 3})
    assert issubclass(SpecError, ValueError)


def test_calibration_is_for_classifiers_only():
    raw = load_spec("bike_demand").model_dump(by_alias=True, exclude_none=True)
    raw["training"]["calibration"] = "isotonic"
    with pytest.raises(ValueError, match="classification pipelines only"):
        PipelineSpec.model_validate(raw)


def test_trials_per_pod_cuts_each_searched_familys_budget_into_batches():
    from tasks.search import plan_batches

    spec = adult_spec(search=SEARCH | {"trials": 20, "trials_per_pod": 8})
    batches = plan_batches(spec, None, "parent")
    assert [(b.family, b.trials, b.index) for b in batches] == [
        ("lightgbm", 8, 0),
        ("lightgbm", 8, 1),
        ("lightgbm", 4, 2),
    ]
    assert {b.parent_run_id for b in batches} == {"parent"}
    assert [b.trials for b in plan_batches(spec, 3, "p")] == [3]  # the environment's cap lowers the budget first
    with pytest.raises(ValueError, match="trials_per_pod needs a trials budget"):
        adult_spec(search={k: v for k, v in SEARCH.items() if k != "trials"} | {"minutes": 1, "trials_per_pod": 2})
    with pytest.raises(ValueError, match="greater than 0"):
        adult_spec(search=SEARCH | {"trials_per_pod": 0})


@pytest.fixture
def optuna_pg(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh PostgreSQL database on 127.0.0.1:5432 (trust auth) as Optuna's RDB storage, dropped afterwards."""
    from tests.conftest import fresh_postgres_database

    with fresh_postgres_database("mlp_optuna") as url:
        monkeypatch.setenv("MLP_SEARCH_STORAGE_URL", url)
        get_settings.cache_clear()
        yield url


def test_mapped_batches_share_one_study_in_postgresql_and_training_takes_its_best_trial(adult, optuna_pg):
    """Kubernetes mode's path without the pods: plan -> two batches (what two mapped pods run) -> train."""
    import optuna
    from optuna.trial import TrialState

    from tasks.search import plan_search, search_trials, study_name
    from tasks.storage import database_url

    spec = adult_spec(search=SEARCH | {"trials": 3, "trials_per_pod": 2})
    settings, layout = get_settings(), DataLayout(get_settings().data_root)
    assert settings.search_storage_url == optuna_pg and settings.search_max_trials == 3
    lineage = {"airflow.dag_id": "adult_income_train", "airflow.run_id": "r1"}
    batches = plan_search(spec, settings, "r1", lineage)
    assert [(b.family, b.trials, b.index) for b in batches] == [("lightgbm", 2, 0), ("lightgbm", 1, 1)]
    parent = batches[0].parent_run_id
    assert plan_search(spec, settings, "r1", lineage)[0].parent_run_id == parent  # a retried plan: the same run
    done = [search_trials(spec, settings, layout, adult, "r1", b) for b in batches]
    assert [d.trials for d in done] == [2, 3]  # each batch joined the same study
    assert search_trials(spec, settings, layout, adult, "r1", batches[0]).trials == 3  # a retried batch owes nothing
    assert not layout.search_journal("adult_income", "r1").exists()  # the study is in PostgreSQL, not a journal

    storage = optuna.storages.RDBStorage(database_url(optuna_pg))
    study = optuna.load_study(study_name=study_name(spec, parent, "lightgbm"), storage=storage)
    assert [t.user_attrs["batch"] for t in study.trials] == [0, 0, 1]
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3  # no batch repeated another's draws
    best = study.best_trial

    trained = _train(spec, adult, "r1", search_run_id=parent)
    study = optuna.load_study(study_name=study_name(spec, parent, "lightgbm"), storage=storage)
    assert len(study.trials) == 3 and all(t.state == TrialState.COMPLETE for t in study.trials)  # no extra trial
    assert trained.mlflow_run_id == parent and trained.trials == {"lightgbm": 3}
    assert {k: trained.params[k] for k in best.params} == best.params  # the study's best trial is the model
    assert trained.validation_scores == {"lightgbm": pytest.approx(best.value)}
    mlflow = client(settings)
    run = mlflow.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["role"] == "candidate"
    assert run.data.tags["airflow.run_id"] == "r1" and run.data.params["model.num_leaves"] == str(
        best.params["num_leaves"]
    )
    children = mlflow.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(int(c.data.tags["search.trial"]) for c in children) == [t.number for t in study.trials]
    assert all(c.info.status == "FINISHED" and "validation_roc_auc" in c.data.metrics for c in children)


def test_without_an_rdb_the_batches_share_the_journal_in_the_runs_folder(adult):
    """No ``search_storage_url``: the journal file under the run's folder (the shared store, for pods)."""
    from tasks.search import plan_search, search_trials

    spec = adult_spec(search=SEARCH | {"trials": 3, "trials_per_pod": 2})
    settings, layout = get_settings(), DataLayout(get_settings().data_root)
    assert settings.search_storage_url is None
    batches = plan_search(spec, settings, "r2")
    assert [search_trials(spec, settings, layout, adult, "r2", b).trials for b in batches] == [2, 3]
    assert layout.search_journal("adult_income", "r2").stat().st_size > 0
    trained = _train(spec, adult, "r2", search_run_id=batches[0].parent_run_id)
    assert trained.trials == {"lightgbm": 3} and trained.mlflow_run_id == batches[0].parent_run_id
    empty = plan_search(spec, settings, "r3")[0].parent_run_id  # the plan ran, its batches did not
    with pytest.raises(SelectionError, match="holds no completed trial"):
        _train(spec, adult, "r3", search_run_id=empty)  # training never searches in their place


def test_a_retried_batch_draws_new_parameters_instead_of_repeating_its_first_attempts(adult):
    """A batch pod killed after one of its two trials: the retry owes one trial, drawn afresh (not trial 0 again)."""
    import optuna

    from tasks.search import plan_search, search_trials, study_name

    spec = adult_spec(search=SEARCH | {"trials": 2, "trials_per_pod": 2})
    settings, layout = get_settings(), DataLayout(get_settings().data_root)
    (batch,) = plan_search(spec, settings, "r4")
    killed = batch.model_copy(update={"trials": 1})  # what the first attempt finished before the pod died
    assert search_trials(spec, settings, layout, adult, "r4", killed).trials == 1
    assert search_trials(spec, settings, layout, adult, "r4", batch).trials == 2  # the retry ran the one it owed
    journal = optuna.storages.journal.JournalFileBackend(str(layout.search_journal("adult_income", "r4")))
    study = optuna.load_study(
        study_name=study_name(spec, batch.parent_run_id, "lightgbm"), storage=optuna.storages.JournalStorage(journal)
    )
    assert [t.user_attrs["batch"] for t in study.trials] == [0, 0]
    first, retried = (t.params for t in study.trials)
    assert first != retried  # the first attempt's sampler seed would propose trial 0's parameters again
