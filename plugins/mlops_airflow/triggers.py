"""Event triggers that start ingestion: the landing-zone watcher, a Redis Stream (durable), a Redis channel.

They run in the triggerer as AssetWatchers on ``ml://<p>/landing``: no worker slot is held while waiting.
The Redis Stream watcher is the durable one: a consumer group, acknowledged only after Airflow stored the
asset event (Airflow 3.3's shared-stream ack mode); pub/sub loses what is published while nobody listens.
Each announcement becomes an Asset event ``{"from_trigger": true, "payload": {...}}`` that schedules
``<p>_ingest``; :func:`mlops_airflow.events.partitions_from_event` reads the day back out of it.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Hashable, Sequence
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent
from airflow.triggers.shared_stream import AdvanceItem, SharedStreamProducer

CRASH_BEFORE_ACK = "MLP_TEST_CRASH_BEFORE_XACK"
"""Test hook: when set, the stream producer ends its process after the event is stored and before XACK."""


class _Rebuilt(BaseEventTrigger):
    """A trigger the triggerer rebuilds from its constructor arguments, kept as attributes of the same names."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and arguments, for the triggerer to rebuild it."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return f"{type(self).__module__}.{type(self).__qualname__}", {n: getattr(self, n) for n in names}


class LandingFileTrigger(_Rebuilt):
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


class RedisChannelTrigger(_Rebuilt):
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

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """The provider trigger's events (one per message on a channel)."""
        from airflow.providers.redis.triggers.redis_await_message import AwaitMessageTrigger

        provider = AwaitMessageTrigger(
            channels=self.channels, redis_conn_id=self.redis_conn_id, poll_interval=self.poll_interval
        )
        async for event in provider.run():
            yield event


class RedisStreamTrigger(_Rebuilt):
    """Messages on a Redis Stream, read by a consumer group and acknowledged once Airflow stored their event.

    Uses Airflow 3.3's shared-stream **ack mode** (:mod:`airflow.triggers.shared_stream`): the triggerer
    reads the stream through :class:`RedisStreamProducer`, this trigger turns each message into a
    ``TriggerEvent``, the triggerer stores it as an asset event, and only after the supervisor confirmed it
    stored does the producer ``XACK`` the message. A message whose event was never stored (the triggerer
    died, the store failed, the ack timed out) stays in the group's pending list and is delivered again
    when the triggerer comes back (``XAUTOCLAIM`` on start). Messages published while no triggerer runs wait
    in the stream. Delivery is therefore at least once; ingest takes a (partition, file SHA-256) once and
    reports a repeat as skipped, so a redelivered message costs a no-op run, never a second ingest.

    A message is ``XADD <stream> * partition YYYY-MM-DD`` (or a ``data`` field holding ``{"partition": ...}``
    JSON or the bare date). The messages of one read become one event ``{"partitions": [...], "messages":
    [...]}`` (one run for all of them). One naming no day is refused: it is copied to ``<stream>:dead``
    with the reason and acknowledged, never turned into an event.

    Args:
        stream: The stream key.
        group: The consumer group (created, with the stream, from its first entry when missing).
        redis_conn_id: The Airflow connection of the Redis server.
        block_seconds: How long one ``XREADGROUP`` waits for new messages.
        reclaim_seconds: A message still unacknowledged this long after its delivery is delivered again.
    """

    def __init__(
        self,
        stream: str,
        group: str = "airflow",
        redis_conn_id: str = "redis_default",
        block_seconds: float = 1.0,
        reclaim_seconds: float = 600.0,
    ) -> None:
        super().__init__()
        self.stream = stream
        self.group = group
        self.redis_conn_id = redis_conn_id
        self.block_seconds = block_seconds
        self.reclaim_seconds = reclaim_seconds

    def shared_stream_key(self) -> Hashable:
        """One consumer per (connection, stream, group) in a triggerer, however many watchers name it."""
        return ("redis-stream", self.redis_conn_id, self.stream, self.group)

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> SharedStreamProducer:
        """The producer that reads and acknowledges (ack mode: advance only what was stored)."""
        return RedisStreamProducer(**kwargs)

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        """One event per batch of messages the producer read together (all the days they name)."""
        from mlops_airflow.events import partitions_from_event

        async for batch in shared_stream:
            messages = [{**m["fields"], "message_id": m["id"]} for m in batch["messages"]]
            days = sorted({d for m in messages for d in partitions_from_event({"payload": m})})
            self.log.info("%s: messages %s announce %s", self.stream, [m["message_id"] for m in messages], days)
            yield TriggerEvent(
                {"partitions": days, "messages": messages, "stream": batch["stream"], "source": "redis_stream"}
            )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Outside a triggerer's shared streams (``dag.test()``, a unit test): read, yield, acknowledge."""
        producer = RedisStreamProducer(**self.serialize()[1])
        try:
            async for batch, entry_ids in producer.open_stream():
                async for event in self.filter_shared_stream(_one(batch)):
                    yield event
                await producer.acknowledge(entry_ids)
        finally:
            await producer.aclose()


async def _one(item: Any) -> AsyncIterator[Any]:
    yield item


