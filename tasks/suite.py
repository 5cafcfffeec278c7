"""Expectation suites: write a starter suite from a spec's schema and a sample, and check a suite against the schema.

``python -m tasks suite --pipeline P --sample FILE [--out PATH]`` writes a Great Expectations suite with one
rule per fact the sample shows: the exact column set, rows per partition (with a margin), one day per
partition, a type per column, no nulls where the sample has none (else the share seen, with a margin),
numeric ranges widened by a margin, and the category set of every text column with few distinct values.
A person then edits it (tightens ranges to what the domain allows, adds means); the result is the suite
the spec names.

:func:`suite_problems` reads only JSON, so :func:`tasks.spec.load_spec` runs it at DAG-parse time: a spec
whose suite names a column the schema does not have, misses one it has, or types a column differently is
refused with every disagreement named.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import PermanentError

if TYPE_CHECKING:
    import pandas as pd

    from tasks.spec import PipelineSpec

# dtypes a batch's column can have after ingest, per schema type (an int column with a missing value is float64)
DTYPES: dict[str, frozenset[str]] = {
    "int": frozenset({"int64", "Int64", "int32", "Int32", "int16", "int8", "uint8", "float64"}),
    "float": frozenset({"float64", "float32", "Float64"}),
    "str": frozenset({"object", "str", "string"}),
    "category": frozenset({"object", "str", "string", "category"}),
    "bool": frozenset({"bool", "boolean", "object"}),
    "date": frozenset({"object", "str", "string", "datetime64[ns]", "datetime64[us]"}),
    "datetime": frozenset({"object", "str", "string", "datetime64[ns]", "datetime64[us]", "datetime64[ns, UTC]"}),
}
NUMERIC = frozenset({"int", "float"})
MAX_CATEGORIES = 50  # a text column with at most this many distinct sample values gets a category set
RANGE_MARGIN = 0.1  # numeric ranges widen by 10 % of the sample's span on each side
ROWS_MARGIN = 0.5  # rows per partition: half the smallest to one and a half times the largest sample partition
DAY_REGEX = r"^\d{4}-\d{2}-\d{2}$"


class SuiteError(PermanentError, ValueError):
    """The sample cannot be read or does not have the schema's columns."""


def suite_problems(columns: dict[str, str], suite: dict[str, Any]) -> list[str]:
    """Every way a suite (its JSON form) disagrees with a schema's ``columns`` (empty when they agree).

    Checked: the column set of ``expect_table_columns_to_match_set`` (missing and extra columns), every
    column an expectation names, and each ``expect_column_values_to_be_in_type_list`` against the schema type.
    """
    problems: list[str] = []
    known = set(columns)
    for item in suite.get("expectations") or []:
        kind, kwargs = item.get("type") or item.get("expectation_type"), item.get("kwargs") or {}
        if kind == "expect_table_columns_to_match_set":
            listed = set(kwargs.get("column_set") or [])
            if missing := [c for c in columns if c not in listed]:
                problems.append(f"{kind} lacks schema columns {missing}")
            if extra := sorted(listed - known):
                problems.append(f"{kind} lists columns the schema does not declare: {extra}")
            continue
        column = kwargs.get("column")
        if column is None:
            continue
        if column not in known:
            problems.append(f"{kind} names column {column!r}, which the schema does not declare")
            continue
        if kind == "expect_column_values_to_be_in_type_list":
            declared = columns[column]
            if not set(kwargs.get("type_list") or []) & DTYPES.get(declared, frozenset()):
                problems.append(
                    f"{kind} for {column!r} allows {kwargs.get('type_list')}, but the schema declares it {declared} "
                    f"(stored as one of {sorted(DTYPES.get(declared, frozenset()))})"
                )
    return problems


def check_suite(spec: PipelineSpec) -> list[str]:
    """:func:`suite_problems` for a spec's own suite; a suite file that is absent or not JSON is left to validation."""
    path = spec.expectations_path
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(raw, dict):
        return []
    return suite_problems({c: str(t) for c, t in spec.schema_.columns.items()}, raw)


