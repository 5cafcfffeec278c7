"""The stage contract: one function per pipeline stage, JSON in and JSON out.

Airflow tasks (``dags/``) and the CLI (``python -m tasks <stage>``, which a Kubernetes pod runs) both call
these, so a stage behaves the same wherever it runs. Arguments are pipeline names, dates, run keys and
the small dicts earlier stages returned; data moves through the data root, never through XCom.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from tasks.settings import Settings, get_settings
from tasks.spec import PipelineSpec, load_spec
from tasks.storage import DataLayout

log = logging.getLogger(__name__)

RETRAIN_ASSET = "ml://{pipeline}/retrain"
RAW_ASSET = "ml://{pipeline}/raw"
LANDING_ASSET = "ml://{pipeline}/landing"


def _ctx(pipeline: str) -> tuple[PipelineSpec, Settings, DataLayout]:
    settings = get_settings()
    return load_spec(pipeline), settings, DataLayout(settings.data_root)


def replay(pipeline: str, start: str, end: str, corrupt: list[str] | None = None) -> dict[str, Any]:
    """Feed the shipped dataset into the landing zone, one file per day."""
    from dataclasses import asdict

    from tasks.replay import replay_days

    spec, settings, layout = _ctx(pipeline)
    return asdict(replay_days(spec, layout, settings.shared_datasets, start, end, frozenset(corrupt or [])))


def landing_ready(pipeline: str, day: str) -> bool:
    """Whether upstream has delivered the landing file for ``day``."""
    from tasks.storage import parse_day

    _, _, layout = _ctx(pipeline)
    return layout.landing_file(pipeline, parse_day(day)).is_file()


def ingest(pipeline: str, day: str, skip_if_unchanged: bool = False) -> dict[str, Any]:
    """Landing file of ``day`` -> raw partition (``skip_if_unchanged``: skip a file already ingested as is)."""
    from tasks.ingest import ingest_partition

    spec, _, layout = _ctx(pipeline)
    return ingest_partition(spec, layout, day, skip_if_unchanged).to_dict()


def _champion_data_end(settings: Settings, spec: PipelineSpec) -> tuple[str | None, str | None]:
    from tasks.registry import champion_version

    champion = champion_version(settings, spec.registered_model_name)
    if champion is None:
        return None, None
    days = json.loads(champion.tags.get("data.holdout_partitions", "[]"))
    return champion.version, (max(days) if days else None)


def plan_training(
    pipeline: str, triggered_by: list[str] | None = None, as_of: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Decide whether a training run is worth it and which partitions it uses.

    Policy: never on fewer than ``min_partitions`` partitions; always on a retrain request, ``force``
    or when no champion exists; otherwise only once ``retrain_after_new_partitions`` partitions are
    newer than the champion's data. Many raw-data events therefore consolidate into few retrains.

    Returns:
        ``{"train": bool, "reason": str, "partitions": [...]}``.
    """
    spec, settings, layout = _ctx(pipeline)
    days = [d for d in layout.raw_partitions(pipeline) if as_of is None or d <= as_of[:10]]
    window = days[-spec.training.window_days :]
    plan: dict[str, Any] = {"train": False, "partitions": window}
    retrain_requested = RETRAIN_ASSET.format(pipeline=pipeline) in (triggered_by or [])
    if len(window) < spec.training.min_partitions:
        plan["reason"] = f"waiting for data: {len(window)} of {spec.training.min_partitions} partitions ingested"
        return plan
    champion, data_end = _champion_data_end(settings, spec)
    new = len([d for d in days if data_end is None or d > data_end])
    if retrain_requested:
        plan |= {"train": True, "reason": "retrain requested by monitoring"}
    elif force:
        plan |= {"train": True, "reason": "forced from the trigger form"}
    elif champion is None:
        plan |= {"train": True, "reason": "no champion yet: first model"}
    elif new >= spec.training.retrain_after_new_partitions:
        plan |= {
            "train": True,
            "reason": f"{new} partitions newer than champion v{champion}'s data (>= "
            f"{spec.training.retrain_after_new_partitions})",
        }
    else:
        plan["reason"] = (
            f"champion v{champion} trained on data up to {data_end}; {new} newer partition(s) < "
            f"{spec.training.retrain_after_new_partitions}: no retrain"
        )
    log.info("training plan for %s: %s", pipeline, plan["reason"])
    return plan


