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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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

    A categorical column declared with no levels learns them at ``fit`` (the training rows' values, sorted), and
    the spec's custom transformers (``features.custom``) are fitted there on their columns; their outputs come last.
    """

    def __init__(
        self,
        numeric: list[str],
        categorical: dict[str, list[Any]],
        cyclical: dict[str, int],
        unseen: str = "zeros",
        bands: dict[str, list[float]] | None = None,
        date_parts: dict[str, list[str]] | None = None,
        custom: list[dict[str, Any]] | None = None,
    ) -> None:
        """Configure from the spec's ``features`` block (kept as plain attributes for sklearn cloning)."""
        self.numeric = numeric
        self.categorical = categorical
        self.cyclical = cyclical
        self.unseen = unseen
        self.bands = bands
        self.date_parts = date_parts
        self.custom = custom

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
            [step.model_dump() for step in spec.custom] or None,
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
        self.custom_ = [_fit_custom(step, X) for step in getattr(self, "custom", None) or []]
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
        for fitted in getattr(self, "custom_", None) or []:
            names += fitted.names
        return names

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Sklearn's feature-name protocol."""
        return np.asarray(self.feature_names, dtype=object)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803 - sklearn's signature
        """Compute the feature frame.

        Raises:
            FeatureError: A source column is missing.
        """
        return pd.DataFrame(self.matrix(X, len(X)), index=X.index, columns=self.feature_names, copy=False)

    @property
    def source_columns(self) -> list[str]:
        """The raw input columns the features are computed from, each once."""
        bands, date_parts = getattr(self, "bands", None) or {}, getattr(self, "date_parts", None) or {}
        custom = getattr(self, "custom", None) or []
        needed = [*self.numeric, *self.categorical, *self.cyclical, *bands, *date_parts]
        return list(dict.fromkeys(needed + [c for step in custom for c in step["columns"]]))

    def matrix(self, X: pd.DataFrame | Mapping[str, Any], rows: int) -> np.ndarray:  # noqa: N803
        """The features as one float64 matrix, in :attr:`feature_names` order.

        ``X``: a frame, or the raw columns by name (numpy arrays or Series of ``rows`` values each), as the model
        server builds them from a request without framing them (:mod:`tasks.serving.fastpath`): the same code
        computes both, so a served row gets exactly the features training computed.

        Raises:
            FeatureError: A source column is missing, or the custom transformers were never fitted.
        """
        bands, date_parts = getattr(self, "bands", None) or {}, getattr(self, "date_parts", None) or {}
        custom = getattr(self, "custom", None) or []
        if custom and len(getattr(self, "custom_", None) or []) != len(custom):
            raise FeatureError("features.custom transformers are fitted at fit: call fit before transform")
        missing = [c for c in self.source_columns if c not in X]
        if missing:
            raise FeatureError(f"input rows lack columns {missing}")
        # one float64 matrix filled column by column: a served request is often one row, where building a
        # frame from a dict of columns and reordering it cost more than the arithmetic
        names = self.feature_names
        matrix = np.empty((rows, len(names)), dtype="float64")
        for i, column in enumerate(self._columns(X, bands, date_parts)):
            matrix[:, i] = column
        return matrix

    def _columns(self, X: pd.DataFrame | Mapping[str, Any], bands: dict, date_parts: dict) -> Iterator[np.ndarray]:  # noqa: N803
        """The output columns as arrays, in :attr:`feature_names` order."""
        for c in self.numeric:
            yield _floats(X[c])
        for col, cats in self.levels.items():
            values = np.asarray(X[col])
            for cat in cats:
                yield values == cat
            if self._other:  # a present value outside the levels (a missing one stays all zeros)
                series = _series(X[col])
                yield (series.notna() & ~series.isin(cats)).to_numpy()
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
            stamps = pd.to_datetime(_series(X[col]), format="ISO8601", errors="coerce", utc=True)
            for part in parts:
                yield getattr(stamps.dt, part).astype("float64").to_numpy()
        yield from self._custom_columns(X)

    def _custom_columns(self, X: pd.DataFrame | Mapping[str, Any]) -> Iterator[np.ndarray]:  # noqa: N803
        """The custom transformers' output columns (``features.custom``, fitted at fit), last."""
        fitted_steps = getattr(self, "custom_", None) or []
        if fitted_steps and not isinstance(X, pd.DataFrame):
            X = pd.DataFrame({c: _series(X[c]) for step in fitted_steps for c in step.step["columns"]})  # noqa: N806
        for fitted in fitted_steps:
            yield from fitted.outputs(X).T


@dataclass
class FittedCustom:
    """One fitted ``features.custom`` transformer: its spec entry, the fitted object and its output names."""

    step: dict[str, Any]
    transformer: Any
    names: list[str]

    def outputs(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803 - sklearn's convention
        """Its transform of ``X``'s columns as a float64 matrix, one row per input row.

        Raises:
            FeatureError: The output is not numbers, has another number of rows or of columns than at fit.
        """
        return _custom_matrix(self.step, self.transformer, X, len(self.names))


def _fit_custom(step: dict[str, Any], X: pd.DataFrame) -> FittedCustom:  # noqa: N803
    """Import, build and fit one custom transformer on the training rows' columns; name its outputs."""
    from tasks.spec import resolve_transformer

    missing = [c for c in step["columns"] if c not in X.columns]
    if missing:
        raise FeatureError(f"input rows lack columns {missing}")
    try:
        transformer = resolve_transformer(step["transformer"])(**step["params"])
        transformer.fit(X[step["columns"]])
    except FeatureError:
        raise
    except Exception as exc:  # noqa: BLE001 - the team's code: say which transformer failed and how
        raise FeatureError(f"features.custom {step['name']} ({step['transformer']}) failed to fit: {exc}") from exc
    width = _custom_matrix(step, transformer, X.head(2)).shape[1]
    try:
        outputs = [str(n) for n in transformer.get_feature_names_out(step["columns"])]
    except Exception:  # noqa: BLE001 - the protocol is optional: number the outputs
        outputs = []
    if len(outputs) != width:
        outputs = [str(i) for i in range(width)]
    return FittedCustom(step, transformer, [f"{step['name']}_{o}" for o in outputs])


def _custom_matrix(step: dict[str, Any], transformer: Any, X: pd.DataFrame, width: int | None = None) -> np.ndarray:  # noqa: N803
    try:
        out = transformer.transform(X[step["columns"]])
        matrix = np.asarray(out.to_numpy() if hasattr(out, "to_numpy") else out, dtype="float64")
    except (TypeError, ValueError) as exc:
        raise FeatureError(f"features.custom {step['name']} ({step['transformer']}): no numbers out: {exc}") from exc
    if matrix.ndim == 1:
        matrix = matrix.reshape(-1, 1)
    if matrix.ndim != 2 or matrix.shape[0] != len(X) or (width is not None and matrix.shape[1] != width):
        raise FeatureError(
            f"features.custom {step['name']} ({step['transformer']}) returned shape {matrix.shape} for {len(X)} rows"
            + (f" (fitted: {width} outputs)" if width is not None else "")
        )
    return matrix


def custom_code(spec: FeatureSpec) -> tuple[list[str], list[str]]:
    """What a model with ``spec``'s custom transformers needs where it loads: ``(code_paths, requirements)``.

    A transformer installed from a distribution into site-packages (feature-engine, scikit-learn) is pinned as a
    requirement; the team's own module (on ``PYTHONPATH``, or an editable install) travels as code: its top-level
    package folder, or its single file (MLflow ``code_paths``, put on ``sys.path`` when the model loads). The
    pipeline's own ``tasks`` ships in the serving image, the standard library with Python.

    Raises:
        FeatureError: A module installed into site-packages that no distribution owns (copied there by hand):
            it could be neither pinned nor shipped, so the model would not load where it is not; the message
            names it.
    """
    import importlib
    import sys
    from importlib.metadata import packages_distributions, version

    paths: list[str] = []
    requirements: list[str] = []
    for step in spec.custom:
        top = step.transformer.partition(":")[0].split(".")[0]
        if top == "tasks" or top in sys.stdlib_module_names:
            continue
        module = importlib.import_module(top)
        folder = getattr(module, "__path__", None)
        location = Path(next(iter(folder))) if folder else Path(module.__file__ or "")
        if {"site-packages", "dist-packages"} & set(location.parts) or not module.__file__ and not folder:
            distributions = packages_distributions().get(top, [])
            if not distributions:
                raise FeatureError(
                    f"features.custom {step.name} ({step.transformer}): module {top!r} is installed at "
                    f"{location} but belongs to no distribution, so it can be neither pinned in the model's "
                    "requirements nor shipped with the model, and the model would not load where it is not "
                    "installed. Install it as a package (pip install), or put it on PYTHONPATH outside "
                    "site-packages so it ships with the model"
                )
            requirements += [f"{d}=={version(d)}" for d in distributions]
            continue
        paths.append(str(location))
    return list(dict.fromkeys(paths)), list(dict.fromkeys(requirements))


def custom_code_digest(spec: FeatureSpec) -> str:
    """SHA-256 over the custom transformers' shipped source files (a cache key part: edited code, new features)."""
    import hashlib

    digest = hashlib.sha256()
    paths, requirements = custom_code(spec)
    for root in map(Path, paths):
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for file in files:
            digest.update(str(file.relative_to(root.parent)).encode() + b"\0" + file.read_bytes())
    digest.update("\n".join(requirements).encode())
    return digest.hexdigest()


def _floats(column: pd.Series | np.ndarray) -> np.ndarray:
    """A column as float64 (numbers as they are; text through ``pd.to_numeric``, as training did)."""
    if column.dtype.kind in "biuf":
        if isinstance(column, np.ndarray):
            return column.astype("float64")
        return column.to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(_series(column)).astype("float64").to_numpy()


def _series(column: pd.Series | np.ndarray) -> pd.Series:
    """A column as a Series (the server hands numpy arrays; some steps need pandas' missing-value rules)."""
    return column if isinstance(column, pd.Series) else pd.Series(column, copy=False)


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
