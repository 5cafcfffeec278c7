"""The stage contract: one name per stage (function, CLI sub-command, task id), typed inputs checked as read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tasks import stages
from tasks.results import ResultError
from tests.conftest import REPO

# the stages the house renamed (phase A, then ingest, validation and deploy in phase B)
RENAMED = {
    "ingest_partition",
    "ingest_partitions",
    "validate_data",
    "validate_partitions",
    "deploy_model",
    "plan_training",
    "build_features",
    "train_model",
    "evaluate_model",
    "gate_model",
    "register_model",
    "promote_model",
    "rollback_model",
    "check_drift",
}


def test_each_stage_is_registered_under_its_own_name_with_a_help_line():
    assert RENAMED <= set(stages.STAGES)
    for name, fn in stages.STAGES.items():
        assert (fn.__doc__ or "").strip(), f"{name} has no docstring (the CLI's help)"
        assert fn.__name__ == name
    assert not {"ingest", "ingest_days", "validate", "validate_new", "deploy"} & set(stages.STAGES)  # old names


@pytest.mark.parametrize(
    ("stage", "args", "field"),
    [
        ("evaluate_model", {"trained": {"run_id": "x"}, "datasets": {}, "run_id": "r"}, "Datasets.*holdout: Field"),
        ("gate_model", {"trained": {}, "datasets": {}, "evaluation": {}, "run_id": "r"}, "Trained"),
        ("promote_model", {"version": "1", "decision": {"mode": "on", "passed": True}}, "mode"),
    ],
)
def test_a_stage_refuses_a_stale_upstream_result_before_doing_anything(data_root, stage, args, field):
    with pytest.raises(ResultError, match=field):
        stages.STAGES[stage]("bike_demand", **args)
    assert not (data_root / "mlflow").exists()  # refused before touching any store


def test_the_cli_sub_command_is_the_stage_name(data_root):
    out = subprocess.run(
        [sys.executable, "-m", "tasks", "check_drift", "--pipeline", "bike_demand", "--args"]
        + [json.dumps({"window_end": "2012-06-25T02:00:00+00:00", "run_id": "cli"})],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["status"] == "no_champion" and report["summary_json"].endswith(
        "monitoring/bike_demand/cli/summary.json"
    )
    old = subprocess.run(
        [sys.executable, "-m", "tasks", "monitor", "--pipeline", "bike_demand"], capture_output=True, text=True
    )
    assert old.returncode == 2 and "invalid choice: 'monitor'" in old.stderr


STAGE_MODULES = [
    "tasks.__main__",
    "tasks.stages",
    "tasks.cache",
    "tasks.ingest",
    "tasks.validate",
    "tasks.plan",
    "tasks.features",
    "tasks.train",
    "tasks.evaluate",
    "tasks.gate",
    "tasks.registry",
    "tasks.deploy",
    "tasks.monitor",
]
HEAVY = ["great_expectations", "evidently", "torch", "mlflow", "lightgbm", "shap", "optuna", "matplotlib"]


def test_importing_a_stage_module_loads_no_heavy_library():
    """Every task and pod imports these; a library costing seconds is imported only by the function using it."""
    code = (
        f"import importlib, sys\nfor m in {STAGE_MODULES!r}: importlib.import_module(m)\n"
        f"print([h for h in {HEAVY!r} if h in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
    # and the registry and deploy stages (one MLflow call, one HTTP call) need not even pandas at import
    light = "import sys, tasks.stages, tasks.registry, tasks.deploy, tasks.cache; print('pandas' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", light], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "False"
