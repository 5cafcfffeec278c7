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
