"""Event triggers of the ingest DAG (plugins/mlops_airflow/triggers.py): the landing watcher, the Redis channel."""

from __future__ import annotations

import asyncio
from typing import Any

from mlops_airflow.triggers import LandingFileTrigger, RedisChannelTrigger
from tasks.replay import replay_days
from tests.unit.conftest import FIXTURES


def test_landing_trigger_puts_one_look_into_one_event(spec, layout):
    replay_days(spec, layout, FIXTURES, "2011-06-02", "2011-06-04")
    trigger = LandingFileTrigger("bike_demand", str(layout.root), poll_seconds=0.05, settle_seconds=0.2)
    classpath, kwargs = trigger.serialize()
    assert classpath == "mlops_airflow.triggers.LandingFileTrigger" and kwargs["data_root"] == str(layout.root)
    assert kwargs["completion"] == "settle" and kwargs["settle_seconds"] == 0.2

    async def first_event() -> dict:
        events = trigger.run()
        try:
            return (await asyncio.wait_for(anext(events), 10)).payload
        finally:
            await events.aclose()

    payload = asyncio.run(first_event())
    assert payload["partitions"] == ["2011-06-02", "2011-06-03", "2011-06-04"]
    assert payload["source"] == "landing_file" and len(payload["sha256"]["2011-06-03"]) == 64


def test_redis_trigger_serialises_itself_and_relays_the_provider_trigger_s_messages(monkeypatch):
    """The DAG parse never imports the redis client; in the triggerer the provider's trigger does the work."""
    import subprocess
    import sys

    from airflow.providers.redis.triggers import redis_await_message
    from airflow.triggers.base import TriggerEvent

    trigger = RedisChannelTrigger(["bike_demand.landing"], redis_conn_id="redis_events", poll_interval=0.5)
    assert trigger.serialize() == (
        "mlops_airflow.triggers.RedisChannelTrigger",
        {"channels": ["bike_demand.landing"], "redis_conn_id": "redis_events", "poll_interval": 0.5},
    )
    built: dict[str, Any] = {}

    class Provider:
        def __init__(self, **kwargs: Any) -> None:
            built.update(kwargs)

        async def run(self):  # what AwaitMessageTrigger yields for one message
            yield TriggerEvent({"type": "message", "pattern": None, "channel": "bike_demand.landing", "data": "x"})

    monkeypatch.setattr(redis_await_message, "AwaitMessageTrigger", Provider)

    async def first() -> Any:
        return (await anext(trigger.run())).payload

    assert asyncio.run(first())["data"] == "x"
    assert built == {"channels": ["bike_demand.landing"], "redis_conn_id": "redis_events", "poll_interval": 0.5}
    probe = "import sys, mlops_airflow.triggers as t; t.RedisChannelTrigger(['c']); print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _redis() -> Any:
    import redis

    from tests.conftest import require

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        require(False, f"Redis is not reachable on 127.0.0.1:6379 ({exc}); CI machines have it")
    return client


def test_redis_stream_trigger_acknowledges_only_what_airflow_confirmed_stored(monkeypatch):
    """Airflow's own shared-stream manager (ack mode), as the triggerer drives it, against the real Redis.

    The messages of one read are one event (one run); they are acknowledged only after that event's persist
    confirmation; one naming no day is dead-lettered; unconfirmed ones (the triggerer died first) are
    delivered again to the next triggerer.
    """
    import secrets

    from airflow.triggers.shared_stream import SharedStreamManager

    from mlops_airflow.triggers import RedisStreamTrigger

    client = _redis()
    monkeypatch.setenv("AIRFLOW_CONN_REDIS_DEFAULT", "redis://127.0.0.1:6379/0")
    stream = f"mlp.test.{secrets.token_hex(4)}.landing"
    trigger = RedisStreamTrigger(stream, "airflow", block_seconds=0.1)
    assert trigger.serialize()[1] == {
        "stream": stream, "group": "airflow", "redis_conn_id": "redis_default", "block_seconds": 0.1,
        "reclaim_seconds": 600.0,
    }  # fmt: skip
    first = client.xadd(stream, {"partition": "2011-06-22"})  # published before any consumer: kept
    client.xadd(stream, {"note": "no day here"})
    second = client.xadd(stream, {"data": '{"partition": "2011-06-23"}'})
    key = trigger.shared_stream_key()

    async def consume(confirm: bool) -> dict[str, Any]:
        manager = SharedStreamManager(ack_timeout=30)
        events = trigger.filter_shared_stream(manager.subscribe(trigger_id=1, trigger=trigger, key=key))
        event = (await asyncio.wait_for(anext(events), 10)).payload
        seq = manager.bind_pending_event(trigger_id=1, key=key)
        if confirm:
            manager.confirm_persisted([seq])
            try:  # moving past the event resolves it
                await asyncio.wait_for(anext(events), 0.5)
            except TimeoutError:
                pass
            for _ in range(50):
                if not client.xpending(stream, "airflow")["pending"]:
                    break
                await asyncio.sleep(0.1)
        await events.aclose()
        await manager.stop_all()  # (unconfirmed: as a crash leaves it)
        return event

    crashed = asyncio.run(consume(confirm=False))
    assert crashed["partitions"] == ["2011-06-22", "2011-06-23"] and crashed["source"] == "redis_stream"
    assert [m["message_id"] for m in crashed["messages"]] == [first, second]
    assert client.xpending(stream, "airflow")["pending"] == 2  # not confirmed stored: not acknowledged
    (dead,) = client.xrange(f"{stream}:dead")  # the one naming no day: refused at once, acknowledged
    assert dead[1]["note"] == "no day here" and "names no partition" in dead[1]["reason"]
    again = asyncio.run(consume(confirm=True))  # the next triggerer: the same messages, then acknowledged
    assert [m["message_id"] for m in again["messages"]] == [first, second]
    assert client.xpending(stream, "airflow")["pending"] == 0
    client.delete(stream, f"{stream}:dead")
