"""Holdout metrics, vectorised over bootstrap resamples.

Every metric takes targets ``y`` (n,), predictions ``p`` (n,) and optional row weights ``w``: either (n,)
or a (B, n) matrix of bootstrap counts, in which case it returns B values at once. Classification
predictions are probabilities of the positive class and targets are 0/1. A metric that is undefined on
its rows (AUC with one class only, R2 of a constant target, no rows at all) is NaN, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tasks.spec import HIGHER_IS_BETTER

Array = np.ndarray
_EPS = 1e-15


def _weights(w: Array | None, n: int) -> Array:
    return np.ones(n) if w is None else np.asarray(w, dtype="float64")


def _wmean(values: Array, w: Array) -> Any:
    total = w.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * values).sum(axis=-1) / total


def rmse(y: Array, p: Array, w: Array | None = None) -> Any:
    """Root mean squared error."""
    return np.sqrt(_wmean((p - y) ** 2, _weights(w, len(y))))


def mae(y: Array, p: Array, w: Array | None = None) -> Any:
    """Mean absolute error."""
    return _wmean(np.abs(p - y), _weights(w, len(y)))


def r2(y: Array, p: Array, w: Array | None = None) -> Any:
    """Coefficient of determination (NaN when the target is constant)."""
    w = _weights(w, len(y))
    mean = _wmean(y, w)
    ss_tot = (w * (y - np.expand_dims(mean, -1)) ** 2).sum(axis=-1)
    ss_res = (w * (p - y) ** 2).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.nan)


def log_loss(y: Array, p: Array, w: Array | None = None) -> Any:
    """Binary cross-entropy of the positive-class probabilities."""
    q = np.clip(p, _EPS, 1 - _EPS)
    return _wmean(-(y * np.log(q) + (1 - y) * np.log(1 - q)), _weights(w, len(y)))


def _groups(p: Array, descending: bool) -> tuple[Array, Array]:
    """Sort order of ``p`` and the start index of each run of tied scores in it."""
    order = np.argsort(-p if descending else p, kind="mergesort")
    ranked = p[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    return order, starts


def roc_auc(y: Array, p: Array, w: Array | None = None) -> Any:
    """Area under the ROC curve (ties count half), i.e. the weighted Mann-Whitney statistic."""
    w = _weights(w, len(y))
    order, starts = _groups(p, descending=False)
    pos = np.add.reduceat((w * y)[..., order], starts, axis=-1)
    neg = np.add.reduceat((w * (1 - y))[..., order], starts, axis=-1)
    below = np.cumsum(neg, axis=-1) - neg
    total_pos, total_neg = pos.sum(axis=-1), neg.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=-1) / (total_pos * total_neg)
    return np.where((total_pos > 0) & (total_neg > 0), auc, np.nan)


def pr_auc(y: Array, p: Array, w: Array | None = None) -> Any:
    """Average precision (area under the precision-recall curve, step-wise as scikit-learn computes it)."""
    w = _weights(w, len(y))
    order, starts = _groups(p, descending=True)
    tp = np.cumsum(np.add.reduceat((w * y)[..., order], starts, axis=-1), axis=-1)
    fp = np.cumsum(np.add.reduceat((w * (1 - y))[..., order], starts, axis=-1), axis=-1)
    total_pos = tp[..., -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / np.maximum(tp + fp, _EPS)
        recall = tp / total_pos
    step = np.diff(recall, axis=-1, prepend=0)
    ap = (step * precision).sum(axis=-1)
    return np.where(total_pos[..., 0] > 0, ap, np.nan)


def f1(y: Array, p: Array, w: Array | None = None, threshold: float = 0.5) -> Any:
    """F1 of the positive class at a probability threshold."""
    w = _weights(w, len(y))
    hit = (p >= threshold).astype("float64")
    tp = (w * y * hit).sum(axis=-1)
    fp = (w * (1 - y) * hit).sum(axis=-1)
    fn = (w * y * (1 - hit)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)


def calibration_error(y: Array, p: Array, w: Array | None = None, bins: int = 10) -> Any:
    """Expected calibration error over equal-width probability bins: sum_b share_b * |mean(y)_b - mean(p)_b|."""
    w = _weights(w, len(y))
    index = np.minimum((p * bins).astype(int), bins - 1)
    onehot = np.zeros((len(p), bins))
    onehot[np.arange(len(p)), index] = 1.0
    gap = np.abs((w * (y - p)) @ onehot).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return gap / w.sum(axis=-1)


METRICS: dict[str, Callable[..., Any]] = {
    "rmse": rmse,
    "mae": mae,
    "r2": r2,
    "roc_auc": roc_auc,
    "pr_auc": pr_auc,
    "f1": f1,
    "log_loss": log_loss,
    "calibration_error": calibration_error,
}


def score(name: str, y: Array, p: Array, w: Array | None = None, threshold: float = 0.5) -> Any:
    """One metric by name (``threshold`` only matters for F1)."""
    y, p = np.asarray(y, dtype="float64"), np.asarray(p, dtype="float64")
    if name == "f1":
        return f1(y, p, w, threshold)
    return METRICS[name](y, p, w)


def score_all(names: tuple[str, ...], y: Array, p: Array, threshold: float = 0.5) -> dict[str, float | None]:
    """Point estimates of several metrics; undefined ones are None (JSON-safe)."""
    out: dict[str, float | None] = {}
    for name in names:
        value = float(score(name, y, p, threshold=threshold)) if len(y) else float("nan")
        out[name] = None if np.isnan(value) else value
    return out


def improvement(name: str, challenger: Any, reference: Any) -> Any:
    """Relative improvement of ``challenger`` over ``reference`` in the metric's good direction.

    0.05 means 5 % better. Falls back to the absolute difference when the reference is ~0.
    """
    delta = challenger - reference if name in HIGHER_IS_BETTER else reference - challenger
    scale = np.abs(reference)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 1e-12, delta / np.where(scale > 1e-12, scale, 1), delta)


def poisson_weights(n: int, samples: int, seed: int) -> Array:
    """Bootstrap resample counts, (samples, n): the Poisson(1) bootstrap, independent per row."""
    return np.random.default_rng(seed).poisson(1.0, size=(samples, n)).astype("float64")
