"""Pipeline specs: the typed form of ``config/pipelines/<name>.yaml``.

A spec declares everything one pipeline needs (source, schema, features, model, gate, monitoring).
This module is imported at DAG parse time, so it only depends on pydantic and PyYAML.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from tasks.errors import PermanentError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PIPELINES_DIR = REPO_ROOT / "config" / "pipelines"

_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: parsing specs at DAG-parse time is ~10x faster


def pipelines_dir() -> Path:
    """Folder of pipeline specs: ``$MLP_PIPELINES_DIR`` if set (tests, other deployments), else ``config/pipelines``."""
    return Path(os.environ.get("MLP_PIPELINES_DIR") or DEFAULT_PIPELINES_DIR)


class SpecError(PermanentError, ValueError):
    """A pipeline spec is missing, malformed or inconsistent."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventSourcesSpec(_Strict):
    """What, besides the daily schedule and REST-recorded Asset events, starts ingestion of a partition."""

    redis_channel: str | None = Field(
        default=None,
        description="Redis pub/sub channel on which upstream announces a landed partition (message: "
        '{"partition": "YYYY-MM-DD"} or the bare date); an AssetWatcher in the triggerer listens.',
    )
    redis_stream: str | None = Field(
        default=None,
        description="Redis Stream on which upstream announces a landed partition (XADD <stream> * partition "
        "YYYY-MM-DD). Durable, unlike the channel: read by a consumer group and acknowledged only once Airflow "
        "stored the event, so a message published while the triggerer is down starts its run when it is back.",
    )
    redis_group: str = Field(default="airflow", description="Consumer group that reads redis_stream.")
    redis_conn_id: str = Field(default="redis_default", description="Airflow connection of that Redis.")
    watch_landing: bool = Field(
        default=False,
        description="An AssetWatcher polls the landing zone and announces each new or changed day file "
        "(deferrable: it runs in the triggerer, no worker slot is held while waiting).",
    )
    poll_seconds: float = Field(default=5, gt=0, description="How often both watchers look.")


class RowsPerPartitionSpec(_Strict):
    """How many rows a complete partition has: a file cut short or doubled up is refused at ingest."""

    expected: int = Field(gt=0, description="Rows of a complete partition (bike demand: 24, one per hour).")
    tolerance: int = Field(
        default=0,
        ge=0,
        description="Accepted difference from expected, either way (real days miss an hour or two at the source).",
    )
    exceptions: dict[str, int] = Field(
        default_factory=dict,
        description="Days the source itself has a different number of rows for (outages, storms): "
        "day (YYYY-MM-DD) -> that exact number. Such a day is accepted with exactly that many rows.",
    )

    @model_validator(mode="after")
    def _exception_days(self) -> RowsPerPartitionSpec:
        for day, rows in self.exceptions.items():
            if not _is_calendar_day(day):
                raise ValueError(f"rows_per_partition.exceptions: {day!r} is not a calendar date (YYYY-MM-DD)")
            if rows < 1:
                raise ValueError(f"rows_per_partition.exceptions[{day}]: a partition has at least one row")
        return self

    def refusal(self, day: str, rows: int) -> str | None:
        """Why ``rows`` rows are wrong for ``day``, or None when they are right."""
        if day in self.exceptions:
            known = self.exceptions[day]
            if rows == known:
                return None
            return (
                f"{rows} rows, but the source has exactly {known} for {day} (source.rows_per_partition.exceptions): "
                "is the file complete?"
            )
        low, high = max(self.expected - self.tolerance, 1), self.expected + self.tolerance
        if low <= rows <= high:
            return None
        return (
            f"{rows} rows, expected {self.expected} ± {self.tolerance} ({low} to {high}, "
            f"source.rows_per_partition): is the file complete, or does it hold more than the day? If the source "
            f"really has {rows} rows for {day}, list it under source.rows_per_partition.exceptions"
        )


def _is_calendar_day(value: str) -> bool:
    from datetime import date

    if not isinstance(value, str) or len(value) != 10:
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


_ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"


class FilesSourceSpec(_Strict):
    """Files in a landing location (a path or an fsspec URL): CSV, Parquet or JSON lines."""

    path: str = Field(
        description="Where the files are: a local path or an fsspec URL (file://, memory://, s3://bucket/prefix "
        "with its driver installed). With {day} in it (data/pm25/{day}.parquet), one file per partition: the "
        "file named for the day is the partition (date-less data: the day it was delivered). Without {day} "
        "(a file, or a glob such as exports/*.parquet), set date_column: each day takes the rows dated that day.",
        examples=["s3://team-bucket/exports/{day}.parquet", "/srv/landing/pm25/*.jsonl"],
    )
    format: Literal["csv", "parquet", "jsonl"] = Field(default="csv", description="File format (jsonl: JSON lines).")
    date_column: str | None = Field(
        default=None,
        description="Partition by the value of this column (a date, a timestamp or their ISO text) instead of "
        "one file per day.",
        examples=["event_time"],
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="fsspec storage options (no secrets: drivers read credentials themselves).",
        examples=[{"anon": "false", "endpoint_url": "https://minio.internal:9000"}],
    )

    @model_validator(mode="after")
    def _one_way(self) -> FilesSourceSpec:
        if ("{day}" in self.path) == (self.date_column is not None):
            raise ValueError(
                "source.files: either {day} in path (one file per partition) or date_column (rows by their date), "
                "exactly one"
            )
        return self


