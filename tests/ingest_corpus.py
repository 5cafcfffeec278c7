"""The bad-input corpus: broken landing files made from real bike-demand rows, each with its expected outcome.

``tests/e2e/test_ingest_corpus.py`` runs every case through the ingest DAG. ``python -m tests.ingest_corpus``
prints the table (case, how the file is made, outcome, reason) as Markdown.

Outcomes: ``ingested`` (a valid partition), ``quarantined`` (refused at ingest or failed by the suite; a
record with the reason), ``waiting`` (not complete yet: the sensor never lets ingest read it), ``rejected``
(the request itself names no calendar day: nothing is read or written).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
GOOD_DAYS = ("2011-07-01", "2011-07-02", "2011-07-03", "2011-07-04")  # ingested first; bad re-deliveries hit them
BIG_BYTES = 200 * 1024 * 1024


def _dataset() -> Any:
    """The bike rows the cases are built from: ``MLP_SHARED_DATASETS`` (unit tests: the committed cut) or ../shared."""
    return _read(Path(os.environ.get("MLP_SHARED_DATASETS") or SHARED))


@cache
def _read(folder: Path) -> Any:
    import pandas as pd

    return pd.read_csv(folder / "bike_sharing_hour.csv.gz", dtype=str, keep_default_na=False)


def real(day: str) -> bytes:
    """The day's real rows as the replay tool delivers them (UTF-8 CSV, header, LF, final newline)."""
    data = _dataset()
    return data[data.dteday == day].to_csv(index=False).encode()


def _lines(text: bytes) -> list[bytes]:
    return text.splitlines(keepends=True)


def _rows(day: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(real(day).decode())))


def _write(rows: list[dict[str, str]], columns: list[str] | None = None, **kwargs: Any) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns or list(rows[0]), lineterminator="\n", **kwargs)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def _set(day: str, line: int, column: str, value: str) -> bytes:
    """The real day with one value replaced (``line`` counts the header as line 1)."""
    rows = _rows(day)
    rows[line - 2][column] = value
    return _write(rows)


def _drop_column(day: str, column: str) -> bytes:
    rows = _rows(day)
    return _write([{k: v for k, v in r.items() if k != column} for r in rows])


def _extra_column(day: str) -> bytes:
    return _write([r | {"station": "31000"} for r in _rows(day)])


def _duplicate_header(day: str) -> bytes:
    head, *body = _lines(real(day))
    return head.replace(b"atemp", b"hum") + b"".join(body)


