from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import uvicorn

from tasks.deploy import DeployError, deploy_champion
from tasks.serving.app import create_app
from tasks.settings import get_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(DeployError, match="unreachable"):
        deploy_champion(f"http://127.0.0.1:{_free_port()}", "bike_demand", "1", timeout_s=2)


@pytest.mark.needs_data
def test_deploy_switches_a_running_server_to_the_champion(use_champion_store):
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(get_settings(), ["bike_demand"]), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        version = use_champion_store["registered"]["version"]
        served = deploy_champion(f"http://127.0.0.1:{port}", "bike_demand", version)
        assert served["version"] == version
        with pytest.raises(DeployError, match="expected v999"):
            deploy_champion(f"http://127.0.0.1:{port}", "bike_demand", "999")
    finally:
        server.should_exit = True
        thread.join(10)
