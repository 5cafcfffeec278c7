"""When monitoring asks for a retrain: k of the last n windows, a cooldown, a cap, and a decision log.

A single bad night should not retrain a model, a persistent shift should retrain it *once*, and a broken
upstream must not cause a retrain storm. :func:`decide` is a pure function of the window's violations and
the earlier decisions; :class:`DecisionLog` keeps every decision (trigger or not, and why) as JSON lines in
``monitoring/<pipeline>/decisions.jsonl``. Windows are identified by their end (event time), so a re-run
of a window replaces its earlier decision in the policy's eyes (the log keeps both lines).
"""

from __future__ import annotations

import fcntl
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.spec import TriggerPolicySpec


@dataclass(frozen=True)
class Decision:
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


def decide(
    policy: TriggerPolicySpec,
    history: list[dict[str, Any]],
    window_end: str,
    violations: list[str],
    champion_version: str | None,
) -> Decision:
    """Should this window request a retrain?

    Rules, in order: the window itself must violate; at least ``k`` of the last ``n`` windows judged against
    *the same champion* (this one included) must violate; no retrain was requested within
    ``cooldown_days`` before this window; fewer than ``max_retrains`` were requested in the
    ``period_days`` before it.

    Args:
        policy: The spec's trigger policy.
        history: Earlier decisions (dicts of :class:`Decision`), any order; later windows are ignored.
        window_end: This window's end (ISO datetime).
        violations: What this window violated (e.g. ``data_drift``, ``performance_decay``).
        champion_version: The champion the window was judged against.
    """
    end = _day(window_end)
    earlier = [h for h in latest_per_window(history) if _day(h["window_end"]) < end]

    def verdict(retrain: bool, reason: str) -> Decision:
        return Decision(window_end, champion_version, list(violations), retrain, reason)

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
    requested = [h for h in earlier if h["retrain"]]
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

    def append(self, decision: Decision) -> None:
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
