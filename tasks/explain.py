"""Explanations: per-row feature contributions (SHAP values) and global importance, in raw-input terms.

Tree models are explained exactly and fast: LightGBM's own ``pred_contrib=True`` (TreeSHAP inside LightGBM),
shap's ``TreeExplainer`` for the other tree families. Contributions are on the model's raw margin (log-odds
for a classifier) before any calibration, so ``expected + sum(contributions) == raw margin``. Other families
(ridge, logistic regression, torch) get shap's model-agnostic permutation explainer on the model's output,
against a background sample kept with the model at training (``explain_background_``).

The model sees one-hot and sin/cos features; a contribution is reported per raw input column (what a caller
sent, what a reason code names) by summing the contributions of the features computed from that column. A
custom transformer's output (``features.custom``) that reads k columns is split equally: 1/k of its contribution
goes to each of them (a convention: SHAP does not say how the output depends on each), so the row still adds up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tasks.errors import PermanentError

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

BACKGROUND_ROWS = 100
"""Rows of the background sample the model-agnostic explainer integrates over."""


class ExplainError(PermanentError, ValueError):
    """A model that cannot be explained (not the project's ``Pipeline([features, model])``)."""


@dataclass(frozen=True)
class Contributions:
    """Per-row contributions of each raw input column, and the base value they add to."""

    values: pd.DataFrame
    """Rows x raw input columns."""
    expected: np.ndarray
    """Base value per row (the explainer's expected output)."""
    space: str
    """``raw_margin`` (tree models, before calibration) or ``prediction`` (model-agnostic)."""


def _parts(model: Any) -> tuple[Any, Any]:
    steps = getattr(model, "named_steps", None)
    if not steps or "features" not in steps or "model" not in steps:
        raise ExplainError(f"cannot explain a {type(model).__name__}: expected Pipeline([features, model])")
    return steps["features"], steps["model"]


def _inner(estimator: Any) -> Any:
    """The fitted estimator whose margin is explained: unwrap PositiveProbability (and its calibration)."""
    from tasks.models.binary import PositiveProbability

    if isinstance(estimator, PositiveProbability):
        return estimator.uncalibrated
    return estimator


def raw_sources(builder: Any) -> list[list[str]]:
    """For each model feature (in order), the raw input columns it is computed from (several: a custom output)."""
    sources = [[col] for col in raw_column_of(builder)]
    for fitted in getattr(builder, "custom_", None) or []:
        sources += [list(fitted.step["columns"])] * len(fitted.names)
    return sources


def raw_column_of(builder: Any) -> list[str]:
    """For each of the spec's built-in features (in order), the raw input column it is computed from.

    A custom transformer's outputs (``features.custom``, last) may read several columns: :func:`raw_sources`.
    """
    raw = list(builder.numeric)
    other = getattr(builder, "unseen", "zeros") == "other"  # an explicit <column>=__other__ indicator
    for col, cats in getattr(builder, "levels", builder.categorical).items():
        raw += [col] * (len(cats) + other)
    for col in builder.cyclical:
        raw += [col, col]
    for col, edges in (getattr(builder, "bands", None) or {}).items():
        raw += [col] * (len(edges) + 1)
    for col, parts in (getattr(builder, "date_parts", None) or {}).items():
        raw += [col] * len(parts)
    return raw


def raw_index(builder: Any) -> tuple[list[str], np.ndarray]:
    """The raw input columns (in first-feature order) and the 0/1 matrix (features x raw columns) summing onto them.

    ``per_feature @ matrix`` adds each row's one-hot and sin/cos contributions onto their raw column in one
    matrix product (no per-row or per-column Python loop).
    """
    sources = raw_sources(builder)
    columns = list(dict.fromkeys(c for cols in sources for c in cols))
    position = {c: j for j, c in enumerate(columns)}
    matrix = np.zeros((len(sources), len(columns)))
    for i, cols in enumerate(sources):  # a custom output read from k columns: 1/k of its contribution to each
        matrix[i, [position[c] for c in cols]] = 1.0 / len(cols)
    return columns, matrix


def _tree_contributions(inner: Any, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    booster = getattr(inner, "booster_", None)
    if booster is not None:  # LightGBM: TreeSHAP in the library, on the raw margin
        out = np.asarray(booster.predict(features.to_numpy(dtype="float64"), pred_contrib=True))
        return out[:, :-1], out[:, -1]
    if type(inner).__module__.startswith("sklearn.ensemble"):
        import shap

        explainer = shap.TreeExplainer(inner)
        values = np.asarray(explainer.shap_values(features.to_numpy(dtype="float64"), check_additivity=False))
        expected = np.asarray(explainer.expected_value, dtype="float64").reshape(-1)
        if values.ndim == 3:  # a classifier: (rows, features, classes) -> the positive class
            return values[:, :, -1], np.full(len(features), expected[-1])
        return values, np.full(len(features), expected[0])
    return None


def contributions(model: Any, X: pd.DataFrame) -> Contributions:  # noqa: N803 - ML convention
    """Contributions of each raw input column to each row's output (see the module docstring).

    Raises:
        ExplainError: ``model`` is not the project's ``Pipeline([features, model])``.
    """
    builder, estimator = _parts(model)
    features = builder.transform(X)
    columns, matrix = raw_index(builder)
    tree = _tree_contributions(_inner(estimator), features)
    if tree is not None:
        values, expected = tree
        space = "raw_margin"
    else:
        values, expected = _agnostic(model, builder, estimator, features)
        space = "prediction"
    per_raw = np.asarray(values, dtype="float64") @ matrix
    return Contributions(pd.DataFrame(per_raw, columns=columns, index=X.index), np.asarray(expected, "float64"), space)


def _agnostic(model: Any, builder: Any, estimator: Any, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    import shap

    background_raw = getattr(model, "explain_background_", None)
    background = builder.transform(background_raw) if background_raw is not None else features
    masker = shap.maskers.Independent(background.to_numpy(dtype="float64"), max_samples=BACKGROUND_ROWS)

    def predict(rows: np.ndarray) -> np.ndarray:
        return np.asarray(estimator.predict(pd.DataFrame(rows, columns=features.columns)), dtype="float64")

    explainer = shap.explainers.Permutation(predict, masker, seed=0)
    result = explainer(features.to_numpy(dtype="float64"), max_evals=2 * features.shape[1] + 1, silent=True)
    return np.asarray(result.values), np.asarray(result.base_values, dtype="float64").reshape(-1)


def top_contributions(model: Any, X: pd.DataFrame, k: int) -> list[list[dict[str, Any]]]:  # noqa: N803
    """Per row, the ``k`` raw input columns with the largest absolute contribution (reason codes)."""
    return top_k(contributions(model, X), X, k)


def top_k(result: Contributions, X: pd.DataFrame, k: int) -> list[list[dict[str, Any]]]:  # noqa: N803
    """Per row of ``result``, the ``k`` largest |contributions| with the value ``X`` has in that column."""
    columns = list(result.values.columns)
    values = result.values.to_numpy(dtype="float64")
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
    rows = np.arange(len(values))[:, None]
    picked = values[rows, order].tolist()  # Python floats, one conversion for the whole batch
    sent = X[columns].to_numpy(dtype=object)[rows, order]
    return [
        [{"feature": columns[j], "value": _plain(v), "contribution": c} for j, v, c in zip(o, s, p, strict=True)]
        for o, s, p in zip(order.tolist(), sent, picked, strict=True)
    ]


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return value


def global_importance(model: Any, X: pd.DataFrame) -> tuple[dict[str, float], str]:  # noqa: N803
    """Mean |contribution| per raw input column over ``X`` (largest first), and the space it is in."""
    result = contributions(model, X)
    mean_abs = result.values.abs().mean().sort_values(ascending=False, kind="stable")
    return {str(col): float(v) for col, v in mean_abs.items()}, result.space


def plot_importance(importance: dict[str, float], title: str, path: Path) -> Path | None:
    """A horizontal bar chart of the importance as PNG; None (and a log line) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no importance plot")
        return None
    from tasks.storage import atomic_path

    names, values = list(importance)[:20][::-1], list(importance.values())[:20][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    ax.barh(names, values, color="#4C72B0")
    ax.set_xlabel("mean |SHAP contribution|")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


ATTRIBUTION_ROWS = 1000
"""Rows of each side (reference, served) attribution drift explains (seeded samples)."""


def attribution_drift(
    model: Any,
    reference: pd.DataFrame,
    served: pd.DataFrame,
    threshold: float | None,
    seed: int = 0,
    top: int = 5,
) -> dict[str, Any]:
    """Compare each input column's share of the explanation (mean |contribution|) on served vs reference rows.

    Returns the total variation distance between the two share vectors (0: the model leans on the same columns;
    1: on entirely different ones), both shares per column, the ``top`` columns whose share moved most, and
    ``drifted`` (only when ``threshold`` is set).
    """

    def shares(rows: pd.DataFrame) -> pd.Series:
        sample = rows.sample(min(len(rows), ATTRIBUTION_ROWS), random_state=seed)
        mean_abs = contributions(model, sample).values.abs().mean()
        total = float(mean_abs.sum())
        return mean_abs / total if total > 0 else mean_abs

    ref, cur = shares(reference), shares(served)
    change = cur - ref
    order = np.argsort(-change.abs().to_numpy(), kind="stable")[:top]
    return {
        "distance": float(0.5 * change.abs().sum()),
        "threshold": threshold,
        "drifted": bool(threshold is not None and 0.5 * change.abs().sum() >= threshold),
        "moved_most": [
            {
                "feature": str(change.index[i]),
                "reference_share": float(ref.iloc[i]),
                "served_share": float(cur.iloc[i]),
                "change": float(change.iloc[i]),
            }
            for i in order
        ],
    }
