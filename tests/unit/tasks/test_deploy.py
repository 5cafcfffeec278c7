from __future__ import annotations

import threading

import pytest
import uvicorn

from tasks.deploy import DeployError, DeployRefused, deploy_version
from tasks.serving.app import create_app
from tasks.settings import get_settings
from tests.conftest import free_port, wait_healthy


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(DeployError, match="unreachable"):
        deploy_version(f"http://127.0.0.1:{free_port()}", "bike_demand", "1", timeout_s=2)


@pytest.mark.needs_data
def test_deploy_switches_a_running_server_to_the_champion(use_champion_store):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(get_settings(), ["bike_demand"]), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        version = use_champion_store["registered"]["version"]
        served = deploy_version(f"http://127.0.0.1:{port}", "bike_demand", version)
        assert served["version"] == version
        with pytest.raises(DeployRefused, match=r"version=999\) not found; still serving v1") as refused:
            deploy_version(f"http://127.0.0.1:{port}", "bike_demand", "999")
        assert refused.value.serving == version
    finally:
        server.should_exit = True
        thread.join(10)
