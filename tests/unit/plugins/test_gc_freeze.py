"""mlops_airflow.gc_freeze: the forkserver's last preloaded module freezes the preloaded heap for every child."""

from __future__ import annotations

import os

from mlops_airflow.localenv import REPO_ROOT

_FORKED_FREEZE_COUNT = """
import gc, multiprocessing, sys
ctx = multiprocessing.get_context("forkserver")
ctx.set_forkserver_preload([m for m in sys.argv[1].split(",") if m])
with ctx.Pool(1) as pool:
    print(pool.apply(gc.get_freeze_count))
"""


def test_the_forkserver_freezes_what_it_preloaded_out_of_every_forked_process_s_collections():
    """The preload ends with ``mlops_airflow.gc_freeze``; a process a real forkserver forks inherits the freeze.

    Without it the first full collection in each task process walks the ~600,000 preloaded objects (0.25 s).
    """
    import subprocess
    import sys

    from mlops_airflow.localenv import PRELOAD

    assert PRELOAD[-1] == "mlops_airflow.gc_freeze", "the freeze must come after everything it is meant to freeze"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT)])}

    def child_freeze_count(preload: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _FORKED_FREEZE_COUNT, preload], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    assert child_freeze_count("json") == 0  # a preload alone leaves its objects to the collector
    assert child_freeze_count("json,mlops_airflow.gc_freeze") > 0
