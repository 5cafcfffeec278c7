"""The readiness probe: ready only when the server serves a smoke-tested model at every pinned version."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tasks.serving.ready import PINS_ENV, main, not_ready, pinned
from tests.conftest import free_port

OK = {"status": "ok", "models": {"bike_demand": {"version": "3"}, "adult_income": {"version": "7"}}}


def test_ready_needs_status_ok_and_every_pinned_version_served():
    assert not_ready(OK, {}) is None and not_ready(OK, {"bike_demand": "3", "adult_income": "7"}) is None
    assert not_ready(OK, {"bike_demand": "4"}) == "bike_demand serves v3, pinned v4"
    assert not_ready({"status": "loading", "models": {}}, {}) == "status 'loading'"
    assert not_ready({"status": "ok", "models": {}}, {"bike_demand": "3"}) == "bike_demand serves vNone, pinned v3"
    assert pinned({PINS_ENV: '{"bike_demand": 3}'}) == {"bike_demand": "3"} and pinned({}) == {}
    with pytest.raises(ValueError, match="JSON object"):
        pinned({PINS_ENV: '["3"]'})


def test_the_probe_exits_0_only_when_the_server_answers_ready(monkeypatch, capsys):
    answer = {"body": OK}

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = json.dumps(answer["body"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/health"
    try:
        monkeypatch.setenv(PINS_ENV, '{"bike_demand": "3"}')
        assert main(url) == 0
        monkeypatch.setenv(PINS_ENV, '{"bike_demand": "4"}')  # a new pod of a rollout still on the old version
        assert main(url) == 1 and "bike_demand serves v3, pinned v4" in capsys.readouterr().err
    finally:
        server.shutdown()
    assert main(url, timeout_s=1) == 1 and "not ready" in capsys.readouterr().err  # nothing listening
