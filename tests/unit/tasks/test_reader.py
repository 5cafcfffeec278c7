"""The landing-file reader on real bike and census rows: what it refuses, why, and what it accepts unchanged."""

from __future__ import annotations

import codecs
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from tasks.reader import LandingFileRefusedError, read_landing_file
from tasks.spec import PipelineSpec, load_spec
from tests.conftest import REPO
from tests.ingest_corpus import CASES, real
from tests.unit.conftest import FIXTURES

READER_CASES = [c for c in CASES if c.stage == "ingest" and c.build is not None]


def _file(folder: Path, day: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{day}.csv"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", READER_CASES, ids=[c.id for c in READER_CASES])
def test_each_refusal_names_the_problem(spec, tmp_path, case):
    path = _file(tmp_path, case.day, case.build())
    with pytest.raises(LandingFileRefusedError) as refused:
        read_landing_file(spec, path, case.day)
    assert case.reason in " | ".join(refused.value.reasons)
    assert refused.value.sha256 and str(path) in str(refused.value)


def test_bom_crlf_quotes_and_column_order_change_nothing_but_the_notes(spec, tmp_path):
    day = "2011-07-08"
    clean = read_landing_file(spec, _file(tmp_path / "clean", day, real(day)), day)
    assert clean.notes == [] and clean.rows == 24
    rows = real(day).decode().splitlines()
    header = rows[0].split(",")
    order = list(reversed(range(len(header))))
    reordered = "\n".join(",".join(line.split(",")[i] for i in order) for line in rows) + "\n"
    variants = {
        "bom": codecs.BOM_UTF8 + real(day),
        "crlf": real(day).replace(b"\n", b"\r\n"),
        "quoted": "\n".join(",".join(f'"{v}"' for v in line.split(",")) for line in rows).encode() + b"\n",
        "reordered": reordered.encode(),
        "bom+crlf+reordered": codecs.BOM_UTF8 + reordered.replace("\n", "\r\n").encode(),
    }
    for name, data in variants.items():
        batch = read_landing_file(spec, _file(tmp_path / name, day, data), day)
        assert batch.table.equals(clean.table), name  # the same typed rows, columns in schema order
        assert batch.sha256 != clean.sha256  # each file is still known by its own bytes
    assert clean.table.column_names == list(spec.schema_.columns)
    assert clean.table.schema.field("hr").type == pa.int64() and clean.table.schema.field("temp").type == pa.float64()


def _adult(tmp_path: Path, **source: object) -> PipelineSpec:
    raw = yaml.safe_load((REPO / "config" / "pipelines" / "adult_income.yaml").read_text())
    raw["source"] |= source
    path = tmp_path / "adult_income.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_spec(path)