class SqlSourceSpec(_Strict):
    """A SQL table or query, read through SQLAlchemy one partition (day) at a time by a date column."""

    url_env: str = Field(
        pattern=_ENV_NAME,
        description="Environment variable holding the SQLAlchemy URL (never the URL itself). The Airflow plugin "
        "fills it from conn_id; in Kubernetes mode the pod gets it from a Secret.",
        examples=["MLP_PM25_DB_URL"],
    )
    conn_id: str | None = Field(
        default=None, description="Airflow connection whose URI the plugin puts into url_env when it is unset."
    )
    table: str | None = Field(default=None, description="Table to read (or query).")
    db_schema: str | None = Field(
        default=None, description="Database schema of the table (default: the search path).", examples=["sensors"]
    )
    query: str | None = Field(
        default=None,
        description="SELECT with the bind parameters :start and :end (the day and the next day), instead of table.",
        examples=["SELECT * FROM readings WHERE ts >= :start AND ts < :end"],
    )
    date_column: str = Field(
        description="Column the day is read by: date_column >= day AND date_column < day + 1 (a date or timestamp)."
    )

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSourceSpec:
        if (self.table is None) == (self.query is None):
            raise ValueError("source.sql needs exactly one of table or query")
        if self.query is not None and not {":start", ":end"} <= set(re.findall(r":[a-z]+", self.query)):
            raise ValueError("source.sql.query must select one day with the bind parameters :start and :end")
        return self


class SourceSpec(_Strict):
    """Where the pipeline's data lands, how it is partitioned, and what a landing file must look like."""

    dataset: str | None = Field(
        default=None,
        description="Demo and tests only: a file under the shared datasets folder that the replay tool writes into "
        "the landing zone as if upstream delivered it. A production spec names files or sql, or has upstream "
        "deliver landing/<pipeline>/<day>.csv itself.",
    )
    files: FilesSourceSpec | None = Field(default=None, description="Pull each partition from files (fsspec).")
    sql: SqlSourceSpec | None = Field(default=None, description="Pull each partition from a SQL table or query.")
    partition_column: str = Field(
        description="Column holding the calendar date (YYYY-MM-DD) of each row; every row of a day's file must "
        "hold that day. A pulled source (files, sql) writes the day into it when the data has no such column "
        "(date-less data: the ingestion day; declare schema.id_column so labels join exactly)."
    )
    order_by: list[str] = Field(default_factory=list, description="Columns that order rows inside a day.")
    na_values: list[str] = Field(
        default_factory=list, description='Text markers of a missing value in landed files (UCI Adult: "?").'
    )
    rows_per_day: int | None = Field(
        default=None,
        gt=0,
        description="The dataset has no date column: the replay tool delivers this many rows per day, in file "
        "order, from the spec's start_date, and writes the day into partition_column.",
    )
    encoding: str = Field(
        default="utf-8",
        description="Text encoding of landing files. A file that does not decode is refused, naming the byte; a "
        "UTF-8 byte-order mark is removed.",
    )
    max_bytes: int = Field(
        default=100 * 1024 * 1024,
        gt=0,
        description="Larger landing files are refused (quarantined, naming the size) before they are read: this "
        "bounds the memory one ingest takes.",
    )
    final_newline: bool = Field(
        default=True,
        description="A complete file ends with a newline; one that does not is refused as possibly cut off.",
    )
    completion: Literal["settle", "marker", "rename"] = Field(
        default="settle",
        description="When a landing file counts as complete. settle: its size and modification time are the same "
        "at two looks settle_seconds apart. marker: once <day>.csv.done exists (written after the file). rename: "
        "upstream writes a temporary name (.<name>.tmp, *.partial) and renames it, so a final name is complete (a "
        "temporary one counts as a file still being written).",
    )
    settle_seconds: float = Field(
        default=5, ge=0, le=3600, description="completion: settle: how long a file must stay unchanged."
    )
    rows_per_partition: RowsPerPartitionSpec | None = Field(
        default=None, description="Rows of a complete partition; unset: any number of rows."
    )
    events: EventSourcesSpec = EventSourcesSpec()

    @property
    def pulls(self) -> bool:
        """Whether partitions are pulled from files or SQL (else upstream delivers landing files)."""
        return self.files is not None or self.sql is not None

    @model_validator(mode="after")
    def _one_source(self) -> SourceSpec:
        if self.files is not None and self.sql is not None:
            raise ValueError("source: name files or sql, not both")
        return self

    @model_validator(mode="after")
    def _known_encoding(self) -> SourceSpec:
        import codecs

        try:
            codecs.lookup(self.encoding)
        except LookupError as exc:
            raise ValueError(f"source.encoding {self.encoding!r} is not a known text encoding") from exc
        return self


ColumnType = Literal["int", "float", "str", "bool", "date", "datetime", "category"]
"""A schema column's type. bool, date and datetime are parsed at ingest; category is text."""


class SchemaSpec(_Strict):
    """The columns of a landed batch and their roles."""

    columns: dict[str, ColumnType] = Field(
        description="Every column of a landed batch, in file order -> its type: int, float, str, bool (true/false, "
        "yes/no, 1/0), date (YYYY-MM-DD), datetime (ISO 8601) or category (text whose levels the features may list).",
        examples=[{"dteday": "date", "temp": "float", "cnt": "int", "job": "category"}],
    )
    target: str = Field(description="The column the model predicts.", examples=["cnt"])
    id_column: str | None = Field(
        default=None, description="A unique row id (never a model input).", examples=["instant"]
    )
    not_inputs: list[str] = Field(
        default_factory=list,
        description="Columns callers do not know at prediction time (ids, leakage), besides the target.",
    )
    positive_label: str | int | None = Field(
        default=None, description="Classification: the target value that counts as the positive class."
    )
    sensitive: list[str] = Field(
        default_factory=list, description="Sensitive attributes: the gate compares metrics across their groups."
    )

    @property
    def input_columns(self) -> list[str]:
        """Raw columns a caller sends to the model server, in schema order."""
        excluded = {self.target, *self.not_inputs}
        if self.id_column:
            excluded.add(self.id_column)
        return [c for c in self.columns if c not in excluded]


