"""The model server: serves each pipeline's ``@champion`` over HTTP and logs every prediction.

Endpoints:
    ``GET /health``                     name and version of every served model
    ``POST /predict``                   the default pipeline's model (``serving_default_model``),
                                        ``{"instances": [{col: value}, ...]}``
    ``POST /models/{name}/predict``     a named pipeline's model
    ``POST /admin/reload``              ``{"model": name, "version": "3"}``: load that version (default: the
                                        current champion) beside the served one, smoke-test it, then switch;
                                        on failure the old one keeps serving and the answer is 409 with why

Payloads are checked against the model signature before the model sees them: a missing, unknown, null
(where the signature requires a value) or mistyped field is a 422 naming ``instances[i].field``; a batch
over ``serving_max_batch`` rows is a 413 stating the limit.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from tasks.prediction_log import PredictionLogWriter
from tasks.settings import Settings
from tasks.tracking import use_store

log = logging.getLogger(__name__)

SMOKE_RTOL = 1e-6
SMOKE_ATOL = 1e-6


class PredictRequest(BaseModel):
    """The MLflow / TF-serving ``instances`` convention: one mapping of raw input column -> value per row."""

    instances: list[Any] = Field(min_length=1)


class ReloadRequest(BaseModel):
    """Which pipeline's model to (re)load, and which version (default: its current champion)."""

    model: str
    version: str | None = None


class ModelLoadError(RuntimeError):
    """No champion in the registry, or the new version failed its smoke test."""


@dataclass
class ServedModel:
    """One loaded model version and what callers must send it."""

    name: str
    version: str
    run_id: str
    model: Any
    input_columns: dict[str, str]
    required: frozenset[str] = frozenset()
    smoke: dict[str, Any] = field(default_factory=dict)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def describe(self) -> dict[str, Any]:
        """Health entry."""
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "loaded_at": self.loaded_at,
            "inputs": self.input_columns,
            "smoke_test": self.smoke,
        }


def _smoke_test(model: Any, local: str, uri: str, run_id: str) -> dict[str, Any]:
    """The checks a version passes before it may serve: signature, input example, offline predictions.

    Raises:
        ModelLoadError: Naming the check that failed.
    """
    import mlflow
    import numpy as np
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from tasks.names import EXPECTED_COLUMN, SMOKE_SAMPLE

    if model.metadata.get_input_schema() is None:
        raise ModelLoadError(f"{uri} has no input signature: the server cannot validate payloads for it")
    example = Model.load(local).load_input_example(local)
    if example is None:
        raise ModelLoadError(f"{uri} has no input example to smoke-test with")
    out = model.predict(example)
    if len(out) != len(example):
        raise ModelLoadError(f"{uri} returned {len(out)} predictions for {len(example)} example rows")
    try:
        sample_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SMOKE_SAMPLE)
    except (MlflowException, OSError):
        return {"example_rows": len(example), "holdout_rows": 0, "note": f"run has no {SMOKE_SAMPLE}"}
    sample = pd.read_parquet(sample_path)
    expected = sample.pop(EXPECTED_COLUMN).to_numpy(dtype="float64")
    got = np.asarray(model.predict(sample), dtype="float64")
    diff = np.abs(got - expected)
    bad = ~np.isclose(got, expected, rtol=SMOKE_RTOL, atol=SMOKE_ATOL)
    if bad.any():
        raise ModelLoadError(
            f"smoke test failed: {int(bad.sum())} of {len(expected)} holdout rows differ from the offline predictions "
            f"(max |diff| {diff.max():.6g}, tolerance {SMOKE_ATOL} + {SMOKE_RTOL}*|expected|): the served "
            "environment does not reproduce what evaluation measured"
        )
    return {"example_rows": len(example), "holdout_rows": len(expected), "max_abs_diff": float(diff.max())}


