"""The model server: serves each pipeline's ``@champion`` over HTTP and logs every prediction.

Endpoints:
    ``GET /health``                     every pipeline's model: ``state`` (loading | serving | failed |
                                        no_champion), version, the (masked) error of a failed load; 200
                                        whenever the process answers (liveness)
    ``GET /ready``                      200 only when the default model serves and every version pinned in
                                        ``MLP_SERVING_VERSIONS`` is the one served (smoke-tested), else 503
                                        saying why (:mod:`tasks.serving.ready`; Kubernetes' readiness probe)
    ``POST /predict``                   the default pipeline's model (``serving_default_model``),
                                        ``{"instances": [{col: value}, ...]}``
    ``POST /models/{name}/predict``     a named pipeline's model
    ``POST /admin/reload``              ``{"model", "version"?, "force": false, "reason"?, "actor"?}`` with
                                        ``Authorization: Bearer <MLP_ADMIN_TOKEN>``: load that version
                                        (default: the champion) beside the served one, smoke-test it, then switch

The server listens at once; a background thread loads each champion, retrying with backoff while MLflow is
unreachable (an outage is reported as one, never as "no champion yet"). A model still loading answers 503
with ``Retry-After``.

Admin (:mod:`tasks.serving.policy`): no token configured means the admin API is off (403); a missing or
malformed ``Authorization`` header is a 401, a wrong token a 403. Only the champion, the ``previous``
version or a gate-passed version may be loaded; anything else needs ``force`` with a reason. Every reload,
served or refused, is a ``serve`` / ``serve_refused`` row in the promotion ledger with the caller's actor.

Requests (:mod:`tasks.serving.hygiene`): bodies over ``serving_max_body_bytes`` are a 413; JSON is parsed
strictly (NaN, Infinity, numbers that overflow to infinity and lone surrogates are a 422 naming the
problem); payloads are checked against
the model signature before the model sees them (a missing, unknown, null, mistyped or out-of-range field is
a 422 naming ``instances[i].field``); a batch over ``serving_max_batch`` rows is a 413. A row may also carry
the pipeline's ``schema.id_column`` (:class:`RowId`): it is logged with the row, never given to the model, so
delayed labels join served rows exactly; an id of the wrong type, or one repeated within a request, is a 422.
Every error body is ``{"detail", "error"}``, documented in the OpenAPI, and masked (no credential leaves in an
answer).
"""

from __future__ import annotations

import hmac
import logging
import math
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import pandas as pd
from fastapi import Depends, FastAPI, Header
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from tasks.prediction_log import PredictionLogUnavailable, PredictionLogWriter, event_column, log_store
from tasks.redact import redact
from tasks.serving.fastpath import CompiledModel, compile_model
from tasks.serving.hygiene import (
    ApiError,
    BodyLimit,
    ErrorBody,
    StrictJSONRoute,
    install_error_handlers,
)
from tasks.settings import Settings
from tasks.spec import PipelineSpec, load_spec
from tasks.tracking import use_store

log = logging.getLogger(__name__)
WARM_UP_WAIT_S = 120  # the most a reload waits for the loader's start-up imports (seconds; ~2.5 s here)

SMOKE_RTOL = 1e-6
SMOKE_ATOL = 1e-6
RETRY_AFTER_S = 5
INT_RANGES: dict[str, tuple[int, int]] = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1)}
FLOAT_MAX: dict[str, float] = {"double": 1.7976931348623157e308, "float": 3.4028234663852886e38}
ModelState = Literal["loading", "serving", "failed", "no_champion"]


# ---------------------------------------------------------------------------------------------- HTTP models
class PredictRequest(BaseModel):
    """The MLflow / TF-serving ``instances`` convention: one mapping of raw input column -> value per row.

    ``explain: true`` (or the header ``X-Explain: true``) adds, per row, the ``top_k`` input columns that moved
    the prediction most (SHAP contributions in raw-input terms: reason codes). Without it nothing is computed.
    """

    instances: list[Any] = Field(min_length=1)
    explain: bool = Field(default=False, strict=True, description="Return per-row top-k contributions.")
    top_k: int = Field(default=5, ge=1, le=50, strict=True, description="Contributions per row when explaining.")


class Contribution(BaseModel):
    """One input column's contribution to one row's output."""

    feature: str
    value: Any = Field(description="The value the caller sent for that column.")
    contribution: float


class PredictResponse(BaseModel):
    """One prediction per instance, with the version that made them (and, on request, why)."""

    predictions: list[float]
    model_name: str
    model_version: str
    request_id: str
    latency_ms: float
    explanations: list[list[Contribution]] | None = Field(
        default=None, description="With explain: per row, the top_k contributions, largest |contribution| first."
    )
    explanation_space: str | None = Field(
        default=None,
        description="raw_margin: contributions add up to the raw margin (log-odds for a classifier, before "
        "calibration) minus the model's expected value; prediction: to the prediction itself.",
    )


class ReloadRequest(BaseModel):
    """Which pipeline's model to (re)load, which version (default: its current champion), and who asks why."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    version: str | None = Field(default=None, pattern=r"^[1-9][0-9]{0,9}$")
    force: bool = Field(default=False, description="Serve a version the policy does not vouch for (needs reason).")
    reason: str | None = Field(default=None, max_length=2000)
    actor: str | None = Field(default=None, max_length=300, description="Who asks (recorded in the ledger).")


class ReloadResponse(BaseModel):
    """The version now served and the one it replaced."""

    model: str
    version: str
    previous: str | None
    why: str
    smoke_test: dict[str, Any]


class ModelHealth(BaseModel):
    """One pipeline's model in ``/health``."""

    name: str
    state: ModelState
    version: str | None = None
    run_id: str | None = None
    loaded_at: str | None = None
    inputs: dict[str, str] = Field(default_factory=dict)
    smoke_test: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    retry_in_s: float | None = None


class LogHealth(BaseModel):
    """This worker's prediction-log writer: what it committed, and the requests it answered 503."""

    requests: int = Field(description="Requests handed to the writer.")
    rows: int = Field(description="Rows committed.")
    transactions: int = Field(description="Transactions (group commits) tried: fewer than requests under load.")
    unavailable: int = Field(description="Requests answered 503 because the store was down.")
    busy: int = Field(description="Requests answered 503 because the store stayed locked.")
    last_error: str | None = None


class Ready(BaseModel):
    """The server serves what this pod must: the default model, and every pinned version."""

    status: Literal["ready"]
    model: str = Field(description="The default pipeline (``/predict``).")
    versions: dict[str, str] = Field(description="The version each serving pipeline serves.")
    pinned: dict[str, str] = Field(description="The versions pinned in the pod template (MLP_SERVING_VERSIONS).")


class Health(BaseModel):
    """The server's state: the default model (``/predict``) and every pipeline's."""

    status: Literal["ok", "loading", "failed", "no_model"]
    model: str
    version: str | None
    models: dict[str, ModelHealth]
    prediction_log: LogHealth


