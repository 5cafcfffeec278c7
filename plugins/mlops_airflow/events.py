"""Airflow event shapes -> partition days: what an ingest run handles (``tasks/`` never sees an event).

An ingest run names its day by its Airflow partition key (AIP-76: the cron partition of a scheduled or
backfilled run, the key of the partitioned landing event that started it, the key a person triggered it
with). Two older spellings remain: the trigger form's ``params.partition`` (``dag.test()`` cannot set a key)
and the data interval. The watchers' events carry no key: ``<p>_announce`` reads the day from them
(:func:`announced_partitions`) and re-emits them as partitioned landing events. Only this module knows how
each of them spells a day.
"""

from __future__ import annotations

import json
import re
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}")


def partitions_from_event(extra: dict[str, Any] | None) -> list[str]:
    """The partitions an upstream Asset event announces, whichever way it came.

    - REST (``POST /api/v2/assets/events``): ``{"partition": "YYYY-MM-DD", ...}``.
    - The raw Asset (``publish_partitions``, what ``<p>_score`` runs on): ``{"partitions": [...], ...}``.
    - An AssetWatcher: ``{"from_trigger": true, "payload": ...}`` where the payload is the landing-file
      watcher's ``{"partitions": [...]}`` or a Redis message whose ``data`` is ``{"partition": ...}`` JSON
      or the bare date.

    Returns:
        The named days (their first ten characters; ingest checks that they are calendar dates); empty when
        the event names none.
    """
    extra = extra or {}
    if extra.get("partitions"):  # the raw Asset's own events (``publish_partitions``)
        return [str(d)[:10] for d in extra["partitions"]]
    if extra.get("partition"):
        return [str(extra["partition"])[:10]]
    payload = extra.get("payload")
    if not isinstance(payload, dict):
        return []
    if payload.get("partitions"):
        return [str(d)[:10] for d in payload["partitions"]]
    if payload.get("partition"):
        return [str(payload["partition"])[:10]]
    data = payload.get("data")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError:
            return [data.strip()[:10]] if _DAY.match(data.strip()) else []
    if isinstance(data, dict) and data.get("partition"):
        return [str(data["partition"])[:10]]
    if isinstance(data, str) and _DAY.match(data):
        return [data[:10]]
    return []


def announced_partitions(events: Any) -> list[str]:
    """The days a batch of key-less Asset events announces (watchers, REST without a key), deduplicated.

    An event that already carries a partition key announces that key.

    Raises:
        AirflowFailException: An event names no partition.
    """
    days = []
    for asset, asset_events in (events or {}).items():
        for event in asset_events:
            key = getattr(event, "partition_key", None)
            named = [str(key)[:10]] if key else partitions_from_event(event.extra)
            if not named:
                raise AirflowFailException(
                    f"an event on {asset.uri} names no partition (extra {event.extra!r}): record it with "
                    'partition_key "YYYY-MM-DD", or publish {"partition": "YYYY-MM-DD"} on the channel'
                )
            days += named
    return sorted(set(days))  # duplicate events merged into one run are one partition


def run_partitions(
    partition_key: str | None, params: dict[str, Any] | None, data_interval_start: Any, events: Any = None
) -> list[str]:
    """The days one ingest run handles: its partition key, else the form's, the events', or the interval's.

    Raises:
        AirflowFailException: An event names no partition, or the run has neither key, form, events nor interval.
    """
    if partition_key:
        return [str(partition_key)[:10]]
    if (params or {}).get("partition"):
        return [str(params["partition"])]  # type: ignore[index]
    if events:
        return announced_partitions(events)
    if data_interval_start:
        return [data_interval_start.date().isoformat()]
    raise AirflowFailException("no partition: trigger with a partition key (YYYY-MM-DD) or a 'partition' date")
