"""The monitor's decision statistics: a reference profile computed once, a served window aggregated in one pass.

The drift verdicts do not need the reference sample and the window side by side. A two-sample KS statistic
``sup |F_ref - F_cur|`` between two step functions is reached at a reference value or just below one (between
two consecutive reference values ``F_ref`` is constant and ``F_cur`` only grows), so it is *exact* from:

- the reference's sorted distinct values and their cumulative counts (:class:`ReferenceProfile`, computed at
  training time from the reference sample and logged with the model as ``reference/profile.json``), and
- how many window values fall at and strictly below each of them: a histogram of the window on the reference
  values, built chunk by chunk (:class:`WindowStats`; counts add, so any number of chunks or replicas' logs
  merge).

Its p-value is scipy's own (``ks_2samp``'s ``auto``: exact below 10,001 rows on both sides, else
``kstwo.sf(D, round(n*m/(n+m)))``), so the verdicts are scipy's on the same data. Categorical columns are
compared by the two-sample chi-square test of homogeneity on the 2 x k table of counts (``chi2_contingency``
without continuity correction, as the Evidently test this replaces), prediction drift by the normalised
Wasserstein distance (Evidently's ``wasserstein``: distance / max(std(reference), 0.001)). The quality
figures (missing values, a stuck column, share outside the reference range) come from the same pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

KS_EXACT_MAX_ROWS = 10_000
"""scipy's ``ks_2samp(method="auto")`` computes the exact p-value when both samples have at most this many rows."""


def _plain(value: Any) -> Any:
    """A numpy scalar as a plain Python value (JSON), text unchanged."""
    return value.item() if hasattr(value, "item") else value


@dataclass(frozen=True)
class NumericProfile:
    """One numeric reference column: its sorted distinct values, cumulative counts ``<=`` each, missing count."""

    values: np.ndarray  # sorted distinct non-missing values
    cumulative: np.ndarray  # count of reference values <= values[i]
    missing: int

    @property
    def rows(self) -> int:
        """Non-missing reference values."""
        return int(self.cumulative[-1]) if len(self.cumulative) else 0

    @classmethod
    def of(cls, column: pd.Series) -> NumericProfile:
        """Profile of a reference column (numbers; anything else is coerced, unparsable values count as missing)."""
        numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        present = numbers[~np.isnan(numbers)]
        values, counts = np.unique(present, return_counts=True)
        return cls(values, np.cumsum(counts), int(len(numbers) - len(present)))


@dataclass(frozen=True)
class CategoricalProfile:
    """One categorical reference column: count per category, missing count."""

    counts: dict[Any, int]
    missing: int

    @property
    def rows(self) -> int:
        """Non-missing reference values."""
        return sum(self.counts.values())

    @classmethod
    def of(cls, column: pd.Series) -> CategoricalProfile:
        """Profile of a reference column."""
        counts = column.value_counts(dropna=True)
        return cls({_plain(k): int(v) for k, v in counts.items()}, int(column.isna().sum()))


