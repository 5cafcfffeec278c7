"""Registry: register candidates and move the ``champion`` alias (MLflow aliases, never stages)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.settings import Settings
from tasks.tracking import client, use_store

log = logging.getLogger(__name__)

# Run tags the training stage logged that every registered version carries (one source of lineage).
LINEAGE_TAG_PREFIXES = ("data.", "airflow.", "code_version", "pipeline")
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"


class RegistryError(RuntimeError):
    """The registry refused an operation or holds no model where one is required."""


@dataclass(frozen=True)
class Registered:
    """A registered model version."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for XCom."""
        return asdict(self)


def register_candidate(settings: Settings, name: str, trained: dict[str, Any], decision: dict[str, Any]) -> Registered:
    """Register the candidate model and give it the ``challenger`` alias.

    Args:
        settings: Environment settings.
        name: Registered model name.
        trained: Output of :func:`tasks.train.train_model`.
        decision: The gate decision (``GateDecision.to_dict()``), recorded as tags.

    Returns:
        The new version.
    """
    import mlflow

    use_store(settings)
    mlflow_client = client(settings)
    run_tags = mlflow_client.get_run(trained["run_id"]).data.tags
    lineage = {k: v for k, v in run_tags.items() if k.startswith(LINEAGE_TAG_PREFIXES)}
    version_tags = lineage | {
        "run_id": trained["run_id"],
        "gate.passed": str(decision["passed"]),
        "gate.mode": decision["mode"],
        "gate.checks": json.dumps({c["name"]: c["passed"] for c in decision["checks"]}),
    }
    mv = mlflow.register_model(trained["model_uri"], name, tags=version_tags)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info("registered %s version %s (challenger)", name, mv.version)
    return Registered(name=name, version=str(mv.version), run_id=trained["run_id"], tags=version_tags)


def champion_version(settings: Settings, name: str) -> Registered | None:
    """The version holding the ``champion`` alias, or None before the first promotion."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return Registered(name=name, version=str(mv.version), run_id=str(mv.run_id), tags=dict(mv.tags))


def promote(settings: Settings, name: str, version: str) -> dict[str, Any]:
    """Move ``champion`` to ``version``; the version it leaves keeps the ``previous`` alias.

    Returns:
        ``{"name", "version", "previous"}`` (``previous`` is None for the first champion).
    """
    mlflow_client = client(settings)
    old = champion_version(settings, name)
    if old is not None and old.version == version:
        return {"name": name, "version": version, "previous": None}
    if old is not None:
        mlflow_client.set_registered_model_alias(name, PREVIOUS, old.version)
    mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    mlflow_client.set_model_version_tag(name, version, "promoted_from", old.version if old else "none")
    log.info("%s champion: %s -> %s", name, old.version if old else "none", version)
    return {"name": name, "version": version, "previous": old.version if old else None}
