from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks import stages
from tasks.errors import PermanentError
from tasks.features import FeatureBuilder, FeatureError, build_features
from tasks.replay import replay_days
from tests.unit.conftest import FIXTURES


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


def test_time_split_puts_the_last_days_in_the_holdout(spec, layout):
    days = [f"2011-06-{d:02d}" for d in range(1, 11)]
    replay_days(spec, layout, FIXTURES, days[0], days[-1])
    for d in days:
        stages.ingest_partition("bike_demand", d)  # checked, staged, validated, promoted into raw/
    uris = build_features(spec, layout, list(reversed(days)), "run")  # any order: the split is by time
    assert uris.holdout_partitions == days[-7:] and uris.train_partitions == days[:3]
    holdout = pd.read_parquet(uris.holdout)
    train = pd.read_parquet(uris.train_raw)
    assert train["dteday"].max() < holdout["dteday"].min()
    assert "cnt" in pd.read_parquet(uris.train_features).columns
    assert "instant" not in holdout.columns and "casual" not in holdout.columns
    assert uris.train_raw == str(layout.train_raw("bike_demand", "run")) and uris.train_rows == 3 * 24
    assert uris.holdout == str(layout.holdout("bike_demand", "run")) and uris.holdout_rows == 7 * 24
    with pytest.raises(FeatureError, match="cannot be split") as err:
        build_features(spec, layout, days[:7], "run")
    assert isinstance(err.value, PermanentError)


def test_features_are_the_same_for_training_and_serving_rows(spec, layout):
    rows = pd.read_csv(FIXTURES / "bike_sharing_hour.csv.gz").head(48)
    builder = FeatureBuilder.from_spec(spec.features)
    once = builder.transform(rows)
    shuffled = builder.transform(rows.sample(frac=1, random_state=0)).loc[once.index]
    assert once.equals(shuffled)  # row-wise: no statistic of the batch leaks into a row's features
    assert not once.isna().any().any()


def test_no_partitions_is_an_error(spec, layout):
    from tasks.features import load_partitions

    with pytest.raises(FeatureError, match="no partitions given"):
        load_partitions(spec, layout, [])


def test_unseen_levels_go_to_an_explicit_other_and_levels_may_be_learned():
    from tasks.features import OTHER, unseen_levels
    from tasks.spec import FeatureSpec

    train = pd.DataFrame({"job": ["admin.", "unknown", "student", None], "age": [30, 40, 50, 60]})
    spec = FeatureSpec(numeric=["age"], categorical={"job": []}, unseen="other")
    builder = FeatureBuilder.from_spec(spec).fit(train)
    assert builder.levels == {"job": ["admin.", "student", "unknown"]}  # learned at fit, sorted
    served = pd.DataFrame({"job": ["student", "pilot", None], "age": [1, 2, 3]})
    out = builder.transform(served)
    assert out[f"job={OTHER}"].tolist() == [0.0, 1.0, 0.0]  # unseen -> other; missing stays all zeros
    assert out["job=student"].tolist() == [1.0, 0.0, 0.0]
    declared = FeatureSpec(numeric=["age"], categorical={"job": ["admin.", "student"]})
    legacy = FeatureBuilder.from_spec(declared).fit(train).transform(served)
    assert f"job={OTHER}" not in legacy.columns and legacy.filter(like="job=").iloc[1].sum() == 0
    assert unseen_levels(declared, served) == {"job": 1}


def test_rows_without_their_target_are_left_out_of_training_and_the_holdout(spec, layout):
    from tests.unit.tasks.conftest import raw_rows

    rows = raw_rows(FIXTURES, "2011-06-01", "2011-06-09")
    rows["cnt"] = rows["cnt"].astype(float)
    rows.loc[[0, 5, len(rows) - 1], "cnt"] = np.nan  # two in training, one in the holdout
    for day, part in rows.groupby("dteday"):
        target = layout.raw_partition("bike_demand", str(day))
        target.parent.mkdir(parents=True, exist_ok=True)
        part.to_parquet(target)
    uris = build_features(spec, layout, sorted(rows.dteday.unique()), "run")
    assert (uris.train_rows, uris.holdout_rows) == (2 * 24 - 2, 7 * 24 - 1)
    assert not pd.read_parquet(uris.train_features)["cnt"].isna().any()
    assert not pd.read_parquet(uris.holdout)["cnt"].isna().any()


