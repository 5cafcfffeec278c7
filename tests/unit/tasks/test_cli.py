from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.needs_data


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tasks", *args], capture_output=True, text=True, env=env, timeout=120)


def test_stage_cli_is_the_pod_contract(data_root, tmp_path):
    import os

    env = dict(os.environ)
    replay = _cli(
        "replay", "--pipeline", "bike_demand", "--args", '{"start": "2011-06-01", "end": "2011-06-01"}', env=env
    )
    assert replay.returncode == 0, replay.stderr
    manifest = tmp_path / "result.json"
    out = _cli(
        "ingest", "--pipeline", "bike_demand", "--args", '{"day": "2011-06-01"}', "--result", str(manifest), env=env
    )
    assert out.returncode == 0, out.stderr
    written = json.loads(manifest.read_text())
    assert written["ok"] is True and written["stage"] == "ingest" and written["result"]["rows"] == 24
    assert json.loads(out.stdout.strip().splitlines()[-1])["partition"] == "2011-06-01"


def test_cli_failures_exit_non_zero_with_the_reason(data_root):
    import os

    env = dict(os.environ)
    bad_json = _cli("ingest", "--pipeline", "bike_demand", "--args", "{day", env=env)
    assert bad_json.returncode == 2 and "not JSON" in bad_json.stderr
    manifest = data_root / "result.json"
    missing = _cli(
        "ingest", "--pipeline", "bike_demand", "--args", '{"day": "2011-01-05"}', "--result", str(manifest), env=env
    )
    assert missing.returncode == 1 and "no landing file" in missing.stderr
    failure = json.loads(manifest.read_text())  # the pod's failure comes back through the shared store too
    assert failure["ok"] is False and failure["permanent"] is True and "no landing file" in failure["error"]
