"""Request hygiene of the model server: strict JSON, a body-size limit, one masked error shape.

- :func:`strict_json`: RFC 8259 and nothing more. NaN / Infinity, numbers that overflow a double, lone UTF-16
  surrogates (valid escapes, but not text: they cannot be encoded back) and bytes that are not UTF-8 are a
  422 naming the problem. :class:`StrictJSONRoute` makes FastAPI parse request bodies with it (FastAPI's
  documented custom-request hook).
- :class:`BodyLimit`: an ASGI middleware; a body over the limit is a 413, by its Content-Length or while it
  streams in, before the app reads it.
- :func:`install_error_handlers`: every error is ``{"detail", "error"}`` (:class:`ErrorBody`), its detail
  masked by :func:`tasks.redact.redact`; an unexpected exception is logged (masked) and answered without
  its text.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tasks.redact import redact

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every error answer: what went wrong (masked) and a stable code."""

    detail: str
    error: str = Field(description="Stable code: unauthorized, admin_disabled, forbidden, policy_refused, ...")


class ApiError(HTTPException):
    """An HTTP error with a stable ``error`` code (the body is :class:`ErrorBody`)."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        """Status, code, message (masked when sent), headers."""
        super().__init__(status, detail, headers)
        self.error = error


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}")


def _reject_constant(name: str) -> Any:
    raise ApiError(422, "invalid_json", f"JSON number {name} is not allowed: send finite numbers only")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ApiError(422, "invalid_json", f"JSON number {text[:40]} overflows a 64-bit float")
    return value


def _check_strings(value: Any, where: str = "body") -> None:
    """Reject lone UTF-16 surrogates (valid JSON escapes, but not text: they cannot be encoded back)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            lone = f"\\u{ord(value[exc.start]):x}"
            raise ApiError(422, "invalid_json", f"{where} holds a lone UTF-16 surrogate ({lone})") from exc
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k, where)
            _check_strings(v, f"{where}.{k!r:.40}" if isinstance(k, str) and k.isprintable() else where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_strings(v, f"{where}[{i}]")


def strict_json(body: bytes) -> Any:
    """Parse a request body as RFC 8259 JSON, nothing more.

    Raises:
        ApiError: 422 for bytes that are not UTF-8, NaN / Infinity, a number that overflows to infinity, a
            lone surrogate, or malformed JSON (naming the position).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(422, "invalid_json", f"request body is not UTF-8 (byte {exc.start})") from exc
    # msgspec's C parser (~10x the standard library's with its per-number callbacks at 10,000 rows) refuses
    # everything the strict parse below refuses, and more (a lone surrogate escape, an integer of more than
    # 4300 digits, extreme nesting): what it refuses, the standard library parses again and words (a 422)
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        value = _stdlib_json(text)
    if _SURROGATE_ESCAPE.search(body):  # only then can a lone surrogate be in there
        _check_strings(value)
    return value


def _stdlib_json(text: str) -> Any:
    """``json.loads`` refusing NaN, Infinity and overflowing numbers, each error a 422 that names it."""
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_json", f"request body is not JSON: {exc.msg} at position {exc.pos}") from exc
    except RecursionError as exc:
        raise ApiError(422, "invalid_json", "request body nests too deeply") from exc
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ApiError(422, "invalid_json", f"request body is not acceptable JSON: {exc}") from exc


class StrictJSONRequest(Request):
    """A request whose ``json()`` is :func:`strict_json`."""

    async def json(self) -> Any:
        """The body, parsed strictly (cached like Starlette's)."""
        if not hasattr(self, "_json"):
            self._json = strict_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """Routes of this app parse JSON bodies strictly (FastAPI's documented custom-request hook)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap the handler so it sees a :class:`StrictJSONRequest`."""
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is a 413, by its Content-Length or while it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        """Wrap ``app``."""
        self.app = app
        self.limit = limit

    async def _too_large(self, send: Send, seen: str) -> None:
        body = json.dumps(
            {"detail": f"request body of {seen} exceeds serving_max_body_bytes={self.limit}", "error": "too_large"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read and check the whole body first, then hand it to the app."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._too_large(send, f"{int(length)} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(send, f"more than {self.limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": redact(detail), "error": error}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error is an :class:`ErrorBody`, masked; nothing unexpected leaks a traceback to the caller."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        error = getattr(exc, "error", None) or codes.get(exc.status_code, "http")
        return _error_response(exc.status_code, error, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()[:10]]
        return _error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(500, "internal", f"internal error ({type(exc).__name__}); see the server log")
