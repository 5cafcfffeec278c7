"""Plans: whether a training run is worth it, and whether a monitoring window requests a retrain.

**Training plan** (:func:`plan_training`, the ``plan_training`` stage): never on fewer than
``min_partitions`` partitions; always on a retrain request, ``force`` or when no champion exists;
otherwise only once ``retrain_after_new_partitions`` partitions are newer than the champion's data. Many
raw-data events therefore consolidate into few retrains.

**Trigger policy** (:func:`decide`, called by the monitor): k of the last n windows, a cooldown, a cap, and a
decision log. A single bad night should not retrain a model, a persistent shift should retrain it *once*,
and a broken upstream must not cause a retrain storm. :func:`decide` is a pure function of the window's
violations and the earlier decisions; :class:`DecisionLog` keeps every decision (trigger or not, and why)
as JSON lines in ``monitoring/<pipeline>/decisions.jsonl``. Windows are identified by their end (event
time), so a re-run of a window replaces its earlier decision in the policy's eyes (the log keeps both lines).
"""

from __future__ import annotations

import fcntl
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import PermanentError
from tasks.names import RETRAIN_ASSET, TAG_HOLDOUT_PARTITIONS
from tasks.results import TrainingPlan
from tasks.spec import TrainingSpec, TriggerPolicySpec
from tasks.storage import parse_day

if TYPE_CHECKING:
    from tasks.results import Registered
    from tasks.settings import Settings
    from tasks.spec import PipelineSpec
    from tasks.storage import DataLayout

log = logging.getLogger(__name__)


class PlanError(PermanentError, ValueError):
    """A plan's input is unusable (e.g. ``as_of`` is not a date)."""


# ---- training plan ----


def champion_data_end(champion: Registered | None) -> str | None:
    """The last partition the champion saw (the end of its holdout), from its version tags."""
    if champion is None:
        return None
    days = json.loads(champion.tags.get(TAG_HOLDOUT_PARTITIONS, "[]"))
    return max(days) if days else None


def decide_training(
    training: TrainingSpec,
    days: list[str],
    champion_version: str | None,
    data_end: str | None,
    retrain_requested: bool = False,
    force: bool = False,
) -> TrainingPlan:
    """The training policy as a pure function of the ingested days and the champion.

    Args:
        training: The spec's training block (window, minimum and retrain thresholds).
        days: Ingested partitions, oldest first.
        champion_version: The current champion (None before the first model).
        data_end: The last partition the champion saw.
        retrain_requested: Monitoring requested a retrain (the retrain Asset triggered the run).
        force: The trigger form's ``force``.
    """
    window = days[-training.window_days :]
    if len(window) < training.min_partitions:
        why = f"waiting for data: {len(window)} of {training.min_partitions} partitions ingested"
        return TrainingPlan(train=False, reason=why, partitions=window)
    new = len([d for d in days if data_end is None or d > data_end])
    need = training.retrain_after_new_partitions

    def plan(train: bool, reason: str) -> TrainingPlan:
        return TrainingPlan(
            train=train,
            reason=reason,
            partitions=window,
            champion_version=champion_version,
            champion_data_end=data_end,
            new_partitions=new,
        )

    if retrain_requested:
        return plan(True, "retrain requested by monitoring")
    if force:
        return plan(True, "forced from the trigger form")
    if champion_version is None:
        return plan(True, "no champion yet: first model")
    if new >= need:
        return plan(True, f"{new} partitions newer than champion v{champion_version}'s data (>= {need})")
    why = f"champion v{champion_version} trained on data up to {data_end}; {new} newer partition(s) < {need}"
    return plan(False, why + ": no retrain")


def plan_training(
    spec: PipelineSpec,
    settings: Settings,
    layout: DataLayout,
    triggered_by: list[str] | None = None,
    as_of: str | None = None,
    force: bool = False,
) -> TrainingPlan:
    """Decide whether a training run is worth it and which partitions it uses (see the module's policy).

    Args:
        spec: The pipeline.
        settings: Environment settings (the registry, for the champion's data).
        layout: Data root layout (the ingested partitions).
        triggered_by: URIs of the Assets whose events started the run.
        as_of: Use partitions up to this day only.
        force: Train even if the policy says no.

    Raises:
        PlanError: ``as_of`` is not a date.
    """
    from tasks.registry import champion

    try:
        last = parse_day(as_of) if as_of else None
    except ValueError as exc:
        raise PlanError(f"as_of: {exc}") from exc
    days = [d for d in layout.raw_partitions(spec.name) if last is None or d <= last]
    requested = RETRAIN_ASSET.format(pipeline=spec.name) in (triggered_by or [])
    current = None
    if len(days[-spec.training.window_days :]) >= spec.training.min_partitions:  # no registry call while waiting
        current = champion(settings, spec.registered_model_name)
    plan = decide_training(
        spec.training, days, current.version if current else None, champion_data_end(current), requested, force
    )
    log.info("training plan for %s: %s", spec.name, plan.reason)
    return plan


