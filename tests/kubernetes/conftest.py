"""Fixtures of the kubernetes execution mode tests: the ``prod`` settings layer and a local kubelet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.settings import Settings, get_settings, load_settings
from tests.conftest import REPO
from tests.kubernetes.kubelet import LocalKubelet

SECRET = "mlflow-credentials"
CLAIM = "ml-data"


@pytest.fixture
def prod_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """``ML_ENV=prod`` (kubernetes mode) with the shared store and MLflow store in a temporary folder."""
    root = tmp_path / "data"
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("ML_ENV", "prod")
    monkeypatch.setenv("MLP_DATA_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # on the cluster: from the Secret, in the Airflow pods
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)  # registered so teardown removes what MLflow writes there
    monkeypatch.setenv("MLP_SHARED_DATASETS", str(REPO.parent / "shared" / "datasets"))
    get_settings.cache_clear()
    yield load_settings("prod")
    get_settings.cache_clear()


@pytest.fixture
def kubelet(prod_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> LocalKubelet:
    """The Kubernetes API the provider talks to in these tests (see ``kubelet.py``)."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    fake = LocalKubelet(
        volumes={CLAIM: prod_settings.data_root},
        secrets={SECRET: {"tracking_uri": prod_settings.mlflow_tracking_uri}},
    )
    monkeypatch.setattr(KubernetesHook, "core_v1_client", property(lambda self: fake))
    monkeypatch.setattr(KubernetesHook, "is_in_cluster", property(lambda self: True))
    return fake
