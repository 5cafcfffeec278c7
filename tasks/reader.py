"""Read one landing file into a typed table, or refuse it with reasons a person can act on.

Nothing here writes anything. The checks, in order (each refusal names what is wrong and what to do):

1. size: empty (0 bytes); larger than ``source.max_bytes`` (by ``stat``, before reading a byte);
2. bytes (one streaming pass that also takes the SHA-256): binary content (NUL bytes; gzip, zip, Parquet,
   UTF-16 are named), text that does not decode in ``source.encoding`` (the byte, its offset and line), no
   final newline (the last row may be cut off) unless ``source.final_newline`` is false;
3. header: the wrong delimiter ("one column named 'a;b;c'"), missing / unexpected / duplicate columns by name,
   no header at all; columns in another order are accepted and stored in the schema's order;
4. rows: a header without rows; a row with fewer or more fields than the header (line numbers);
5. values: a value that is not a number in a numeric column, a fraction in an integer column (line numbers);
6. the partition: every row's ``source.partition_column`` must be the partition day (a calendar date:
   ``2011-02-30`` is not), and the row count must fit ``source.rows_per_partition`` when the spec declares it.

A UTF-8 byte-order mark is removed and CRLF line ends are accepted (both noted in the result). Missing
values, ranges, sets and duplicates are the expectation suite's to judge (validation, after staging).
Parsing uses pyarrow's CSV reader with every column as text, then casts: a large file costs about its
size in text plus its typed columns, which ``max_bytes`` bounds.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import PermanentError

if TYPE_CHECKING:
    import pyarrow as pa

    from tasks.spec import PipelineSpec

_BLOCK = 1 << 20
_BOM = codecs.BOM_UTF8
_MAGIC = {
    b"\x1f\x8b": "gzip-compressed",
    b"PK\x03\x04": "a zip archive (or an .xlsx workbook)",
    b"PAR1": "a Parquet file",
    b"%PDF": "a PDF document",
    b"\xff\xfe": "UTF-16 text (little-endian byte-order mark)",
    b"\xfe\xff": "UTF-16 text (big-endian byte-order mark)",
}
_OTHER_DELIMITERS = (";", "\t", "|")
_EXAMPLES = 3
_TEXT = frozenset({"str", "category", "date", "datetime"})  # kept as text (date and datetime checked, not converted)
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


class LandingFileRefusedError(PermanentError, RuntimeError):
    """A landing file that cannot become a partition as it is; ``reasons`` say why, one sentence each."""

    def __init__(self, path: Path, reasons: list[str], sha256: str = "") -> None:
        """Refuse ``path`` for ``reasons`` (its SHA-256 when it was read)."""
        self.path = Path(path)
        self.reasons = reasons
        self.sha256 = sha256
        self.record = ""
        self.entry: dict[str, Any] = {}  # the quarantine record, once ingest wrote it
        super().__init__(f"landing file {path} refused: " + "; ".join(reasons))


@dataclass
class LandingBatch:
    """A landing file read and typed, ready to stage."""

    table: pa.Table
    sha256: str
    size: int
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Rows read."""
        return int(self.table.num_rows)


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB"


@dataclass
class _Scan:
    sha256: str
    size: int
    first_line: bytes
    last_byte: bytes
    bom: bool
    crlf: bool
    nul_at: int | None
    undecodable: str | None


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name == "utf-8"