class RedisStreamProducer(SharedStreamProducer):
    """The broker half of :class:`RedisStreamTrigger`: ``XREADGROUP`` in, ``XACK`` after the event is stored.

    On start it first claims every entry the group delivered and nobody acknowledged (``XAUTOCLAIM`` from
    ``0-0``: the previous triggerer's, ours before a crash), then reads new ones (``>``); every
    ``reclaim_seconds`` it claims again the entries pending that long (an ack timeout, a failed store). The
    trigger runs in one triggerer at a time, so one consumer reads the group; its name is fixed
    (``airflow-triggerer``) so a restarted triggerer is the same consumer.
    """

    CONSUMER = "airflow-triggerer"

    def __init__(
        self,
        stream: str,
        group: str = "airflow",
        redis_conn_id: str = "redis_default",
        block_seconds: float = 1.0,
        reclaim_seconds: float = 600.0,
    ) -> None:
        self.stream = stream
        self.group = group
        self.redis_conn_id = redis_conn_id
        self.block_ms = max(1, int(block_seconds * 1000))
        self.reclaim_ms = int(reclaim_seconds * 1000)
        self._client: Any = None

    async def _connect(self) -> Any:
        if self._client is None:
            from airflow.providers.redis.hooks.redis import RedisHook

            # a sync SDK call (the connection) from a worker thread: the triggerer bridges it to its loop
            self._client = await asyncio.to_thread(RedisHook(redis_conn_id=self.redis_conn_id).get_conn)
            await asyncio.to_thread(self._create_group)
        return self._client

    def _create_group(self) -> None:
        import redis

        try:  # from the stream's first entry: what was published before the group existed is delivered too
            self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _claim(self, min_idle_ms: int) -> list[tuple[str, dict[str, str]]]:
        claimed, start = [], "0-0"
        while True:
            start, entries, *_ = self._client.xautoclaim(
                self.stream, self.group, self.CONSUMER, min_idle_ms, start_id=start, count=100
            )
            claimed += [_decode(entry) for entry in entries if entry and entry[1] is not None]
            if _text(start) == "0-0":
                return claimed

    def _read(self) -> list[tuple[str, dict[str, str]]]:
        reply = self._client.xreadgroup(self.group, self.CONSUMER, {self.stream: ">"}, count=100, block=self.block_ms)
        return [_decode(entry) for _, entries in reply or [] for entry in entries]

    async def open_stream(self) -> AsyncIterator[tuple[Any, Any]]:
        """Batches of messages: pending ones with the first read, then each read's; ``(batch, entry ids)``.

        One raw event per read, not per message: Airflow 3.3 gives an asset one queued run at a time (the
        run consumes the events up to the first one's time), so messages read together must be one event
        to start one run that ingests all their days. Messages that name no day are moved to
        ``<stream>:dead`` with the reason and acknowledged here: they never become an event.
        """
        import time

        await self._connect()
        batch = await asyncio.to_thread(self._claim, 0)
        last_claim = time.monotonic()
        while True:
            batch += await asyncio.to_thread(self._read)
            good = await asyncio.to_thread(self._refuse_unannounced, batch)
            if good:
                messages = [{"id": entry_id, "fields": fields} for entry_id, fields in good]
                yield {"stream": self.stream, "messages": messages}, [entry_id for entry_id, _ in good]
            batch = []
            if self.reclaim_ms and (time.monotonic() - last_claim) * 1000 >= self.reclaim_ms:
                batch = await asyncio.to_thread(self._claim, self.reclaim_ms)
                last_claim = time.monotonic()

    def _refuse_unannounced(self, batch: list[tuple[str, dict[str, str]]]) -> list[tuple[str, dict[str, str]]]:
        from mlops_airflow.events import partitions_from_event

        bad = [entry_id for entry_id, fields in batch if not partitions_from_event({"payload": fields})]
        if bad:
            self._dead_letter(bad)
            self._client.xack(self.stream, self.group, *bad)
        return [(entry_id, fields) for entry_id, fields in batch if entry_id not in bad]

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        """Acknowledge the batches whose event was stored; leave failed ones pending (delivered again)."""
        if os.environ.get(CRASH_BEFORE_ACK):
            # test hook (tests/stack): the asset events are stored, the entries not yet acknowledged
            import logging

            logging.getLogger(__name__).warning("%s set: exiting before XACK of %s", CRASH_BEFORE_ACK, batch)
            os._exit(17)
        done = [entry_id for item in batch if item.outcome.is_clean for entry_id in item.broker_payload]
        await self.acknowledge(done)

    def _dead_letter(self, entry_ids: list[str]) -> None:
        for entry_id in entry_ids:
            for _, fields in (_decode(e) for e in self._client.xrange(self.stream, entry_id, entry_id)):
                reason = "names no partition (partition: YYYY-MM-DD)"
                self._client.xadd(f"{self.stream}:dead", {**fields, "original_id": entry_id, "reason": reason})
                self.log_refused(entry_id, reason)

    def log_refused(self, entry_id: str, reason: str) -> None:
        """Say so in the triggerer's log."""
        import logging

        logging.getLogger(__name__).warning(
            "%s message %s %s: moved to %s:dead", self.stream, entry_id, reason, self.stream
        )

    async def acknowledge(self, entry_ids: list[str]) -> None:
        """``XACK`` these entries (and delete nothing: the stream's retention is the publisher's ``MAXLEN``)."""
        if entry_ids:
            await self._connect()
            await asyncio.to_thread(self._client.xack, self.stream, self.group, *entry_ids)

    async def aclose(self) -> None:
        """Close the connection."""
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(entry: Any) -> tuple[str, dict[str, str]]:
    entry_id, fields = entry
    return _text(entry_id), {_text(k): _text(v) for k, v in (fields or {}).items()}
