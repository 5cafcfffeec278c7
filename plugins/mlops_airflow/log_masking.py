"""Airflow task logs never show a credential: hand the settings' secrets to Airflow's own masker.

Airflow masks what it knows is secret (connection passwords, sensitive variables). Our secrets reach the
task process through the environment (``MLFLOW_TRACKING_URI`` with a password, ``MLP_LEDGER_URI``, the
admin token), so every task body that runs a stage registers them first: from then on Airflow replaces them
with ``***`` in the task log, in the supervisor's log and in rendered fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.settings import Settings


def mask_settings_secrets(settings: Settings | None = None) -> list[str]:
    """Register the passwords of the settings' URIs, the admin token and MLflow's password with Airflow's masker.

    Also masks them in this process's own log records (:func:`tasks.redact.install`). Returns what was
    registered (tests check it; nothing prints it).
    """
    from airflow.sdk.log import mask_secret  # the task SDK's masker (task process and supervisor); 3.x API

    from tasks.redact import install
    from tasks.settings import get_settings, register_secrets

    install()
    found = register_secrets(settings or get_settings())
    for secret in found:
        mask_secret(secret)
    return found
