"""mlops_airflow.warm: the forkserver fills MLflow's requirement map and imports pyplot once, for every task."""

from __future__ import annotations

import os
import subprocess
import sys

from mlops_airflow.localenv import REPO_ROOT

_FORKED_STATE = """
import multiprocessing, sys
STATE = (
    "(__import__('mlflow.utils.requirements_utils', fromlist=['_'])._MODULES_TO_PACKAGES is not None,"
    " 'matplotlib.pyplot' in __import__('sys').modules)"
)
ctx = multiprocessing.get_context("forkserver")
ctx.set_forkserver_preload([m for m in sys.argv[1].split(",") if m])
with ctx.Pool(1) as pool:
    print(*pool.apply(eval, (STATE,)))  # a builtin pickles by name: a -c script's own function would not
"""


def _forked_state(preload: str) -> tuple[bool, bool]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT)])}
    out = subprocess.run(
        [sys.executable, "-c", _FORKED_STATE, preload], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    mapped, pyplot = out.stdout.split()[-2:]
    return mapped == "True", pyplot == "True"


def test_a_task_forked_after_the_warm_preload_finds_mlflow_s_requirement_map_and_pyplot_ready():
    """Without it the train and evaluate tasks each spent ~1 s reading every distribution's metadata."""
    from mlops_airflow.localenv import PRELOAD

    assert PRELOAD.index("mlops_airflow.warm") < PRELOAD.index("mlops_airflow.gc_freeze"), "freeze what it built"
    assert _forked_state("mlflow") == (False, False)  # importing MLflow alone leaves the map to the first load
    assert _forked_state("mlops_airflow.warm") == (True, True)


def test_warming_a_process_names_the_model_modules_it_could_not_import(monkeypatch):
    from tasks import tracking

    monkeypatch.setattr(tracking, "MODEL_LOADING_MODULES", ("json", "no_such_module_here"))
    assert tracking.prepare_model_loading() == ["no_such_module_here"]
