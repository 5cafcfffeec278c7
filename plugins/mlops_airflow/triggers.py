"""Event triggers that start ingestion: the landing-zone watcher and a Redis channel (the Redis provider's trigger).

They run in the triggerer as AssetWatchers on ``ml://<p>/landing``: no worker slot is held while waiting.
Each announcement becomes an Asset event ``{"from_trigger": true, "payload": {...}}`` that schedules
``<p>_ingest``; :func:`mlops_airflow.events.partitions_from_event` reads the day back out of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


class LandingFileTrigger(BaseEventTrigger):
    """Announce each landing file of a pipeline that is new or changed since it was last ingested.

    Polls ``landing/<pipeline>/`` every ``poll_seconds``; a file is announced once it is complete under the
    spec's ``source.completion`` (the same :func:`tasks.landing.readiness` the ingest sensor asks: settled over
    two looks ``settle_seconds`` apart, marked with ``<day>.csv.done``, or a final name) and its SHA-256 differs
    from the one recorded beside the raw partition and in the day's quarantine records. Files delivered while
    the triggerer was down are announced when it comes back. A file is announced once per content, and again
    if it is still not ingested ``reannounce_seconds`` later (a lost event, a failed run) or after a triggerer
    restart; ingest reports an unchanged file it already took (or refused) as such and skips it.

    Args:
        pipeline: The pipeline name.
        data_root: The data root holding ``landing/`` and ``raw/``.
        poll_seconds: Seconds between looks.
        reannounce_seconds: Announce a day again when it is still not ingested this long after.
        completion: The spec's ``source.completion``.
        settle_seconds: The spec's ``source.settle_seconds``.
    """

    def __init__(
        self,
        pipeline: str,
        data_root: str,
        poll_seconds: float = 5.0,
        reannounce_seconds: float = 300.0,
        completion: str = "settle",
        settle_seconds: float = 5.0,
    ) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.data_root = data_root
        self.poll_seconds = poll_seconds
        self.reannounce_seconds = reannounce_seconds
        self.completion = completion
        self.settle_seconds = settle_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and arguments, for the triggerer to rebuild it."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "pipeline": self.pipeline,
                "data_root": self.data_root,
                "poll_seconds": self.poll_seconds,
                "reannounce_seconds": self.reannounce_seconds,
                "completion": self.completion,
                "settle_seconds": self.settle_seconds,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield one event per look that finds settled, not yet ingested landing files; never returns.

        All the days one look finds go in one event: Airflow 3.3 queues an asset-triggered run once per
        asset (the queue row keeps the first event's time) and the run consumes only events up to that
        time, so a second event recorded before the run is created would be left without a run. For the
        same reason a day still not ingested ``reannounce_seconds`` after its announcement is announced
        again (ingest skips it if it was only slow).
        """
        import time
        from pathlib import Path

        from tasks.landing import Contract, Seen, pending_landing_files
        from tasks.storage import DataLayout

        layout = DataLayout(Path(self.data_root))
        contract = Contract(self.completion, self.settle_seconds)
        seen: Seen = {}
        announced: dict[str, tuple[str, float]] = {}
        while True:
            pending = await asyncio.to_thread(pending_landing_files, layout, self.pipeline, seen, contract)
            now = time.monotonic()
            due = [
                (day, digest)
                for day, digest in pending
                if day not in announced
                or announced[day][0] != digest
                or now - announced[day][1] >= self.reannounce_seconds
            ]
            if due:
                for day, digest in due:
                    announced[day] = (digest, now)
                days = [day for day, _ in due]
                self.log.info("landing files for %s partitions %s", self.pipeline, ", ".join(days))
                yield TriggerEvent(
                    {
                        "partitions": days,
                        "sha256": {day: digest for day, digest in due},
                        "source": "landing_file",
                    }
                )
            await asyncio.sleep(self.poll_seconds)


class RedisChannelTrigger(BaseEventTrigger):
    """A message on a Redis pub/sub channel: the Redis provider's ``AwaitMessageTrigger``, built when it runs.

    ``MessageQueueTrigger(scheme="redis+pubsub")`` picks the same provider trigger, but importing it (and the
    common-messaging provider's queue discovery) imports the redis client: about 0.1 s of every DAG parse, a
    third of the DAG file's time. Here the provider's trigger is imported only in the triggerer, inside
    :meth:`run`, and its events are passed on unchanged (``{"type", "pattern", "channel", "data"}``).

    Args:
        channels: The channels to subscribe to.
        redis_conn_id: The Airflow connection of the Redis server.
        poll_interval: Seconds between polls of the subscription.
    """

    def __init__(self, channels: list[str], redis_conn_id: str = "redis_default", poll_interval: float = 60) -> None:
        super().__init__()
        self.channels = list(channels)
        self.redis_conn_id = redis_conn_id
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and arguments, for the triggerer to rebuild it."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"channels": self.channels, "redis_conn_id": self.redis_conn_id, "poll_interval": self.poll_interval},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """The provider trigger's events (one per message on a channel)."""
        from airflow.providers.redis.triggers.redis_await_message import AwaitMessageTrigger

        provider = AwaitMessageTrigger(
            channels=self.channels, redis_conn_id=self.redis_conn_id, poll_interval=self.poll_interval
        )
        async for event in provider.run():
            yield event