def validate(pipeline: str, partitions: list[str], run_key: str) -> dict[str, Any]:
    """Validate each partition with the spec's Great Expectations suite; quarantine failures.

    Raises:
        ValidationFailed: Fewer valid partitions remain than the spec's ``min_partitions``.
    """
    from tasks.validate import ValidationFailed, quarantine_message, validate_partitions

    spec, _, layout = _ctx(pipeline)
    result = validate_partitions(spec, layout, partitions, run_key).to_dict()
    if len(result["valid"]) < spec.training.min_partitions:
        raise ValidationFailed(
            f"only {len(result['valid'])} valid partitions, fewer than min_partitions="
            f"{spec.training.min_partitions}: not training.\n"
            + quarantine_message(pipeline, result["quarantined"], len(result["valid"]))
        )
    return result


def validate_new(pipeline: str, partitions: list[str], run_key: str) -> dict[str, Any]:
    """Validate newly ingested partitions (at ingest time); quarantine failures.

    Never raises on bad data: ``report_quarantine`` says so after the valid days were announced.
    """
    if not partitions:
        return {"valid": [], "quarantined": [], "report_uri": ""}
    from tasks.validate import validate_partitions

    spec, _, layout = _ctx(pipeline)
    return validate_partitions(spec, layout, partitions, run_key).to_dict()


def report_quarantine(pipeline: str, validation: dict[str, Any]) -> None:
    """Fail with an actionable message if validation quarantined anything (after the good data was used).

    Raises:
        ValidationFailed: Listing every quarantined partition, file, expectation and row count.
    """
    from tasks.validate import ValidationFailed, quarantine_message

    if validation["quarantined"]:
        raise ValidationFailed(quarantine_message(pipeline, validation["quarantined"], len(validation["valid"])))


def build_features(pipeline: str, partitions: list[str], run_key: str) -> dict[str, Any]:
    """Time split + features for the valid partitions."""
    from tasks.features import build_datasets

    spec, _, layout = _ctx(pipeline)
    return build_datasets(spec, layout, partitions, run_key).to_dict()


def train(pipeline: str, datasets: dict[str, Any], lineage: dict[str, str] | None = None) -> dict[str, Any]:
    """Fit and log the spec's model and baseline."""
    from tasks.train import train_model

    spec, settings, _ = _ctx(pipeline)
    return train_model(spec, settings, datasets, lineage).to_dict()


def evaluate(
    pipeline: str, trained: dict[str, Any], datasets: dict[str, Any], run_key: str = "adhoc"
) -> dict[str, Any]:
    """Holdout metrics of candidate, baseline and current champion; per-row predictions kept for the gate."""
    from tasks.evaluate import evaluate_candidate

    spec, settings, _ = _ctx(pipeline)
    return evaluate_candidate(spec, settings, trained, datasets["holdout"], run_key)


def gate(
    pipeline: str,
    trained: dict[str, Any],
    metrics: dict[str, Any],
    run_key: str,
    datasets: dict[str, Any],
    actor: str | None = None,
) -> dict[str, Any]:
    """Apply the spec's gate to the evaluation; write the model card; record both on the run.

    A candidate rejected in ``enabled`` mode is also recorded in the promotion ledger (``dry_run`` verdicts
    are recorded by :func:`promote`). Returns the decision plus ``model_card`` (paths), ``model_card_url``
    (MLflow UI, if known) and ``summary`` (one line per check).

    Raises:
        GateFailed: In ``enabled`` mode, when any check fails.
    """
    from tasks.evaluate import GateFailed, gate_from_predictions, record_decision
    from tasks.model_card import CARD_DIR, write_card
    from tasks.registry import record_outcome
    from tasks.tracking import artifact_url

    spec, settings, layout = _ctx(pipeline)
    decision = gate_from_predictions(spec, metrics)
    out = layout.run_dir(pipeline, run_key)
    result = decision.to_dict()
    card = write_card(spec, trained, datasets, metrics, result, out)
    cards = {CARD_DIR: [card["markdown"], card["html"]]}
    record_decision(settings, pipeline, trained["run_id"], decision, out / "gate.json", cards)
    result |= {
        "model_card": card,
        "model_card_url": artifact_url(settings, trained["run_id"], "model_card/model_card.html"),
        "summary": decision.summary(),
    }
    log.info("gate (%s): %s\n%s", decision.mode, "passed" if decision.passed else "FAILED", decision.summary())
    log.info("model card: %s", result["model_card_url"] or card["html"])
    if decision.mode == "enabled" and not decision.passed:
        failed = [c.name for c in decision.checks if not c.passed]
        record_outcome(
            settings,
            spec.registered_model_name,
            "rejected",
            f"gate failed: {', '.join(failed)}",
            None,
            actor,
            trained["run_id"],
            {"checks": {c.name: c.reason for c in decision.checks}},
        )
        raise GateFailed(
            f"{pipeline} candidate (run {trained['run_id']}) failed the gate:\n{decision.summary()}", result
        )
    return result