@dataclass(frozen=True)
class ReferenceProfile:
    """What the decision statistics need of the reference, per column; small, and stored with the model."""

    numeric: dict[str, NumericProfile] = field(default_factory=dict)
    categorical: dict[str, CategoricalProfile] = field(default_factory=dict)
    predictions: np.ndarray | None = None  # the reference predictions (prediction drift is a distance on them)
    source: str = "computed from the reference sample"

    @classmethod
    def of(
        cls, frame: pd.DataFrame, categorical: Iterable[str], predictions: pd.Series | np.ndarray | None = None
    ) -> ReferenceProfile:
        """Profile every column of ``frame``: those in ``categorical`` by counts, the others as numbers."""
        # a column of text or flags not declared categorical (a class label as target) is counted, not ranked
        cats = set(categorical) | {c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])}
        numeric = {c: NumericProfile.of(frame[c]) for c in frame.columns if c not in cats}
        counts = {c: CategoricalProfile.of(frame[c]) for c in frame.columns if c in cats}
        preds = None if predictions is None else np.asarray(predictions, dtype="float64")
        return cls(numeric, counts, None if preds is None else preds[~np.isnan(preds)])

    def to_json(self) -> dict[str, Any]:
        """A JSON document (``reference/profile.json``); floats keep every digit (``repr``)."""
        return {
            "version": 1,
            "numeric": {
                c: {"values": p.values.tolist(), "cumulative": p.cumulative.tolist(), "missing": p.missing}
                for c, p in self.numeric.items()
            },
            "categorical": {
                c: {"counts": [[k, v] for k, v in p.counts.items()], "missing": p.missing}
                for c, p in self.categorical.items()
            },
            "predictions": None if self.predictions is None else self.predictions.tolist(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], source: str = "stored with the model") -> ReferenceProfile:
        """Read :meth:`to_json`'s document back."""
        numeric = {
            c: NumericProfile(
                np.asarray(p["values"], dtype="float64"), np.asarray(p["cumulative"], dtype="int64"), int(p["missing"])
            )
            for c, p in doc.get("numeric", {}).items()
        }
        categorical = {
            c: CategoricalProfile({k: int(v) for k, v in p["counts"]}, int(p["missing"]))
            for c, p in doc.get("categorical", {}).items()
        }
        preds = doc.get("predictions")
        return cls(numeric, categorical, None if preds is None else np.asarray(preds, dtype="float64"), source)

    @property
    def columns(self) -> set[str]:
        """Every profiled column."""
        return {*self.numeric, *self.categorical}

    def with_predictions(self, predictions: pd.Series | np.ndarray | None) -> ReferenceProfile:
        """The same profile with these reference predictions (None: keep its own)."""
        if predictions is None:
            return self
        preds = np.asarray(predictions, dtype="float64")
        return ReferenceProfile(self.numeric, self.categorical, preds[~np.isnan(preds)], self.source)


# ---- the window, in one pass ----


@dataclass
class _NumericCounts:
    """Window counts of one numeric column on its reference values (additive over chunks)."""

    at: np.ndarray  # window values == reference value i
    below: np.ndarray  # window values in (reference value i-1, reference value i); below[0]: under the minimum
    above: int = 0  # window values over the reference maximum
    missing: int = 0
    low: float = math.inf
    high: float = -math.inf

    @property
    def rows(self) -> int:
        return int(self.at.sum() + self.below.sum() + self.above)


