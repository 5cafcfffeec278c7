"""Hostile requests get a 4xx naming the problem, never a 500 or a dropped connection."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tasks.serving.app import ModelService, PredictRequest, ServedModel, create_app
from tasks.serving.hygiene import strict_json
from tasks.settings import get_settings
from tests.unit.conftest import FIXTURES
from tests.unit.tasks.conftest import raw_rows

INPUT_DROP = ["instant", "casual", "registered", "cnt"]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def row() -> dict[str, Any]:
    return raw_rows(FIXTURES, "2012-06-18", "2012-06-18").drop(columns=INPUT_DROP).to_dict("records")[8]


@pytest.fixture(scope="module")
def server(champion_store):
    """One server over the session's champion for the module, with a 64 KiB body limit."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLP_DATA_ROOT", str(champion_store["root"]))
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(var, raising=False)
        get_settings.cache_clear()
        settings = get_settings().model_copy(update={"serving_max_body_bytes": 64 * 1024})
        try:
            with TestClient(create_app(settings, ["bike_demand"])) as client:
                assert client.app.state.service.wait_settled(120)
                yield client
        finally:
            get_settings.cache_clear()


def _raw(row: dict[str, Any], field: str, literal: str) -> bytes:
    """The row as JSON with ``field``'s value replaced by a literal (a constant json.dumps would not write)."""
    marker = "__LITERAL__"
    return json.dumps({"instances": [row | {field: marker}]}).replace(f'"{marker}"', literal).encode()


@pytest.mark.parametrize(
    ("field", "literal", "said"),
    [
        ("temp", "NaN", "JSON number NaN is not allowed"),
        ("temp", "Infinity", "JSON number Infinity is not allowed"),
        ("hum", "-Infinity", "JSON number -Infinity is not allowed"),
        ("temp", "1e400", "JSON number 1e400 overflows a 64-bit float"),
        ("hr", "1" * 5000, "not acceptable JSON"),
        ("dteday", '"\\ud800"', "holds a lone UTF-16 surrogate (\\ud800)"),
        ("dteday", '"2012-06-18\\udfff"', "lone UTF-16 surrogate (\\udfff)"),
        ("temp", "0.5,", "request body is not JSON"),
    ],
)
def test_non_finite_numbers_lone_surrogates_and_broken_json_are_a_422(server, row, field, literal, said):
    reply = server.post("/predict", content=_raw(row, field, literal), headers=JSON)
    assert reply.status_code == 422 and reply.json()["error"] == "invalid_json", reply.text
    assert said in reply.json()["detail"]


def test_a_lone_surrogate_in_a_field_name_and_bytes_that_are_not_utf8(server, row):
    body = json.dumps({"instances": [row | {"x": 1}]}).replace('"x"', '"\\udc80"').encode()
    reply = server.post("/predict", content=body, headers=JSON)
    assert reply.status_code == 422 and "lone UTF-16 surrogate" in reply.json()["detail"]
    reply = server.post("/predict", content=b'{"instances": [{"dteday": "\xff\xfe"}]}', headers=JSON)
    assert reply.status_code == 422 and "not UTF-8 (byte" in reply.json()["detail"]
    pair = json.dumps({"instances": [row | {"dteday": "\U0001f600"}]}).encode()  # a valid surrogate pair: text
    assert server.post("/predict", content=pair, headers=JSON).status_code == 200


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"hr": 10**30}, "instances[0].hr: 1000000000000000000000000000000 is outside the long range"),
        ({"hr": 1e300}, "instances[0].hr: 1e+300 is outside the long range"),
        ({"hr": 2.0**63}, "instances[0].hr: 9.223372036854776e+18 is outside the long range"),
        ({"hr": 7.5}, "instances[0].hr: expected long, got float 7.5"),
        ({"temp": 10**400}, "instances[0].temp: 1000000000000"),  # an int a double cannot hold
    ],
)
def test_numbers_outside_what_a_field_holds_are_named(server, row, change, said):
    reply = server.post("/predict", json={"instances": [row | change]})
    assert reply.status_code == 422 and said in reply.json()["detail"], reply.text


def test_extreme_but_valid_numbers_are_answered(server, row):
    for change in (
        {"temp": 1e300},
        {"temp": -1.7976931348623157e308},
        {"hr": 2**62},
        {"hr": 2.0**62},  # an integral float within the range is that integer
        {"temp": 5, "hum": 0},  # integers for doubles
    ):
        reply = server.post("/predict", json={"instances": [row | change]})
        assert reply.status_code == 200, (change, reply.text)


def test_a_body_over_the_limit_is_a_413_by_length_or_while_it_streams(server, row):
    big = json.dumps({"instances": [row] * 400}).encode()
    assert len(big) > 64 * 1024
    reply = server.post("/predict", content=big, headers=JSON)
    assert reply.status_code == 413 and reply.json()["error"] == "too_large"
    assert "exceeds serving_max_body_bytes=65536" in reply.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    reply = server.post("/predict", content=chunks(), headers=JSON)
    assert reply.status_code == 413 and "more than 65536 bytes" in reply.json()["detail"]
    small = json.dumps({"instances": [row] * 10}).encode()
    assert server.post("/predict", content=iter([small[:100], small[100:]]), headers=JSON).status_code == 200


def test_deep_nesting_and_odd_bodies_are_4xx(server):
    for body in (b"[" * 100_000 + b"]" * 100_000, b"", b"null", b'"instances"', b'{"instances": 5}'):
        reply = server.post("/predict", content=body, headers=JSON)
        assert 400 <= reply.status_code < 500 and reply.json()["detail"], (body[:20], reply.text)
    reply = server.post("/predict", content=b"instances=1", headers={"content-type": "text/plain"})
    assert reply.status_code == 422


