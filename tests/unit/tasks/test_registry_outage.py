"""An MLflow that does not answer is an outage everywhere the champion is read, never "no champion yet"."""

from __future__ import annotations

import pytest

from tasks.registry import RegistryUnavailableError, champion, model_version
from tasks.settings import get_settings
from tests.conftest import free_port


def test_no_champion_is_an_answer(data_root):
    assert champion(get_settings(), "bike_demand") is None
    assert model_version(get_settings(), "bike_demand", "3") is None


def test_an_unreachable_mlflow_is_an_outage_with_its_masked_address(data_root, monkeypatch):
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://mlp:pw-0123456789@127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    get_settings.cache_clear()
    for read in (
        lambda: champion(get_settings(), "bike_demand"),
        lambda: model_version(get_settings(), "b", "1"),
    ):
        with pytest.raises(
            RegistryUnavailableError, match=rf"MLflow at http://mlp:\*\*\*@127.0.0.1:{port} unreachable"
        ) as err:
            read()
        assert "pw-0123456789" not in str(err.value)
    from tasks.plan import plan_training
    from tasks.spec import load_spec
    from tasks.storage import DataLayout

    class _Ingested(DataLayout):  # enough partitions that the plan must ask who the champion is
        def raw_partitions(self, pipeline: str) -> list[str]:
            return [f"2011-06-{d:02d}" for d in range(1, 29)]

    settings = get_settings()
    with pytest.raises(RegistryUnavailableError):  # the training plan used to say "no champion yet: first model"
        plan_training(load_spec("bike_demand"), settings, _Ingested(settings.data_root))
