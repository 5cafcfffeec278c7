"""Credentials are masked wherever we print them: URIs, DSN parameters, registered secrets, log records."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from tasks.ledger import Entry, PromotionLedger
from tasks.redact import RedactingFilter, redact, redact_value, register_secret, register_uri_secrets

SENTINEL = "Sentinel-pw-7f3a9c"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"postgresql+psycopg2://mlops:{SENTINEL}@pg:5432/db", "postgresql+psycopg2://mlops:***@pg:5432/db"),
        (f"redis://:{SENTINEL}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (f"see http://u:{SENTINEL}@mlflow:5000/api and go", "see http://u:***@mlflow:5000/api and go"),
        ("http://u:p@ss@h/x", "http://u:***@h/x"),  # an unencoded '@' in the password
        (f"host=h password='{SENTINEL} x' user=u", "host=h password=*** user=u"),
        (f"http://h/?user=a&password={SENTINEL}&b=1", "http://h/?user=a&password=***&b=1"),
        (f"{{'uri': 'mysql://root:{SENTINEL}@db/x', 'b': 'c@d'}}", "{'uri': 'mysql://root:***@db/x', 'b': 'c@d'}"),
    ],
)
def test_uri_passwords_and_password_parameters_are_masked(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    ["http://127.0.0.1:5000/api/2.0", "models:/bike_demand/3", "mail me at a@b.c", "sqlite:////tmp/x.db", ""],
)
def test_text_without_credentials_is_unchanged(text):
    assert redact(text) == text


def test_registered_secrets_are_masked_anywhere_also_url_decoded():
    assert register_uri_secrets([f"postgresql://u:{SENTINEL}%40x@h/db", "sqlite:///x.db", None]) == [f"{SENTINEL}%40x"]
    register_secret("abc")  # too short to mask safely: ignored
    assert redact(f"token {SENTINEL}@x and {SENTINEL}%40x; abc") == "token *** and ***; abc"
    assert redact_value({"a": [f"x {SENTINEL}@x", 3], "b": (SENTINEL + "@x",)}) == {"a": ["x ***", 3], "b": ("***",)}


def test_the_log_filter_masks_message_arguments_and_tracebacks():
    uri = f"http://mlp:{SENTINEL}@127.0.0.1:1"
    try:
        raise ConnectionError(f"API request to {uri}/api failed")
    except ConnectionError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "cannot reach %s: %s", (uri, {"uri": uri}), sys.exc_info()
        )
    record.stack_info = f"stack mentions {uri}"
    assert RedactingFilter().filter(record) is True  # masks, never drops
    text = logging.Formatter().format(record)
    assert SENTINEL not in text and "mlp:***@127.0.0.1:1" in text and "ConnectionError" in text


def test_installed_masking_covers_every_logger_and_uncaught_exceptions(tmp_path):
    """In a fresh process: a handler added after install(), a library's logger, and a crash's traceback."""
    script = f"""
import logging, sys
from tasks.redact import install
install()
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
logging.getLogger("urllib3.connectionpool").warning("retrying http://u:{SENTINEL}@h:1/x")
logging.getLogger("later").addHandler(logging.FileHandler({str(tmp_path / "later.log")!r}))
logging.getLogger("later").error("dsn host=h password={SENTINEL}")
raise RuntimeError("boom postgresql://u:{SENTINEL}@db/x")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "RuntimeError: boom postgresql://u:***@db/x" in out.stderr
    assert "retrying http://u:***@h:1/x" in out.stderr
    assert (tmp_path / "later.log").read_text() == "dsn host=h password=***\n"
    assert SENTINEL not in out.stderr + out.stdout


def test_ledger_rows_are_masked_before_they_are_written(tmp_path):
    ledger = PromotionLedger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    uri = f"postgresql://u:{SENTINEL}@db/x"
    ledger.append(Entry("p", "serve_refused", f"cli via {uri}", f"cannot reach {uri}", details={"uri": uri}))
    raw = (tmp_path / "ledger.sqlite").read_bytes()
    assert SENTINEL.encode() not in raw
    [row] = ledger.read()
    assert row.reason == "cannot reach postgresql://u:***@db/x" and row.details == {"uri": "postgresql://u:***@db/x"}


def test_ledger_errors_never_show_the_uri_password():
    from tasks.ledger import LedgerError

    with pytest.raises(LedgerError) as err:
        PromotionLedger(f"mysql://u:{SENTINEL}@db/x")
    assert SENTINEL not in str(err.value) and "mysql://u:***@db/x" in str(err.value)


def test_masking_keeps_the_arguments_formatters_read_and_masks_logging_errors(capsys):
    """uvicorn's access formatter unpacks record.args: a masked record must still fit it; a handler that fails
    prints its traceback (with the chain of exceptions behind it) masked."""
    from uvicorn.logging import AccessFormatter

    path = f"/x?password={SENTINEL}"
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", path, "1.1", 200),
        None,
    )
    assert RedactingFilter().filter(record) and len(record.args) == 5
    assert (
        AccessFormatter("%(message)s", use_colors=False).format(record)
        == '1.2.3.4:5 - "GET /x?password=*** HTTP/1.1" 200'
    )

    import tasks.redact

    tasks.redact.install()

    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                raise ConnectionError(f"postgresql://u:{SENTINEL}@db/x")
            except ConnectionError:
                self.handleError(record)

    logger = logging.getLogger("broken-handler")
    logger.addHandler(Broken())
    logger.propagate = False
    logger.error("hello")
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err and "postgresql://u:***@db/x" in err and SENTINEL not in err
