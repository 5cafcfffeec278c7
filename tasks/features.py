"""Features: assemble a training window, split it by time, and compute the spec's features.

The transformation is :class:`FeatureBuilder`, a stateless scikit-learn transformer configured only by
the spec. Training fits the estimator on its output, and the model logged to MLflow is
``Pipeline([FeatureBuilder, estimator])``: the server applies exactly the code training did.

A window's files are kept by content (:mod:`tasks.cache`): a run over the same partitions (same bytes)
with the same features section, schema and split links the kept files into its folder instead of
building them again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from tasks import cache
from tasks.errors import PermanentError
from tasks.landing import sha256_of
from tasks.results import Datasets
from tasks.spec import FeatureSpec, PipelineSpec
from tasks.storage import DataLayout, atomic_path

log = logging.getLogger(__name__)


class FeatureError(PermanentError, ValueError):
    """Input rows lack columns the features need, or the window is too small to split."""


OTHER = "__other__"


class FeatureBuilder(TransformerMixin, BaseEstimator):
    """Numeric passthrough, one-hot over categories (unseen: zeros or an explicit other), sin/cos for cyclical columns.

    A categorical column declared with no levels learns them at ``fit`` (the training rows' values, sorted).
    """

    def __init__(
        self,
        numeric: list[str],
        categorical: dict[str, list[Any]],
        cyclical: dict[str, int],
        unseen: str = "zeros",
        bands: dict[str, list[float]] | None = None,
        date_parts: dict[str, list[str]] | None = None,
    ) -> None:
        """Configure from the spec's ``features`` block (kept as plain attributes for sklearn cloning)."""
        self.numeric = numeric
        self.categorical = categorical
        self.cyclical = cyclical
        self.unseen = unseen
        self.bands = bands
        self.date_parts = date_parts

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> FeatureBuilder:
        """Build from a validated spec."""
        return cls(
            list(spec.numeric),
            {k: list(v) for k, v in spec.categorical.items()},
            dict(spec.cyclical),
            spec.unseen,
            {k: list(v) for k, v in spec.bands.items()} or None,
            {k: list(v) for k, v in spec.date_parts.items()} or None,
        )

    def fit(self, X: pd.DataFrame, y: Any = None) -> FeatureBuilder:  # noqa: N803 - sklearn's signature
        """Learn the levels of categorical columns declared without any; nothing else to learn."""
        learned = {}
        for col, cats in self.categorical.items():
            if not cats:
                if col not in X.columns:
                    raise FeatureError(f"input rows lack columns {[col]}")
                learned[col] = sorted(X[col].dropna().unique().tolist(), key=str)
        self.levels_ = {col: learned.get(col, list(cats)) for col, cats in self.categorical.items()}
        return self

    @property
    def levels(self) -> dict[str, list[Any]]:
        """Each categorical column's levels: learned at fit, else as declared."""
        return getattr(self, "levels_", None) or self.categorical

    @property
    def _other(self) -> bool:
        return getattr(self, "unseen", "zeros") == "other"  # models pickled before ``unseen`` existed: zeros

    @property
    def feature_names(self) -> list[str]:
        """Output column names, in order."""
        names = list(self.numeric)
        for col, cats in self.levels.items():
            names += [f"{col}={c}" for c in cats] + ([f"{col}={OTHER}"] if self._other else [])
        for col in self.cyclical:
            names += [f"{col}_sin", f"{col}_cos"]
        for col, edges in (getattr(self, "bands", None) or {}).items():
            names += [f"{col}={label}" for label in _band_labels(edges)]
        for col, parts in (getattr(self, "date_parts", None) or {}).items():
            names += [f"{col}_{part}" for part in parts]
        return names

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Sklearn's feature-name protocol."""
        return np.asarray(self.feature_names, dtype=object)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803 - sklearn's signature
        """Compute the feature frame.

        Raises:
            FeatureError: A source column is missing.
        """
        bands, date_parts = getattr(self, "bands", None) or {}, getattr(self, "date_parts", None) or {}
        needed = [*self.numeric, *self.categorical, *self.cyclical, *bands, *date_parts]
        missing = [c for c in needed if c not in X.columns]
        if missing:
            raise FeatureError(f"input rows lack columns {missing}")
        # one float64 matrix filled column by column, framed once: a served request is often one row, where
        # building a frame from a dict of columns and reordering it cost more than the arithmetic
        names = self.feature_names
        matrix = np.empty((len(X), len(names)), dtype="float64")
        for i, column in enumerate(self._columns(X, bands, date_parts)):
            matrix[:, i] = column
        return pd.DataFrame(matrix, index=X.index, columns=names, copy=False)

    def _columns(self, X: pd.DataFrame, bands: dict, date_parts: dict) -> Iterator[np.ndarray]:  # noqa: N803
        """The output columns as arrays, in :attr:`feature_names` order."""
        for c in self.numeric:
            yield _floats(X[c])
        for col, cats in self.levels.items():
            values = X[col].to_numpy()
            for cat in cats:
                yield values == cat
            if self._other:  # a present value outside the levels (a missing one stays all zeros)
                yield (X[col].notna() & ~X[col].isin(cats)).to_numpy()
        for col, period in self.cyclical.items():
            angle = 2 * np.pi * _floats(X[col]) / period
            yield np.sin(angle)
            yield np.cos(angle)
        for col, edges in bands.items():  # a missing value is in no band
            values = _floats(X[col])
            which = np.digitize(values, edges)  # 0: below the first edge, len(edges): at or above the last
            for band in range(len(edges) + 1):
                yield (which == band) & ~np.isnan(values)
        for col, parts in date_parts.items():
            stamps = pd.to_datetime(X[col], format="ISO8601", errors="coerce", utc=True)
            for part in parts:
                yield getattr(stamps.dt, part).astype("float64").to_numpy()


def _floats(column: pd.Series) -> np.ndarray:
    """A column as float64 (numbers as they are; text through ``pd.to_numeric``, as training did)."""
    if column.dtype.kind in "biuf":
        return column.to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(column).astype("float64").to_numpy()


def _band_labels(edges: list[float]) -> list[str]:
    """``<a``, ``a-b``, ..., ``>=z`` for ascending edges ``a .. z``."""
    inner = [f"{low:g}-{high:g}" for low, high in zip(edges, edges[1:], strict=False)]
    return [f"<{edges[0]:g}", *inner, f">={edges[-1]:g}"]


def unseen_levels(spec: FeatureSpec, frame: pd.DataFrame) -> dict[str, int]:
    """Per categorical column with declared levels, how many present values of ``frame`` are outside them."""
    return {
        col: int((frame[col].notna() & ~frame[col].isin(cats)).sum())
        for col, cats in spec.categorical.items()
        if cats and col in frame.columns
    }


def load_partitions(spec: PipelineSpec, layout: DataLayout, days: list[str]) -> pd.DataFrame:
    """Concatenate raw partitions in time order."""
    if not days:
        raise FeatureError("no partitions given")
    frames = [pd.read_parquet(layout.raw_partition(spec.name, d)) for d in sorted(days)]
    return pd.concat(frames, ignore_index=True)


def _write(frame: pd.DataFrame, path: Any) -> str:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return str(path)


def _labelled(rows: pd.DataFrame, target: str, part: str) -> pd.DataFrame:
    """The rows whose target is known.

    A row without its label can be served and monitored, never learnt from or scored (Beijing PM2.5 misses
    about 5 % of its hourly readings).
    """
    missing = rows[target].isna()
    if missing.any():
        log.info("%d of %d %s rows have no %s: left out", int(missing.sum()), len(rows), part, target)
    return rows[~missing].reset_index(drop=True)


def build_features(spec: PipelineSpec, layout: DataLayout, days: list[str], run_id: str) -> Datasets:
    """Split the window by time (the last ``holdout_days`` partitions are the holdout) and build features.

    Args:
        spec: The pipeline.
        layout: Data root layout.
        days: Valid partition dates of the window.
        run_id: The Airflow run (output folder).

    Returns:
        Paths of the training rows (raw and featurised) and of the raw holdout rows.

    Raises:
        FeatureError: Fewer partitions than ``holdout_days + 1``.
    """
    days = sorted(days)
    holdout_n = spec.training.holdout_days
    if len(days) <= holdout_n:
        raise FeatureError(f"{len(days)} partitions cannot be split into training and a {holdout_n}-day holdout")
    missing = [d for d in days if not layout.raw_partition(spec.name, d).is_file()]
    if missing:
        raise FeatureError(f"partitions {missing} of {spec.name} are not in the raw store")
    key = cache.features_key(spec, {d: sha256_of(layout.raw_partition(spec.name, d)) for d in days})
    kept = cache.get_features(layout, spec.name, key)
    if kept is not None:
        return _reuse(spec, layout, run_id, *kept)
    uris = _build(spec, layout, days, run_id)
    files = dict(zip(cache.FEATURE_FILES, (uris.train_raw, uris.train_features, uris.holdout), strict=True))
    meta = uris.xcom() | {"run_id": run_id}
    cache.put_features(layout, spec.name, key, {k: Path(v) for k, v in files.items()}, meta)
    return uris


def _reuse(spec: PipelineSpec, layout: DataLayout, run_id: str, meta: dict[str, Any], folder: Path) -> Datasets:
    """The run's files are the kept feature set's (hard links): the same rows an earlier run built."""
    name = spec.name
    targets = (layout.train_raw(name, run_id), layout.train_features(name, run_id), layout.holdout(name, run_id))
    for file, target in zip(cache.FEATURE_FILES, targets, strict=True):
        cache.link_or_copy(folder / file, target)
    train_raw, train_features, holdout = (str(t) for t in targets)
    keep = ("train_partitions", "holdout_partitions", "train_rows", "holdout_rows")
    log.info(
        "training window of %d partitions: feature set kept from run %s",
        len(meta["train_partitions"]) + len(meta["holdout_partitions"]),
        meta.get("run_id"),
    )
    return Datasets(train_raw=train_raw, train_features=train_features, holdout=holdout, **{k: meta[k] for k in keep})


def _build(spec: PipelineSpec, layout: DataLayout, days: list[str], run_id: str) -> Datasets:
    holdout_n = spec.training.holdout_days
    train_days, holdout_days = days[:-holdout_n], days[-holdout_n:]
    # sensitive columns stay beside the inputs (even when callers never send them) for the gate's slice checks
    keep = [spec.source.partition_column, *spec.schema_.input_columns, spec.schema_.target, *spec.schema_.sensitive]
    keep = list(dict.fromkeys(keep))
    target = spec.schema_.target
    train = _labelled(load_partitions(spec, layout, train_days)[keep], target, "training")
    holdout = _labelled(load_partitions(spec, layout, holdout_days)[keep], target, "holdout")
    features = FeatureBuilder.from_spec(spec.features).fit_transform(train)
    features[spec.schema_.target] = train[spec.schema_.target].to_numpy()
    name = spec.name
    uris = Datasets(
        train_raw=_write(train, layout.train_raw(name, run_id)),
        train_features=_write(features, layout.train_features(name, run_id)),
        holdout=_write(holdout, layout.holdout(name, run_id)),
        train_partitions=train_days,
        holdout_partitions=holdout_days,
        train_rows=len(train),
        holdout_rows=len(holdout),
    )
    log.info(
        "training window %s..%s (%d rows), holdout %s..%s (%d rows), %d features",
        train_days[0],
        train_days[-1],
        len(train),
        holdout_days[0],
        holdout_days[-1],
        len(holdout),
        features.shape[1] - 1,
    )
    return uris
