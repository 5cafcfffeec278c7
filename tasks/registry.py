"""Registry: register candidates and move the aliases (MLflow aliases, never stages), one decision at a time.

Aliases: ``challenger`` (the latest registered candidate), ``champion`` (served), ``previous`` (the champion
before the last change, what a rollback restores). Every alias move happens inside the promotion ledger's
per-pipeline lock and is recorded there (:mod:`tasks.ledger`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.errors import PermanentError
from tasks.ledger import Entry, PromotionLedger, default_actor
from tasks.redact import redact
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


class RollbackError(PermanentError, RegistryError):
    """A rollback has nothing to restore, or its target is missing or already champion."""


class RegistryUnavailable(RegistryError):
    """MLflow did not answer (down, unreachable, timed out, or a server error): an outage, retrying may help.

    Never mistaken for "no such model / alias / version", which is an answer.
    """


# MLflow's answers that mean "not there" (a missing alias is INVALID_PARAMETER_VALUE on the SQL store);
# anything else (INTERNAL_ERROR for a refused connection, TEMPORARILY_UNAVAILABLE, ...) is an outage.
_ABSENT_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def is_absent(exc: Exception) -> bool:
    """Whether an MLflow error says the model, alias or version does not exist (rather than an outage)."""
    return getattr(exc, "error_code", None) in _ABSENT_CODES


def unavailable(settings: Settings, exc: Exception) -> RegistryUnavailable:
    """The outage error for ``exc``, naming the (masked) MLflow address."""
    message = getattr(exc, "message", None) or str(exc)
    return RegistryUnavailable(
        f"MLflow at {redact(settings.mlflow_tracking_uri)} unreachable: {type(exc).__name__}: {redact(message)}"
    )


@dataclass(frozen=True)
class Registered:
    """A registered model version."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for XCom."""
        return asdict(self)


def ledger(settings: Settings) -> PromotionLedger:
    """The environment's promotion ledger."""
    return PromotionLedger(settings.ledger_uri)