_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
TRANSFORMER_PATH = rf"^{_DOTTED}:{_DOTTED}$"
"""``package.module:Class`` (the entry-point notation)."""


def resolve_transformer(path: str) -> type:
    """The class an import path ``package.module:Class`` names, checked to be a scikit-learn-style transformer.

    Imports the module (so a spec naming one imports it when it loads to be checked or trained, the DAG processor
    on every parse included: keep its top level light).

    Raises:
        ValueError: The module does not import, has no such attribute, or it is not a class with ``fit`` and
            ``transform``; the message names the path and what to do.
    """
    import importlib
    import inspect

    module_name, _, attribute = path.partition(":")
    try:
        found: object = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the team's module raises on import, say which and why
        raise ValueError(
            f"features.custom transformer {path!r}: module {module_name!r} does not import "
            f"({type(exc).__name__}: {exc}); it must be importable (installed, or on PYTHONPATH) wherever the "
            "spec is checked or trains: the DAG processor, the workers, the training pods and `python -m tasks` "
            "(the model server and scoring run it from the model)"
        ) from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ValueError(f"features.custom transformer {path!r}: {module_name} has no attribute {attribute!r}")
        found = getattr(found, part)
    if not inspect.isclass(found) or not all(callable(getattr(found, m, None)) for m in ("fit", "transform")):
        raise ValueError(
            f"features.custom transformer {path!r} is not a transformer: a class with fit(X, y=None) and "
            f"transform(X) (scikit-learn's protocol) is needed, got {type(found).__name__} {found!r:.80}"
        )
    return found


class CustomTransformerSpec(_Strict):
    """A team's own scikit-learn-compatible transformer, named by import path and shipped inside the model.

    At fit it gets the training rows' ``columns`` (a DataFrame, in that order); its ``transform`` returns numbers,
    one row per input row, which join the model's features as ``<name>_<output>`` (``get_feature_names_out``,
    else ``0``, ``1``, ...). Its module (the top-level package, or the single file) is logged with the model
    (MLflow ``code_paths``): the model server and the scoring tasks load it from the model, not from their own
    environment. A transformer from an installed distribution (feature-engine, scikit-learn) is pinned in the
    model's requirements instead.

    Where a spec loads for training, the DAG processor or ``python -m tasks`` the import path is resolved (the
    module imported, the class and its ``params`` checked); the model server and the scoring stage load specs
    with ``resolve_code=False`` (:func:`load_spec`): they check its syntax only and need no module installed.
    """

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]*$",
        description="Prefix of its output features (<name>_<output>), unique among custom transformers.",
        examples=["price_ratio"],
    )
    transformer: str = Field(
        pattern=TRANSFORMER_PATH,
        description="Import path package.module:Class of a class with fit(X, y=None) and transform(X); checked "
        "when the spec loads for training, DAG parsing and `python -m tasks` (it must import and be such a class); "
        "the model server and scoring check its syntax only and run it from the model.",
        examples=["team_features.ratios:RatioFeature", "feature_engine.creation:RelativeFeatures"],
    )
    columns: list[str] = Field(
        min_length=1,
        description="Raw input columns it reads (inputs callers send; never the target or an id).",
        examples=[["temp", "hum"]],
    )
    params: dict[str, float | int | str | bool | list[float | int | str]] = Field(
        default_factory=dict,
        description="Keyword arguments of its constructor (checked against its signature where the import path "
        "is resolved).",
        examples=[{"clip": 10.0}],
    )

    @model_validator(mode="after")
    def _resolves(self, info: ValidationInfo) -> CustomTransformerSpec:
        import inspect

        if not (info.context or {}).get("resolve_code", True):  # serving, scoring: the model carries the code
            return self
        cls = resolve_transformer(self.transformer)
        try:
            inspect.signature(cls).bind(**self.params)
        except TypeError as exc:
            raise ValueError(
                f"features.custom {self.name}: {self.transformer} does not take params {sorted(self.params)}: {exc}"
            ) from None
        except ValueError:  # no signature to check (a C extension class): fit will say
            pass
        return self


class FeatureSpec(_Strict):
    """Stateless feature transformations, applied identically in training and serving."""

    numeric: list[str] = Field(
        default_factory=list, description="Numeric columns passed to the model as they are.", examples=[["temp", "hum"]]
    )
    categorical: dict[str, list[int | str]] = Field(
        default_factory=dict,
        description="Column -> its categories, one-hot encoded ([]: the levels training saw, learned at fit).",
        examples=[{"weathersit": [1, 2, 3, 4], "job": []}],
    )
    bands: dict[str, list[float]] = Field(
        default_factory=dict,
        description="Derived: numeric column -> ascending band edges; one indicator per band (<a, a-b, ..., >=z), "
        "computed inside the model so serving applies the same bands.",
        examples=[{"age": [30, 40, 50, 60]}],
    )
    date_parts: dict[str, list[Literal["year", "month", "day", "dayofweek", "dayofyear", "hour"]]] = Field(
        default_factory=dict,
        description="Derived: date or datetime column -> parts passed to the model as numbers (<column>_<part>).",
        examples=[{"dteday": ["month", "dayofweek"]}],
    )
    unseen: Literal["zeros", "other"] = Field(
        default="zeros",
        description="A value outside a column's categories: zeros (every indicator 0) or other (an explicit "
        "<column>=__other__ indicator). Either way monitoring counts them per column (input_quality.unseen_levels).",
    )
    cyclical: dict[str, int] = Field(default_factory=dict, description="Column -> period, encoded as sin/cos.")
    custom: list[CustomTransformerSpec] = Field(
        default_factory=list,
        description="The team's own scikit-learn-compatible transformers, by import path: fitted at training, "
        "their outputs are features, and their code ships inside the model so serving applies them.",
        examples=[[{"name": "feels", "transformer": "team_features.ratios:RatioFeature", "columns": ["atemp", "hum"]}]],
    )

    @property
    def source_columns(self) -> list[str]:
        """Raw columns the features are computed from."""
        custom = [c for step in self.custom for c in step.columns]
        return list(
            dict.fromkeys([*self.numeric, *self.categorical, *self.cyclical, *self.bands, *self.date_parts, *custom])
        )

    @model_validator(mode="after")
    def _custom_names_unique(self) -> FeatureSpec:
        names = [step.name for step in self.custom]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"features.custom: names must be unique, repeated: {repeated}")
        return self

    @model_validator(mode="after")
    def _bands_ascending(self) -> FeatureSpec:
        for col, edges in self.bands.items():
            if not edges or any(b >= a for a, b in zip(edges[1:], edges, strict=False)):
                raise ValueError(f"features.bands.{col}: edges must be non-empty and strictly ascending, got {edges}")
        return self


