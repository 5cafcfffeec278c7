from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks import stages
from tasks.features import FeatureBuilder, FeatureError, build_datasets
from tasks.replay import replay_days
from tests.conftest import SHARED


def test_feature_builder_is_stateless_and_declared(spec):
    builder = FeatureBuilder.from_spec(spec.features)
    rows = pd.DataFrame(
        {
            "temp": [0.5],
            "atemp": [0.4],
            "hum": [0.3],
            "windspeed": [0.1],
            "holiday": [0],
            "workingday": [1],
            "weathersit": [3],
            "season": [2],
            "hr": [6],
            "weekday": [0],
            "mnth": [3],
        }
    )
    out = builder.fit(rows).transform(rows)
    assert list(out.columns) == builder.feature_names
    assert out.loc[0, "weathersit=3"] == 1.0 and out.loc[0, "weathersit=1"] == 0.0
    assert np.isclose(out.loc[0, "hr_sin"], 1.0)  # 6 o'clock is a quarter of the day
    assert np.isclose(out.loc[0, "mnth_cos"], 0.0, atol=1e-12)  # month 3 of 12: cos(pi/2) == 0


def test_missing_source_column_is_named(spec):
    builder = FeatureBuilder.from_spec(spec.features)
    with pytest.raises(FeatureError, match=r"lack columns \['windspeed'\]"):
        builder.transform(pd.DataFrame({c: [1] for c in spec.features.source_columns if c != "windspeed"}))


@pytest.mark.needs_data
def test_time_split_puts_the_last_days_in_the_holdout(spec, layout):
    days = [f"2011-06-{d:02d}" for d in range(1, 11)]
    replay_days(spec, layout, SHARED, days[0], days[-1])
    for d in days:
        stages.ingest("bike_demand", d)  # checked, staged, validated, promoted into raw/
    uris = build_datasets(spec, layout, days, "run")
    assert uris.holdout_partitions == days[-7:] and uris.train_partitions == days[:3]
    holdout = pd.read_parquet(uris.holdout)
    train = pd.read_parquet(uris.train_raw)
    assert train["dteday"].max() < holdout["dteday"].min()
    assert "cnt" in pd.read_parquet(uris.train_features).columns
    assert "instant" not in holdout.columns and "casual" not in holdout.columns
    with pytest.raises(FeatureError, match="cannot be split"):
        build_datasets(spec, layout, days[:7], "run")