def _scan(path: Path, encoding: str) -> _Scan:
    """One pass over the bytes: hash, NUL bytes, decoding, the header line, the final byte. Constant memory."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    size, nul_at, undecodable, lines = 0, None, None, 0
    head, last = b"", b""
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
            if len(head) < 65536:
                head += block[: 65536 - len(head)]
            if nul_at is None and (at := block.find(b"\x00")) >= 0:
                nul_at = size + at
            if undecodable is None and nul_at is None:
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as exc:  # exc.object: bytes held back from the last block + this one
                    held = len(exc.object) - len(block)
                    offset = size - held + exc.start
                    line = lines + block.count(b"\n", 0, max(exc.start - held, 0)) + 1
                    undecodable = f"byte 0x{exc.object[exc.start]:02x} at offset {offset} (line {line})"
            lines += block.count(b"\n")
            size += len(block)
            last = block[-1:]
        if undecodable is None and nul_at is None:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                undecodable = f"an incomplete character at the end (offset {size})"
    bom = head.startswith(_BOM) and _is_utf8(encoding)
    first = head[len(_BOM) if bom else 0 :].split(b"\n", 1)[0]
    return _Scan(digest.hexdigest(), size, first, last, bom, first.endswith(b"\r"), nul_at, undecodable)


def _binary_reason(scan: _Scan, head: bytes) -> str:
    kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    what = f"it looks like {kind}" if kind else "it is not a text file"
    return (
        f"binary content: a NUL byte at offset {scan.nul_at}; {what}. Deliver plain CSV text "
        "(uncompressed, one header line, comma-separated)"
    )


def _header_reasons(names: list[str], expected: list[str], line: str) -> list[str]:
    """What is wrong with the header line (empty when it is the schema's columns, in any order)."""
    reasons = []
    if len(names) == 1 and len(expected) > 1 and any(d in names[0] for d in _OTHER_DELIMITERS):
        sep = next(d for d in _OTHER_DELIMITERS if d in names[0])
        shown = names[0] if len(names[0]) <= 80 else names[0][:77] + "..."
        return [f"one column named {shown!r}: wrong delimiter? The file uses {sep!r}; the spec expects ','"]
    if not set(names) & set(expected):
        shown = line if len(line) <= 80 else line[:77] + "..."
        return [
            f"the first line is not the header: found {shown!r}, expected the column names "
            f"{','.join(expected)!r} on the first line"
        ]
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    reasons += [f"column {n!r} appears {k} times in the header" for n, k in seen.items() if k > 1]
    reasons += [f"column {c!r} is missing" for c in expected if c not in seen]
    extra = [n for n in seen if n not in expected]
    reasons += [f"unexpected column {n!r} (not declared under schema.columns)" for n in extra]
    return reasons


def _membership(counts: dict[str, int], day: str, column: str) -> list[str]:
    """Every row must hold the partition day; other values are named with their row counts."""
    reasons = []
    not_dates = {v: n for v, n in counts.items() if v != day and not _calendar_day(v)}
    others = {v: n for v, n in counts.items() if v != day and v not in not_dates}
    for value, n in sorted(not_dates.items()):
        shown = "empty" if value in ("", "None") else repr(value)
        reasons.append(f"{column} is {shown} on {n} row(s): not a calendar date (YYYY-MM-DD)")
    if others:
        listed = ", ".join(f"{d} ({n} rows)" for d, n in sorted(others.items()))
        ours = counts.get(day, 0)
        reasons.append(
            f"rows of other days in the file for {day}: {listed}; {ours} row(s) of {day}. A day's file must hold "
            "only that day's rows (was the wrong day exported, or two days in one file?)"
        )
    return reasons


def _calendar_day(value: str) -> bool:
    if len(value) != 10 or value[4] != "-" or value[7] != "-":
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def read_landing_file(spec: PipelineSpec, path: Path, day: str) -> LandingBatch:
    """Read, check and type one day's landing file.

    Args:
        spec: The pipeline (its ``source`` rules and ``schema.columns``).
        path: The landing file.
        day: The partition day the file is for (already a checked calendar date).

    Returns:
        The typed rows in schema column order (sorted by ``source.order_by``), the file's SHA-256 and notes.

    Raises:
        LandingFileRefusedError: With every reason found at the first stage that failed.
    """
    source = spec.source
    scan = _check_bytes(spec, path)
    reasons: list[str] = []
    if source.final_newline and scan.last_byte != b"\n":
        reasons.append(
            "the file does not end with a newline: its last row may be cut off (still being written, or "
            "truncated in transfer?)"
        )
    names = _check_header(spec, path, scan, reasons)
    typed, found, typer = _stream(spec, path, names, scan.bom)
    reasons += found
    if typer.rows:
        reasons += _membership(typer.days, day, source.partition_column)
    if typer.rows and source.rows_per_partition is not None:
        why = source.rows_per_partition.refusal(day, typer.rows)
        reasons += [why] if why else []
    if reasons:
        raise LandingFileRefusedError(path, reasons, scan.sha256)
    expected = list(spec.schema_.columns)
    notes = [
        *(["a UTF-8 byte-order mark was removed"] if scan.bom else []),
        *(["CRLF line ends"] if scan.crlf else []),
        *(["columns reordered to the schema's order"] if names != expected else []),
    ]
    return LandingBatch(_table(typed, expected, source.order_by), scan.sha256, scan.size, notes)


def _check_bytes(spec: PipelineSpec, path: Path) -> _Scan:
    """Size, then one pass over the bytes: empty, too large, binary, not in the declared encoding."""
    source = spec.source
    size = path.stat().st_size
    if size == 0:
        raise LandingFileRefusedError(path, ["the file is empty (0 bytes): nothing was delivered"], _empty_sha())
    if size > source.max_bytes:
        from tasks.landing import sha256_of

        why = (
            f"the file is {_mib(size)} ({size} bytes), larger than source.max_bytes {_mib(source.max_bytes)}: "
            "not read. Split it, or raise max_bytes if such a day is real"
        )
        raise LandingFileRefusedError(path, [why], sha256_of(path))
    scan = _scan(path, source.encoding)
    if scan.nul_at is not None:
        with path.open("rb") as f:
            head = f.read(16)
        raise LandingFileRefusedError(path, [_binary_reason(scan, head)], scan.sha256)
    if scan.undecodable:
        hint = (
            "Is it Latin-1 / Windows-1252? Re-deliver it as UTF-8, or declare source.encoding in the spec"
            if _is_utf8(source.encoding)
            else "Re-deliver it in the declared encoding"
        )
        raise LandingFileRefusedError(
            path, [f"not valid {source.encoding} text: {scan.undecodable}. {hint}"], scan.sha256
        )
    return scan


def _check_header(spec: PipelineSpec, path: Path, scan: _Scan, reasons: list[str]) -> list[str]:
    """The header's column names; refuses the file (with ``reasons`` so far) when they are not the schema's."""
    first = scan.first_line.decode(spec.source.encoding).rstrip("\r")
    if not first.strip():
        why = "the first line is empty: the file must start with the header line"
        raise LandingFileRefusedError(path, [why, *reasons], scan.sha256)
    names = next(csv.reader([first]))
    header = _header_reasons(names, list(spec.schema_.columns), first)
    if header:
        raise LandingFileRefusedError(path, header + reasons, scan.sha256)
    return names


def _empty_sha() -> str:
    return hashlib.sha256(b"").hexdigest()


class _Typer:
    """Casts record batches as they stream in and keeps only the typed columns (no table of text is held).

    Numbers are parsed by Arrow; a column Arrow will not parse goes through pandas' more lenient parser, which
    also names the values that are not numbers. An ``int`` column is stored as int64 when every value is a
    whole number and none is missing, else as float64 (missing values are the suite's to judge).
    """

    def __init__(self, spec: PipelineSpec) -> None:
        import pyarrow as pa

        self.spec = spec
        self.markers = pa.array(["", *spec.source.na_values], pa.string())
        self.na = pa.array(list(spec.source.na_values), pa.string())
        self.chunks: dict[str, list[Any]] = {c: [] for c in spec.schema_.columns}
        self.not_numbers: dict[str, list[tuple[int, str]]] = {}
        self.lost: dict[str, int] = {}
        self.days: dict[str, int] = {}
        self.rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        """Type one batch of text rows."""
        import pyarrow.compute as pc

        for col, kind in self.spec.schema_.columns.items():
            text = batch.column(col)
            if kind in _TEXT or kind == "bool":
                keep = pc.if_else(pc.is_in(text, value_set=self.na), None, text) if len(self.na) else text
                self.chunks[col].append(keep)
            else:
                self.chunks[col].append(self._number(col, text))
        for item in pc.value_counts(batch.column(self.spec.source.partition_column)).to_pylist():
            self.days[str(item["values"])] = self.days.get(str(item["values"]), 0) + int(item["counts"])
        self.rows += batch.num_rows

    def _number(self, col: str, text: Any) -> Any:
        import numpy as np
        import pandas as pd
        import pyarrow as pa
        import pyarrow.compute as pc

        cleaned = pc.if_else(pc.is_in(text, value_set=self.markers), None, text)
        try:
            return pc.cast(cleaned, pa.float64())
        except pa.ArrowInvalid:  # surrounding spaces, or not a number at all
            series = pd.Series(cleaned.to_pandas(), dtype=object)
            numeric = pd.to_numeric(series, errors="coerce")
            lost = np.flatnonzero((numeric.isna() & series.notna()).to_numpy())
            if len(lost):
                self.lost[col] = self.lost.get(col, 0) + len(lost)
                seen = self.not_numbers.setdefault(col, [])
                seen += [(self.rows + int(i), str(series.iloc[i])) for i in lost[: _EXAMPLES - len(seen)]]
            return pa.array(numeric.to_numpy(dtype="float64"), from_pandas=True)

    def finish(self, lines: Any) -> tuple[dict[str, Any], list[str]]:
        """The typed columns and what is wrong with the values, if anything."""
        import pyarrow as pa
        import pyarrow.compute as pc

        out: dict[str, Any] = {}
        reasons = []
        for col, kind in self.spec.schema_.columns.items():
            chunks, self.chunks[col] = self.chunks[col], []
            if kind in _TEXT or kind == "bool":
                text = pa.chunked_array(chunks, pa.string())
                typed, why = _typed_text(col, kind, text, self.rows, lines)
                reasons += [why] if why else []
                out[col] = typed
                continue
            if col in self.lost:
                shown = ", ".join(f"{v!r} on line {lines(i)}" for i, v in self.not_numbers[col])
                reasons.append(
                    f"column {col!r}: {self.lost[col]} of {self.rows} values are not numbers (e.g. {shown}); "
                    f"the schema declares it {kind}"
                )
                continue
            values = pa.chunked_array(chunks, pa.float64())
            del chunks
            if kind == "int":
                whole = pc.equal(values, pc.round(values))  # null where missing
                fraction = pc.indices_nonzero(pc.invert(pc.fill_null(whole, True)))
                if len(fraction):
                    shown = ", ".join(
                        f"{values[int(i)].as_py():g} on line {lines(int(i))}" for i in fraction[:_EXAMPLES].to_pylist()
                    )
                    reasons.append(
                        f"column {col!r}: {len(fraction)} of {self.rows} values are not whole numbers (e.g. "
                        f"{shown}); the schema declares it int"
                    )
                    continue
                if values.null_count == 0 and not pc.any(pc.is_nan(values)).as_py():
                    values = pc.cast(values, pa.int64())
            out[col] = values
        return out, reasons


def _typed_text(col: str, kind: str, text: Any, rows: int, lines: Any) -> tuple[Any, str | None]:
    """A text column as its schema type, with why values do not fit (None when they all do).

    str and category stay as they are; date and datetime are checked and kept as text; bool becomes booleans
    (true/false, t/f, yes/no, y/n, 1/0, any case).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind in ("str", "category"):
        return text, None
    values = pc.utf8_lower(pc.utf8_trim_whitespace(pc.fill_null(text, "")))
    present = pc.not_equal(values, "")
    if kind == "bool":
        truth = pc.is_in(values, value_set=pa.array(sorted(_TRUE)))
        valid = pc.or_(truth, pc.is_in(values, value_set=pa.array(sorted(_FALSE))))
        typed = pc.if_else(present, truth, pa.scalar(None, pa.bool_()))
        expected = "true/false, yes/no or 1/0"
    else:
        import pandas as pd

        series = pd.Series(text.to_pandas(), dtype=object)
        if kind == "date":
            parsed = pd.to_datetime(series, format="%Y-%m-%d", errors="coerce")
            expected = "dates (YYYY-MM-DD)"
        else:
            parsed = pd.to_datetime(series, format="ISO8601", errors="coerce", utc=True)
            expected = "ISO 8601 date-times"
        valid = pa.array(parsed.notna().to_numpy())
        typed = text
    bad = pc.indices_nonzero(pa.chunked_array([pc.and_(present, pc.invert(valid))]).combine_chunks())
    if not len(bad):
        return typed, None
    shown = ", ".join(f"{text[int(i)].as_py()!r} on line {lines(int(i))}" for i in bad[:_EXAMPLES].to_pylist())
    return typed, (
        f"column {col!r}: {len(bad)} of {rows} values are not {expected} (e.g. {shown}); the schema declares it {kind}"
    )


def _stream(spec: PipelineSpec, path: Path, names: list[str], bom: bool) -> tuple[dict[str, Any], list[str], _Typer]:
    """Parse (every column as text) and type in blocks; rows with the wrong number of fields are named."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    encoding = spec.source.encoding
    bad: list[tuple[int, int, int]] = []

    def invalid(row: Any) -> str:
        bad.append((int(row.number or 0), int(row.actual_columns), int(row.expected_columns)))
        return "skip"

    typer = _Typer(spec)
    with path.open("rb") as f:
        if bom:
            f.seek(len(_BOM))
        reader = pacsv.open_csv(
            f,
            read_options=pacsv.ReadOptions(
                encoding="utf8" if _is_utf8(encoding) else encoding, use_threads=False, block_size=1 << 22
            ),
            parse_options=pacsv.ParseOptions(delimiter=",", invalid_row_handler=invalid, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                null_values=[],
            ),
        )
        for batch in reader:
            typer.add(batch)
    skipped = np.array(sorted(b[0] for b in bad), dtype="int64")

    def line(index: int) -> int:  # the physical line of a kept row: header on line 1, skipped rows shift it
        n = index + 2
        for s in skipped:
            if s <= n:
                n += 1
        return n

    reasons = _field_count_reasons(bad)
    if reasons or typer.rows == 0:
        return {}, reasons or ["the file has a header but no rows"], typer
    typed, value_reasons = typer.finish(line)
    return typed, value_reasons, typer


def _field_count_reasons(bad: list[tuple[int, int, int]]) -> list[str]:
    reasons = []
    short = [b for b in bad if b[1] < b[2]]
    long = [b for b in bad if b[1] > b[2]]
    if short:
        shown = ", ".join(f"line {n} has {got}" for n, got, _ in short[:_EXAMPLES])
        more = f" and {len(short) - _EXAMPLES} more" if len(short) > _EXAMPLES else ""
        reasons.append(
            f"{len(short)} row(s) with fewer fields than the header's {short[0][2]} ({shown}{more}): a row cut "
            "short, is the file truncated?"
        )
    if long:
        shown = ", ".join(f"line {n} has {got}" for n, got, _ in long[:_EXAMPLES])
        more = f" and {len(long) - _EXAMPLES} more" if len(long) > _EXAMPLES else ""
        reasons.append(
            f"{len(long)} row(s) with more fields than the header's {long[0][2]} ({shown}{more}): a value "
            "holding an unquoted ',' or rows glued together?"
        )
    return reasons


def _table(typed: dict[str, Any], columns: list[str], order_by: list[str]) -> pa.Table:
    """The typed columns as a table in schema order, sorted by ``order_by`` (stable; a column at a time)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays = [typed.pop(c) for c in columns]
    keys = [c for c in order_by if c in columns]
    if keys:
        key_arrays = [arrays[columns.index(k)] for k in keys]
        if len(keys) == 1 and len(key_arrays[0]) > 1:
            values = key_arrays[0].to_numpy(zero_copy_only=False)
            in_order = bool(np.all(values[1:] >= values[:-1])) if values.dtype.kind in "iuf" else False
        else:
            in_order = len(key_arrays[0]) <= 1
        if not in_order:
            order = pc.sort_indices(
                pa.table(dict(zip(keys, key_arrays, strict=True))), [(k, "ascending") for k in keys]
            )
            for i in range(len(arrays)):  # one column at a time: the unsorted copy is freed as we go
                arrays[i] = pc.take(arrays[i], order)
    return pa.table(arrays, names=columns)