def test_strict_json_accepts_what_rfc_8259_allows():
    assert strict_json(b'{"a": [1, -2.5e10, "\\ud83d\\ude00", true, null]}') == {"a": [1, -2.5e10, "😀", True, None]}


def test_a_prediction_that_is_not_a_finite_number_is_a_422_and_not_logged(data_root):
    """A real (linear) model that overflows on an extreme input: the encoder never sees the infinity."""
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(pd.DataFrame({"x": [0.0, 1.0]}), [0.0, 1e300])
    service = ModelService(get_settings(), ["bike_demand"])  # a real spec: the log knows its event column
    service._swap(ServedModel("bike_demand", "1", "r", model, {"x": "double"}, frozenset({"x"})))
    assert service.predict("bike_demand", PredictRequest(instances=[{"x": 0.5}]))["predictions"] == [5e299]
    with pytest.raises(Exception) as err:
        service.predict("bike_demand", PredictRequest(instances=[{"x": 0.5}, {"x": 1e300}]))
    assert err.value.status_code == 422 and "no finite number for instances [1]" in err.value.detail
    import sqlite3

    with sqlite3.connect(data_root / "serving" / "predictions.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM predictions").fetchone() == (1,)  # the refused request left no row


def test_the_per_column_fast_path_finds_every_problem_the_per_cell_check_does(monkeypatch):
    """payload_errors skips the per-cell check for columns _clean_columns vouches for: the answers must not change.

    Every kind, with each hostile value alone in an otherwise clean column of 50 rows, is judged with the fast
    path and with it switched off; both must name the same problems (and a clean batch none).
    """
    from tasks.serving import app as served_app

    kinds = {"l": "long", "i": "integer", "d": "double", "f": "float", "s": "string", "b": "boolean", "t": "datetime"}
    good = {"l": 7, "i": -3, "d": 1.5, "f": 2, "s": "x", "b": True, "t": "2012-06-18"}
    hostile: list[tuple[str, Any]] = [
        ("l", 5.0),
        ("l", 5.5),
        ("l", True),
        ("l", 2**63),
        ("l", "7"),
        ("l", None),
        ("i", 2**31),
        ("i", -(2**31) - 1),
        ("i", False),
        ("i", 1e10),
        ("d", True),
        ("d", "1.5"),
        ("d", 10**400),
        ("d", [1.0]),
        ("d", None),
        ("f", 3.5e38),
        ("f", -(10**39)),
        ("f", {"a": 1}),
        ("s", 1),
        ("s", None),
        ("s", False),
        ("b", 1),
        ("b", "true"),
        ("b", 0.0),
        ("t", 5),
    ]
    served = ServedModel("p", "1", "r", None, kinds, frozenset(kinds) - {"d"})
    rows = [dict(good) for _ in range(50)]
    assert served_app.payload_errors(served, rows) == []
    assert served_app._clean_columns(served, rows) == set(kinds)
    for col, value in hostile:
        batch = [dict(good) for _ in range(50)]
        batch[17][col] = value
        fast = served_app.payload_errors(served, batch)
        with monkeypatch.context() as mp:
            mp.setattr(served_app, "_clean_columns", lambda served, rows, values=None: set())
            expected = served_app.payload_errors(served, batch)
        assert fast == expected, (col, value)
        # an integral float, a null in an optional field and any value of a kind with no check pass
        if (col, value) not in [("l", 5.0), ("d", None), ("t", 5)]:
            assert fast and fast[0].startswith(f"instances[17].{col}"), (col, value, fast)
    missing = [dict(good) for _ in range(3)]
    del missing[1]["s"]
    assert served_app.payload_errors(served, missing) == ["instances[1].s: missing (required string)"]
    assert served_app.payload_errors(served, [*rows[:2], "not a row"]) == [
        "instances[2]: expected an object of input fields, got str"
    ]


def test_rows_that_carry_the_row_id_take_the_fast_path_and_a_bad_id_is_still_named(monkeypatch):
    """A row id (schema.id_column, not an input) on every row keeps the column-wise check; each bad id is worded
    exactly as the per-row check words it (the fast path used to be skipped for every pipeline with a row id)."""
    from tasks.serving import app as served_app

    kinds = {"l": "long", "d": "double"}
    served = ServedModel("p", "1", "r", None, kinds, frozenset(kinds))
    row_id = served_app.RowId("id", (int,))
    rows = [{"l": 1, "d": 0.5, "id": i} for i in range(40)]
    assert served_app._same_valid_keys(served, rows, row_id)
    assert served_app.payload_errors(served, rows, row_id=row_id) == []
    for bad in (1.5, True, None, "7", 2**63, [1]):
        batch = [dict(r) for r in rows]
        batch[23]["id"] = bad
        assert not served_app._same_valid_keys(served, batch, row_id), bad
        fast = served_app.payload_errors(served, batch, row_id=row_id)
        with monkeypatch.context() as mp:
            mp.setattr(served_app, "_same_valid_keys", lambda *_: False)
            assert fast == served_app.payload_errors(served, batch, row_id=row_id), bad
        assert fast and fast[0].startswith("instances[23].id:"), (bad, fast)
    # a row without the id among rows with it: the keys differ, the per-row check runs and finds nothing wrong
    mixed = [*rows[:3], {"l": 1, "d": 0.5}]
    assert not served_app._same_valid_keys(served, mixed, row_id)
    assert served_app.payload_errors(served, mixed, row_id=row_id) == []
