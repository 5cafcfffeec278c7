"""Registry: register candidates and move the aliases (MLflow aliases, never stages), one decision at a time.

Aliases: ``challenger`` (the latest registered candidate), ``champion`` (served), ``previous`` (the champion
before the last change, what a rollback restores). Every alias move happens inside the promotion ledger's
per-pipeline lock and is recorded there (:mod:`tasks.ledger`).

A refusal by the registry (no such version or run, an invalid name) is a :class:`RegistryError`, permanent;
an unreachable tracking server is a :class:`RegistryUnavailableError` (retryable) wherever a lookup would otherwise
read "no such alias": an outage is never "no champion yet".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tasks.errors import PermanentError
from tasks.ledger import Entry, PromotionLedger, default_actor
from tasks.names import (
    CHALLENGER,
    CHAMPION,
    LINEAGE_TAG_PREFIXES,
    PREVIOUS,
    TAG_GATE_CHAMPION,
    TAG_GATE_CHECKS,
    TAG_GATE_MODE,
    TAG_GATE_PASSED,
    TAG_MLFLOW_RUN_ID,
    TAG_PROMOTED_FROM,
    TAG_PROMOTION_OUTCOME,
    gate_check_tag,
)
from tasks.redact import redact
from tasks.results import Gated, GateDecision, Promotion, Registered, Rollback, Trained
from tasks.settings import Settings
from tasks.tracking import client, use_store

log = logging.getLogger(__name__)

T = TypeVar("T")

# MLflow error codes that mean "the registry refused this request": retrying the same request cannot help
_REFUSALS = frozenset(
    {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE", "BAD_REQUEST"}
)


class RegistryError(PermanentError, RuntimeError):
    """The registry refused an operation (no such version or run, invalid name): retrying cannot help."""


class RollbackError(RegistryError):
    """A rollback has nothing to restore, or its target is missing or already champion."""


class RegistryUnavailableError(RuntimeError):
    """MLflow did not answer (down, unreachable, timed out, or a server error): an outage, retrying may help.

    Never mistaken for "no such model / alias / version", which is an answer.
    """


# MLflow's answers that mean "not there" (a missing alias is INVALID_PARAMETER_VALUE on the SQL store);
# anything else (INTERNAL_ERROR for a refused connection, TEMPORARILY_UNAVAILABLE, ...) is an outage.
_ABSENT_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def is_absent(exc: Exception) -> bool:
    """Whether an MLflow error says the model, alias or version does not exist (rather than an outage)."""
    return getattr(exc, "error_code", None) in _ABSENT_CODES


def unavailable(settings: Settings, exc: Exception) -> RegistryUnavailableError:
    """The outage error for ``exc``, naming the (masked) MLflow address."""
    message = getattr(exc, "message", None) or str(exc)
    return RegistryUnavailableError(
        f"MLflow at {redact(settings.mlflow_tracking_uri)} unreachable: {type(exc).__name__}: {redact(message)}"
    )


@contextmanager
def refusals(what: str) -> Iterator[None]:
    """Turn MLflow's refusals (not its outages) inside the block into a :class:`RegistryError` naming ``what``."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code in _REFUSALS:
            raise RegistryError(f"the registry refused to {what}: {exc.message}") from exc
        raise


def _refused(what: str, call: Callable[[], T]) -> T:
    with refusals(what):
        return call()


def ledger(settings: Settings) -> PromotionLedger:
    """The environment's promotion ledger."""
    return PromotionLedger(settings.ledger_uri)


def _version_tags(trained: Trained, decision: GateDecision, run_tags: dict[str, str]) -> dict[str, str]:
    lineage = {k: v for k, v in run_tags.items() if k.startswith(LINEAGE_TAG_PREFIXES)}
    return lineage | {
        TAG_MLFLOW_RUN_ID: trained.mlflow_run_id,
        TAG_GATE_PASSED: str(decision.passed),
        TAG_GATE_MODE: decision.mode,
        TAG_GATE_CHAMPION: str(decision.champion_version),
        TAG_GATE_CHECKS: json.dumps({c.name: c.passed for c in decision.checks}),
        **{gate_check_tag(c.name): "pass" if c.passed else "fail" for c in decision.checks},
    }


