"""Airflow's log masker learns the settings' secrets (plugins/mlops_airflow/log_masking.py)."""

from __future__ import annotations

SENTINEL = "Sentinel-pw-7f3a9c"


def test_airflow_task_logs_mask_the_settings_secrets(data_root, monkeypatch):
    """What a DAG task body calls first: Airflow's own masker (task log, supervisor) learns our secrets."""
    from airflow.sdk.log import redact as airflow_redact

    from mlops_airflow.log_masking import mask_settings_secrets
    from tasks.settings import get_settings

    mlflow_pw, ledger_pw, token = f"{SENTINEL}-mlflow", f"{SENTINEL}-ledger", f"{SENTINEL}-admin-token"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://mlp:{mlflow_pw}@127.0.0.1:1")
    monkeypatch.setenv("MLP_LEDGER_URI", f"postgresql://mlp:{ledger_pw}@127.0.0.1:1/ledger")
    monkeypatch.setenv("MLP_ADMIN_TOKEN", token)
    get_settings.cache_clear()
    assert sorted(mask_settings_secrets()) == sorted([mlflow_pw, ledger_pw, token])
    line = f"uri {get_settings().mlflow_tracking_uri} ledger {get_settings().ledger_uri} token {token}"
    masked = airflow_redact(line)
    assert all(s not in masked for s in (mlflow_pw, ledger_pw, token)), masked
