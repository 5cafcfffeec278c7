"""Airflow event shapes -> partition days (plugins/mlops_airflow/events.py)."""

from __future__ import annotations

import pytest

from mlops_airflow.events import announced_partitions, partitions_from_event, run_partitions


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


def test_an_ingest_run_s_day_is_its_partition_key_else_the_form_the_events_or_the_interval():
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.factory import landing_asset

    landing = landing_asset("bike_demand")
    events = {landing: [SimpleNamespace(extra={"partition": d}) for d in ("2011-06-02", "2011-06-01", "2011-06-02")]}
    assert run_partitions("2011-08-01", {"partition": "2011-07-01"}, None, events) == ["2011-08-01"]  # the key wins
    assert run_partitions(None, None, None, events) == ["2011-06-01", "2011-06-02"]  # a duplicate is one partition
    assert run_partitions(None, {"partition": "2011-07-01"}, None, events) == ["2011-07-01"]  # then the form
    assert run_partitions(None, {}, datetime(2011, 6, 5, tzinfo=UTC), None) == ["2011-06-05"]  # dag.test()
    with pytest.raises(AirflowFailException, match="partition key"):
        run_partitions(None, None, None, None)


def test_the_announcer_reads_the_day_of_every_watcher_message_and_keeps_a_key_it_is_given():
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.factory import watched_asset

    watched = watched_asset("bike_demand")
    # what the watchers record: the landing-file trigger's payload, a Redis message (JSON or the bare date)
    extras = [
        {"from_trigger": True, "payload": {"partitions": ["2011-06-03"], "source": "landing_file"}},
        {"from_trigger": True, "payload": {"type": "message", "channel": "c", "data": '{"partition": "2011-06-04"}'}},
        {"from_trigger": True, "payload": {"type": "message", "channel": "c", "data": "2011-06-03"}},
    ]
    events = [SimpleNamespace(extra=e, partition_key=None) for e in extras]
    events.append(SimpleNamespace(extra={}, partition_key="2011-06-09"))  # already keyed: kept as it is
    assert announced_partitions({watched: events}) == ["2011-06-03", "2011-06-04", "2011-06-09"]
    for junk in ({"source": "export"}, {"from_trigger": True, "payload": {"type": "message", "data": "hello"}}):
        with pytest.raises(AirflowFailException, match="names no partition"):
            announced_partitions({watched: [SimpleNamespace(extra=junk, partition_key=None)]})