def load_version(settings: Settings, name: str, version: str | None = None) -> ServedModel:
    """Load ``models:/<name>/<version>`` (default: the ``champion``) and smoke-test it.

    Raises:
        ModelLoadError: No champion yet, no such version, or the version fails to load or its smoke test.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from tasks.registry import champion
    from tasks.tracking import client

    if version is None:
        current = champion(settings, name)
        if current is None:
            raise ModelLoadError(f"no version of {name!r} has the champion alias yet")
        version = current.version
    uri = f"models:/{name}/{version}"
    try:
        use_store(settings)  # models:/ URIs resolve through the registry URI
        run_id = client(settings).get_model_version(name, str(version)).run_id
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
        model = mlflow.pyfunc.load_model(local)
        smoke = _smoke_test(model, local, uri, str(run_id))
    except MlflowException as exc:
        raise ModelLoadError(f"cannot load {uri} from {mlflow.get_registry_uri()}: {exc}") from exc
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise ModelLoadError(f"{uri} failed its smoke test: {type(exc).__name__}: {exc}") from exc
    schema = model.metadata.get_input_schema()
    columns = {c.name: getattr(c.type, "name", str(c.type)) for c in schema.inputs}
    required = frozenset(c.name for c in schema.inputs if getattr(c, "required", True))
    return ServedModel(
        name=name,
        version=str(version),
        run_id=str(run_id),
        model=model,
        input_columns=columns,
        required=required,
        smoke=smoke,
    )


_KINDS: dict[str, tuple[type, ...]] = {
    "long": (int,),
    "integer": (int,),
    "double": (int, float),
    "float": (int, float),
    "string": (str,),
    "boolean": (bool,),
}


def _type_error(kind: str, value: Any) -> bool:
    allowed = _KINDS.get(kind)
    if allowed is None:
        return False
    if isinstance(value, bool):
        return kind != "boolean"
    if kind in ("long", "integer") and isinstance(value, float):
        return not value.is_integer()
    return not isinstance(value, allowed)


def payload_errors(served: ServedModel, rows: list[Any], limit: int = 10) -> list[str]:
    """Every way ``rows`` break the signature, as ``instances[i].field: problem`` (at most ``limit``)."""
    errors: list[str] = []
    known = served.input_columns
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            errors.append(f"instances[{i}]: expected an object of input fields, got {type(row).__name__}")
            continue
        errors += [f"instances[{i}].{c}: missing (required {known[c]})" for c in sorted(served.required - row.keys())]
        errors += [f"instances[{i}].{c}: unknown field" for c in sorted(row.keys() - known.keys())]
        for col, kind in known.items():
            value = row.get(col)
            if value is None:
                if col in row and col in served.required:
                    errors.append(f"instances[{i}].{col}: null, but a {kind} is required")
            elif _type_error(kind, value):
                errors.append(f"instances[{i}].{col}: expected {kind}, got {type(value).__name__} {value!r:.40}")
        if len(errors) >= limit:
            break
    return errors[:limit]


class ModelService:
    """The served models of several pipelines, their swaps and the prediction log (framework-free core)."""

    def __init__(self, settings: Settings, pipelines: list[str]) -> None:
        """Serve ``pipelines``; ``/predict`` answers for ``serving_default_model`` (else the first of them)."""
        if not pipelines:
            raise ValueError("the model server needs at least one pipeline to serve")
        from tasks.storage import DataLayout

        self.settings = settings
        self.pipelines = list(pipelines)
        wanted = settings.serving_default_model
        self.default = wanted if wanted in self.pipelines else self.pipelines[0]
        self.served: dict[str, ServedModel] = {}
        self._swap_lock = threading.Lock()
        self.log = PredictionLogWriter.for_pipelines(DataLayout(settings.data_root).prediction_log, self.pipelines)

    def _known(self, name: str) -> None:
        if name not in self.pipelines:
            raise HTTPException(404, detail=f"unknown model {name!r}; served: {self.pipelines}")

    def load_all(self) -> None:
        """Load every pipeline's champion that exists; the others answer 503 until deployed."""
        for name in self.pipelines:
            try:
                self._swap(load_version(self.settings, name))
            except ModelLoadError as exc:
                log.warning("not serving %s yet: %s", name, exc)

    def _swap(self, candidate: ServedModel) -> None:
        with self._swap_lock:
            self.served[candidate.name] = candidate
        log.info("now serving %s v%s", candidate.name, candidate.version)

    def reload(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Blue/green: load ``version`` (default: champion) beside the served one, smoke-test it, then switch.

        Requests keep going to the old version while the new one loads; the switch is one reference swap.

        Raises:
            HTTPException: 404 for an unknown pipeline; 409 when loading or the smoke test fails (the old
                version keeps serving).
        """
        self._known(name)
        previous = self.served.get(name)
        try:
            candidate = load_version(self.settings, name, version)
        except ModelLoadError as exc:
            kept = f"; still serving v{previous.version}" if previous else "; nothing served"
            log.error("reload of %s v%s refused: %s%s", name, version or "champion", exc, kept)
            raise HTTPException(409, detail=f"reload of {name} v{version or 'champion'} failed: {exc}{kept}") from exc
        self._swap(candidate)
        return {
            "model": name,
            "version": candidate.version,
            "previous": previous.version if previous else None,
            "smoke_test": candidate.smoke,
        }

    def health(self) -> dict[str, Any]:
        """Name and version of every served model."""
        default = self.served.get(self.default)
        return {
            "status": "ok" if default else "no_model",
            "model": self.default,
            "version": default.version if default else None,
            "models": {name: m.describe() for name, m in self.served.items()},
        }

    def predict(self, name: str, request: PredictRequest) -> dict[str, Any]:
        """Validate the rows against the signature, predict, log every row.

        Raises:
            HTTPException: 404 unknown model, 503 no champion yet, 422 rows that do not fit the signature.
        """
        from mlflow.exceptions import MlflowException

        self._known(name)
        current = self.served.get(name)
        if current is None:
            raise HTTPException(503, detail=f"{name} has no champion yet: train and promote one first")
        limit = self.settings.serving_max_batch
        if len(request.instances) > limit:
            raise HTTPException(
                413,
                detail=f"batch of {len(request.instances)} instances exceeds the limit of {limit} per request "
                "(serving_max_batch); split it into smaller requests",
            )
        errors = payload_errors(current, request.instances)
        if errors:
            raise HTTPException(
                422,
                detail=f"payload does not match {name} v{current.version}'s signature: " + "; ".join(errors),
            )
        frame = pd.DataFrame.from_records(request.instances, columns=list(current.input_columns))
        for col, kind in current.input_columns.items():  # 5.0 for an integer field was accepted above: make it 5
            if kind in ("long", "integer") and frame[col].dtype.kind == "f" and frame[col].notna().all():
                frame[col] = frame[col].astype("int64" if kind == "long" else "int32")
        started = time.perf_counter()
        try:
            output = current.model.predict(frame)
        except (MlflowException, ValueError, TypeError) as exc:
            message = getattr(exc, "message", str(exc))
            raise HTTPException(
                422, detail=f"payload does not match {name} v{current.version}'s signature: {message}"
            ) from exc
        values = [float(v) for v in output]
        request_id = uuid.uuid4().hex
        self.log.append(request_id, current.name, current.version, request.instances, values)
        return {
            "predictions": values,
            "model_name": name,
            "model_version": current.version,
            "request_id": request_id,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }


def create_app(settings: Settings, pipelines: list[str]) -> FastAPI:
    """Build the HTTP app over a :class:`ModelService` for ``pipelines``."""
    service = ModelService(settings, pipelines)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.load_all()
        yield

    app = FastAPI(title="ML lifecycle model server", version="1", lifespan=lifespan)
    app.state.service = service

    @app.get("/health")
    def health() -> dict[str, Any]:
        return service.health()

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict[str, Any]:
        return service.predict(service.default, request)

    @app.post("/models/{name}/predict")
    def predict_named(name: str, request: PredictRequest) -> dict[str, Any]:
        return service.predict(name, request)

    @app.post("/admin/reload")
    def admin_reload(request: ReloadRequest) -> dict[str, Any]:
        return service.reload(request.model, request.version)

    return app


def serve(settings: Settings, pipelines: list[str], host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server in the foreground (``python -m tasks serve``)."""
    import uvicorn

    uvicorn.run(create_app(settings, pipelines), host=host, port=port, log_level="info")
