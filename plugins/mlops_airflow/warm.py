"""Part of the scheduler's forkserver preload: fills the caches that each task process would fill on first use.

Importing a module is not all a task pays on its first call: measured on the train and evaluate stages forked
from a preloaded parent, each spent ~1 s building MLflow's module-to-distribution map (the requirement check
inside every ``log_model`` and ``pyfunc.load_model``) and the evaluate stage 0.5 s importing
``matplotlib.pyplot`` for the model card's importance plot. Both are built here once
(:func:`tasks.tracking.prepare_model_loading`), before ``mlops_airflow.gc_freeze`` freezes the heap, so every
task process forked afterwards starts with them. Like ``gc_freeze`` it runs on import, because
``mp_forkserver_preload`` takes module names only.

Only speed is at stake, and the forkserver survives an ``ImportError`` in a preloaded module but nothing else
(any other exception ends it, and with it every task): so nothing here raises
(:func:`tasks.tracking.warm_model_loading`); a failure is a warning, and each task pays the cost on first use.
"""

from __future__ import annotations

import logging

from tasks.tracking import warm_model_loading

log = logging.getLogger(__name__)

try:
    import matplotlib.pyplot  # noqa: F401 - the model card's importance plot (the backend is chosen at first use)
except ImportError:
    log.warning("matplotlib is not installed: the model card's importance plot is skipped, nothing to preload")
warm_model_loading()