def _cut_last_row(day: str) -> bytes:
    text = real(day)
    last = text.rstrip(b"\n").rfind(b"\n") + 1
    return text[: last + (len(text) - last) * 6 // 10]  # 60 % of the last row arrived


def _out_of_range(day: str) -> bytes:
    rows = _rows(day)
    for r in rows[:6]:
        r["hum"] = "1.7"
    return _write(rows)


def _duplicate_hour(day: str) -> bytes:
    rows = _rows(day)
    return _write([*rows[:10], rows[9], *rows[10:]])


def write_big(path: Path, day: str) -> int:
    """Write a 200 MiB landing file of the day's real rows repeated; returns its size."""
    head, *body = _lines(real(day))
    block = b"".join(body) * 512
    with path.open("wb") as f:
        f.write(head)
        written = len(head)
        while written < BIG_BYTES:
            f.write(block)
            written += len(block)
    return written


@dataclass(frozen=True)
class Case:
    """One corpus entry: which day, how its landing file is made, what must come of it."""

    id: str
    day: str
    how: str
    build: Callable[[], bytes] | None
    outcome: str
    reason: str
    stage: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    rows: int = 0


def _bom(day: str) -> bytes:
    return codecs.BOM_UTF8 + real(day)


def _reorder(day: str) -> bytes:
    rows = _rows(day)
    return _write(rows, list(reversed(list(rows[0]))))


CASES: list[Case] = [
    Case("empty_file", "2011-07-01", "0 bytes re-delivered over a good day", lambda: b"", "quarantined",
         "the file is empty (0 bytes)", "ingest"),
    Case("header_only", "2011-07-05", "the header line and no rows", lambda: _lines(real("2011-07-05"))[0],
         "quarantined", "the file has a header but no rows", "ingest"),
    Case("gzip_as_csv", "2011-07-02", "the good day gzip-compressed under the .csv name",
         lambda: gzip.compress(real("2011-07-02"), mtime=0), "quarantined", "looks like gzip-compressed", "ingest"),
    Case("nul_block", "2011-07-06", "a 4 KiB block of NUL bytes inside the real rows (a crashed copy)",
         lambda: real("2011-07-06")[:300] + b"\0" * 4096 + real("2011-07-06")[300:], "quarantined",
         "binary content: a NUL byte at offset 300", "ingest"),
    Case("utf16", "2011-07-03", "the good day re-encoded as UTF-16",
         lambda: real("2011-07-03").decode().encode("utf-16"), "quarantined", "UTF-16 text", "ingest"),
    Case("latin1", "2011-07-07", "a Latin-1 export: header 'temp' written 'temp°' (byte 0xb0)",
         lambda: real("2011-07-07").replace(b"temp,", "temp°,".encode("latin-1"), 1), "quarantined",
         "not valid utf-8 text: byte 0xb0 at offset 75 (line 1)", "ingest"),
    Case("utf8_bom", "2011-07-08", "a UTF-8 byte-order mark before the header", lambda: _bom("2011-07-08"),
         "ingested", "a UTF-8 byte-order mark was removed", rows=24),
    Case("crlf", "2011-07-09", "Windows line ends (CRLF)", lambda: real("2011-07-09").replace(b"\n", b"\r\n"),
         "ingested", "CRLF line ends", rows=24),
    Case("reordered_columns", "2011-07-10", "the 17 columns in reverse order", lambda: _reorder("2011-07-10"),
         "ingested", "columns reordered to the schema's order", rows=24),
    Case("all_values_quoted", "2011-07-11", "every value in double quotes",
         lambda: _write(_rows("2011-07-11"), quoting=csv.QUOTE_ALL), "ingested", "", rows=24),
    Case("wrong_delimiter", "2011-07-04", "the good day separated by ';'",
         lambda: real("2011-07-04").replace(b",", b";"), "quarantined", "wrong delimiter?", "ingest"),
    Case("missing_column", "2011-07-01", "the good day without 'hum'", lambda: _drop_column("2011-07-01", "hum"),
         "quarantined", "column 'hum' is missing", "ingest"),
    Case("extra_column", "2011-07-02", "the good day with a 'station' column", lambda: _extra_column("2011-07-02"),
         "quarantined", "unexpected column 'station'", "ingest"),
    Case("duplicate_column", "2011-07-03", "header names 'hum' twice ('atemp' renamed)",
         lambda: _duplicate_header("2011-07-03"), "quarantined", "column 'hum' appears 2 times in the header",
         "ingest"),
    Case("no_header", "2011-07-04", "the good day's rows without the header line",
         lambda: b"".join(_lines(real("2011-07-04"))[1:]), "quarantined", "the first line is not the header",
         "ingest"),
    Case("truncated_row", "2011-07-01", "the good day cut in its last row (60 % of it arrived)",
         lambda: _cut_last_row("2011-07-01"), "quarantined", "fewer fields than the header's 17 (line 25", "ingest"),
    Case("value_cut_at_last_byte", "2011-07-02", "the good day without its last byte and final newline",
         lambda: real("2011-07-02")[:-2], "quarantined", "does not end with a newline", "ingest"),
    Case("half_day", "2011-07-12", "the first 12 of 24 hours", lambda: b"".join(_lines(real("2011-07-12"))[:13]),
         "quarantined", "12 rows, expected 24 ± 2", "ingest"),
    Case("previous_days_rows", "2011-07-03", "2011-07-02's file delivered as 2011-07-03", lambda: real("2011-07-02"),
         "quarantined", "rows of other days in the file for 2011-07-03: 2011-07-02 (24 rows)", "ingest"),
    Case("two_days_in_one_file", "2011-07-13", "2011-07-13 and 2011-07-14 in one file",
         lambda: real("2011-07-13") + b"".join(_lines(real("2011-07-14"))[1:]), "quarantined",
         "2011-07-14 (24 rows); 24 row(s) of 2011-07-13", "ingest"),
    Case("impossible_date_in_rows", "2011-02-28", "the real day with dteday written 2011-02-30",
         lambda: real("2011-02-28").replace(b"2011-02-28", b"2011-02-30"), "quarantined",
         "dteday is '2011-02-30' on 22 row(s): not a calendar date", "ingest"),
    Case("impossible_partition_day", "2011-02-30", "a file named 2011-02-30.csv, the day asked for by name",
         lambda: real("2011-02-28").replace(b"2011-02-28", b"2011-02-30"), "rejected", "not a calendar date"),
    Case("text_in_number", "2011-07-04", "temp 'warm' on line 5 of the good day",
         lambda: _set("2011-07-04", 5, "temp", "warm"), "quarantined",
         "column 'temp': 1 of 24 values are not numbers (e.g. 'warm' on line 5)", "ingest"),
    Case("fraction_in_integer", "2011-07-15", "hr 3.5 on line 5", lambda: _set("2011-07-15", 5, "hr", "3.5"),
         "quarantined", "column 'hr': 1 of 24 values are not whole numbers (e.g. 3.5 on line 5)", "ingest"),
    Case("missing_value", "2011-07-01", "temp empty on line 5 of the good day",
         lambda: _set("2011-07-01", 5, "temp", ""), "quarantined",
         "expect_column_values_to_not_be_null on column 'temp': 1 of 24 rows unexpected", "validation"),
    Case("out_of_range", "2011-07-02", "hum 1.7 on 6 rows of the good day", lambda: _out_of_range("2011-07-02"),
         "quarantined", "expect_column_values_to_be_between on column 'hum': 6 of 24 rows unexpected", "validation"),
    Case("duplicate_hour", "2011-07-03", "hour 8 of the good day twice (25 rows)",
         lambda: _duplicate_hour("2011-07-03"), "quarantined",
         "expect_column_values_to_be_unique on column 'hr': 2 of 25 rows unexpected", "validation"),
    Case("over_max_bytes_200mib", "2011-07-16", "the day's rows repeated to 200 MiB", None, "quarantined",
         "larger than source.max_bytes 100.0 MiB: not read", "ingest"),
    Case("still_being_written", "2011-07-17", "19 rows written, the rest trickling in a byte every 0.2 s", None,
         "waiting", "is still being written"),
    Case("finished_after_waiting", "2011-07-17", "the same file once its writer has finished", None, "ingested",
         "", rows=24),
    Case("marker_missing", "2011-07-18", "the real day, spec completion: marker, no 2011-07-18.csv.done",
         lambda: real("2011-07-18"), "waiting", "waiting for the marker 2011-07-18.csv.done",
         source={"completion": "marker"}),
    Case("marker_written", "2011-07-18", "the same file and then its marker", None, "ingested", "", rows=24,
         source={"completion": "marker"}),
    Case("rename_temporary_name", "2011-07-19", "spec completion: rename, only .2011-07-19.csv.tmp written", None,
         "waiting", "is still being written as .2011-07-19.csv.tmp", source={"completion": "rename"}),
    Case("real_short_day", "2011-01-18", "the real 2011-01-18 (12 hours at the source, a declared exception)",
         lambda: real("2011-01-18"), "ingested", "", rows=12),
    Case("identical_redelivery", "2011-07-04", "the good day's exact bytes again", lambda: real("2011-07-04"),
         "ingested", "", rows=24),
]  # fmt: skip


def markdown() -> str:
    """The corpus as a Markdown table."""
    lines = [
        "| # | case | file (from real bike rows) | outcome | reason (asserted substring) |",
        "|---|---|---|---|---|",
    ]
    for i, c in enumerate(CASES, 1):
        outcome = f"{c.outcome} ({c.stage})" if c.stage else c.outcome
        reason = c.reason.replace("|", "\\|") or "—"
        lines.append(f"| {i} | `{c.id}` | {c.how} | {outcome} | {reason} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())  # noqa: T201 - the report's table