def _errors(*codes: int, described_as: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Malformed request",
        401: "No or malformed `Authorization: Bearer` header",
        403: "Admin API disabled, wrong token, or the reload policy refused the version",
        404: "Unknown model, or no such version",
        409: "The version cannot be served (no champion, failed to load or its smoke test); the old one serves",
        413: "Request body or batch too large",
        422: "The request does not fit the schema, the JSON is not strict, or rows do not fit the model signature",
        503: "Model still loading, failed to load, no champion yet, MLflow / the ledger unreachable, or the "
        "prediction log down or locked (nothing was logged)",
    }
    described |= described_as or {}
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorBody, "description": described[code]}
        if code == 503:
            entry["headers"] = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}
        if code == 401:
            entry["headers"] = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
        out[code] = entry
    return out


READY_503 = (
    "Not ready: no model loaded yet (model_loading, no_champion), a load or smoke test failed (model_unavailable, "
    "smoke_test_failed), another version than the pinned one served (version_not_pinned), a pinned pipeline not "
    "served here (unknown_model) or unreadable pins (bad_pins)"
)


# ---------------------------------------------------------------------------------------------- loading
class ModelLoadError(RuntimeError):
    """The version cannot be served: it fails to load, lacks what the smoke test needs, or fails it."""


class NoChampionError(ModelLoadError):
    """No version holds the ``champion`` alias yet (MLflow answered)."""


class SmokeTestError(ModelLoadError):
    """The version loaded but fails its smoke test (signature, input example or the offline predictions)."""


class ModelUnavailableError(RuntimeError):
    """MLflow did not answer while fetching the version (an outage: retrying may help)."""


