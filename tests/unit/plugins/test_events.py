"""Airflow event shapes -> partition days (plugins/mlops_airflow/events.py)."""

from __future__ import annotations

import pytest

from mlops_airflow.events import partitions_from_event, run_partitions


@pytest.mark.parametrize(
    ("extra", "days"),
    [
        ({"partition": "2011-06-01T00:00:00"}, ["2011-06-01"]),  # REST
        ({"partitions": ["2011-06-08", "2011-06-09"], "rows": 48}, ["2011-06-08", "2011-06-09"]),  # the raw Asset
        ({"from_trigger": True, "payload": {"partitions": ["2011-06-02", "2011-06-03"]}}, ["2011-06-02", "2011-06-03"]),
        ({"from_trigger": True, "payload": {"partition": "2011-06-04"}}, ["2011-06-04"]),
        ({"from_trigger": True, "payload": {"data": '{"partition": "2011-06-05"}'}}, ["2011-06-05"]),
        ({"from_trigger": True, "payload": {"data": " 2011-06-06 "}}, ["2011-06-06"]),
        ({"from_trigger": True, "payload": {"data": "hello"}}, []),
        ({"from_trigger": True, "payload": {"data": "[1, 2]"}}, []),
        ({"from_trigger": True, "payload": "2011-06-07"}, []),
        ({"source": "export"}, []),
        (None, []),
    ],
)
def test_partitions_from_event_reads_every_announcement_shape(extra, days):
    assert partitions_from_event(extra) == days


def test_ingest_partitions_come_from_the_form_the_upstream_events_or_the_interval():
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.factory import landing_asset

    landing = landing_asset("bike_demand")
    events = {landing: [SimpleNamespace(extra={"partition": d}) for d in ("2011-06-02", "2011-06-01", "2011-06-02")]}
    assert run_partitions(None, None, events) == ["2011-06-01", "2011-06-02"]  # a duplicate event is one partition
    assert run_partitions({"partition": "2011-07-01"}, None, events) == ["2011-07-01"]  # the trigger form wins
    assert run_partitions({}, datetime(2011, 6, 5, tzinfo=UTC), None) == ["2011-06-05"]
    # what the watchers record: the landing-file trigger's payload, a Redis message (JSON or the bare date)
    watched = [
        {"from_trigger": True, "payload": {"partitions": ["2011-06-03"], "source": "landing_file"}},
        {"from_trigger": True, "payload": {"type": "message", "channel": "c", "data": '{"partition": "2011-06-04"}'}},
        {"from_trigger": True, "payload": {"type": "message", "channel": "c", "data": "2011-06-03"}},
    ]
    events = {landing: [SimpleNamespace(extra=e) for e in watched]}
    assert run_partitions(None, None, events) == ["2011-06-03", "2011-06-04"]
    for junk in ({"source": "export"}, {"from_trigger": True, "payload": {"type": "message", "data": "hello"}}):
        with pytest.raises(AirflowFailException, match="names no partition"):
            run_partitions(None, None, {landing: [SimpleNamespace(extra=junk)]})
    with pytest.raises(AirflowFailException, match="trigger with a 'partition'"):
        run_partitions(None, None, None)