def register_model(settings: Settings, name: str, trained: Trained, gated: Gated) -> Registered:
    """Register the candidate as a new version with the ``challenger`` alias; lineage comes from its run.

    Args:
        settings: Environment settings.
        name: Registered model name.
        trained: The ``train_model`` stage's result.
        gated: The ``gate_model`` stage's result: its verdicts become version tags (one per check), its
            model card (markdown) the version's description.

    Raises:
        RegistryError: The registry refused (e.g. the run no longer exists).
    """
    import mlflow

    use_store(settings)
    mlflow_client = client(settings)
    run = _refused(f"read run {trained.mlflow_run_id}", lambda: mlflow_client.get_run(trained.mlflow_run_id))
    tags = _version_tags(trained, gated.decision, dict(run.data.tags))
    with refusals(f"register {trained.model_uri} as {name}"):
        mv = mlflow.register_model(trained.model_uri, name, tags=tags)
        card = Path(gated.model_card.markdown)
        if card.is_file():
            mlflow_client.update_model_version(name, mv.version, description=card.read_text())
        mlflow_client.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info("registered %s version %s (challenger)", name, mv.version)
    return Registered(name=name, version=str(mv.version), mlflow_run_id=trained.mlflow_run_id, tags=tags)


def _registered(name: str, mv: Any) -> Registered:
    aliases = tuple(str(a) for a in (getattr(mv, "aliases", None) or ()))
    return Registered(
        name=name, version=str(mv.version), mlflow_run_id=str(mv.run_id), tags=dict(mv.tags), aliases=aliases
    )


def _version(settings: Settings, name: str, alias: str) -> Registered | None:
    """The version holding ``alias``; None when the model or alias does not exist.

    Raises:
        RegistryUnavailableError: MLflow did not answer (an outage is never "no champion yet").
    """
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if is_absent(exc):  # no such model or alias: nobody holds it
            return None
        raise unavailable(settings, exc) from exc
    except OSError as exc:  # requests' ConnectionError and timeouts are OSErrors
        raise unavailable(settings, exc) from exc
    return _registered(name, mv)