def register_candidate(
    settings: Settings, name: str, trained: dict[str, Any], decision: dict[str, Any], card: str | None = None
) -> Registered:
    """Register the candidate model and give it the ``challenger`` alias.

    Args:
        settings: Environment settings.
        name: Registered model name.
        trained: Output of :func:`tasks.train.train_model`.
        decision: The gate decision (``GateDecision.to_dict()``), recorded as tags (one per check).
        card: The model card (markdown), kept as the version's description.

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
        "gate.champion_at_evaluation": str(decision.get("champion_version")),
        "gate.checks": json.dumps({c["name"]: c["passed"] for c in decision["checks"]}),
        **{f"gate.check.{c['name']}": "pass" if c["passed"] else "fail" for c in decision["checks"]},
    }
    mv = mlflow.register_model(trained["model_uri"], name, tags=version_tags)
    if card:
        mlflow_client.update_model_version(name, mv.version, description=card)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info("registered %s version %s (challenger)", name, mv.version)
    return Registered(name=name, version=str(mv.version), run_id=trained["run_id"], tags=version_tags)


def _registered(name: str, mv: Any) -> Registered:
    aliases = tuple(str(a) for a in (getattr(mv, "aliases", None) or ()))
    return Registered(name=name, version=str(mv.version), run_id=str(mv.run_id), tags=dict(mv.tags), aliases=aliases)


def _version(settings: Settings, name: str, alias: str) -> Registered | None:
    """The version holding ``alias``; None when the model or alias does not exist.

    Raises:
        RegistryUnavailable: MLflow did not answer (an outage is never "no champion yet").
    """
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if is_absent(exc):
            return None
        raise unavailable(settings, exc) from exc
    except OSError as exc:  # requests' ConnectionError and timeouts are OSErrors
        raise unavailable(settings, exc) from exc
    return _registered(name, mv)


def model_version(settings: Settings, name: str, version: str) -> Registered | None:
    """Version ``version`` of ``name`` with its tags and aliases; None when it does not exist.

    Raises:
        RegistryUnavailable: MLflow did not answer.
    """
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version(name, str(version))
    except MlflowException as exc:
        if is_absent(exc):
            return None
        raise unavailable(settings, exc) from exc
    except OSError as exc:
        raise unavailable(settings, exc) from exc
    return _registered(name, mv)


def champion_version(settings: Settings, name: str) -> Registered | None:
    """The version holding the ``champion`` alias, or None before the first promotion.

    Raises:
        RegistryUnavailable: MLflow did not answer.
    """
    return _version(settings, name, CHAMPION)


def _move_champion(settings: Settings, name: str, to: str, old: str | None, outcome: str) -> None:
    mlflow_client = client(settings)
    if old is not None:
        mlflow_client.set_registered_model_alias(name, PREVIOUS, old)
    mlflow_client.set_registered_model_alias(name, CHAMPION, to)
    mlflow_client.set_model_version_tag(name, to, "promotion.outcome", outcome)
    mlflow_client.set_model_version_tag(name, to, "promoted_from", old or "none")


def promote(
    settings: Settings,
    name: str,
    version: str,
    expected_champion: str | None,
    actor: str | None = None,
    reason: str = "passed the gate",
    run_id: str | None = None,
) -> dict[str, Any]:
    """Make ``version`` champion if the champion is still the one it was judged against; serialised.

    Under the ledger's lock: read the champion; if it moved since evaluation (another run won meanwhile),
    record this version as ``lost_race`` and leave the aliases alone; otherwise move ``champion`` to it
    (the old champion becomes ``previous``) and record ``promote``.

    Returns:
        ``{"name", "version", "promoted", "outcome", "previous", "champion"}``.
    """
    actor = actor or default_actor()
    with ledger(settings).transaction(name) as tx:
        current = champion_version(settings, name)
        now = current.version if current else None
        base = {"name": name, "version": version, "previous": now}
        if now != (str(expected_champion) if expected_champion is not None else None):
            why = (
                f"champion moved from v{expected_champion or 'none'} to v{now} after this candidate was evaluated "
                "against it; not promoted (retrain or re-evaluate to compete with the new champion)"
            )
            tx.append(Entry(name, "lost_race", actor, why, expected_champion, version, run_id, {"champion": now}))
            client(settings).set_model_version_tag(name, version, "promotion.outcome", "lost_race")
            log.warning("%s v%s lost the promotion race: %s", name, version, why)
            return base | {"promoted": False, "outcome": "lost_race", "champion": now}
        if now == version:
            return base | {"promoted": False, "outcome": "already_champion", "champion": now}
        _move_champion(settings, name, version, now, "champion")
        tx.append(Entry(name, "promote", actor, reason, now, version, run_id))
    log.info("%s champion: %s -> %s", name, now or "none", version)
    return base | {"promoted": True, "outcome": "promoted", "champion": version}


def record_outcome(
    settings: Settings,
    name: str,
    action: str,
    reason: str,
    version: str | None = None,
    actor: str | None = None,
    run_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> Entry:
    """Append a decision that moves no alias (``rejected``, ``dry_run``) to the ledger."""
    current = champion_version(settings, name)
    entry = Entry(
        name,
        action,
        actor or default_actor(),
        reason,
        current.version if current else None,
        version,
        run_id,
        details or {},
    )
    return ledger(settings).append(entry)


def rollback(
    settings: Settings, name: str, target: str | None = None, actor: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """Make ``target`` (default: the ``previous`` alias) champion again; the current champion becomes ``previous``.

    Returns:
        ``{"name", "version", "previous"}``: the restored version and the one it replaced.

    Raises:
        RollbackError: No champion, nothing to roll back to, the target does not exist or is the champion.
    """
    from mlflow.exceptions import MlflowException

    actor = actor or default_actor()
    with ledger(settings).transaction(name) as tx:
        current = champion_version(settings, name)
        if current is None:
            raise RollbackError(f"{name} has no champion: nothing to roll back")
        if target is None:
            previous = _version(settings, name, PREVIOUS)
            if previous is None:
                raise RollbackError(f"{name} has no 'previous' version to restore; name a version explicitly")
            target = previous.version
        target = str(target)
        try:
            client(settings).get_model_version(name, target)
        except MlflowException as exc:
            raise RollbackError(f"{name} has no version {target}") from exc
        if target == current.version:
            raise RollbackError(f"{name} v{target} is already the champion")
        _move_champion(settings, name, target, current.version, "restored_by_rollback")
        why = reason or "rollback requested"
        tx.append(Entry(name, "rollback", actor, why, current.version, target))
    log.info("%s rolled back: champion %s -> %s", name, current.version, target)
    return {"name": name, "version": target, "previous": current.version}


def revert_failed_deploy(
    settings: Settings, name: str, failed: str, serving: str | None, reason: str, actor: str | None = None
) -> dict[str, Any]:
    """After the server refused ``failed``: point ``champion`` back at the version it still serves; record why.

    Leaves the aliases alone when the champion has moved on since (another promotion won meanwhile).
    """
    actor = actor or default_actor()
    with ledger(settings).transaction(name) as tx:
        current = champion_version(settings, name)
        reverted = current is not None and current.version == failed and serving is not None and serving != failed
        if reverted:
            mlflow_client = client(settings)
            mlflow_client.set_registered_model_alias(name, CHAMPION, str(serving))
            mlflow_client.set_model_version_tag(name, failed, "promotion.outcome", "deploy_failed")
        to = str(serving) if reverted else (current.version if current else None)
        tx.append(Entry(name, "deploy_failed", actor, reason, failed, to, details={"reverted": reverted}))
    return {"name": name, "failed": failed, "champion": to, "reverted": reverted}
