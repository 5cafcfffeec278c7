"""Credentials never leave in an answer or a log: mask the password of every URI we print.

:func:`redact` masks
- the password of any ``scheme://user:password@host`` URI (MLflow, the ledger, a database),
- ``password=...`` / ``passwd=`` / ``pwd=`` parameters of a URI query or a libpq DSN,
- every secret registered with :func:`register_secret` (the admin token, passwords of the settings' URIs),
  wherever it appears.

:class:`RedactingFilter` applies it to log records (message, arguments, exception and stack text);
:func:`install` puts it on every log record this process creates and on uncaught exceptions. The CLI
(``python -m tasks``, which includes ``serve``) and the model server app install it; Airflow task logs are
masked by Airflow's own masker, to which ``mlops_airflow`` hands the same secrets.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

MASK = "***"
# scheme://user:password@  (user may be empty: redis://:password@host). The password runs to the last '@'
# of the token, so an unencoded '@' in it is masked too; quotes and whitespace end a token.
_URI_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)(?P<secret>[^\s'\"]*)@")
# password=... in a query string (?a=1&password=x) or a DSN (host=h password='x y' user=u)
_PARAM_PASSWORD = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd)\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\")]+)",
    re.IGNORECASE,
)
MIN_SECRET_CHARS = 4  # shorter values would mask ordinary text
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears from now on (and its URL-decoded form)."""
    if not value or len(value) < MIN_SECRET_CHARS:
        return
    with _secrets_lock:
        _secrets.add(value)
        decoded = unquote(value)
        if len(decoded) >= MIN_SECRET_CHARS:
            _secrets.add(decoded)


def uri_password(uri: str | None) -> str | None:
    """The password in a URI (``None`` if it has none or is not a URI)."""
    if not uri or "://" not in uri:
        return None
    try:
        return urlsplit(uri).password
    except ValueError:
        return None


def register_uri_secrets(uris: Iterable[str | None]) -> list[str]:
    """Register the password of each URI that has one; returns the passwords found (for other maskers)."""
    found = [p for p in (uri_password(u) for u in uris) if p]
    for password in found:
        register_secret(password)
    return found


def redact(text: str) -> str:
    """``text`` with every URI password, ``password=`` parameter and registered secret replaced by ``***``."""
    if not text:
        return text
    text = _URI_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    text = _PARAM_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)  # longest first: a secret containing another
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_value(value: Any) -> Any:
    """:func:`redact` applied to every string inside a JSON-like value (dicts, lists, tuples)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """Masks a record's message (formatted with its arguments), exception text and stack text; never drops one."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place with every credential masked.

        A record without credentials keeps its message and arguments as they are (formatters such as
        uvicorn's access log read ``record.args``); one with credentials gets masked string arguments, or,
        when a secret hides in another kind of argument, its masked message with no arguments.
        """
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string: log what we have, masked
            message = f"{record.msg} {record.args}"
        if redact(message) != message:
            args = record.args
            if isinstance(args, tuple):
                record.msg = redact(str(record.msg))
                record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
            try:
                clean = record.getMessage() == redact(record.getMessage())
            except Exception:  # noqa: BLE001 - masked arguments no longer fit the format: use the message
                clean = False
            if not clean:
                record.msg, record.args = redact(message), ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(record.exc_text or self._formatter.formatException(record.exc_info))
            # keep exc_info for handlers that check it, but nothing re-formats it from the traceback
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()
_installed = False


def install() -> None:
    """Mask every log record this process creates, on every logger and handler, and uncaught exceptions.

    Works by wrapping the log-record factory, so handlers added later (uvicorn's, a library's) are covered;
    idempotent.
    """
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _FILTER.filter(record)
        return record

    logging.setLogRecordFactory(factory)
    previous_hook = sys.excepthook

    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        import traceback

        sys.stderr.write(redact("".join(traceback.format_exception(kind, exc, tb))))

    if previous_hook is sys.__excepthook__:
        sys.excepthook = excepthook

    def handle_error(self: logging.Handler, record: logging.LogRecord) -> None:
        """A handler that failed to emit prints the failure (and the chain of exceptions behind it), masked."""
        import traceback

        if logging.raiseExceptions and sys.stderr:
            sys.stderr.write(
                "--- Logging error ---\n" + redact(traceback.format_exc()) + f"Message: {redact(str(record.msg))!r}\n"
            )

    logging.Handler.handleError = handle_error  # type: ignore[method-assign]
    _installed = True
