"""A SQL source's URL comes from its Airflow connection at run time, masked (plugins/mlops_airflow/connections.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlops_airflow.connections import export_source_url, sqlalchemy_url
from tasks.spec import DEFAULT_PIPELINES_DIR


@pytest.fixture
def sql_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    raw = yaml.safe_load((DEFAULT_PIPELINES_DIR / "bike_demand.yaml").read_text())
    raw["source"].pop("dataset")
    raw["source"]["sql"] = {"url_env": "MLP_TEST_TEAM_DB_URL", "conn_id": "team_db", "table": "t", "date_column": "ts"}
    (tmp_path / "bike_demand.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLP_PIPELINES_DIR", str(tmp_path))
    monkeypatch.delenv("MLP_TEST_TEAM_DB_URL", raising=False)
    return "bike_demand"


def test_the_connection_fills_the_variable_the_spec_names_and_is_masked(sql_pipeline, monkeypatch):
    import os

    from airflow.sdk._shared.secrets_masker import redact

    monkeypatch.setenv("AIRFLOW_CONN_TEAM_DB", "postgres://team:s3cret-pw@127.0.0.1:5432/test")
    assert export_source_url(sql_pipeline) == "MLP_TEST_TEAM_DB_URL"
    assert os.environ["MLP_TEST_TEAM_DB_URL"] == "postgresql://team:s3cret-pw@127.0.0.1:5432/test"
    assert "s3cret-pw" not in str(redact(f"url {os.environ['MLP_TEST_TEAM_DB_URL']}"))


def test_a_variable_already_set_wins(sql_pipeline, monkeypatch):
    monkeypatch.setenv("MLP_TEST_TEAM_DB_URL", "postgresql://from-a-secret@db/x")
    assert export_source_url(sql_pipeline) is None  # the pod's Secret, or the deployment, set it


def test_only_the_scheme_changes():
    assert sqlalchemy_url("postgres://u@h:1/d") == "postgresql://u@h:1/d"
    assert sqlalchemy_url("mysql+pymysql://u@h/d") == "mysql+pymysql://u@h/d"


def test_a_missing_connection_leaves_the_variable_unset_for_the_pull_to_name(sql_pipeline, monkeypatch):
    import os

    monkeypatch.delenv("AIRFLOW_CONN_TEAM_DB", raising=False)
    assert export_source_url(sql_pipeline) is None and "MLP_TEST_TEAM_DB_URL" not in os.environ
