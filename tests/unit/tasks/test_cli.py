from __future__ import annotations

import json
import subprocess
import sys

import pytest


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
        "ingest_partition",
        "--pipeline",
        "bike_demand",
        "--args",
        '{"day": "2011-06-01"}',
        "--result",
        str(manifest),
        env=env,
    )
    assert out.returncode == 0, out.stderr
    written = json.loads(manifest.read_text())
    assert written["ok"] is True and written["stage"] == "ingest_partition" and written["result"]["rows"] == 24
    assert json.loads(out.stdout.strip().splitlines()[-1])["partition"] == "2011-06-01"


def test_cli_failures_exit_non_zero_with_the_reason(data_root):
    import os

    env = dict(os.environ)
    bad_json = _cli("ingest_partition", "--pipeline", "bike_demand", "--args", "{day", env=env)
    assert bad_json.returncode == 2 and "not JSON" in bad_json.stderr
    manifest = data_root / "result.json"
    missing = _cli(
        "ingest_partition",
        "--pipeline",
        "bike_demand",
        "--args",
        '{"day": "2011-01-05"}',
        "--result",
        str(manifest),
        env=env,
    )
    assert missing.returncode == 1 and "no landing file" in missing.stderr
    failure = json.loads(manifest.read_text())  # the pod's failure comes back through the shared store too
    assert failure["ok"] is False and failure["permanent"] is True and "no landing file" in failure["error"]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["--pipeline", "../../x"],
            "argument --pipeline: invalid choice: '../../x' (choose from 'adult_income', 'bank_marketing', "
            "'beijing_pm25', 'bike_demand'",
        ),
        (["--pipeline", "bike_demand.yaml"], "invalid choice: 'bike_demand.yaml'"),
        (["--pipeline", "bike_demand", "--args", '{"day": "2011-06-01x"}'], "not a calendar date (YYYY-MM-DD)"),
        (["--pipeline", "bike_demand", "--args", '{"day": "2011-02-30"}'], "--args day: not a calendar date"),
        (["--pipeline", "bike_demand", "--args", '{"day": "2011-06-01T00:00"}'], "not a calendar date"),
        (["--pipeline", "bike_demand", "--args", '{"day": "2011-06-01", "x": ["a/../b"]}'], "'..' path segments"),
        (["--pipeline", "bike_demand", "--args", '{"day": "2011-06-01"}', "--result", "../r.json"], "'..' path"),
        (["--pipeline", "bike_demand", "--args", '["2011-06-01"]'], "--args must be a JSON object"),
        (
            ["--pipeline", "bike_demand", "--args", '{"dai": "2011-06-01"}'],
            "--args: unknown ['dai']; missing ['day']; accepted arguments: day (required), skip_if_unchanged, run_key",
        ),
    ],
)
def test_cli_refuses_unknown_pipelines_loose_days_and_parent_segments(data_root, argv, said):
    import os

    out = _cli("ingest_partition", *argv, env=dict(os.environ))
    assert out.returncode == 2 and said in out.stderr, out.stderr
    assert not (data_root / "raw").exists()


def test_cli_refuses_a_crafted_partition_before_any_file_moves(data_root):
    """``validate_partitions`` with ``<an ingested day>/../../..`` once moved a file from outside the data root."""
    import os

    out = _cli(
        "validate_partitions",
        "--pipeline",
        "bike_demand",
        "--args",
        '{"partitions": ["2011-06-01/../../../../../outside"], "run_key": "r"}',
        env=dict(os.environ),
    )
    assert out.returncode == 2 and "'..' path segments are not allowed" in out.stderr
    out = _cli(
        "validate_data",
        "--pipeline",
        "bike_demand",
        "--args",
        '{"partitions": ["2011-06-01", "2011-6-2"], "run_key": "r"}',
        env=dict(os.environ),
    )
    assert out.returncode == 2 and "--args partitions: not a calendar date (YYYY-MM-DD): '2011-6-2'" in out.stderr
