from __future__ import annotations

import threading

import pytest
import uvicorn

from tasks.deploy import DeployError, DeployRefusedError, DeployUnauthorizedError, deploy_version
from tasks.serving.app import create_app
from tasks.settings import get_settings
from tests.conftest import free_port, wait_healthy


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(DeployError, match="unreachable"):
        deploy_version(f"http://127.0.0.1:{free_port()}", "bike_demand", "1", timeout_s=2)


def test_deploy_switches_a_running_server_to_the_champion(use_champion_store):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(get_settings(), ["bike_demand"]), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url, token = f"http://127.0.0.1:{port}", get_settings().admin_token.get_secret_value()
    try:
        wait_healthy(url)
        version = use_champion_store["registered"]["version"]
        served = deploy_version(url, "bike_demand", version, token=token, actor="airflow:test")
        assert served["version"] == version and "champion" in served["why"]
        with pytest.raises(
            DeployRefusedError, match=r"has no version 999 in the registry; still serving v1"
        ) as refused:
            deploy_version(url, "bike_demand", "999", token=token)
        assert refused.value.serving == version
        # a deploy without the token, or with a wrong one, is a configuration error: no retry, nothing changes
        with pytest.raises(DeployUnauthorizedError, match=r"HTTP 401: admin endpoints need an Authorization: Bearer"):
            deploy_version(url, "bike_demand", version)
        with pytest.raises(DeployUnauthorizedError, match=r"HTTP 403: wrong admin token.*MLP_ADMIN_TOKEN"):
            deploy_version(url, "bike_demand", version, token="x" * 32)
    finally:
        server.should_exit = True
        thread.join(10)
