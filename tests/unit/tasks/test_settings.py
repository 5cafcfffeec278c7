from __future__ import annotations

import pytest

from tasks.settings import SettingsError, load_settings


def test_local_layer_defaults_to_sqlite_store_under_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MLP_DATA_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = load_settings("local")
    assert s.data_root == tmp_path
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert s.execution_mode == "local"


def test_environment_variables_override_files(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLP_SERVING_URL", "http://server:9000")
    s = load_settings("local")
    assert s.mlflow_tracking_uri == "http://mlflow:5000"
    assert s.serving_url == "http://server:9000"


def test_unknown_layer_is_a_clear_error():
    with pytest.raises(SettingsError, match="unknown ML_ENV 'staging'.*local"):
        load_settings("staging")


def test_prod_rolls_out_through_the_server_deployment_unless_the_environment_unsets_it(monkeypatch):
    monkeypatch.delenv("MLP_SERVING_DEPLOYMENT", raising=False)
    assert load_settings("prod").kubernetes.serving_deployment == "model-server"
    monkeypatch.setenv("MLP_SERVING_DEPLOYMENT", "")
    assert load_settings("prod").kubernetes.serving_deployment is None
    monkeypatch.setenv("MLP_SERVING_DEPLOYMENT", "canary-server")
    assert load_settings("prod").kubernetes.serving_deployment == "canary-server"