def model_version(settings: Settings, name: str, version: str) -> Registered | None:
    """Version ``version`` of ``name`` with its tags and aliases; None when it does not exist.

    Raises:
        RegistryUnavailableError: MLflow did not answer.
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


def champion(settings: Settings, name: str) -> Registered | None:
    """The version holding the ``champion`` alias, or None before the first promotion.

    Raises:
        RegistryUnavailableError: MLflow did not answer.
    """
    return _version(settings, name, CHAMPION)


def _move_champion(settings: Settings, name: str, to: str, old: str | None, outcome: str) -> None:
    mlflow_client = client(settings)
    with refusals(f"make {name} v{to} champion"):
        if old is not None:
            mlflow_client.set_registered_model_alias(name, PREVIOUS, old)
        mlflow_client.set_registered_model_alias(name, CHAMPION, to)
        mlflow_client.set_model_version_tag(name, to, TAG_PROMOTION_OUTCOME, outcome)
        mlflow_client.set_model_version_tag(name, to, TAG_PROMOTED_FROM, old or "none")


def _require_version(settings: Settings, name: str, version: str, error: type[RegistryError]) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client(settings).get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in _REFUSALS:
            raise error(f"{name} has no version {version}") from exc
        raise


def promote(
    settings: Settings,
    name: str,
    version: str,
    expected_champion: str | None,
    actor: str | None = None,
    reason: str = "passed the gate",
    mlflow_run_id: str | None = None,
) -> Promotion:
    """Make ``version`` champion if the champion is still the one it was judged against; serialised.

    Under the ledger's lock: read the champion; if it moved since evaluation (another run won meanwhile),
    record this version as ``lost_race`` and leave the aliases alone; otherwise move ``champion`` to it
    (the old champion becomes ``previous``) and record ``promote``.

    Raises:
        RegistryError: ``version`` does not exist.
    """
    actor = actor or default_actor()
    expected = str(expected_champion) if expected_champion is not None else None
    _require_version(settings, name, version, RegistryError)
    with ledger(settings).transaction(name) as tx:
        current = champion(settings, name)
        now = current.version if current else None
        if now != expected:
            why = (
                f"champion moved from v{expected or 'none'} to v{now} after this candidate was evaluated "
                "against it; not promoted (retrain or re-evaluate to compete with the new champion)"
            )
            tx.append(Entry(name, "lost_race", actor, why, expected, version, mlflow_run_id, {"champion": now}))
            _refused("tag the losing version", lambda: _tag(settings, name, version, "lost_race"))
            log.warning("%s v%s lost the promotion race: %s", name, version, why)
            return Promotion(
                name=name, version=version, promoted=False, outcome="lost_race", previous=now, champion=now
            )
        if now == version:
            return Promotion(
                name=name, version=version, promoted=False, outcome="already_champion", previous=now, champion=now
            )
        _move_champion(settings, name, version, now, CHAMPION)  # outcome: it became champion
        tx.append(Entry(name, "promote", actor, reason, now, version, mlflow_run_id))
    log.info("%s champion: %s -> %s", name, now or "none", version)
    return Promotion(name=name, version=version, promoted=True, outcome="promoted", previous=now, champion=version)


def _tag(settings: Settings, name: str, version: str, outcome: str) -> None:
    client(settings).set_model_version_tag(name, version, TAG_PROMOTION_OUTCOME, outcome)


def promotion_reason(decision: GateDecision) -> str:
    """Why a gated candidate is promoted, for the ledger: the verdict and the comparison with the champion."""
    verdict = "passed" if decision.passed else "failed, promoted because the gate is disabled"
    versus = decision.check("beats_champion")
    return f"gate {decision.mode}: {verdict}" + (f"; {versus.reason}" if versus else "")


def promote_model(
    settings: Settings,
    name: str,
    version: str,
    decision: GateDecision | None = None,
    actor: str | None = None,
    mlflow_run_id: str | None = None,
) -> Promotion:
    """Promote a registered version as the gate decided (the ``promote_model`` stage).

    With a ``decision`` the version competes with the champion it was judged against (:func:`promote`); a
    ``dry_run`` verdict (``promote`` False) is recorded in the ledger and moves nothing. Without one
    (a promotion by hand) it replaces whatever is champion.
    """
    if decision is not None and not decision.promote:
        why = f"gate mode {decision.mode}: verdict {'passed' if decision.passed else 'failed'}, not promoted"
        record_outcome(settings, name, "dry_run", why, version, actor, mlflow_run_id)
        return Promotion(name=name, version=version, promoted=False, outcome="dry_run")
    if decision is None:
        current = champion(settings, name)
        expected, reason = (current.version if current else None), "promoted by hand"
    else:
        expected, reason = decision.champion_version, promotion_reason(decision)
    return promote(settings, name, version, expected, actor, reason, mlflow_run_id)


def record_outcome(
    settings: Settings,
    name: str,
    action: str,
    reason: str,
    version: str | None = None,
    actor: str | None = None,
    mlflow_run_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> Entry:
    """Append a decision that moves no alias (``rejected``, ``dry_run``) to the ledger."""
    current = champion(settings, name)
    entry = Entry(
        name,
        action,
        actor or default_actor(),
        reason,
        current.version if current else None,
        version,
        mlflow_run_id,
        details or {},
    )
    return ledger(settings).append(entry)


def rollback_model(
    settings: Settings, name: str, version: str | None = None, actor: str | None = None, reason: str | None = None
) -> Rollback:
    """Make ``version`` (default: the ``previous`` alias) champion again; the current champion becomes ``previous``.

    The ``rollback_model`` stage; ``deploy_model`` then serves the restored version.

    Raises:
        RollbackError: No champion, nothing to roll back to, the target does not exist or is the champion.
    """
    actor = actor or default_actor()
    with ledger(settings).transaction(name) as tx:
        current = champion(settings, name)
        if current is None:
            raise RollbackError(f"{name} has no champion: nothing to roll back")
        if version is None:
            previous = _version(settings, name, PREVIOUS)
            if previous is None:
                raise RollbackError(f"{name} has no 'previous' version to restore; name a version explicitly")
            version = previous.version
        version = str(version)
        _require_version(settings, name, version, RollbackError)
        if version == current.version:
            raise RollbackError(f"{name} v{version} is already the champion")
        _move_champion(settings, name, version, current.version, "restored_by_rollback")
        tx.append(Entry(name, "rollback", actor, reason or "rollback requested", current.version, version))
    log.info("%s rolled back: champion %s -> %s", name, current.version, version)
    return Rollback(name=name, version=version, previous=current.version)


def revert_failed_deploy(
    settings: Settings, name: str, failed: str, serving: str | None, reason: str, actor: str | None = None
) -> dict[str, Any]:
    """After the server refused ``failed``: point ``champion`` back at the version it still serves; record why.

    Leaves the aliases alone when the champion has moved on since (another promotion won meanwhile).
    """
    actor = actor or default_actor()
    with ledger(settings).transaction(name) as tx:
        current = champion(settings, name)
        reverted = current is not None and current.version == failed and serving is not None and serving != failed
        if reverted:
            mlflow_client = client(settings)
            mlflow_client.set_registered_model_alias(name, CHAMPION, str(serving))
            mlflow_client.set_model_version_tag(name, failed, TAG_PROMOTION_OUTCOME, "deploy_failed")
        to = str(serving) if reverted else (current.version if current else None)
        tx.append(Entry(name, "deploy_failed", actor, reason, failed, to, details={"reverted": reverted}))
    return {"name": name, "failed": failed, "champion": to, "reverted": reverted}
