"""Replay (tasks/replay.py): the shipped rows into the landing zone, one file per day."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.replay import ReplayError, replay_days
from tests.unit.conftest import FIXTURES


def test_replay_outside_the_dataset_is_an_error(spec, layout):
    with pytest.raises(ReplayError, match="no rows between 2015-01-01"):
        replay_days(spec, layout, FIXTURES, "2015-01-01", "2015-01-02")
    with pytest.raises(ReplayError, match="before start"):
        replay_days(spec, layout, FIXTURES, "2011-01-02", "2011-01-01")


def test_replay_writes_one_file_per_day_with_the_real_rows(spec, layout):
    result = replay_days(spec, layout, FIXTURES, "2011-01-01", "2011-01-03")
    assert [p.rsplit("/", 1)[1] for p in result.files] == ["2011-01-01.csv", "2011-01-02.csv", "2011-01-03.csv"]
    day = pd.read_csv(layout.landing_file("bike_demand", "2011-01-01"))
    assert len(day) == 24 and day["cnt"].sum() == 985  # the real first day of the dataset
    assert result.rows == 24 + 23 + 22  # hours missing in the original file stay missing