# defined before its first use: a forward reference leaves ModelSpec incomplete until its first validation, and the
# spec reference generated before that would name the type "None[]"
FAMILIES = ("lightgbm", "ridge", "logistic_regression", "random_forest", "hist_gradient_boosting", "torch")
Family = Literal["lightgbm", "ridge", "logistic_regression", "random_forest", "hist_gradient_boosting", "torch"]


class ModelSpec(_Strict):
    """One estimator: a family from the train module's registry plus its hyperparameters."""

    family: Family = Field(
        description="Model family: lightgbm, ridge, logistic_regression, random_forest, hist_gradient_boosting "
        "or torch.",
        examples=["lightgbm"],
    )
    params: dict[str, float | int | str | bool] = Field(
        default_factory=dict,
        description="Hyperparameters passed to the family's estimator.",
        examples=[{"n_estimators": 300, "learning_rate": 0.05}],
    )


class IntRange(_Strict):
    """An integer hyperparameter drawn from [low, high] (log scale: low > 0)."""

    type: Literal["int"] = Field(description="An integer range.")
    low: int = Field(description="Smallest value.", examples=[8])
    high: int = Field(description="Largest value.", examples=[64])
    log: bool = Field(default=False, description="Draw on a log scale.")

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low >= self.high:
            raise ValueError(f"int range needs low < high (got {self.low}, {self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class FloatRange(_Strict):
    """A float hyperparameter drawn from [low, high] (log scale: low > 0)."""

    type: Literal["float"] = Field(description="A float range.")
    low: float = Field(description="Smallest value.", examples=[0.02])
    high: float = Field(description="Largest value.", examples=[0.2])
    log: bool = Field(default=False, description="Draw on a log scale.")

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low >= self.high:
            raise ValueError(f"float range needs low < high (got {self.low}, {self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class Choice(_Strict):
    """A hyperparameter drawn from a list of values."""

    type: Literal["categorical"] = Field(description="A choice among listed values.")
    choices: list[float | int | str | bool] = Field(
        min_length=1, description="The values to choose from.", examples=[["gbdt", "dart"]]
    )


SearchParam = Annotated[IntRange | FloatRange | Choice, Field(discriminator="type")]


class SearchSpec(_Strict):
    """Hyperparameter search (Optuna, TPE sampler): a space per family, a budget, a seed and the metric.

    A family with a space is searched (its ``params`` in ``model`` or ``candidates`` are the fixed base the
    trial's values override); every trial is scored on the validation split carved from the training window.
    With a ``trials`` budget the search is sequential, so the same seed and data give the same best trial;
    with only ``minutes``, ``n_jobs`` trials run at once in the worker. In the kubernetes execution mode,
    ``trials_per_pod`` splits each family's trial budget into batches that run as mapped pods before training.
    """

    space: dict[Family, dict[str, SearchParam]] = Field(
        description="Family -> hyperparameter -> {type: int|float, low, high, log} or {type: categorical, choices}."
    )
    trials: int | None = Field(default=None, gt=0, description="Trials per searched family.")
    minutes: float | None = Field(
        default=None, gt=0, description="Wall-clock budget per searched family.", examples=[10]
    )
    seed: int = Field(default=42, description="Seed of the Optuna sampler.")
    metric: str | None = Field(
        default=None, description="Validation metric to optimise; default: gate.primary_metric.", examples=["roc_auc"]
    )
    n_jobs: int = Field(default=1, ge=1, le=64, description="Parallel trials when only a minutes budget is set.")
    trials_per_pod: int | None = Field(
        default=None,
        gt=0,
        description="Kubernetes execution mode: run each family's trials in batches of this many, one mapped pod "
        "per batch (resources.trial), before the train pod, which then takes the study's best trial. Needs a "
        "trials budget. Unset: every trial runs inside the train pod. Ignored in the local mode.",
        examples=[5],
    )

    @model_validator(mode="after")
    def _budget(self) -> SearchSpec:
        if self.trials is None and self.minutes is None:
            raise ValueError("training.search needs a budget: trials and/or minutes")
        if self.trials_per_pod is not None and self.trials is None:
            raise ValueError("training.search.trials_per_pod needs a trials budget to split into batches")
        if not self.space or not all(self.space.values()):
            raise ValueError("training.search.space needs at least one family with at least one hyperparameter")
        return self


class TrainingSpec(_Strict):
    """Which data a training run uses and when a new run is worth it."""

    window_days: int = Field(gt=1, description="Most recent valid daily partitions used per run.")
    holdout_days: int = Field(gt=0, description="Last days of the window kept out for evaluation.")
    min_partitions: int = Field(gt=1, description="Do not train on fewer valid partitions than this.")
    retrain_after_new_partitions: int = Field(
        gt=0, description="On new data alone, retrain once this many partitions are newer than the champion's."
    )
    seed: int = Field(default=42, description="Random seed of the model fit and the validation split.")
    model: ModelSpec
    baseline: ModelSpec
    candidates: list[ModelSpec] = Field(
        default_factory=list,
        description="Other families (fixed params, or searched when training.search.space names them); the best of "
        "model and these on the validation split becomes the candidate. The baseline stays the baseline.",
        examples=[[{"family": "random_forest", "params": {"n_estimators": 200}}]],
    )
    search: SearchSpec | None = None
    calibration: Literal["isotonic", "sigmoid"] | None = Field(
        default=None,
        description="Classification: post-hoc calibration fitted on the validation split.",
        examples=["isotonic"],
    )
    validation_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=0.5,
        description="Share of the training window held out for search, selection and calibration (never the gate's "
        "holdout): the most recent days for dated data, a stratified sample for date-less data.",
    )

    @property
    def families(self) -> list[ModelSpec]:
        """The model and the other candidates, in spec order."""
        return [self.model, *self.candidates]

    @property
    def selects(self) -> bool:
        """Whether training carves a validation split (search, several candidates or calibration)."""
        return bool(self.search or self.candidates or self.calibration)

    @model_validator(mode="after")
    def _holdout_fits(self) -> TrainingSpec:
        if self.holdout_days >= self.min_partitions:
            raise ValueError("holdout_days must be smaller than min_partitions, or nothing is left to train on")
        if self.min_partitions > self.window_days:
            raise ValueError("min_partitions cannot exceed window_days")
        return self

    @model_validator(mode="after")
    def _candidates_distinct(self) -> TrainingSpec:
        names = [m.family for m in self.families]
        if len(set(names)) != len(names):
            raise ValueError(f"training.model and training.candidates name a family twice: {names}")
        if self.search:
            unused = sorted(set(self.search.space) - set(names))
            if unused:
                raise ValueError(f"training.search.space names families that are not candidates: {unused}")
        return self


HEAVY_STAGES = {
    "validate_data": "validate",
    "validate_partitions": "validate",  # ingest-time validation of new batches asks for what validation asks for
    "build_features": "features",
    "train_model": "train",
    "evaluate_model": "evaluate",
    "check_drift": "monitor",
    "score_partitions": "score",
    "search_trials": "trial",  # one batch of search trials (training.search.trials_per_pod), a mapped pod each
}
"""Stages that run as pods in the kubernetes execution mode (the others are light and stay in Airflow), each
with the key of its entry in the spec's ``resources:`` block."""


class StageResources(_Strict):
    """What one stage's pod asks Kubernetes for (kubernetes execution mode only).

    Unset fields fall back to ``resources.default``. ``gpu: null`` means "the stage's default": one GPU for
    training a ``torch`` model, none otherwise. Node selector and tolerations default to the environment's
    GPU node pool (settings ``kubernetes.gpu_*``) when the pod asks for a GPU.
    """

    cpu_request: str | None = Field(default=None, description="Kubernetes CPU request.", examples=["500m"])
    cpu_limit: str | None = Field(default=None, description="Kubernetes CPU limit.", examples=["2"])
    memory_request: str | None = Field(default=None, description="Kubernetes memory request.", examples=["1Gi"])
    memory_limit: str | None = Field(default=None, description="Kubernetes memory limit.", examples=["4Gi"])
    gpu: int | None = Field(
        default=None, ge=0, description="GPUs for the pod (null: the stage's default).", examples=[1]
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Pod node selector.", examples=[{"pool": "gpu"}]
    )
    tolerations: list[dict[str, str | int]] | None = Field(
        default=None,
        description="Pod tolerations.",
        examples=[[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]],
    )
    timeout_minutes: int | None = Field(default=None, gt=0, description="Task execution timeout and pod deadline.")


_RESOURCE_FALLBACK = StageResources(
    cpu_request="500m", cpu_limit="2", memory_request="1Gi", memory_limit="4Gi", timeout_minutes=60
)


class ResourcesSpec(_Strict):
    """Per-stage pod resources: built-in fallback <- ``default`` <- the stage's own entry."""

    default: StageResources = StageResources()
    validate_: StageResources = Field(default=StageResources(), alias="validate")
    features: StageResources = StageResources()
    train: StageResources = StageResources()
    evaluate: StageResources = StageResources()
    monitor: StageResources = StageResources()
    score: StageResources = StageResources()
    trial: StageResources = Field(
        default=StageResources(),
        description="Each mapped pod running a batch of search trials (training.search.trials_per_pod).",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def for_stage(self, stage: str, model_family: str) -> StageResources:
        """The stage's resources with defaults filled in and its GPU count decided."""
        override = getattr(self, "validate_" if stage == "validate" else stage)
        merged = _RESOURCE_FALLBACK.model_copy(update=self.default.model_dump(exclude_none=True))
        merged = merged.model_copy(update=override.model_dump(exclude_none=True))
        if merged.gpu is None:
            gpu = 1 if (stage in ("train", "trial") and model_family == "torch") else 0
            merged = merged.model_copy(update={"gpu": gpu})
        return merged


REGRESSION_METRICS = ("rmse", "mae", "r2")
CLASSIFICATION_METRICS = ("roc_auc", "pr_auc", "f1", "log_loss", "calibration_error")
HIGHER_IS_BETTER = frozenset({"r2", "roc_auc", "pr_auc", "f1"})


class Bound(_Strict):
    """An absolute threshold on one holdout metric."""

    min: float | None = Field(default=None, description="Lowest accepted value.", examples=[0.85])
    max: float | None = Field(default=None, description="Highest accepted value.", examples=[0.4])

    @model_validator(mode="after")
    def _one_side(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("a threshold needs min or max")
        return self


class ChampionCheckSpec(_Strict):
    """Challenger vs the current champion on the same holdout, judged on a bootstrap confidence interval.

    Improvement is relative, in the primary metric's good direction (0.01 = 1 % better). Exactly one rule:
    ``min_improvement`` (the interval's lower bound must reach it, and a tie never promotes) or
    ``max_regression`` (the lower bound may not fall below minus it: "not measurably worse").
    """

    min_improvement: float | None = Field(
        default=None,
        ge=0,
        description="The CI's lower bound of the relative improvement must reach this.",
        examples=[0.0],
    )
    max_regression: float | None = Field(
        default=None, ge=0, description="The CI's lower bound may not fall below minus this.", examples=[0.02]
    )
    bootstrap_samples: int = Field(default=1000, ge=100, le=20000, description="Bootstrap resamples of the holdout.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="Confidence level of the interval.")

    @model_validator(mode="after")
    def _one_rule(self) -> ChampionCheckSpec:
        if self.min_improvement is not None and self.max_regression is not None:
            raise ValueError("set min_improvement or max_regression, not both")
        return self

    @property
    def required_improvement(self) -> float | None:
        """The ``min_improvement`` rule's bar (0 when neither rule is set); None under ``max_regression``."""
        if self.max_regression is not None:
            return None
        return self.min_improvement or 0.0


class SliceColumnSpec(_Strict):
    """One sensitive column's own slice rule: numeric bands, and its own gap and group size."""

    bands: list[float] = Field(
        default_factory=list,
        description="Ascending band edges for a numeric column: [25, 40, 60] makes the groups <25, 25-40, 40-60 and "
        ">=60 (empty: one group per value).",
        examples=[[25, 40, 60]],
    )
    max_gap: float | None = Field(
        default=None, gt=0, description="This column's gap (default: slices.max_gap).", examples=[0.08]
    )
    min_rows: int | None = Field(
        default=None, gt=0, description="This column's group size (default: slices.min_rows).", examples=[200]
    )

    @model_validator(mode="after")
    def _ascending(self) -> SliceColumnSpec:
        if any(b >= a for a, b in zip(self.bands[1:], self.bands, strict=False)):
            raise ValueError(f"slice bands must be strictly ascending, got {self.bands}")
        return self

    def group(self, value: object) -> str:
        """The group a value belongs to (its band, or the value itself as text)."""
        if not self.bands:
            return str(value)
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return str(value)
        if number != number:  # NaN: missing
            return "missing"
        edges = self.bands
        if number < edges[0]:
            return f"<{edges[0]:g}"
        for low, high in zip(edges, edges[1:], strict=False):
            if low <= number < high:
                return f"{low:g}-{high:g}"
        return f">={edges[-1]:g}"


class SliceCheckSpec(_Strict):
    """Per-group metrics over each sensitive column: the spread between groups may not exceed ``max_gap``."""

    metric: str | None = Field(default=None, description="Metric compared across groups (default: primary metric).")
    max_gap: float = Field(
        gt=0, description="Largest allowed difference of the metric between groups.", examples=[0.06]
    )
    min_rows: int = Field(default=100, gt=0, description="Groups with fewer holdout rows are reported, not judged.")
    columns: dict[str, SliceColumnSpec] = Field(
        default_factory=dict,
        description="Sensitive column -> its own rule (bands for a numeric column such as age, its own gap).",
        examples=[{"age": {"bands": [25, 40, 60], "max_gap": 0.08}}],
    )

    def rule(self, column: str) -> SliceColumnSpec:
        """The column's rule with the defaults filled in."""
        own = self.columns.get(column) or SliceColumnSpec()
        return own.model_copy(
            update={"max_gap": own.max_gap or self.max_gap, "min_rows": own.min_rows or self.min_rows}
        )


class ApprovalSpec(_Strict):
    """Optional human approval between the gate and promotion (Airflow's HITL ApprovalOperator)."""

    required: bool = Field(default=False, description="A person approves in Airflow before promotion.")
    timeout_hours: float = Field(default=72, gt=0, description="Unanswered requests time out (the run fails).")
    assigned_users: list[str] = Field(
        default_factory=list, description="User ids allowed to answer (empty: any).", examples=[["admin"]]
    )


class GateSpec(_Strict):
    """What a candidate must show before it may become champion. Every check has its own verdict."""

    mode: Literal["disabled", "dry_run", "enabled"] = Field(
        default="enabled",
        description="enabled: a failing check blocks promotion; dry_run: checks are reported, never block; disabled: "
        "no checks.",
    )
    primary_metric: str = Field(description="The metric compared with the baseline and the champion.")
    thresholds: dict[str, Bound] = Field(default_factory=dict, description="Absolute limits per holdout metric.")
    baseline_min_improvement: float = Field(
        default=0.0, description="Relative improvement of the primary metric over the spec's baseline model."
    )
    champion: ChampionCheckSpec = ChampionCheckSpec()
    slices: SliceCheckSpec | None = None
    decision_threshold: float = Field(
        default=0.5, gt=0, lt=1, description="Classification: probability at or above which F1 counts a positive."
    )
    approval: ApprovalSpec = ApprovalSpec()


class ModelCardSpec(_Strict):
    """Prose for the model card; the numbers come from the run."""

    intended_use: str = Field(
        default="Not stated in the pipeline spec.", description="What the model is for, and for whom."
    )
    limitations: str = Field(
        default="Not stated in the pipeline spec.", description="Where the model must not be trusted."
    )
    ethical_considerations: str | None = Field(
        default=None,
        description="Sensitive attributes, proxies, and decisions the model must not be used for.",
        examples=["Do not use for credit decisions."],
    )


class TriggerPolicySpec(_Strict):
    """When violations become a retrain request (see :mod:`tasks.plan`)."""

    k: int = Field(default=1, ge=1, description="Violating windows needed among the last n (the latest included).")
    n: int = Field(default=1, ge=1, description="Nightly windows looked at (the latest n).")
    cooldown_days: float = Field(default=0, ge=0, description="No new request this soon after the last one.")
    max_retrains: int = Field(default=4, ge=1, description="At most this many requests per period.")
    period_days: float = Field(default=30, gt=0, description="The period max_retrains counts over.")

    @model_validator(mode="after")
    def _k_within_n(self) -> TriggerPolicySpec:
        if self.k > self.n:
            raise ValueError(f"trigger.k={self.k} cannot exceed trigger.n={self.n}")
        return self


class InputQualitySpec(_Strict):
    """Data quality of served inputs, against the champion's reference sample."""

    max_missing_increase: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="A column's share of missing values in served rows may exceed its share in the reference by "
        "at most this much (0.1 = ten percentage points).",
    )
    flag_constant: bool = Field(
        default=True,
        description="A column with 10 or more distinct reference values that is constant in served rows "
        "(a stuck default).",
    )
    max_out_of_range_share: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Share of served values of a numeric column outside the reference's [min, max] that counts as a "
        "violation; reported either way (seasonal inputs leave a short reference's range legitimately).",
        examples=[0.2],
    )


class MonitoringSpec(_Strict):
    """The nightly drift check."""

    schedule: str = Field(default="0 2 * * *", description="Cron schedule of the monitoring DAG.")
    window_days: int = Field(default=1, gt=0, description="Days of served traffic (by event date) per check.")
    min_rows: int = Field(default=50, gt=0, description="Fewer served rows in the window: no verdict.")
    drift_share_threshold: float = Field(
        default=0.5, gt=0, le=1, description="Share of drifted input columns that counts as dataset drift."
    )
    column_p_value: float = Field(default=0.05, gt=0, lt=1, description="A column drifts below this p-value.")
    reference_rows: int = Field(
        default=5000, gt=0, description="Rows of the champion's training data kept as reference."
    )
    include_target: bool = Field(
        default=True, description="Once labels for served rows have landed, also compare the target distribution."
    )
    max_performance_decay: float | None = Field(
        default=None,
        gt=0,
        description="Relative worsening of the gate's primary metric on labelled served rows, against the "
        "champion's own holdout figure, that counts as a violation (0.25 = 25 % worse).",
    )
    prediction_drift_threshold: float | None = Field(
        default=0.1,
        gt=0,
        description="Normalised Wasserstein distance between the champion's predictions on served rows and on its "
        "reference sample that counts as prediction drift (a distance, not a p-value: at 10^6 rows every "
        "difference is significant). None: report, never violate.",
    )
    attribution_drift_threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Total variation distance between the served rows' and the reference's shares of mean "
        "|SHAP contribution| per input column that counts as attribution drift. None: report, never violate.",
        examples=[0.2],
    )
    quality: InputQualitySpec = InputQualitySpec()
    trigger: TriggerPolicySpec = TriggerPolicySpec()


class PipelineSpec(_Strict):
    """Everything one pipeline declares."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]*$",
        description="Pipeline name: DAG ids, model name, data folders.",
        examples=["bike_demand"],
    )
    description: str = Field(description="One line on what the model predicts.")
    owner: str = Field(description="Airflow owner of the DAGs (a team).", examples=["ml-platform"])
    domain: str = Field(description="Business domain, a tag on DAGs and models.", examples=["mobility"])
    start_date: str = Field(
        pattern=r"^\d{4}-\d{2}-\d{2}$", description="First partition day (YYYY-MM-DD).", examples=["2011-01-01"]
    )
    ingest_schedule: str = Field(default="@daily", description="Schedule of the ingest DAG.")
    task: Literal["regression", "classification"] = Field(default="regression", description="What the model predicts.")
    landing_timeout_hours: float = Field(
        default=12,
        gt=0,
        description="How long ingest waits for a day's landing file, counted from the day's scheduled ingest run "
        "(the first fire of ingest_schedule at or after the end of the day, UTC): a day with no file by then fails "
        "its sensor at once (the run made on unpausing after that, an old key re-run) instead of waiting; a file "
        "that is there but still being written (under completion: rename, one under a temporary name of the day's "
        "file) gets this long from the sensor's first look.",
        examples=[12],
    )
    source: SourceSpec
    schema_: SchemaSpec = Field(alias="schema")
    expectations: str = Field(description="Great Expectations suite, relative to the repository root.")
    features: FeatureSpec
    training: TrainingSpec
    gate: GateSpec
    monitoring: MonitoringSpec
    resources: ResourcesSpec = ResourcesSpec()
    model_card: ModelCardSpec = ModelCardSpec()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _columns_known(self) -> PipelineSpec:
        known = set(self.schema_.columns)
        used = [*self.features.source_columns, self.schema_.target, self.source.partition_column]
        for col in [*used, *self.schema_.sensitive]:
            if col not in known:
                raise ValueError(f"column {col!r} is used but not declared under schema.columns")
        leaked = set(self.features.source_columns) - set(self.schema_.input_columns)
        if leaked:
            raise ValueError(f"features use columns callers cannot send: {sorted(leaked)}")
        return self

    @model_validator(mode="after")
    def _task_consistent(self) -> PipelineSpec:
        metrics = self.metric_names
        gate = self.gate
        named = {
            gate.primary_metric,
            *gate.thresholds,
            *([gate.slices.metric] if gate.slices and gate.slices.metric else []),
        }
        unknown = sorted(named - set(metrics))
        if unknown:
            raise ValueError(f"gate uses metrics {unknown}, not defined for {self.task}; available: {list(metrics)}")
        if self.task == "classification":
            if self.schema_.positive_label is None:
                raise ValueError("classification needs schema.positive_label (the target value of the positive class)")
            families = {m.family for m in self.training.families} | {self.training.baseline.family}
            if families & {"ridge", "torch"}:
                raise ValueError(f"model families {sorted(families & {'ridge', 'torch'})} are regression-only")
        elif "logistic_regression" in {m.family for m in [*self.training.families, self.training.baseline]}:
            raise ValueError("logistic_regression is a classification family; this pipeline's task is regression")
        elif self.training.calibration:
            raise ValueError("training.calibration applies to classification pipelines only")
        search = self.training.search
        if search and search.metric and search.metric not in metrics:
            raise ValueError(f"training.search.metric {search.metric!r} is not one of {list(metrics)}")
        if gate.slices and not self.schema_.sensitive:
            raise ValueError("gate.slices needs schema.sensitive columns to slice by")
        if gate.slices and set(gate.slices.columns) - set(self.schema_.sensitive):
            unknown = sorted(set(gate.slices.columns) - set(self.schema_.sensitive))
            raise ValueError(f"gate.slices.columns names columns that are not schema.sensitive: {unknown}")
        return self

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Holdout metrics of this pipeline's task."""
        return CLASSIFICATION_METRICS if self.task == "classification" else REGRESSION_METRICS

    @property
    def selection_metric(self) -> str:
        """The validation metric search and candidate selection optimise."""
        search = self.training.search
        return (search.metric if search and search.metric else None) or self.gate.primary_metric

    def stage_resources(self, stage: str) -> StageResources:
        """Pod resources of a heavy stage (see :class:`ResourcesSpec`)."""
        if stage not in HEAVY_STAGES:
            raise SpecError(f"{stage!r} is not a heavy stage; heavy stages: {list(HEAVY_STAGES)}")
        return self.resources.for_stage(HEAVY_STAGES[stage], self.training.model.family)

    @property
    def registered_model_name(self) -> str:
        """Name of the pipeline's model in the MLflow registry."""
        return self.name

    @property
    def expectations_path(self) -> Path:
        """Absolute path of the expectation suite."""
        return REPO_ROOT / self.expectations


PIPELINE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def pipeline_names(directory: Path | None = None) -> list[str]:
    """Names of the specs in a folder (default :func:`pipelines_dir`), sorted; only well-formed names."""
    folder = directory or pipelines_dir()
    return sorted(p.stem for p in folder.glob("*.yaml") if PIPELINE_NAME.match(p.stem))


def load_spec(name_or_path: str | Path, check_suite: bool = True, resolve_code: bool = True) -> PipelineSpec:
    """Load and validate one pipeline spec.

    Args:
        name_or_path: A pipeline name (``^[a-z][a-z0-9_]*$``, looked up in :func:`pipelines_dir`), or a
            ``Path`` to a YAML file (tests, tools). A string is always a name: no path reaches a file
            outside the specs folder through it.
        check_suite: Refuse the spec when its expectation suite disagrees with its schema (off only for the
            tool that writes a new suite).
        resolve_code: Import each ``features.custom`` transformer and check it and its params (training, DAG
            parsing, ``python -m tasks``). The model server and the scoring stage pass False: the model carries
            the team's module (MLflow ``code_paths``), so they check the import path's syntax only.

    Returns:
        The validated spec.

    Raises:
        SpecError: Not a pipeline name, the file is missing or does not validate; the message names the
            file and the field, or the suite disagrees with the schema (every disagreement named).
    """
    if isinstance(name_or_path, Path):
        path = name_or_path
    elif isinstance(name_or_path, str) and PIPELINE_NAME.match(name_or_path):
        path = pipelines_dir() / f"{name_or_path}.yaml"
    else:
        raise SpecError(
            f"{str(name_or_path)[:80]!r} is not a pipeline name (lower-case letters, digits and _); "
            f"available pipelines: {pipeline_names()}"
        )
    if not path.is_file():
        available = sorted(p.stem for p in pipelines_dir().glob("*.yaml"))
        raise SpecError(f"no pipeline spec at {path}; available pipelines: {available}")
    try:
        raw = yaml.load(path.read_text(), Loader=_YAML)
        spec = PipelineSpec.model_validate(raw, context={"resolve_code": resolve_code})
    except (yaml.YAMLError, ValueError) as exc:
        raise SpecError(f"invalid pipeline spec {path}: {exc}") from exc
    if check_suite:
        from tasks.suite import check_suite as suite_problems

        problems = suite_problems(spec)
        if problems:
            raise SpecError(
                f"pipeline spec {path}: its expectation suite {spec.expectations} disagrees with schema.columns: "
                + "; ".join(problems)
                + " (regenerate a starter with `python -m tasks suite`, or fix the suite or the schema)"
            )
    return spec


def list_specs(directory: Path | None = None, resolve_code: bool = True) -> list[PipelineSpec]:
    """Load every spec in a folder (default :func:`pipelines_dir`), sorted by name (``resolve_code``: see load_spec)."""
    return [load_spec(p, resolve_code=resolve_code) for p in sorted((directory or pipelines_dir()).glob("*.yaml"))]