def test_bands_and_date_parts_are_derived_inside_the_model():
    from tasks.explain import raw_column_of
    from tasks.spec import FeatureSpec

    spec = FeatureSpec(numeric=["age"], bands={"age": [30, 60]}, date_parts={"day": ["month", "dayofweek"]})
    rows = pd.DataFrame({"age": [25, 30, 61, None], "day": ["2024-03-01", "2024-03-02", None, "2024-12-31"]})
    out = FeatureBuilder.from_spec(spec).fit(rows).transform(rows)
    assert list(out.columns) == ["age", "age=<30", "age=30-60", "age=>=60", "day_month", "day_dayofweek"]
    assert out["age=<30"].tolist() == [1.0, 0.0, 0.0, 0.0] and out["age=30-60"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert out.iloc[3][["age=<30", "age=30-60", "age=>=60"]].sum() == 0  # missing: no band
    assert out["day_month"].tolist()[:2] == [3.0, 3.0] and out["day_dayofweek"].tolist()[0] == 4.0  # a Friday
    assert np.isnan(out["day_month"].iloc[2])
    assert raw_column_of(FeatureBuilder.from_spec(spec)) == ["age", "age", "age", "age", "day", "day"]
    with pytest.raises(ValueError, match="strictly ascending"):
        FeatureSpec(numeric=["age"], bands={"age": [60, 30]})


class DropsARow:
    """A broken custom transformer: one row fewer out than in."""

    def fit(self, X, y=None):  # noqa: N803 - sklearn's signature
        return self

    def transform(self, X):  # noqa: N803
        return X.to_numpy()[1:]


class FailsToFit:
    """A custom transformer whose fit raises."""

    def fit(self, X, y=None):  # noqa: N803
        raise RuntimeError("no variance in temp")

    def transform(self, X):  # noqa: N803
        return X


def _custom(transformer: str) -> list[dict]:
    return [
        {
            "name": "bad",
            "transformer": f"tests.unit.tasks.test_features:{transformer}",
            "columns": ["temp"],
            "params": {},
        }
    ]


def test_a_custom_transformer_s_failures_are_named_and_it_must_be_fitted_first():
    rows = pd.DataFrame({"temp": [0.1, 0.2, 0.3]})
    with pytest.raises(FeatureError, match=r"features.custom bad \(.*DropsARow\) returned shape \(1, 1\) for 2 rows"):
        FeatureBuilder(["temp"], {}, {}, custom=_custom("DropsARow")).fit(rows)
    with pytest.raises(FeatureError, match=r"features.custom bad \(.*FailsToFit\) failed to fit: no variance in temp"):
        FeatureBuilder(["temp"], {}, {}, custom=_custom("FailsToFit")).fit(rows)
    with pytest.raises(FeatureError, match="call fit before transform"):
        FeatureBuilder(["temp"], {}, {}, custom=_custom("DropsARow")).transform(rows)
    assert isinstance(FeatureError("x"), PermanentError)  # the team's broken code is not retried


def test_a_custom_module_in_site_packages_that_no_distribution_owns_is_refused_naming_it(tmp_path, monkeypatch):
    """Copied into site-packages by hand, it was neither pinned nor shipped: the model could not load it elsewhere."""
    import shutil
    from importlib.metadata import version

    from tasks.features import custom_code
    from tasks.spec import FeatureSpec

    site = tmp_path / "lib" / "site-packages"
    shutil.copytree(FIXTURES.parent / "team_features", site / "orphan_features")
    monkeypatch.syspath_prepend(str(site))
    step = {"name": "feels", "transformer": "orphan_features.ratios:RatioFeature", "columns": ["temp", "hum"]}
    features = FeatureSpec(numeric=["temp"], custom=[step])
    with pytest.raises(FeatureError, match=r"module .orphan_features. is installed at .*site-packages.* no distrib"):
        custom_code(features)
    # one a distribution owns is pinned; the team's own package (outside site-packages) ships as code
    installed = FeatureSpec(numeric=["temp"], custom=[step | {"transformer": "sklearn.preprocessing:StandardScaler"}])
    assert custom_code(installed) == ([], [f"scikit-learn=={version('scikit-learn')}"])
    monkeypatch.syspath_prepend(str(FIXTURES.parent))
    shipped = FeatureSpec(numeric=["temp"], custom=[step | {"transformer": "team_features.ratios:RatioFeature"}])
    assert custom_code(shipped) == ([str(FIXTURES.parent / "team_features")], [])