@dataclass
class ServedModel:
    """One loaded model version and what callers must send it."""

    name: str
    version: str
    mlflow_run_id: str
    model: Any
    input_columns: dict[str, str]
    required: frozenset[str] = frozenset()
    smoke: dict[str, Any] = field(default_factory=dict)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    folder: Path | None = None  # the server-owned download folder, removed once this version stops serving
    direct: Any = None  # the model under the pyfunc wrapper, when it reproduces the smoke test (see _direct)
    compiled: CompiledModel | None = None  # its pandas-free predict, when that reproduces the smoke test too

    def predict(self, frame: pd.DataFrame) -> Any:
        """Predict a frame built by :func:`_frame` (rows already checked against the signature).

        The unwrapped model skips MLflow's per-call schema enforcement (the rows were checked and typed
        already); a model whose unwrapped predictions did not match the smoke test goes through pyfunc.
        """
        return (self.direct or self.model).predict(frame)

    def describe(self) -> dict[str, Any]:
        """Health entry."""
        return {
            "name": self.name,
            "state": "serving",
            "version": self.version,
            "mlflow_run_id": self.mlflow_run_id,
            "loaded_at": self.loaded_at,
            "inputs": self.input_columns,
            "smoke_test": self.smoke,
        }

    def discard(self) -> None:
        """Remove the downloaded files (the in-memory model finishes any request in flight)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _fetch(settings: Settings, what: str, fetch: Callable[[], str]) -> str:
    """Run one MLflow download; an answer "not there" is a :class:`ModelLoadError`, no answer an outage.

    Raises:
        ModelLoadError: MLflow says the artifact does not exist.
        ModelUnavailableError: MLflow did not answer.
    """
    from mlflow.exceptions import MlflowException

    from tasks.registry import is_absent

    try:
        return fetch()
    except MlflowException as exc:
        if is_absent(exc):
            raise ModelLoadError(f"{what} does not exist: {exc.message}") from exc
        raise ModelUnavailableError(
            f"MLflow at {redact(settings.mlflow_tracking_uri)} unreachable while fetching {what}: {exc.message}"
        ) from exc
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{what} does not exist: {exc}") from exc
    except OSError as exc:  # requests' connection errors and timeouts
        raise ModelUnavailableError(
            f"MLflow at {redact(settings.mlflow_tracking_uri)} unreachable while fetching {what}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _smoke_test(model: Any, local: str, uri: str, sample_path: str) -> dict[str, Any]:
    """The checks a version passes before it may serve: signature, input example, offline predictions.

    Raises:
        SmokeTestError: Naming the check that failed.
    """
    import numpy as np
    from mlflow.models import Model

    from tasks.names import EXPECTED_COLUMN

    if model.metadata.get_input_schema() is None:
        raise SmokeTestError(f"{uri} has no input signature: the server cannot validate payloads for it")
    example = Model.load(local).load_input_example(local)
    if example is None:
        raise SmokeTestError(f"{uri} has no input example to smoke-test with")
    out = model.predict(example)
    if len(out) != len(example):
        raise SmokeTestError(f"{uri} returned {len(out)} predictions for {len(example)} example rows")
    sample = pd.read_parquet(sample_path)
    if EXPECTED_COLUMN not in sample.columns or sample.empty:
        raise SmokeTestError(f"{uri}'s holdout sample has no rows with {EXPECTED_COLUMN}: nothing to check it with")
    expected = sample.pop(EXPECTED_COLUMN).to_numpy(dtype="float64")
    got = np.asarray(model.predict(sample), dtype="float64")
    diff = np.abs(got - expected)
    bad = ~np.isclose(got, expected, rtol=SMOKE_RTOL, atol=SMOKE_ATOL)
    if bad.any():
        raise SmokeTestError(
            f"smoke test failed: {int(bad.sum())} of {len(expected)} holdout rows differ from the offline predictions "
            f"(max |diff| {np.nanmax(diff):.6g}, tolerance {SMOKE_ATOL} + {SMOKE_RTOL}*|expected|): the served "
            "environment does not reproduce what evaluation measured"
        )
    return {"example_rows": len(example), "holdout_rows": len(expected), "max_abs_diff": float(diff.max())}


def load_version(
    settings: Settings,
    name: str,
    version: str | None = None,
    mlflow_run_id: str | None = None,
    downloads: Path | None = None,
) -> ServedModel:
    """Download ``models:/<name>/<version>`` (default: the ``champion``), load and smoke-test it.

    A version without its smoke sample (``smoke/holdout_sample.parquet`` on its run) is refused: nothing is
    served unchecked. The files go to a new folder under ``downloads`` (default: the system's temporary
    folder) that belongs to the returned model (:meth:`ServedModel.discard`); it is removed here when
    loading fails.

    Raises:
        NoChampionError: ``version`` is None and no version holds the champion alias.
        ModelLoadError: No such version, or it fails to load or its smoke test.
        ModelUnavailableError: MLflow did not answer.
    """
    import mlflow

    from tasks.names import SMOKE_SAMPLE
    from tasks.registry import RegistryUnavailableError, champion, model_version

    try:
        found = champion(settings, name) if version is None else model_version(settings, name, version)
    except RegistryUnavailableError as exc:
        raise ModelUnavailableError(str(exc)) from exc
    if found is None and version is None:
        raise NoChampionError(f"no version of {name!r} has the champion alias yet")
    if found is None:
        raise ModelLoadError(f"{name} has no version {version} in the registry")
    version, run_id = found.version, mlflow_run_id or found.mlflow_run_id
    uri = f"models:/{name}/{version}"
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-v{version}-", dir=downloads))
    try:
        use_store(settings)  # models:/ URIs resolve through the registry URI
        model_dir, sample_dir = folder / "model", folder / "smoke"
        model_dir.mkdir(parents=True, exist_ok=True)
        sample_dir.mkdir(exist_ok=True)
        local = _fetch(settings, uri, lambda: mlflow.artifacts.download_artifacts(uri, dst_path=str(model_dir)))
        sample = _fetch(
            settings,
            f"the smoke sample {SMOKE_SAMPLE} of run {run_id} (refusing to serve {uri} unchecked)",
            lambda: mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=SMOKE_SAMPLE, dst_path=str(sample_dir)
            ),
        )
        try:
            model = mlflow.pyfunc.load_model(local)
            _limit_threads(model, settings.serving_model_threads)
            smoke = _smoke_test(model, local, uri, sample)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the artifact does on load or predict, it may not serve
            raise ModelLoadError(f"{uri} failed to load or its smoke test: {type(exc).__name__}: {exc}") from exc
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    schema = model.metadata.get_input_schema()
    columns = {c.name: getattr(c.type, "name", str(c.type)) for c in schema.inputs}
    required = frozenset(c.name for c in schema.inputs if getattr(c, "required", True))
    served = ServedModel(
        name=name,
        version=str(version),
        mlflow_run_id=str(run_id),
        model=model,
        input_columns=columns,
        required=required,
        smoke=smoke,
        folder=folder,
    )
    served.direct = _direct(served, sample)
    served.smoke["direct_predict"] = served.direct is not None
    served.compiled = _compiled(served, sample) if served.direct is not None else None
    served.smoke["compiled_predict"] = served.compiled.kind if served.compiled is not None else None
    return served


def _limit_threads(model: Any, threads: int) -> None:
    """Give the estimators under the pyfunc wrapper ``threads`` threads each (``n_jobs``).

    Requests run concurrently, each on one core is the most a server gets from them: OpenMP's default of
    every core per predict (LightGBM, XGBoost) made concurrent requests wait on each other's thread pools.
    """
    try:
        raw = model.get_raw_model()
    except Exception:  # noqa: BLE001 - a flavour without a raw model: leave it as it is
        return
    for _, estimator in getattr(raw, "steps", None) or [("model", raw)]:
        get_params = getattr(estimator, "get_params", None)
        if get_params is not None and "n_jobs" in get_params(deep=False):
            estimator.set_params(n_jobs=threads)


def _reproduces(
    served: ServedModel, sample_path: str, predict: Callable[[list[dict[str, Any]]], Any], what: str
) -> bool:
    """Whether ``predict`` (the smoke sample's rows as requests carry them) gives the offline predictions.

    ``what``: the path being checked, as the log names it; a failure or a difference keeps the safer path.
    """
    import numpy as np

    from tasks.names import EXPECTED_COLUMN

    try:
        sample = pd.read_parquet(sample_path)
        expected = sample.pop(EXPECTED_COLUMN).to_numpy(dtype="float64")
        records = cast(list[dict[str, Any]], sample[list(served.input_columns)].to_dict("records"))
        got = np.asarray(predict(records), dtype="float64")
    except Exception as exc:  # noqa: BLE001 - whatever the model does here, the safer path stays
        log.info("%s v%s: not %s (%s: %s)", served.name, served.version, what, type(exc).__name__, exc)
        return False
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=SMOKE_RTOL, atol=SMOKE_ATOL):
        log.warning("%s v%s: the %s differs from pyfunc; not used", served.name, served.version, what)
        return False
    return True


def _direct(served: ServedModel, sample_path: str) -> Any:
    """The unwrapped model, when it predicts the smoke sample, rebuilt as requests are, as the pyfunc does.

    Returns:
        The raw model (whose ``predict`` the server then calls directly), or None (serve through pyfunc).
    """
    try:
        raw = served.model.get_raw_model()
    except Exception as exc:  # noqa: BLE001 - a flavour without a raw model is served through pyfunc
        log.info("%s v%s served through pyfunc (%s: %s)", served.name, served.version, type(exc).__name__, exc)
        return None
    ok = _reproduces(served, sample_path, lambda rows: raw.predict(_frame(served, rows)), "unwrapped model")
    return raw if ok else None


def _compiled(served: ServedModel, sample_path: str) -> CompiledModel | None:
    """The unwrapped model's pandas-free predict (:mod:`tasks.serving.fastpath`), when it predicts the smoke sample.

    Returns:
        The compiled predict (which the server then calls on a request's columns), or None (the frame path).
    """
    try:
        compiled = compile_model(served.direct)
    except Exception as exc:  # noqa: BLE001 - an estimator that cannot be unwrapped keeps the frame path
        log.info("%s v%s: no compiled predict (%s: %s)", served.name, served.version, type(exc).__name__, exc)
        return None
    if compiled is None:
        return None

    def predict(rows: list[dict[str, Any]]) -> Any:
        return compiled.predict(_columns(served, rows, compiled.source_columns), len(rows))

    return compiled if _reproduces(served, sample_path, predict, "compiled predict") else None


# ---------------------------------------------------------------------------------------------- payloads
@dataclass(frozen=True)
class RowId:
    """A pipeline's row id (``schema.id_column``): callers may send it with a row; logged, never a model input.

    The monitor joins delayed labels on it (:func:`tasks.monitor.join_labels`), so it must have the type the landed
    rows have: an ``int`` column takes JSON integers, a text column (``str``, ``category``) strings, any other
    column either (an integral float such as ``5.0`` is the integer ``5``, as for integer inputs). A boolean, another
    float, null, an object or a list is never an id.
    """

    column: str
    kinds: tuple[type, ...]

    @classmethod
    def of(cls, spec: PipelineSpec) -> RowId | None:
        """The spec's row id, or None when it declares none."""
        column = spec.schema_.id_column
        if column is None:
            return None
        declared = spec.schema_.columns.get(column)
        kinds: tuple[type, ...] = {"int": (int,), "str": (str,), "category": (str,)}.get(declared or "", (int, str))
        return cls(column, kinds)

    @property
    def _accepted(self) -> tuple[type, ...]:
        return (*self.kinds, float) if int in self.kinds else self.kinds

    def normalized(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows with integral float ids as integers (rows already checked by :meth:`problem`)."""
        column = self.column
        return [row | {column: int(row[column])} if isinstance(row.get(column), float) else row for row in rows]

    @property
    def described(self) -> str:
        """The accepted JSON type(s), in words."""
        return " or ".join({int: "integer", str: "string"}[k] for k in self.kinds)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` cannot be a row id (None when it can); an integral float is an integer (JSON's rule)."""
        if isinstance(value, bool) or not isinstance(value, self._accepted):
            return f"expected a row id ({self.described}), got {type(value).__name__} {value!r:.40}"
        if isinstance(value, float):
            if not value.is_integer():
                return f"expected a row id ({self.described}), got float {value!r:.40}"
            value = int(value)
        if isinstance(value, int) and not INT_RANGES["long"][0] <= value <= INT_RANGES["long"][1]:
            return f"row id {value!r:.40} is outside the long range"
        if isinstance(value, str) and not 0 < len(value) <= MAX_ID_CHARS:
            return f"a row id is 1 to {MAX_ID_CHARS} characters, got {len(value)}"
        return None

    @property
    def documented(self) -> str:
        """What the OpenAPI says of the id, in words.

        Not a property of the instance schema: JSON Schema cannot say "unique by this field" across rows, so a
        property would promise that a request repeating an id is valid (Schemathesis holds the server to that).
        """
        return (
            f" Each row may also carry {self.column!r} (schema.id_column: {self.described}, unique within the "
            "request; a repeated id is a 422 duplicate_ids): logged with its prediction so delayed labels join "
            "the row exactly, never a model input."
        )

    def duplicates(self, rows: list[dict[str, Any]]) -> list[Any]:
        """Ids sent more than once in ``rows``, each once, in the order their repeats appear."""
        seen: set[tuple[type, Any]] = set()
        repeated: dict[tuple[type, Any], Any] = {}
        for row in rows:
            if self.column in row:
                key = (type(row[self.column]), row[self.column])
                if key in seen:
                    repeated.setdefault(key, row[self.column])
                seen.add(key)
        return list(repeated.values())


MAX_ID_CHARS = 256


_KINDS: dict[str, tuple[type, ...]] = {
    "long": (int, float),  # an integral float (5.0) is accepted for an integer field
    "integer": (int, float),
    "double": (int, float),
    "float": (int, float),
    "string": (str,),
    "boolean": (bool,),
}


def _type_error(kind: str, value: Any) -> str | None:
    """Why ``value`` cannot be a ``kind`` input (None when it can)."""
    allowed = _KINDS.get(kind)
    if allowed is None:
        return None
    if isinstance(value, bool) != (kind == "boolean") or not isinstance(value, allowed):
        return f"expected {kind}, got {type(value).__name__} {value!r:.40}"
    number = cast(float, value) if kind in INT_RANGES or kind in FLOAT_MAX else 0.0
    if kind in INT_RANGES:
        if isinstance(number, float) and not number.is_integer():
            return f"expected {kind}, got float {number!r:.40}"
        low, high = INT_RANGES[kind]
        if not low <= number <= high:
            return f"{number!r:.40} is outside the {kind} range [{low}, {high}]"
    if kind in FLOAT_MAX and abs(number) > FLOAT_MAX[kind]:
        return f"{number!r:.40} is outside the {kind} range (|x| <= {FLOAT_MAX[kind]:.6g})"
    return None


def _shown(key: str) -> str:
    """A caller's field name as it can be quoted back (printable, at most 60 characters)."""
    return key if key.isprintable() and len(key) <= 60 else f"{key!r:.60}"


def _clean_columns(served: ServedModel, rows: list[Any], columns: dict[str, list[Any]] | None = None) -> set[str]:
    """The columns no row can be wrong in, decided per column from the values' types and extremes.

    A column whose values are all of the exact JSON types its kind takes (``int`` for an integer field;
    ``int``/``float`` for a float one; ``str``; ``bool``) and within its range, with no null where a value is
    required, needs no per-cell check: :func:`payload_errors` then checks only the other columns, cell by cell,
    and words every problem as before. At 10,000 rows the per-cell check cost ~40 us a row.
    """
    columns = columns if columns is not None else _values(served, rows)
    if columns is None:
        return set()
    clean = set()
    for col, kind in served.input_columns.items():
        values = columns[col]
        present = [v for v in values if v is not None]
        if len(present) < len(values) and col in served.required:
            continue  # a null (or a missing field) where a value is required: the per-cell check words it
        if _clean_values(kind, present):
            clean.add(col)
    return clean


def _clean_values(kind: str, present: list[Any]) -> bool:
    """Whether every one of these (non-null) values fits ``kind`` (False: check them one by one)."""
    if kind not in _KINDS or not present:
        return True  # a kind with no check, or nothing but nulls where nulls are allowed
    types = set(map(type, present))
    if kind in ("string", "boolean"):
        return types <= set(_KINDS[kind])
    if kind in INT_RANGES:  # integral floats (5.0) go through the per-cell check
        low, high = INT_RANGES[kind]
        return types <= {int} and low <= min(present) and max(present) <= high
    return types <= {int, float} and max(abs(min(present)), abs(max(present))) <= FLOAT_MAX[kind]


def _same_valid_keys(served: ServedModel, rows: list[Any], row_id: RowId | None = None) -> bool:
    """Whether every row is a dict with the first row's fields, every required one and no unknown one.

    Then no row needs its fields checked one by one (at 10,000 rows those set operations cost ~20 ms). The
    pipeline's row id (``row_id``, not an input) is a known field when every one of its values is a valid id.
    """
    if not rows or not all(type(row) is dict for row in rows):
        return False
    first = rows[0].keys()
    ids = {row_id.column} - served.input_columns.keys() if row_id is not None else set()
    if not served.required <= first or not first <= served.input_columns.keys() | ids:
        return False
    if not all(row.keys() == first for row in rows):
        return False
    return row_id is None or not ids & first or not any(row_id.problem(row[row_id.column]) for row in rows)


def payload_errors(
    served: ServedModel,
    rows: list[Any],
    limit: int = 10,
    row_id: RowId | None = None,
    values: dict[str, list[Any]] | None = None,
) -> list[str]:
    """Every way ``rows`` break the signature, as ``instances[i].field: problem`` (at most ``limit``).

    ``row_id``: the pipeline's row id, which a row may carry besides its inputs (once per request).
    ``values``: :func:`_values` of ``rows``, when the caller has it already.
    """
    errors: list[str] = []
    known = served.input_columns
    extra = {row_id.column} if row_id is not None and row_id.column not in known else set()
    clean = _clean_columns(served, rows, values)
    checked = [(col, kind) for col, kind in known.items() if col not in clean]
    if not checked and _same_valid_keys(served, rows, row_id):
        return []  # every value is clean, and every row has the same fields, none missing or unknown
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            errors.append(f"instances[{i}]: expected an object of input fields, got {type(row).__name__}")
            continue
        errors += [f"instances[{i}].{c}: missing (required {known[c]})" for c in sorted(served.required - row.keys())]
        errors += [f"instances[{i}].{_shown(c)}: unknown field" for c in sorted(row.keys() - known.keys() - extra)]
        if extra and row_id is not None and row_id.column in row and (bad := row_id.problem(row[row_id.column])):
            errors.append(f"instances[{i}].{row_id.column}: {bad}")
        for col, kind in checked:
            value = row.get(col)
            if value is None:
                if col in row and col in served.required:
                    errors.append(f"instances[{i}].{col}: null, but a {kind} is required")
            elif problem := _type_error(kind, value):
                errors.append(f"instances[{i}].{col}: {problem}")
        if len(errors) >= limit:
            break
    return errors[:limit]


_NUMPY_DTYPE = {"long": "int64", "integer": "int32", "double": "float64", "float": "float32"}


def _columns(
    served: ServedModel,
    rows: list[dict[str, Any]],
    only: Iterable[str] | None = None,
    values: dict[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """The rows' columns (``only`` these, default all inputs) as the signature's dtypes.

    Numpy arrays (the rows were checked against the signature already; integral floats for integer fields
    were accepted: they become ints): an integer field with a null becomes float64 with NaN, a float field's
    null NaN; other kinds are a Series, with pandas' inference, as a frame's column would be. ``values``: the
    columns' values as lists, when the caller has them already.
    """
    import numpy as np

    columns: dict[str, Any] = {}
    for col in served.input_columns if only is None else only:
        kind = served.input_columns[col]
        column = values[col] if values is not None else [row.get(col) for row in rows]
        dtype = _NUMPY_DTYPE.get(kind)
        if dtype is None:
            columns[col] = pd.Series(column)
        elif kind in INT_RANGES and any(v is None for v in column):
            columns[col] = np.array(column, dtype="float64")  # None -> NaN
        else:
            columns[col] = np.array(column, dtype=dtype)
    return columns


def _frame(served: ServedModel, rows: list[dict[str, Any]], values: dict[str, list[Any]] | None = None) -> pd.DataFrame:
    """The rows as a frame of the signature's dtypes (see :func:`_columns`).

    ``DataFrame.from_records`` and a cast per column cost about 1 ms at one row.
    """
    return pd.DataFrame(_columns(served, rows, values=values), columns=list(served.input_columns))


def _values(served: ServedModel, rows: list[Any]) -> dict[str, list[Any]] | None:
    """Each input column's values, one per row (None when a row is not an object: the checks word that)."""
    if not all(type(row) is dict for row in rows):
        return None
    return {col: [row.get(col) for row in rows] for col in served.input_columns}


# ---------------------------------------------------------------------------------------------- the service
@dataclass
class ModelStatus:
    """Where one pipeline's model stands (``served`` holds the model itself once it serves)."""

    state: ModelState = "loading"
    error: str | None = None
    attempts: int = 0
    retry_at: float | None = None  # time.monotonic() of the next background attempt (outages only)
    # the last load failed the smoke test (the reason /ready gives); any other outcome resets it
    smoke_test_failed: bool = False


class ModelService:
    """The served models of several pipelines, their loads and swaps, and the prediction log (framework-free)."""

    def __init__(self, settings: Settings, pipelines: list[str]) -> None:
        """Serve ``pipelines``; ``/predict`` answers for ``serving_default_model`` (else the first of them)."""
        if not pipelines:
            raise ValueError("the model server needs at least one pipeline to serve")
        self.settings = settings
        self.pipelines = list(pipelines)
        wanted = settings.serving_default_model
        self.default = wanted if wanted in self.pipelines else self.pipelines[0]
        self.served: dict[str, ServedModel] = {}
        self.status: dict[str, ModelStatus] = {name: ModelStatus() for name in self.pipelines}
        self._swap_lock = threading.Lock()
        self._load_locks = {name: threading.Lock() for name in self.pipelines}  # one load per model at a time
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._loader: threading.Thread | None = None
        # set while no warm-up runs: a reload waits for the loader's (two threads importing MLflow at once
        # left a partially initialised module behind; see predict)
        self._warmed = threading.Event()
        self._warmed.set()
        self._downloads: Path | None = None  # created on first load, removed on stop
        # the model carries a custom transformer's module (code_paths): this environment need not have it
        specs = {name: load_spec(name, resolve_code=False) for name in self.pipelines}
        self.row_ids: dict[str, RowId | None] = {name: RowId.of(spec) for name, spec in specs.items()}
        self.log = PredictionLogWriter(
            log_store(settings),
            {name: event_column(spec) for name, spec in specs.items()},
            timeout_s=settings.serving_log_timeout_s,
            sync=settings.serving_log_sync,
        )

    # -- lifecycle
    def start(self) -> None:
        """Load every pipeline's champion in a background thread (the server answers meanwhile)."""
        self._warmed.clear()
        self._loader = threading.Thread(target=self._load_champions, name="champion-loader", daemon=True)
        self._loader.start()

    def stop(self) -> None:
        """Stop the loader and remove every downloaded version."""
        self._stop.set()
        self._wake.set()
        if self._loader is not None:
            self._loader.join(timeout=30)
        with self._swap_lock:
            served, self.served = list(self.served.values()), {}
        for model in served:
            model.discard()
        if self._downloads is not None:
            shutil.rmtree(self._downloads, ignore_errors=True)
        self.log.close()

    def load_all(self) -> None:
        """Load every pipeline's champion now, in this thread (one attempt each; no retries)."""
        for name in self.pipelines:
            self._load_champion(name)

    def wait_settled(self, timeout_s: float = 120) -> bool:
        """Wait until no model is ``loading`` (for tests and scripts); True if that happened in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(s.state != "loading" for s in self.status.values()):
                return True
            time.sleep(0.05)
        return False

    def _folder(self) -> Path:
        """This server's download folder (each served version has its own folder inside, removed with it)."""
        if self._downloads is None:
            self._downloads = Path(tempfile.mkdtemp(prefix="mlp-serving-"))
        return self._downloads

    def _load_champions(self) -> None:
        """Background: try each model until it serves, has no champion, or fails for a reason retries cannot fix.

        First it pays what any model's first load pays (:func:`tasks.tracking.prepare_model_loading`: ~2.5 s of
        imports and MLflow's requirement map), so that a deploy to a server that started with no champion
        waits on the version's own load only.
        """
        from tasks.tracking import warm_model_loading

        try:
            warm_model_loading()
        finally:
            self._warmed.set()
        pending = set(self.pipelines)
        while pending and not self._stop.is_set():
            now = time.monotonic()
            for name in sorted(pending):
                status = self.status[name]
                if status.retry_at is None or status.retry_at <= now:
                    self._load_champion(name)
                    if self.status[name].retry_at is None:
                        pending.discard(name)
                if self._stop.is_set():
                    return
            waits = [self.status[n].retry_at for n in pending]
            if waits:
                self._wake.wait(max(0.0, min(w for w in waits if w is not None) - time.monotonic()))
                self._wake.clear()

    def _load_champion(self, name: str) -> None:
        with self._load_locks[name]:
            if name in self.served:  # an admin reload got there first
                self.status[name].retry_at = None
                return
            status = self.status[name]
            status.attempts += 1
            backoff = min(2.0 ** (status.attempts - 1), self.settings.serving_load_retry_max_s)
            try:
                candidate = load_version(self.settings, name, downloads=self._folder())
            except ModelUnavailableError as exc:
                status.state, status.error, status.retry_at = "failed", redact(str(exc)), time.monotonic() + backoff
                status.smoke_test_failed = False  # an outage now, whatever the last load said
                log.error("cannot load %s (attempt %d; retrying in %.0fs): %s", name, status.attempts, backoff, exc)
                return
            except NoChampionError as exc:
                status.state, status.error, status.retry_at = "no_champion", str(exc), None
                status.smoke_test_failed = False
                log.warning("not serving %s yet: %s", name, exc)
                return
            except ModelLoadError as exc:
                status.state, status.error, status.retry_at = "failed", redact(str(exc)), None
                status.smoke_test_failed = isinstance(exc, SmokeTestError)
                log.error("not serving %s: %s", name, exc)
                return
            except Exception as exc:  # noqa: BLE001 - the loader thread must not die: say so, retry later
                status.state, status.retry_at = "failed", time.monotonic() + backoff
                status.error = redact(f"unexpected {type(exc).__name__}: {exc}")
                status.smoke_test_failed = False
                log.exception("cannot load %s (attempt %d; retrying in %.0fs)", name, status.attempts, backoff)
                return
            self._swap(candidate)

    def _swap(self, candidate: ServedModel) -> None:
        with self._swap_lock:
            old = self.served.get(candidate.name)
            self.served[candidate.name] = candidate
            self.status[candidate.name] = ModelStatus(state="serving", attempts=self.status[candidate.name].attempts)
        if old is not None and old is not candidate:
            old.discard()
        log.info("now serving %s v%s", candidate.name, candidate.version)

    def _known(self, name: str) -> None:
        if name not in self.pipelines:
            raise ApiError(404, "unknown_model", f"unknown model {name!r:.100}; served: {self.pipelines}")

    def _adopt(self, name: str) -> None:
        """Serve from now on a pipeline whose spec was written after the server started (deploying it)."""
        if name in self.pipelines:
            return
        from tasks.spec import SpecError

        try:
            spec = load_spec(name, resolve_code=False)
        except SpecError:
            return  # no such pipeline: _known answers 404
        with self._swap_lock:
            if name not in self.pipelines:
                self.log.add_pipeline(name, event_column(spec))
                self.row_ids[name] = RowId.of(spec)
                self.status[name] = ModelStatus(state="no_champion", error="not loaded yet: deploy it")
                self._load_locks[name] = threading.Lock()
                self.pipelines = [*self.pipelines, name]  # readers iterate the old list undisturbed
                log.info("serving a new pipeline %s (its spec appeared after the server started)", name)

    # -- admin
    def _record(self, name: str, action: str, actor: str, reason: str, **fields: Any) -> str | None:
        """Append a ledger row; returns why it could not be written (None when it was)."""
        from tasks.ledger import Entry, LedgerError
        from tasks.registry import ledger

        try:
            ledger(self.settings).append(Entry(name, action, actor, reason, **fields))
        except (LedgerError, OSError, sqlite3.Error) as exc:
            log.error("promotion ledger: could not record %s of %s: %s", action, name, exc)
            return f"not recorded in the promotion ledger: {exc}"
        return None

    def _refuse(
        self, name: str, status: int, error: str, why: str, actor: str, request: ReloadRequest, **fields: Any
    ) -> ApiError:
        previous = self.served.get(name)
        kept = f"; still serving v{previous.version}" if previous else "; nothing served"
        unrecorded = self._record(
            name,
            "serve_refused",
            actor,
            why,
            from_version=previous.version if previous else None,
            to_version=fields.pop("to_version", request.version),
            details={"force": request.force, "requested_reason": request.reason},
            **fields,
        )
        what = f"{name} v{request.version}" if request.version else f"{name}'s champion"
        log.error("reload of %s refused (%s): %s%s", what, actor, why, kept)
        detail = f"reload of {what} refused: {why}{kept}"
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        return ApiError(status, error, detail + (f" ({unrecorded})" if unrecorded else ""), headers)

    def reload(self, request: ReloadRequest) -> dict[str, Any]:
        """Blue/green: check the policy, load the version beside the served one, smoke-test it, record, switch.

        Requests keep going to the old version while the new one loads; the switch is one reference swap,
        made only once the ledger holds the ``serve`` row.

        Raises:
            ApiError: 404 unknown pipeline; 403 refused by the policy; 409 no such version or it failed to
                load or its smoke test; 503 MLflow or the ledger unreachable. The old version keeps serving.
        """
        from tasks.registry import RegistryUnavailableError, champion, model_version
        from tasks.serving.policy import reload_policy

        name = request.model
        self._adopt(name)
        self._known(name)
        actor = f"{request.actor or 'unnamed caller'} via admin token"
        self._warmed.wait(WARM_UP_WAIT_S)  # the loader's warm-up imports MLflow: not two threads at once
        with self._load_locks[name]:
            previous = self.served.get(name)
            try:
                found = (
                    champion(self.settings, name)
                    if request.version is None
                    else model_version(self.settings, name, request.version)
                )
            except RegistryUnavailableError as exc:
                raise self._refuse(name, 503, "mlflow_unavailable", str(exc), actor, request) from exc
            if found is None:
                why = (
                    f"no version of {name!r} has the champion alias yet"
                    if request.version is None
                    else (f"{name} has no version {request.version} in the registry")
                )
                raise self._refuse(name, 409, "no_such_version", why, actor, request)
            verdict = reload_policy(found.version, found.aliases, found.tags, request.force, request.reason)
            facts = {"to_version": found.version, "mlflow_run_id": found.mlflow_run_id}
            if not verdict.allowed:
                raise self._refuse(name, 403, "policy_refused", verdict.why, actor, request, **facts)
            try:
                candidate = load_version(self.settings, name, found.version, found.mlflow_run_id, self._folder())
            except ModelUnavailableError as exc:
                raise self._refuse(name, 503, "mlflow_unavailable", str(exc), actor, request, **facts) from exc
            except ModelLoadError as exc:
                raise self._refuse(name, 409, "load_failed", str(exc), actor, request, **facts) from exc
            unrecorded = self._record(
                name,
                "serve",
                actor,
                request.reason or verdict.why,
                from_version=previous.version if previous else None,
                to_version=candidate.version,
                mlflow_run_id=candidate.mlflow_run_id,
                details={"why": verdict.why, "forced": verdict.forced, "smoke_test": candidate.smoke},
            )
            if unrecorded:
                candidate.discard()
                kept = f"still serving v{previous.version}" if previous else "nothing served"
                raise ApiError(
                    503,
                    "ledger_unavailable",
                    f"{name} v{candidate.version} passed its smoke test but the switch is {unrecorded}; "
                    f"not switching ({kept})",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            self._swap(candidate)
        return {
            "model": name,
            "version": candidate.version,
            "previous": previous.version if previous else None,
            "why": verdict.why,
            "smoke_test": candidate.smoke,
        }

    # -- reading
    def describe(self, name: str) -> dict[str, Any]:
        """One model's health entry."""
        served = self.served.get(name)
        if served is not None:
            return served.describe() | {"attempts": self.status[name].attempts}
        status = self.status[name]
        retry = None if status.retry_at is None else round(max(0.0, status.retry_at - time.monotonic()), 1)
        return {
            "name": name,
            "state": status.state,
            "version": None,
            "error": status.error,
            "attempts": status.attempts,
            "retry_in_s": retry,
        }

    def health(self) -> dict[str, Any]:
        """Name, state and version of every pipeline's model."""
        default = self.served.get(self.default)
        state = self.status[self.default].state
        overall = "ok" if default else {"loading": "loading", "failed": "failed"}.get(state, "no_model")
        return {
            "status": overall,
            "model": self.default,
            "version": default.version if default else None,
            "models": {name: self.describe(name) for name in self.pipelines},
            "prediction_log": self.log.stats.as_dict(),
        }

    def ready(self) -> dict[str, Any]:
        """Whether this server serves what its pod must (:func:`tasks.serving.ready.not_ready`).

        Raises:
            ApiError: 503 saying why not: a model still loading or without a champion, one that failed to load or
                its smoke test, another version than the pinned one served, or unreadable pins.
        """
        from tasks.serving.ready import PINS_ENV, not_ready, pinned

        retry = {"Retry-After": str(RETRY_AFTER_S)}
        try:
            pins = pinned()
        except ValueError as exc:
            raise ApiError(503, "bad_pins", f"{PINS_ENV} cannot be read: {exc}", retry) from exc
        models = {n: self.describe(n) | {"smoke_test_failed": self.status[n].smoke_test_failed} for n in self.pipelines}
        why = not_ready(self.default, models, pins)
        if why is not None:
            raise ApiError(503, why[0], why[1], retry)
        versions = {n: str(m["version"]) for n, m in models.items() if m["state"] == "serving"}
        return {"status": "ready", "model": self.default, "versions": versions, "pinned": pins}

    def _current(self, name: str) -> ServedModel:
        self._known(name)
        current = self.served.get(name)
        if current is not None:
            return current
        status = self.status[name]
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if status.state == "loading":
            raise ApiError(503, "model_loading", f"{name}'s model is still loading; retry shortly", retry)
        if status.state == "no_champion":
            raise ApiError(503, "no_champion", f"{name} has no champion yet: train and promote one first", retry)
        raise ApiError(503, "model_unavailable", f"{name}'s model failed to load: {status.error}", retry)

    def predict(self, name: str, request: PredictRequest) -> dict[str, Any]:
        """Validate the rows against the signature, predict, log every row.

        Raises:
            ApiError: 404 unknown model, 503 not serving (loading, failed, no champion), 413 batch too large,
                422 rows that do not fit the signature (or carry a malformed or repeated row id) or a prediction
                that is not a finite number.
        """
        current = self._current(name)
        # imported once a model serves (MLflow fully imported): importing it here while the loader thread
        # imports mlflow left a partially initialised module behind, and every later load failed
        from mlflow.exceptions import MlflowException

        limit = self.settings.serving_max_batch
        if len(request.instances) > limit:
            raise ApiError(
                413,
                "batch_too_large",
                f"batch of {len(request.instances)} instances exceeds the limit of {limit} per request "
                "(serving_max_batch); split it into smaller requests",
            )
        row_id = self.row_ids.get(name)
        listed = _values(current, request.instances)  # each column's values, listed once for the checks and predict
        errors = payload_errors(current, request.instances, row_id=row_id, values=listed)
        if errors:
            raise ApiError(
                422,
                "invalid_instances",
                f"payload does not match {name} v{current.version}'s signature: " + "; ".join(errors),
            )
        rows = row_id.normalized(request.instances) if row_id is not None else request.instances
        if row_id is not None and (repeated := row_id.duplicates(rows)):
            shown = ", ".join(f"{v!r:.60}" for v in repeated[:10]) + (" ..." if len(repeated) > 10 else "")
            raise ApiError(
                422,
                "duplicate_ids",
                f"{row_id.column} (schema.id_column) must be unique within a request; sent more than once: {shown}",
            )
        started = time.perf_counter()
        frame: pd.DataFrame | None = None
        try:
            if current.compiled is not None and not request.explain:
                columns = _columns(current, request.instances, current.compiled.source_columns, listed)
                output = current.compiled.predict(columns, len(request.instances))
            else:
                frame = _frame(current, request.instances, listed)
                output = current.predict(frame)
        except (MlflowException, ValueError, TypeError, OverflowError) as exc:
            message = getattr(exc, "message", str(exc))
            raise ApiError(
                422, "invalid_instances", f"payload does not match {name} v{current.version}'s signature: {message}"
            ) from exc
        values = [float(v) for v in output]
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise ApiError(
                422,
                "non_finite_prediction",
                f"{name} v{current.version} predicts no finite number for instances {bad[:10]} "
                "(inputs far outside what it was trained on?); nothing was logged",
            )
        explained = self._explain(current, request, frame) if request.explain and frame is not None else {}
        request_id = uuid.uuid4().hex
        try:
            self.log.append(request_id, current.name, current.version, rows, values)
        except PredictionLogUnavailable as exc:
            code = "log_busy" if exc.busy else "log_unavailable"
            raise ApiError(
                503, code, f"{exc}; the predictions were not logged, so none is answered", {"Retry-After": "1"}
            ) from exc
        return {
            "predictions": values,
            "model_name": name,
            "model_version": current.version,
            "request_id": request_id,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            **explained,
        }

    @staticmethod
    def _explain(current: ServedModel, request: PredictRequest, frame: pd.DataFrame) -> dict[str, Any]:
        """Per-row top-k contributions of the served model (see :mod:`tasks.explain`) for the predicted frame."""
        from tasks.explain import ExplainError, contributions, top_k

        try:
            raw = current.model.get_raw_model()
            result = contributions(raw, frame)
        except (ExplainError, AttributeError, ValueError, TypeError) as exc:
            raise ApiError(
                422, "not_explainable", f"{current.name} v{current.version} cannot explain its predictions: {exc}"
            ) from exc
        sent = pd.DataFrame.from_records(request.instances, columns=list(current.input_columns))  # values as sent
        return {"explanations": top_k(result, sent, request.top_k), "explanation_space": result.space}


def _input_schema(served: ServedModel) -> dict[str, Any]:
    """JSON schema of one instance of ``served`` (what its signature and :func:`payload_errors` accept)."""
    props: dict[str, Any] = {}
    for col, kind in served.input_columns.items():
        if kind in INT_RANGES:
            low, high = INT_RANGES[kind]
            schema: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
        elif kind == "float":  # float32: a double beyond its range is refused
            schema = {"type": "number", "minimum": -FLOAT_MAX[kind], "maximum": FLOAT_MAX[kind]}
        elif kind == "double":  # every finite JSON number (strict parsing refuses the rest)
            schema = {"type": "number"}
        else:
            schema = {"type": {"string": "string", "boolean": "boolean"}.get(kind, "string")}
        props[col] = schema if col in served.required else {"anyOf": [schema, {"type": "null"}]}
    return {"type": "object", "properties": props, "required": sorted(served.required), "additionalProperties": False}


def _openapi(app: FastAPI, service: ModelService) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document as the server stands: one ``/models/<name>/predict`` path per pipeline.

    Each served model's instances are described by its signature (``/predict`` by the default model's).

    Built on every request of ``/openapi.json`` (cheap), so it follows reloads; a pipeline whose model is not
    served yet keeps the generic ``instances`` schema (it answers 503).
    """
    import copy

    from fastapi.openapi.utils import get_openapi

    def request_schema(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
        served = service.served.get(name)
        if served is None:
            return None
        component = f"PredictRequest_{name}"
        doc["components"]["schemas"][component] = {
            "type": "object",
            "title": component,
            "properties": {
                "instances": {
                    "type": "array",
                    "minItems": 1,
                    "items": _input_schema(served),
                    # a limit, not a schema rule: more rows is a 413 (Content Too Large), documented as such
                    "description": f"At most {service.settings.serving_max_batch} rows (serving_max_batch); "
                    "more is a 413." + (row_id.documented if (row_id := service.row_ids.get(name)) else ""),
                }
            },
            "required": ["instances"],
        }
        return {"$ref": f"#/components/schemas/{component}"}

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        doc = copy.deepcopy(app.openapi_schema)
        templated = doc["paths"].pop("/models/{name}/predict")["post"]
        for name in service.pipelines:
            op = copy.deepcopy(templated)
            op["parameters"] = [p for p in op.get("parameters", []) if p["name"] != "name"]
            op["operationId"], op["summary"] = f"predict_{name}", f"Predict with {name}'s champion"
            if not op["parameters"]:
                del op["parameters"]
            if schema := request_schema(doc, name):
                op["requestBody"]["content"]["application/json"]["schema"] = schema
            doc["paths"][f"/models/{name}/predict"] = {"post": op}
        if schema := request_schema(doc, service.default):
            doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"] = schema
        return doc

    return build


ExplainHeader = Annotated[
    bool, Header(alias="X-Explain", description="true: explain every row, as the body's explain: true does.")
]


def _explained(request: PredictRequest, header: bool) -> PredictRequest:
    """The request, asking for explanations when the ``X-Explain`` header does."""
    return request.model_copy(update={"explain": True}) if header else request


def create_app(settings: Settings, pipelines: list[str]) -> FastAPI:
    """Build the HTTP app over a :class:`ModelService` for ``pipelines``; it loads the champions in the background."""
    from tasks.redact import install
    from tasks.settings import register_secrets

    install()  # no credential in this process's logs or tracebacks
    register_secrets(settings)
    service = ModelService(settings, pipelines)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="ML lifecycle model server", version="1", lifespan=lifespan)
    app.router.route_class = StrictJSONRoute
    app.state.service = service
    app.add_middleware(BodyLimit, limit=settings.serving_max_body_bytes)
    install_error_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="MLP_ADMIN_TOKEN")

    def admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008 - FastAPI
        token = settings.admin_token
        if token is None:
            raise ApiError(403, "admin_disabled", "admin API disabled: set MLP_ADMIN_TOKEN")
        if credentials is None:
            raise ApiError(
                401,
                "unauthorized",
                "admin endpoints need an Authorization: Bearer <MLP_ADMIN_TOKEN> header",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
            log.warning("admin request with a wrong token refused")
            raise ApiError(403, "forbidden", "wrong admin token")

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        return service.health()

    app.add_api_route(  # the readiness rule (tasks/serving/ready.py); /health stays liveness
        "/ready",
        service.ready,
        methods=["GET"],
        response_model=Ready,
        responses=_errors(503, described_as={503: READY_503}),
        name="ready",
    )

    predict_errors = _errors(404, 413, 422, 503)

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=predict_errors)
    def predict(request: PredictRequest, x_explain: ExplainHeader = False) -> dict[str, Any]:
        return service.predict(service.default, _explained(request, x_explain))

    @app.post(
        "/models/{name}/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses=predict_errors,
    )
    def predict_named(name: str, request: PredictRequest, x_explain: ExplainHeader = False) -> dict[str, Any]:
        return service.predict(name, _explained(request, x_explain))

    @app.post(
        "/admin/reload",
        response_model=ReloadResponse,
        responses=_errors(401, 403, 404, 409, 413, 422, 503),
        dependencies=[Depends(admin)],
    )
    def admin_reload(request: ReloadRequest) -> dict[str, Any]:
        return service.reload(request)

    app.openapi = _openapi(app, service)  # type: ignore[method-assign]
    return app


def configure_mlflow_http(settings: Settings) -> None:
    """Bound this process's MLflow HTTP calls (timeout, retries) unless the environment already sets them.

    MLflow's defaults (120 s per request, 7 retries with exponential backoff) kept the server silent for
    minutes when MLflow was down; the background loader retries on its own schedule instead.
    """
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.serving_mlflow_timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.serving_mlflow_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


SERVE_PIPELINES_ENV = "MLP_SERVE_PIPELINES"


def app_from_env() -> FastAPI:
    """One worker's app under ``serve --workers N`` (uvicorn calls it in each worker process)."""
    import os

    from tasks.settings import get_settings

    settings = get_settings()
    configure_mlflow_http(settings)
    return create_app(settings, os.environ[SERVE_PIPELINES_ENV].split(","))


def serve(
    settings: Settings, pipelines: list[str], host: str = "127.0.0.1", port: int = 8000, workers: int = 1
) -> None:
    """Run the server in the foreground (``python -m tasks serve``).

    ``workers`` > 1: that many processes (uvicorn's supervisor restarts one that dies) share the port and the
    prediction log; each loads the champions itself. An ``/admin/reload`` reaches the one worker that takes
    the request: run one worker per container where the deploy stage reloads through HTTP (compose), and
    scale with replicas (Kubernetes) or restart the workers to pick up a new champion.
    """
    import os

    import uvicorn

    configure_mlflow_http(settings)
    if workers <= 1:
        uvicorn.run(create_app(settings, pipelines), host=host, port=port, log_level="info")
        return
    os.environ[SERVE_PIPELINES_ENV] = ",".join(pipelines)
    uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=workers, host=host, port=port, log_level="info")
