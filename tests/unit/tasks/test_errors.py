"""Which stage errors are permanent (tasks/errors.py): the one distinction the orchestrator acts on.

A ``PermanentError`` fails its Airflow task at once (``blocks.call``); anything else is retried. Every
exception class under ``tasks/`` is classified here, so a new one cannot land without someone deciding
whether a retry can help.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from tasks.errors import PermanentError

TASKS = Path(__file__).resolve().parents[3] / "tasks"

# deterministic: bad data, bad config, a gate verdict, a refused or unauthorised deploy; no retry can fix them
PERMANENT = {
    "tasks.deploy.DeployRefusedError",
    "tasks.deploy.RolloutFailedError",  # rolled back: the same version would fail its readiness again
    "tasks.score.ScoreError",  # no raw partition, no champion, or a version that cannot score the day
    "tasks.deploy.DeployUnauthorizedError",
    "tasks.evaluate.EvaluationError",
    "tasks.explain.ExplainError",
    "tasks.features.FeatureError",
    "tasks.gate.GateFailedError",
    "tasks.ingest.IngestError",
    "tasks.landing.BadPartitionError",
    "tasks.landing.LandingOverdueError",  # no file after the day's deadline: the sensor stops waiting
    "tasks.monitor.MonitoringError",
    "tasks.monitor.MonitoringWindowError",
    "tasks.plan.PlanError",
    "tasks.prediction_log.PredictionLogError",
    "tasks.reader.LandingFileRefusedError",
    "tasks.registry.RegistryError",
    "tasks.registry.RollbackError",
    "tasks.results.ResultError",
    "tasks.search.SelectionError",
    "tasks.settings.SettingsError",
    "tasks.sources.SourceError",
    "tasks.spec.SpecError",
    "tasks.storage.LayoutError",
    "tasks.suite.SuiteError",
    "tasks.train.TrainingError",
    "tasks.validate.ValidationFailedError",
}
# a retry may help: something not there yet, or a service that does not answer (or not a stage error at all)
RETRIED = {
    "tasks.deploy.DeployError",  # the model server did not answer
    "tasks.ingest.LandingNotReadyError",  # the landing file is still being written
    "tasks.ledger.LedgerError",  # the ledger's database is unreachable
    "tasks.prediction_log.PredictionLogUnavailable",  # the log store is down or locked (the server answers 503)
    "tasks.registry.RegistryUnavailableError",  # MLflow is unreachable
    "tasks.replay.ReplayError",  # dataset missing or range empty: retried today, although mostly deterministic
    "tasks.serving.app.ModelLoadError",  # the server's own errors, answered over HTTP
    "tasks.serving.app.ModelUnavailableError",
    "tasks.serving.app.NoChampionError",
    "tasks.serving.app.SmokeTestError",
    "tasks.serving.hygiene.ApiError",
    "tasks.sources.SourceUnavailableError",  # the database or object store did not answer
}


def _module(path: Path) -> str:
    parts = path.relative_to(TASKS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined under tasks/ (modules that define a class with a base are imported)."""
    found: dict[str, type[BaseException]] = {}
    for path in sorted(TASKS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.bases}
        if not defined or path.name == "__main__.py":
            continue
        module = importlib.import_module(_module(path))
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if name in defined and obj.__module__ == module.__name__ and issubclass(obj, BaseException):
                found[f"{module.__name__}.{name}"] = obj
    return found


@pytest.fixture(scope="module")
def exceptions() -> dict[str, type[BaseException]]:
    return _exception_classes()


def test_every_exception_under_tasks_is_classified(exceptions):
    assert PERMANENT.isdisjoint(RETRIED)
    unclassified = sorted(set(exceptions) - PERMANENT - RETRIED - {"tasks.errors.PermanentError"})
    assert unclassified == [], f"decide whether a retry can help, and add them to PERMANENT or RETRIED: {unclassified}"
    assert sorted((PERMANENT | RETRIED) - set(exceptions)) == []  # no stale name in the tables


def test_deterministic_errors_are_permanent_and_the_others_are_retried(exceptions):
    assert sorted(n for n in PERMANENT if not issubclass(exceptions[n], PermanentError)) == []
    assert sorted(n for n in RETRIED if issubclass(exceptions[n], PermanentError)) == []


def test_permanent_errors_keep_their_builtin_kind(exceptions):
    """Code that catches ValueError / RuntimeError still catches them: permanence is added, not substituted."""
    for name in PERMANENT:
        assert issubclass(exceptions[name], (ValueError, RuntimeError)), name


def test_an_outage_is_never_caught_as_permanent():
    from tasks.registry import RegistryError, RegistryUnavailableError

    def fail_once_permanent(exc: Exception) -> str:
        try:
            raise exc
        except PermanentError:
            return "failed without retry"
        except Exception:
            return "retried"

    assert fail_once_permanent(RegistryUnavailableError("MLflow at http://127.0.0.1:1 unreachable")) == "retried"
    assert fail_once_permanent(RegistryError("no version 9")) == "failed without retry"
    assert fail_once_permanent(PermanentError("bad config")) == "failed without retry"
    assert issubclass(PermanentError, Exception) and str(PermanentError("why")) == "why"