# ---- monitoring trigger policy ----


@dataclass(frozen=True)
class RetrainDecision:
    """One window's verdict."""

    window_end: str
    champion_version: str | None
    violations: list[str]
    retrain: bool
    reason: str
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def _day(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def latest_per_window(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last decision of each window, ordered by window end (a re-run replaces its window's decision)."""
    by_window: dict[str, dict[str, Any]] = {}
    for entry in history:
        by_window[entry["window_end"]] = entry
    return [by_window[k] for k in sorted(by_window, key=_day)]


def requests_before(history: list[dict[str, Any]], window_end: str) -> list[dict[str, Any]]:
    """The windows before ``window_end`` whose (latest) decision requested a retrain, oldest first."""
    end = _day(window_end)
    return [h for h in latest_per_window(history) if h["retrain"] and _day(h["window_end"]) < end]


def decide(
    policy: TriggerPolicySpec,
    history: list[dict[str, Any]],
    window_end: str,
    violations: list[str],
    champion_version: str | None,
) -> RetrainDecision:
    """Should this window request a retrain?

    Rules, in order: the window itself must violate; at least ``k`` of the last ``n`` windows judged against
    *the same champion* (this one included) must violate; no retrain was requested within
    ``cooldown_days`` before this window; fewer than ``max_retrains`` were requested in the
    ``period_days`` before it.

    Args:
        policy: The spec's trigger policy.
        history: Earlier decisions (dicts of :class:`RetrainDecision`), any order; later windows are ignored.
        window_end: This window's end (ISO datetime).
        violations: What this window violated (e.g. ``data_drift``, ``performance_decay``).
        champion_version: The champion the window was judged against.
    """
    end = _day(window_end)
    earlier = [h for h in latest_per_window(history) if _day(h["window_end"]) < end]

    def verdict(retrain: bool, reason: str) -> RetrainDecision:
        return RetrainDecision(window_end, champion_version, list(violations), retrain, reason)

    if not violations:
        return verdict(False, "no violation in this window")
    same_champion = [h for h in earlier if h.get("champion_version") == champion_version]
    recent = same_champion[-(policy.n - 1) :] if policy.n > 1 else []
    count = 1 + sum(1 for h in recent if h["violations"])
    seen = 1 + len(recent)
    what = ", ".join(violations)
    if count < policy.k:
        return verdict(
            False,
            f"{what}: {count} of the last {seen} window(s) against champion v{champion_version} violated, "
            f"fewer than k={policy.k} of n={policy.n}: waiting to see if it persists",
        )
    requested = requests_before(history, window_end)
    if requested:
        last = requested[-1]
        since = (end - _day(last["window_end"])).total_seconds() / 86400
        if since < policy.cooldown_days:
            return verdict(
                False,
                f"{what}: cooldown, a retrain was requested for the window ending {last['window_end']} "
                f"({since:.1f} days ago, cooldown {policy.cooldown_days} days)",
            )
    in_period = [h for h in requested if (end - _day(h["window_end"])).total_seconds() / 86400 < policy.period_days]
    if len(in_period) >= policy.max_retrains:
        return verdict(
            False,
            f"{what}: cap reached, {len(in_period)} retrain(s) requested in the {policy.period_days} days before "
            f"this window (max {policy.max_retrains}); look at the data before raising the cap",
        )
    return verdict(True, f"{what}: {count} of the last {seen} window(s) violated (k={policy.k} of n={policy.n})")


class DecisionLog:
    """Append-only JSON lines, one per decision, safe against concurrent writers on one file system."""

    def __init__(self, path: Path) -> None:
        """Log at ``path`` (created on first append)."""
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        """Every decision, oldest first."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def append(self, decision: RetrainDecision) -> None:
        """Add one decision."""
        self.append_record(decision.to_dict())

    def append_record(self, record: dict[str, Any]) -> None:
        """Add one line (``flock`` keeps concurrent appends whole)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def render_trend(pipeline: str, history: list[dict[str, Any]], threshold: float) -> str:
    """A standalone HTML page: drift share per window (SVG line, threshold, retrain markers) and every decision."""
    import html

    windows = latest_per_window(history)
    shares = [(w["window_end"][:10], (w.get("figures") or {}).get("drift_share"), w["retrain"]) for w in windows]
    width, height, pad = 720, 220, 30
    points = [(i, s) for i, (_, s, _) in enumerate(shares) if s is not None]
    step = (width - 2 * pad) / max(len(shares) - 1, 1)

    def xy(i: int, share: float) -> tuple[float, float]:
        return pad + i * step, height - pad - share * (height - 2 * pad)

    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, s) for i, s in points))
    marks = "".join(
        f'<circle cx="{xy(i, s)[0]:.1f}" cy="{xy(i, s)[1]:.1f}" r="{6 if shares[i][2] else 3}" '
        f'fill="{"#c0392b" if shares[i][2] else "#2c3e50"}"><title>{shares[i][0]}: {s:.2f}</title></circle>'
        for i, s in points
    )
    _, ty = xy(0, threshold)
    svg = (
        f'<svg width="{width}" height="{height}" role="img" aria-label="drift share per window">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa"/>'
        f'<line x1="{pad}" y1="{ty:.1f}" x2="{width - pad}" y2="{ty:.1f}" stroke="#e67e22" stroke-dasharray="4"/>'
        f'<text x="{pad}" y="{ty - 4:.1f}" font-size="11" fill="#e67e22">threshold {threshold}</text>'
        f'<polyline points="{line}" fill="none" stroke="#2c3e50" stroke-width="1.5"/>{marks}</svg>'
    )
    rows = "".join(
        f"<tr{' class=retrain' if w['retrain'] else ''}><td>{html.escape(w['window_end'])}</td>"
        f"<td>{html.escape(str(w.get('champion_version')))}</td><td>{html.escape(str(w.get('status', '')))}</td>"
        f"<td>{(w.get('figures') or {}).get('drift_share', '')}</td><td>{html.escape(', '.join(w['violations']))}</td>"
        f"<td>{'yes' if w['retrain'] else 'no'}</td><td>{html.escape(w['reason'])}</td></tr>"
        for w in reversed(windows)
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{pipeline}: monitoring trend</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}tr.retrain td{background:#fde8e8}</style>"
        f"</head><body><h1>{html.escape(pipeline)}: drift share per monitoring window</h1>"
        f"<p>Red points: a retrain was requested. Newest window first below.</p>{svg}"
        "<table><thead><tr><th>window end</th><th>champion</th><th>status</th><th>drift share</th>"
        f"<th>violations</th><th>retrain</th><th>decision</th></tr></thead><tbody>{rows}</tbody></table>"
        "</body></html>\n"
    )


