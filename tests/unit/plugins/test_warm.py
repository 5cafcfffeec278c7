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
    " 'matplotlib.pyplot' in __import__('sys').modules, 'mlops_airflow.warm' in __import__('sys').modules)"
)
ctx = multiprocessing.get_context("forkserver")
ctx.set_forkserver_preload([m for m in sys.argv[1].split(",") if m])
with ctx.Pool(1) as pool:
    print(*pool.apply(eval, (STATE,)))  # a builtin pickles by name: a -c script's own function would not
"""


def _forked_state(preload: str) -> tuple[bool, ...]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT)])}
    out = subprocess.run(
        [sys.executable, "-c", _FORKED_STATE, preload], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return tuple(word == "True" for word in out.stdout.split()[-3:])


def test_a_task_forked_after_the_warm_preload_finds_mlflow_s_requirement_map_and_pyplot_ready():
    """Without it the train and evaluate tasks each spent ~1 s reading every distribution's metadata."""
    from mlops_airflow.localenv import PRELOAD

    assert PRELOAD.index("mlops_airflow.warm") < PRELOAD.index("mlops_airflow.gc_freeze"), "freeze what it built"
    assert _forked_state("mlflow") == (False, False, False)  # importing MLflow leaves the map to the first load
    assert _forked_state("mlops_airflow.warm") == (True, True, True)  # True, True, False: warm.py itself failed


def test_a_failing_warm_up_leaves_the_forkserver_and_its_tasks_working(tmp_path):
    """Only ImportError is survived by a forkserver preload: anything else warm.py raised would end every task."""
    shadow = tmp_path / "sitecustomize.py"
    shadow.write_text(
        "import mlflow.utils.requirements_utils as r\n"
        "def boom():\n    raise AttributeError('renamed in a new MLflow')\n"
        "r._init_modules_to_packages_map = boom\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT / "plugins"), str(REPO_ROOT)])}
    argv = [sys.executable, "-c", _FORKED_STATE, "mlops_airflow.warm"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["False", "True", "True"]  # no map, but the task ran, warm.py imported
    assert "warming up model loading failed" in out.stderr


def test_warming_a_process_names_the_model_modules_it_could_not_import(monkeypatch):
    from tasks import tracking

    monkeypatch.setattr(tracking, "MODEL_LOADING_MODULES", ("json", "no_such_module_here"))
    assert tracking.prepare_model_loading() == ["no_such_module_here"]