def register(pipeline: str, trained: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """Register the candidate as a new version with the ``challenger`` alias; lineage comes from its run."""
    from pathlib import Path

    from tasks.registry import register_candidate

    spec, settings, _ = _ctx(pipeline)
    card_path = (decision.get("model_card") or {}).get("markdown")
    card = Path(card_path).read_text() if card_path and Path(card_path).is_file() else None
    return register_candidate(settings, spec.registered_model_name, trained, decision, card).to_dict()


def promote(
    pipeline: str,
    version: str,
    decision: dict[str, Any] | None = None,
    actor: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Move ``champion`` to ``version`` if the gate allows it and nobody else won meanwhile (serialised).

    Without a ``decision`` (manual promotion from the CLI) the version is promoted over whatever is
    champion. ``dry_run`` verdicts are recorded in the ledger and promote nothing.
    """
    from tasks.registry import champion_version, record_outcome
    from tasks.registry import promote as promote_version

    spec, settings, _ = _ctx(pipeline)
    name = spec.registered_model_name
    if decision is not None and not decision["promote"]:
        why = f"gate mode {decision['mode']}: verdict {'passed' if decision['passed'] else 'failed'}, not promoted"
        record_outcome(settings, name, "dry_run", why, version, actor, run_id)
        return {"name": name, "version": version, "promoted": False, "outcome": "dry_run", "previous": None}
    if decision is None:
        current = champion_version(settings, name)
        expected, reason = (current.version if current else None), "promoted by hand"
    else:
        expected = decision.get("champion_version")
        verdict = "passed" if decision["passed"] else "failed, promoted because the gate is disabled"
        versus = next((c["reason"] for c in decision.get("checks", []) if c["name"] == "beats_champion"), None)
        reason = f"gate {decision['mode']}: {verdict}" + (f"; {versus}" if versus else "")
    return promote_version(settings, name, version, expected, actor, reason, run_id)


def deploy(pipeline: str, version: str, actor: str | None = None) -> dict[str, Any]:
    """Make the model server serve ``version`` (blue/green); if it refuses, the champion alias goes back.

    The server checks the admin token (``MLP_ADMIN_TOKEN``) and its reload policy, and records the reload
    (``serve`` / ``serve_refused``) in the promotion ledger as ``<actor> via admin token``.

    Raises:
        DeployError: The server is unreachable (retryable), refused the token (permanent) or refused the
            version (permanent; the old version keeps serving and the ledger records ``deploy_failed``).
    """
    from tasks.deploy import DeployRefused, deploy_version
    from tasks.ledger import default_actor
    from tasks.registry import revert_failed_deploy

    spec, settings, _ = _ctx(pipeline)
    name = spec.registered_model_name
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    try:
        return deploy_version(
            settings.serving_url, name, version, settings.serving_timeout_s, token, actor or default_actor()
        )
    except DeployRefused as exc:
        reverted = revert_failed_deploy(settings, name, version, exc.serving, str(exc), actor)
        kept = f"champion alias back on v{reverted['champion']}" if reverted["reverted"] else "champion alias unchanged"
        raise DeployRefused(f"{exc} ({kept}; recorded in the promotion ledger)", exc.serving) from exc


def rollback(
    pipeline: str, version: str | None = None, actor: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """Restore ``previous`` (or ``version``) as champion; the deploy stage then serves it."""
    from tasks.registry import rollback as rollback_version

    spec, settings, _ = _ctx(pipeline)
    return rollback_version(settings, spec.registered_model_name, version, actor, reason)


def monitor(pipeline: str, window_end: str, run_key: str) -> dict[str, Any]:
    """Nightly drift check of served inputs against the champion's training sample."""
    from tasks.monitor import check_drift

    spec, settings, layout = _ctx(pipeline)
    return check_drift(spec, settings, window_end, run_key, layout)


STAGES: dict[str, Callable[..., Any]] = {
    "replay": replay,
    "ingest": ingest,
    "plan": plan_training,
    "validate": validate,
    "validate_new": validate_new,
    "features": build_features,
    "train": train,
    "evaluate": evaluate,
    "gate": gate,
    "register": register,
    "promote": promote,
    "deploy": deploy,
    "rollback": rollback,
    "monitor": monitor,
}