@dataclass(frozen=True)
class WindowVerdict:
    """A window's retrain decision, the line the decision log gets, and the after-retrain comparison (if any)."""

    decision: RetrainDecision
    record: dict[str, Any]
    after_retrain: dict[str, Any] | None = None


def _after_retrain(
    history: list[dict[str, Any]],
    window_end: str,
    champion_version: str | None,
    violations: list[str],
    figures: dict[str, Any],
) -> dict[str, Any] | None:
    """The first window judged against a champion that replaced the one a retrain was requested for: did it help?"""
    requested = requests_before(history, window_end)
    if not requested or champion_version is None or requested[-1].get("champion_version") == champion_version:
        return None
    then = requested[-1]
    before = then.get("figures", {})
    closed = not violations
    return {
        "requested_for_window": then["window_end"],
        "champion_then": then.get("champion_version"),
        "champion_now": champion_version,
        "violations_then": then["violations"],
        "violations_now": list(violations),
        "drift_share": {"then": before.get("drift_share"), "now": figures.get("drift_share")},
        "performance_decay": {
            "then": (before.get("performance_decay") or {}).get("relative_worsening"),
            "now": (figures.get("performance_decay") or {}).get("relative_worsening"),
        },
        "gap_closed": closed,
        "verdict": (
            f"champion v{champion_version} (retrained after the window ending {then['window_end']}) "
            + ("closed the gap: no violation now" if closed else f"did not close it: still {', '.join(violations)}")
        ),
    }


def judge_window(
    policy: TriggerPolicySpec,
    history: list[dict[str, Any]],
    window_end: str,
    violations: list[str],
    champion_version: str | None,
    figures: dict[str, Any],
    status: str,
) -> WindowVerdict:
    """Apply the trigger policy to one window and compare with the last retrain request (pure; writes nothing).

    Args:
        policy: The spec's trigger policy.
        history: The decision log so far.
        window_end: This window's end.
        violations: What this window violated.
        champion_version: The champion it was judged against.
        figures: The window's headline figures (``drift_share``, ``performance_decay``), kept in the log.
        status: The window's status (``drift``, ``no_drift``, ...), kept in the log.
    """
    decision = decide(policy, history, window_end, violations, champion_version)
    record = decision.to_dict() | {"figures": figures, "status": status}
    after = _after_retrain(history, window_end, champion_version, violations, figures)
    return WindowVerdict(decision=decision, record=record, after_retrain=after)
