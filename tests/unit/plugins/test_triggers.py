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
