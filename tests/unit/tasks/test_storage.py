from __future__ import annotations

import pytest

from tasks.storage import DataLayout, atomic_path, parse_day, safe_key, write_json


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
