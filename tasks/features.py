"""Features: assemble a training window, split it by time, and compute the spec's features.

The transformation is :class:`FeatureBuilder`, a stateless scikit-learn transformer configured only by
the spec. Training fits the estimator on its output, and the model logged to MLflow is
``Pipeline([FeatureBuilder, estimator])``: the server applies exactly the code training did.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from tasks.errors import PermanentError
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
        out: dict[str, Any] = {c: pd.to_numeric(X[c]).astype("float64").to_numpy() for c in self.numeric}
        for col, cats in self.levels.items():
            values = X[col].to_numpy()
            for cat in cats:
                out[f"{col}={cat}"] = (values == cat).astype("float64")
            if self._other:  # a present value outside the levels (a missing one stays all zeros)
                out[f"{col}={OTHER}"] = (X[col].notna() & ~X[col].isin(cats)).to_numpy().astype("float64")
        for col, period in self.cyclical.items():
            angle = 2 * np.pi * pd.to_numeric(X[col]).to_numpy(dtype="float64") / period
            out[f"{col}_sin"] = np.sin(angle)
            out[f"{col}_cos"] = np.cos(angle)
        for col, edges in bands.items():  # a missing value is in no band
            values = pd.to_numeric(X[col]).to_numpy(dtype="float64")
            which = np.digitize(values, edges)  # 0: below the first edge, len(edges): at or above the last
            for i, label in enumerate(_band_labels(edges)):
                out[f"{col}={label}"] = ((which == i) & ~np.isnan(values)).astype("float64")
        for col, parts in date_parts.items():
            stamps = pd.to_datetime(X[col], format="ISO8601", errors="coerce", utc=True)
            for part in parts:
                out[f"{col}_{part}"] = getattr(stamps.dt, part).astype("float64").to_numpy()
        return pd.DataFrame(out, index=X.index)[self.feature_names]


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
    train_days, holdout_days = days[:-holdout_n], days[-holdout_n:]
    # sensitive columns stay beside the inputs (even when callers never send them) for the gate's slice checks
    keep = [spec.source.partition_column, *spec.schema_.input_columns, spec.schema_.target, *spec.schema_.sensitive]
    keep = list(dict.fromkeys(keep))
    train = load_partitions(spec, layout, train_days)[keep]
    holdout = load_partitions(spec, layout, holdout_days)[keep]
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