def _adult_day(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    from tasks.replay import load_dataset

    data = load_dataset(load_spec("adult_income"), FIXTURES).head(50)
    data.loc[3, "native-country"] = text
    return _file(tmp_path, "2024-01-01", data.to_csv(index=False).encode(encoding))


def test_latin1_is_refused_naming_the_byte_unless_the_spec_declares_it(tmp_path):
    path = _adult_day(tmp_path, "Côte-d'Ivoire", "latin-1")
    with pytest.raises(LandingFileRefusedError, match=r"not valid utf-8 text: byte 0xf4 at offset \d+ \(line 5\)"):
        read_landing_file(load_spec("adult_income"), path, "2024-01-01")
    batch = read_landing_file(_adult(tmp_path, encoding="latin-1"), path, "2024-01-01")
    assert batch.table.column("native-country")[3].as_py() == "Côte-d'Ivoire"


def test_census_missing_markers_become_missing_values_and_whole_numbers_stay_integers(tmp_path):
    path = _adult_day(tmp_path, "?")
    batch = read_landing_file(load_spec("adult_income"), path, "2024-01-01")
    assert batch.table.column("native-country")[3].as_py() is None  # "?" is UCI's missing marker
    assert batch.table.schema.field("age").type == pa.int64()
    assert batch.rows == 50 and batch.table.column("batch_date").to_pylist() == ["2024-01-01"] * 50


def test_a_missing_number_is_left_to_the_suite_and_spaces_around_a_number_are_accepted(spec, tmp_path):
    day = "2011-07-09"
    lines = real(day).decode().splitlines()
    cells = lines[3].split(",")
    cells[5] = ""  # hr missing: the column is typed float so that the suite reports it as a missing value
    cells[10] = f" {cells[10]} "
    lines[3] = ",".join(cells)
    batch = read_landing_file(spec, _file(tmp_path, day, ("\n".join(lines) + "\n").encode()), day)
    assert batch.table.schema.field("hr").type == pa.float64() and batch.table.column("hr").null_count == 1
    assert batch.table.column("temp").null_count == 0


def test_rows_check_accepts_every_real_day_and_refuses_a_cut_one(spec):
    import json

    counts = json.loads((FIXTURES / "bike_day_counts.json").read_text())  # every day of the whole file (cut.py)
    assert len(counts) == 731 and min(counts.values()) == 1  # hurricane Sandy: 2012-10-29 has one hour
    rule = spec.source.rows_per_partition
    assert rule is not None
    refused = {day: rule.refusal(day, int(n)) for day, n in counts.items() if rule.refusal(day, int(n))}
    assert refused == {}, refused
    assert "12 rows, expected 24 ± 2 (22 to 26" in (rule.refusal("2011-07-12", 12) or "")
    assert "exactly 12 for 2011-01-18" in (rule.refusal("2011-01-18", 6) or "")  # a known short day cut further


_MEMORY_PROBE = """
import json, resource, sys
from pathlib import Path
from tasks.reader import LandingFileRefusedError, read_landing_file
from tasks.spec import load_spec
spec = load_spec("bike_demand")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
    read_landing_file(spec, Path(sys.argv[1]), "2011-07-16")
except LandingFileRefusedError as exc:
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(json.dumps({"reasons": exc.reasons, "sha256": exc.sha256, "grown": grown}))
"""


def test_a_file_above_max_bytes_is_refused_by_its_size_without_being_loaded(tmp_path):
    big = tmp_path / "2011-07-16.csv"
    with big.open("wb") as f:
        f.write(real("2011-07-16"))
        f.truncate(200 * 1024 * 1024)  # 200 MiB (sparse after the real rows)
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(big)], capture_output=True, text=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "the file is 200.0 MiB (209715200 bytes), larger than source.max_bytes 100.0 MiB" in result["reasons"][0]
    assert len(result["sha256"]) == 64  # hashed in 1 MiB blocks for the quarantine record
    assert result["grown"] < 32 * 1024 * 1024, result["grown"]  # peak memory: not a fraction of the file


def test_bool_date_and_datetime_columns_are_checked_and_typed():
    from tasks.reader import _typed_text

    lines = lambda i: i + 2  # noqa: E731 - the header is line 1
    flags, why = _typed_text("b", "bool", pa.chunked_array([pa.array(["yes", "No", None, "1", "F"])]), 5, lines)
    assert why is None and flags.to_pylist() == [True, False, None, True, False]
    _, why = _typed_text("b", "bool", pa.chunked_array([pa.array(["yes", "maybe"])]), 2, lines)
    assert why == (
        "column 'b': 1 of 2 values are not true/false, yes/no or 1/0 (e.g. 'maybe' on line 3); "
        "the schema declares it bool"
    )
    days, why = _typed_text("d", "date", pa.chunked_array([pa.array(["2024-01-31", None])]), 2, lines)
    assert why is None and days.to_pylist() == ["2024-01-31", None]  # checked, kept as text
    _, why = _typed_text("d", "date", pa.chunked_array([pa.array(["2024-02-30"])]), 1, lines)
    assert why and "'2024-02-30' on line 2" in why and "dates (YYYY-MM-DD)" in why
    _, why = _typed_text("t", "datetime", pa.chunked_array([pa.array(["2024-01-01T10:00:00+01:00", "noon"])]), 2, lines)
    assert why and "'noon' on line 3" in why