class WindowStats:
    """The served window aggregated against a :class:`ReferenceProfile`: feed chunks, read the figures.

    Memory is the profile's size (a few counts per distinct reference value) plus the predictions column;
    each chunk is read once and dropped.
    """

    def __init__(self, profile: ReferenceProfile, columns: Iterable[str], prediction: str | None = None) -> None:
        """Aggregate ``columns`` (each must be in the profile) and, if named, the prediction column."""
        self.profile = profile
        self.columns = list(columns)
        self.prediction = prediction
        self.rows = 0
        self.absent: set[str] = set(self.columns)
        self._numeric: dict[str, _NumericCounts] = {}
        self._categorical: dict[str, dict[Any, int]] = {}
        self._cat_missing: dict[str, int] = {}
        self._predictions: list[np.ndarray] = []
        self._first: dict[str, Any] = {}  # first non-missing served value per column, as served (a stuck value)
        for col in self.columns:
            if col in profile.numeric:
                m = len(profile.numeric[col].values)
                self._numeric[col] = _NumericCounts(np.zeros(m, dtype="int64"), np.zeros(m + 1, dtype="int64"))
            elif col in profile.categorical:
                self._categorical[col], self._cat_missing[col] = {}, 0
            else:
                raise KeyError(f"{col} is not in the reference profile")

    def add(self, chunk: pd.DataFrame) -> WindowStats:
        """Count one chunk of served rows (any size; chunks may come from several replicas' logs)."""
        self.rows += len(chunk)
        for col in self.columns:
            if col not in chunk.columns:
                continue
            self.absent.discard(col)
            if col not in self._first and (present := chunk[col].notna().to_numpy()).any():
                self._first[col] = _plain(chunk[col].iloc[int(present.argmax())])
            if col in self._numeric:
                self._add_numeric(col, chunk[col])
            else:
                values = chunk[col]
                self._cat_missing[col] += int(values.isna().sum())
                counts = self._categorical[col]
                for key, n in values.value_counts(dropna=True).items():
                    k = _plain(key)
                    counts[k] = counts.get(k, 0) + int(n)
        if self.prediction is not None and self.prediction in chunk.columns:
            preds = pd.to_numeric(chunk[self.prediction], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            self._predictions.append(preds[~np.isnan(preds)])
        return self

    def _add_numeric(self, col: str, column: pd.Series) -> None:
        counts, reference = self._numeric[col], self.profile.numeric[col].values
        numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        present = np.sort(numbers[~np.isnan(numbers)])  # sorting the chunk, then m lookups into it, is the fast way
        counts.missing += len(numbers) - len(present)
        if not len(present):
            return
        counts.low, counts.high = min(counts.low, float(present[0])), max(counts.high, float(present[-1]))
        if not len(reference):
            counts.above += len(present)
            return
        left = np.searchsorted(present, reference, side="left")  # chunk values < reference[i]
        right = np.searchsorted(present, reference, side="right")  # chunk values <= reference[i]
        counts.at += right - left
        counts.below[0] += left[0]
        counts.below[1:-1] += left[1:] - right[:-1]
        counts.above += len(present) - right[-1]

    # ---- the figures ----

    def ks(self, col: str) -> tuple[float, float] | None:
        """``(D, p-value)`` of scipy's two-sample KS test between the reference and the window (None: no values)."""
        from scipy.stats import distributions
        from scipy.stats._stats_py import _attempt_exact_2kssamp  # the exact branch scipy's ks_2samp takes

        ref, counts = self.profile.numeric[col], self._numeric[col]
        n1, n2 = ref.rows, counts.rows
        if not n1 or not n2:
            return None
        f_ref = ref.cumulative / n1  # F_ref at reference value i
        cum_at = np.cumsum(counts.below[:-1] + counts.at)  # window values <= reference value i
        below = cum_at - counts.at  # window values < reference value i
        f_prev = np.concatenate([[0.0], f_ref[:-1]])  # F_ref just below reference value i
        diffs = np.concatenate([f_ref - cum_at / n2, f_prev - below / n2])
        # above the reference maximum F_ref is 1 and F_cur <= 1; under the minimum F_ref is 0: both covered
        d_max, d_min = float(np.max(diffs)), float(np.clip(-np.min(diffs), 0, 1))
        d = max(d_max, d_min)
        if max(n1, n2) <= KS_EXACT_MAX_ROWS:
            g = math.gcd(n1, n2)
            success, d_exact, prob = _attempt_exact_2kssamp(n1, n2, g, d, "two-sided")
            if success:
                return float(d_exact), float(np.clip(prob, 0, 1))
        m, n = sorted([float(n1), float(n2)], reverse=True)
        prob = distributions.kstwo.sf(d, np.round(m * n / (m + n)))
        return d, float(np.clip(prob, 0, 1))

    def chi2(self, col: str) -> tuple[float, int] | None:
        """``(p-value, categories)`` of the two-sample chi-square test on the 2 x k table (None: one category)."""
        from scipy.stats import chi2_contingency

        ref, cur = self.profile.categorical[col].counts, self._categorical[col]
        # the reference's categories, then the window's others in a fixed order (not the order chunks met them):
        # the same table, and so the same p-value to the last bit, whatever the chunks
        new = sorted((k for k in cur if k not in ref), key=lambda k: (type(k).__name__, str(k)))
        keys = [k for k in [*ref, *new] if ref.get(k, 0) + cur.get(k, 0) > 0]
        if len(keys) < 2 or not sum(cur.values()) or not sum(ref.values()):  # noqa: PLR2004 - a 2 x k table
            return None
        table = np.array([[ref.get(k, 0) for k in keys], [cur.get(k, 0) for k in keys]], dtype="float64").T
        return float(chi2_contingency(table, correction=False)[1]), len(keys)

    def prediction_distance(self) -> float | None:
        """Evidently's normalised Wasserstein distance between reference and window predictions (None: not both)."""
        from scipy.stats import wasserstein_distance

        reference = self.profile.predictions
        current = np.concatenate(self._predictions) if self._predictions else np.empty(0)
        if reference is None or not len(reference) or not len(current):
            return None
        norm = max(float(np.std(reference)), 0.001)
        return float(wasserstein_distance(reference, current) / norm)

    def drift(self, p_value: float, prediction_threshold: float | None = None) -> dict[str, dict[str, Any]]:
        """One result per column (``method``, ``score``, ``drifted``), the prediction last when compared."""
        results: dict[str, dict[str, Any]] = {}
        for col in self.columns:
            if col in self.absent:
                results[col] = {"method": None, "score": None, "drifted": False, "note": "absent from served rows"}
            elif col in self._numeric:
                ks = self.ks(col)
                if ks is None:
                    results[col] = {"method": "ks", "score": None, "drifted": False, "note": "no values: no test"}
                else:
                    results[col] = {"method": "ks", "score": ks[1], "statistic": ks[0], "drifted": ks[1] < p_value}
            else:
                chi2 = self.chi2(col)
                if chi2 is None:
                    results[col] = {
                        "method": "chisquare_two_sample",
                        "score": None,
                        "drifted": False,
                        "note": "constant in reference and current: no test",
                    }
                else:
                    results[col] = {"method": "chisquare_two_sample", "score": chi2[0], "drifted": chi2[0] < p_value}
        distance = self.prediction_distance() if self.prediction is not None else None
        if distance is not None:
            threshold = prediction_threshold or 0.1
            results[self.prediction or ""] = {
                "method": "wasserstein",
                "score": distance,
                "threshold": threshold,
                "drifted": distance >= threshold,
            }
        return results

    def quality(self, col: str) -> dict[str, Any]:
        """Missing shares, whether the window is stuck at one value, and (numeric) the share outside the range."""
        if col in self._numeric:
            ref, counts = self.profile.numeric[col], self._numeric[col]
            present = counts.rows
            total = present + counts.missing
            ref_total = ref.rows + ref.missing
            lo, hi = (float(ref.values[0]), float(ref.values[-1])) if len(ref.values) else (math.nan, math.nan)
            outside = (int(counts.below[0]) + counts.above) / present if present else 0.0
            constant = self._first.get(col) if present and counts.low == counts.high else None
            return {
                "missing_reference": ref.missing / ref_total if ref_total else 0.0,
                "missing_served": counts.missing / total if total else 0.0,
                "distinct_reference": len(ref.values),
                "distinct_served": (0 if not present else 1 if counts.low == counts.high else 2),
                "constant_value": constant,
                "served_rows": total,
                "reference_range": [lo, hi],
                "out_of_range": outside,
            }
        cref, cur = self.profile.categorical[col], self._categorical[col]
        cref_total, cur_total = cref.rows + cref.missing, sum(cur.values()) + self._cat_missing[col]
        return {
            "missing_reference": cref.missing / cref_total if cref_total else 0.0,
            "missing_served": self._cat_missing[col] / cur_total if cur_total else 0.0,
            "distinct_reference": len(cref.counts),
            "distinct_served": len(cur),
            "constant_value": self._first.get(col) if len(cur) == 1 else None,
            "served_rows": cur_total,
        }
