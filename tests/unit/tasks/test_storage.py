from __future__ import annotations

import pytest

from tasks.storage import DataLayout, LayoutError, atomic_path, parse_day, safe_key, write_json


def test_atomic_path_keeps_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_write_json_replaces_atomically(tmp_path):
    target = write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert target.read_text().strip() == '{\n  "x": 1\n}'


def test_raw_partitions_ignore_incomplete_folders(tmp_path):
    layout = DataLayout(tmp_path)
    good = layout.raw_partition("p", "2011-01-02")
    good.parent.mkdir(parents=True)
    good.write_bytes(b"x")
    (tmp_path / "raw" / "p" / "dt=2011-01-01").mkdir()  # no part.parquet: an interrupted write
    (tmp_path / "raw" / "p" / "junk").mkdir()
    assert layout.raw_partitions("p") == ["2011-01-02"]


def test_safe_key_and_parse_day():
    assert safe_key("scheduled__2011-01-01T00:00:00+00:00") == "scheduled__2011-01-01T00_00_00_00_00"
    assert parse_day("2011-06-01T00:00:00+00:00") == "2011-06-01"
    with pytest.raises(ValueError, match="not a calendar date"):
        parse_day("2011-13-01")
    with pytest.raises(ValueError):
        safe_key("///")


@pytest.mark.parametrize(
    "day", ["2011-06-01/../../../x", "2011-06-01x", "2011-6-01", "2011-02-30", "../2011-06-01", "２０１１-06-01", ""]
)
def test_the_layout_builds_no_path_from_a_day_that_is_not_strictly_one(tmp_path, day):
    layout = DataLayout(tmp_path)
    for build in (layout.landing_file, layout.raw_partition, layout.quarantine_dir):
        with pytest.raises(LayoutError, match="not a calendar date"):
            build("bike_demand", day)


@pytest.mark.parametrize("name", ["../x", "bike_demand/../../x", "Bike", "a.b", "", "/etc", "x y"])
def test_the_layout_builds_no_path_from_a_name_that_is_not_a_pipeline(tmp_path, name):
    layout = DataLayout(tmp_path)
    for build in (layout.landing_dir, layout.raw_partitions, lambda p: layout.run_dir(p, "r")):
        with pytest.raises(LayoutError, match="not a pipeline name"):
            build(name)
    with pytest.raises(LayoutError):
        layout.raw_partition(name, "2011-06-01")


def test_parse_day_takes_a_day_or_a_whole_iso_datetime_nothing_else():
    assert parse_day("2011-06-01") == parse_day("2011-06-01 23:59:59") == "2011-06-01"
    for bad in ("2011-06-01/../x", "2011-06-01T99", "2011-06-01Tx/../../y", "20110601"):
        with pytest.raises(ValueError, match="not a calendar"):
            parse_day(bad)


def test_safe_key_never_yields_a_parent_folder():
    assert safe_key("a/../b") == "a_.._b"
    for bad in ("..", ".", "/../"):
        with pytest.raises(ValueError):
            safe_key(bad)


def test_no_stage_moves_a_file_from_outside_the_data_root(data_root, layout):
    """Once, ``validate_partitions`` with ``<a day>/../../..`` validated and quarantined a file outside the root."""
    from tasks import stages

    layout.raw_partition("bike_demand", "2011-06-01").parent.mkdir(parents=True)
    victim = data_root.parent / "outside" / "part.parquet"
    victim.parent.mkdir()
    victim.write_bytes(b"someone else's file")
    crafted = "2011-06-01/../../../../outside"
    assert (layout.root / "raw" / "bike_demand" / f"dt={crafted}" / "part.parquet").resolve() == victim.resolve()
    for stage, args in (
        (stages.validate_partitions, ([crafted], "r")),
        (stages.validate_data, ([crafted], "r")),
        (stages.ingest_partition, (crafted,)),
        (stages.landing_ready, (crafted,)),
    ):
        with pytest.raises(LayoutError):
            stage("bike_demand", *args)
    assert victim.read_bytes() == b"someone else's file"
    assert not (data_root / "quarantine").exists()


def test_database_urls_get_the_postgresql_driver_the_lock_installs():
    from tasks.storage import database_url

    assert database_url("postgresql://u:p@db:5432/optuna") == "postgresql+psycopg2://u:p@db:5432/optuna"
    assert database_url("postgres://u@db/x") == "postgresql+psycopg2://u@db/x"
    for kept in ("postgresql+psycopg2://u@db/x", "sqlite:////tmp/x.db", "mysql://u@db/x", "not a url"):
        assert database_url(kept) == kept