def read_sample(spec: PipelineSpec, sample: Path) -> pd.DataFrame:
    """A sample as text columns: CSV (any delimiter, sniffed; gzip allowed) or Parquet.

    A date-less dataset (``source.rows_per_day``) gets its partition column the way the replay tool writes it.

    Raises:
        SuiteError: The file is missing, or lacks schema columns.
    """
    import numpy as np
    import pandas as pd

    if not sample.is_file():
        raise SuiteError(f"sample {sample} not found")
    if sample.suffix == ".parquet":
        frame = pd.read_parquet(sample).astype(str)
    else:
        frame = pd.read_csv(sample, dtype=str, keep_default_na=False, sep=None, engine="python")
    source = spec.source
    if source.partition_column not in frame.columns and source.rows_per_day:
        offsets = pd.to_timedelta(np.arange(len(frame)) // source.rows_per_day, unit="D")
        frame.insert(0, source.partition_column, (pd.Timestamp(spec.start_date) + offsets).strftime("%Y-%m-%d"))
    missing = [c for c in spec.schema_.columns if c not in frame.columns]
    if missing:
        raise SuiteError(f"sample {sample} lacks schema columns {missing}; it has {list(frame.columns)}")
    return frame[list(spec.schema_.columns)]


def _nice(value: float, down: bool) -> float | int:
    """Round a bound outwards to 3 significant digits (an int when whole)."""
    if value == 0 or not math.isfinite(value):
        return 0
    digits = 3 - int(math.floor(math.log10(abs(value)))) - 1
    scale = 10.0**digits
    rounded = (math.floor if down else math.ceil)(value * scale) / scale
    return int(rounded) if float(rounded).is_integer() else rounded


def starter_suite(spec: PipelineSpec, sample: pd.DataFrame) -> dict[str, Any]:
    """A suite (JSON form) with a rule per fact of ``sample`` (text columns, as :func:`read_sample` returns)."""
    import pandas as pd

    columns = spec.schema_.columns
    markers = {"", *spec.source.na_values}
    day = spec.source.partition_column
    sizes = sample.groupby(day).size()
    expectations: list[dict[str, Any]] = [
        {"type": "expect_table_columns_to_match_set", "kwargs": {"column_set": list(columns), "exact_match": True}},
        {
            "type": "expect_table_row_count_to_be_between",
            "kwargs": {
                "min_value": max(1, math.floor(int(sizes.min()) * (1 - ROWS_MARGIN))),
                "max_value": math.ceil(int(sizes.max()) * (1 + ROWS_MARGIN)),
            },
        },
        {"type": "expect_column_values_to_match_regex", "kwargs": {"column": day, "regex": DAY_REGEX}},
        # partition-day consistency: every row of a partition holds the same day
        {
            "type": "expect_column_unique_value_count_to_be_between",
            "kwargs": {"column": day, "min_value": 1, "max_value": 1},
        },
    ]
    for col, kind in columns.items():
        text = sample[col]
        missing = text.isin(markers)
        share = float(missing.mean())
        if share == 0:
            expectations.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": col}})
        elif share < 0.5:
            mostly = round(max(0.0, 1 - 2 * share), 2)
            expectations.append(
                {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": col, "mostly": mostly}}
            )
        values = text[~missing]
        if kind in NUMERIC:
            numbers = pd.to_numeric(values, errors="coerce").dropna()
            whole = kind == "int" and share == 0
            types = (
                ["int64", "Int64", "int32"]
                if whole
                else (["float64", "float32"] if kind == "float" else ["float64", "int64"])
            )
            expectations.append(
                {"type": "expect_column_values_to_be_in_type_list", "kwargs": {"column": col, "type_list": types}}
            )
            if len(numbers) and col != day:
                low, high = float(numbers.min()), float(numbers.max())
                pad = (high - low) * RANGE_MARGIN
                expectations.append(
                    {
                        "type": "expect_column_values_to_be_between",
                        "kwargs": {
                            "column": col,
                            "min_value": _nice(low - pad, True),
                            "max_value": _nice(high + pad, False),
                        },
                    }
                )
        elif col != day:
            distinct = sorted(values.unique().tolist())
            if 0 < len(distinct) <= MAX_CATEGORIES:
                expectations.append(
                    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": col, "value_set": distinct}}
                )
    notes = (
        f"Starter suite written by `python -m tasks suite` from {len(sample)} sample rows in {len(sizes)} partitions: "
        f"ranges widened by {RANGE_MARGIN:.0%} of the sample's span, rows per partition by {ROWS_MARGIN:.0%}. "
        "Edit it: tighten ranges to what the domain allows, widen category sets the sample did not show."
    )
    return {"name": spec.name, "meta": {"notes": notes}, "expectations": expectations}


def write_suite(pipeline: str, sample: str, out: str | None = None) -> dict[str, Any]:
    """Write a starter suite for ``pipeline`` from ``sample`` to ``out`` (default: the spec's ``expectations`` path).

    Returns:
        ``{"path": ..., "expectations": N}``.
    """
    from tasks.spec import REPO_ROOT, load_spec

    spec = load_spec(pipeline, check_suite=False)
    suite = starter_suite(spec, read_sample(spec, Path(sample)))
    target = Path(out) if out else REPO_ROOT / spec.expectations
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(suite, indent=2) + "\n")
    return {"path": str(target), "expectations": len(suite["expectations"])}
