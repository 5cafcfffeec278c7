"""The model server: serves each pipeline's ``@champion`` over HTTP and logs every prediction.

Endpoints:
    ``GET /health``                     name and version of every served model
    ``POST /predict``                   the default pipeline's model, ``{"instances": [{col: value}, ...]}``
    ``POST /models/{name}/predict``     a named pipeline's model
    ``POST /admin/reload``              ``{"model": name}``: load the current champion beside the old
                                        one, smoke-test it, then switch (the old one keeps serving on failure)
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from tasks.settings import Settings
from tasks.tracking import use_store

log = logging.getLogger(__name__)

MAX_BATCH = 10_000


class PredictRequest(BaseModel):
    """The MLflow / TF-serving ``instances`` convention: one mapping of raw input column -> value per row."""

    instances: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)


class ReloadRequest(BaseModel):
    """Which pipeline's champion to (re)load."""

    model: str


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
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def describe(self) -> dict[str, Any]:
        """Health entry."""
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "loaded_at": self.loaded_at,
            "inputs": self.input_columns,
        }


class PredictionLog:
    """Append-only SQLite log of every prediction (inputs, output, model version, time)."""

    def __init__(self, path: Path) -> None:
        """Open (creating) the log."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL,"
            " logged_at TEXT NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL,"
            " inputs TEXT NOT NULL, prediction REAL NOT NULL)"
        )
        self._conn.execute("CREATE INDEX IF NOT EXISTS predictions_time ON predictions (model_name, logged_at)")
        self._lock = threading.Lock()

    def append(
        self, request_id: str, served: ServedModel, rows: list[dict[str, Any]], predictions: list[float]
    ) -> None:
        """Record one request's rows."""
        now = datetime.now(UTC).isoformat()
        records = [
            (request_id, now, served.name, served.version, json.dumps(row, sort_keys=True), float(pred))
            for row, pred in zip(rows, predictions, strict=True)
        ]
        with self._lock:
            self._conn.executemany(
                "INSERT INTO predictions (request_id, logged_at, model_name, model_version, inputs, prediction)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                records,
            )


def load_champion(settings: Settings, name: str) -> ServedModel:
    """Load ``models:/<name>@champion`` and smoke-test it on its logged input example.

    Raises:
        ModelLoadError: No champion yet, or the model fails to load or predict.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from tasks.registry import champion_version

    champion = champion_version(settings, name)
    if champion is None:
        raise ModelLoadError(f"no version of {name!r} has the champion alias yet")
    uri = f"models:/{name}/{champion.version}"
    try:
        use_store(settings)  # models:/ URIs resolve through the registry URI
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
        model = mlflow.pyfunc.load_model(local)
        example = Model.load(local).load_input_example(local)
        if example is None:
            raise ModelLoadError(f"{uri} has no input example to smoke-test with")
        smoke = model.predict(example)
        if len(smoke) != len(example):
            raise ModelLoadError(f"{uri} returned {len(smoke)} predictions for {len(example)} example rows")
    except MlflowException as exc:
        raise ModelLoadError(f"cannot load {uri} from {mlflow.get_registry_uri()}: {exc}") from exc
    schema = model.metadata.get_input_schema()
    columns = {c.name: getattr(c.type, "name", str(c.type)) for c in schema.inputs} if schema else {}
    return ServedModel(name=name, version=champion.version, run_id=champion.run_id, model=model, input_columns=columns)


def _check_columns(served: ServedModel, rows: list[dict[str, Any]]) -> None:
    required = set(served.input_columns)
    for i, row in enumerate(rows):
        missing = sorted(required - row.keys())
        if missing:
            raise HTTPException(
                422,
                detail=f"instances[{i}] is missing field(s) {missing}; "
                f"{served.name} v{served.version} needs {sorted(required)}",
            )


class ModelService:
    """The served models of several pipelines, their swaps and the prediction log (framework-free core)."""

    def __init__(self, settings: Settings, pipelines: list[str]) -> None:
        """Serve ``pipelines``; the first one answers ``/predict``."""
        if not pipelines:
            raise ValueError("the model server needs at least one pipeline to serve")
        from tasks.storage import DataLayout

        self.settings = settings
        self.pipelines = list(pipelines)
        self.served: dict[str, ServedModel] = {}
        self._swap_lock = threading.Lock()
        self.log = PredictionLog(DataLayout(settings.data_root).prediction_log)

    def _known(self, name: str) -> None:
        if name not in self.pipelines:
            raise HTTPException(404, detail=f"unknown model {name!r}; served: {self.pipelines}")

    def load_all(self) -> None:
        """Load every pipeline's champion that exists; the others answer 503 until deployed."""
        for name in self.pipelines:
            try:
                self._swap(load_champion(self.settings, name))
            except ModelLoadError as exc:
                log.warning("not serving %s yet: %s", name, exc)

    def _swap(self, candidate: ServedModel) -> None:
        with self._swap_lock:
            self.served[candidate.name] = candidate
        log.info("now serving %s v%s", candidate.name, candidate.version)

    def reload(self, name: str) -> dict[str, Any]:
        """Load the current champion beside the served version, smoke-test it, then switch.

        Raises:
            HTTPException: 404 for an unknown pipeline; 409 when loading fails (the old version keeps serving).
        """
        self._known(name)
        previous = self.served.get(name)
        try:
            candidate = load_champion(self.settings, name)
        except ModelLoadError as exc:
            kept = f"; still serving v{previous.version}" if previous else ""
            raise HTTPException(409, detail=f"reload of {name} failed: {exc}{kept}") from exc
        self._swap(candidate)
        return {"model": name, "version": candidate.version, "previous": previous.version if previous else None}

    def health(self) -> dict[str, Any]:
        """Name and version of every served model."""
        default = self.served.get(self.pipelines[0])
        return {
            "status": "ok" if default else "no_model",
            "model": self.pipelines[0],
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
        _check_columns(current, request.instances)
        frame = pd.DataFrame.from_records(request.instances)[list(current.input_columns)]
        started = time.perf_counter()
        try:
            output = current.model.predict(frame)
        except MlflowException as exc:
            detail = f"payload does not match {name} v{current.version}'s signature: {exc.message}"
            raise HTTPException(422, detail=detail) from exc
        values = [float(v) for v in output]
        request_id = uuid.uuid4().hex
        self.log.append(request_id, current, request.instances, values)
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
        return service.predict(service.pipelines[0], request)

    @app.post("/models/{name}/predict")
    def predict_named(name: str, request: PredictRequest) -> dict[str, Any]:
        return service.predict(name, request)

    @app.post("/admin/reload")
    def admin_reload(request: ReloadRequest) -> dict[str, Any]:
        return service.reload(request.model)

    return app


def serve(settings: Settings, pipelines: list[str], host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server in the foreground (``python -m tasks serve``)."""
    import uvicorn

    uvicorn.run(create_app(settings, pipelines), host=host, port=port, log_level="info")
