"""MLflow wiring (tasks/tracking.py) against a real MLflow store in the test's data root (SQLite, the default)."""

from __future__ import annotations

import sqlite3

import pytest

from tasks.settings import Settings, get_settings
from tasks.tracking import artifact_url, client, ensure_store, start_tracking, use_store

P = "bike_demand"


@pytest.fixture
def settings(data_root) -> Settings:
    return get_settings()


def test_use_store_points_tracking_and_registry_at_the_settings_store(settings, tmp_path):
    import mlflow

    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(elsewhere)  # what a previous stage of this process may have left
    mlflow.set_registry_uri(elsewhere)
    use_store(settings)
    assert settings.mlflow_tracking_uri == f"sqlite:///{settings.data_root / 'mlflow' / 'mlflow.db'}"
    assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == settings.mlflow_tracking_uri
    assert (settings.data_root / "mlflow").is_dir()  # SQLite cannot create the folder of its file


def test_start_tracking_creates_the_experiment_once_with_artifacts_under_the_data_root(settings):
    import mlflow

    first = start_tracking(settings, P)
    assert start_tracking(settings, P) == first  # found, not created again
    experiment = mlflow.get_experiment(first)
    assert experiment.name == settings.experiment_name(P) == P
    assert experiment.artifact_location == (settings.data_root / "mlflow" / "artifacts").as_uri()
    with mlflow.start_run() as run:  # the selected experiment is the pipeline's
        assert run.info.experiment_id == first
        mlflow.log_text("hello", "notes/hello.txt")
    assert (
        settings.data_root / "mlflow" / "artifacts" / run.info.run_id / "artifacts" / "notes" / "hello.txt"
    ).is_file()
    assert start_tracking(settings, "adult_income") != first  # one experiment per pipeline


def test_the_client_and_ensure_store_use_the_settings_store(settings):
    db = settings.data_root / "mlflow" / "mlflow.db"
    assert not db.exists()
    ensure_store(settings)  # the schema, once, before several processes open the store
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert {"experiments", "runs", "registered_models", "model_versions"} <= tables
    c = client(settings)
    assert c.tracking_uri == settings.mlflow_tracking_uri and c._registry_uri == settings.mlflow_tracking_uri
    c.create_registered_model("only-here")
    assert [m.name for m in client(settings).search_registered_models()] == ["only-here"]


def test_an_unusable_store_is_an_error_not_a_silent_other_store(settings):
    from mlflow.exceptions import MlflowException

    broken = settings.model_copy(update={"mlflow_tracking_uri": "nosuchscheme://store"})
    with pytest.raises(MlflowException):
        ensure_store(broken)


def test_artifact_url_is_where_the_mlflow_ui_shows_the_artifact(settings):
    ui = settings.model_copy(update={"mlflow_ui_url": "http://mlflow.example:5000/"})
    url = artifact_url(ui, "abc123", "model_card/model_card.html", experiment_id="7")
    assert url == "http://mlflow.example:5000/#/experiments/7/runs/abc123/artifactPath/model_card/model_card.html"
    server = settings.model_copy(update={"mlflow_ui_url": None, "mlflow_tracking_uri": "https://mlflow.corp/"})
    assert (
        artifact_url(server, "r", "a.html", experiment_id="1")
        == "https://mlflow.corp/#/experiments/1/runs/r/artifactPath/a.html"
    )


def test_artifact_url_looks_up_the_run_s_experiment_and_is_none_without_a_ui(settings):
    import mlflow

    experiment = start_tracking(settings, P)
    with mlflow.start_run() as run:
        pass
    ui = settings.model_copy(update={"mlflow_ui_url": "http://ui:5000"})
    assert artifact_url(ui, run.info.run_id, "x.html") == (
        f"http://ui:5000/#/experiments/{experiment}/runs/{run.info.run_id}/artifactPath/x.html"
    )
    none = settings.model_copy(update={"mlflow_ui_url": None})  # a SQLite store has no address a person opens
    assert artifact_url(none, run.info.run_id, "x.html") is None


def test_mlflow_warnings_reach_the_task_log_as_warnings_not_stderr_lines(settings, caplog, capsys):
    import logging

    use_store(settings)
    mlflow_logger = logging.getLogger("mlflow.models.model")
    with caplog.at_level(logging.WARNING):
        mlflow_logger.warning("pip requirements could not be inferred")
    record = next(r for r in caplog.records if r.name == "mlflow.models.model")
    assert record.levelname == "WARNING"  # through the process's handlers, at its own level
    assert "pip requirements" not in capsys.readouterr().err  # not a raw stderr line (Airflow shows those as errors)
    assert logging.getLogger("mlflow").handlers == [] and logging.getLogger("mlflow").propagate
