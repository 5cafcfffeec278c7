from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tasks.serving.app import create_app
from tasks.settings import get_settings
from tasks.storage import DataLayout
from tests.unit.conftest import FIXTURES
from tests.unit.tasks.conftest import raw_rows, run_without_team_package

INPUT_DROP = ["instant", "casual", "registered", "cnt"]


@pytest.fixture
def server(use_champion_store):
    with TestClient(create_app(get_settings(), ["bike_demand"])) as client:
        assert client.app.state.service.wait_settled(120)  # the champion loads in the background
        yield client


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {get_settings().admin_token.get_secret_value()}"}


def _instances(start: str, end: str) -> list[dict]:
    return raw_rows(FIXTURES, start, end).drop(columns=INPUT_DROP).to_dict("records")


def test_health_reports_name_and_version(server, use_champion_store):
    body = server.get("/health").json()
    assert body["status"] == "ok" and body["model"] == "bike_demand"
    assert body["version"] == use_champion_store["registered"]["version"]
    model = body["models"]["bike_demand"]
    assert model["state"] == "serving" and model["smoke_test"]["holdout_rows"] > 0
    # it reproduced the smoke sample, so requests skip pandas and LightGBM's scikit-learn wrapper
    assert model["smoke_test"]["compiled_predict"] == "lightgbm booster"


def test_predict_real_rows_and_log_each_prediction(server, use_champion_store):
    rows = _instances("2012-06-18", "2012-06-18")
    reply = server.post("/predict", json={"instances": rows})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["predictions"]) == 24 and body["model_version"] == use_champion_store["registered"]["version"]
    assert all(p > -50 for p in body["predictions"])
    named = server.post("/models/bike_demand/predict", json={"instances": rows[:2]})
    assert named.status_code == 200
    # the compiled predict answered, and answered what the champion's own pipeline predicts for those rows
    service = server.app.state.service
    served = service.served["bike_demand"]
    assert served.compiled is not None
    frame = pd.DataFrame.from_records(rows, columns=list(served.input_columns))
    expected = served.model.get_raw_model().predict(frame)
    np.testing.assert_allclose(body["predictions"], expected, rtol=1e-9)
    log = DataLayout(use_champion_store["root"]).prediction_log
    with sqlite3.connect(log) as conn:
        logged = conn.execute(
            "SELECT COUNT(*), MIN(model_version) FROM predictions WHERE request_id = ?", (body["request_id"],)
        ).fetchone()
    assert logged == (24, body["model_version"])


def test_missing_field_is_a_422_naming_it(server):
    row = _instances("2012-06-18", "2012-06-18")[0]
    del row["temp"]
    reply = server.post("/predict", json={"instances": [row]})
    assert reply.status_code == 422 and "temp" in reply.json()["detail"]


def test_wrong_type_is_a_422_not_a_500(server):
    row = _instances("2012-06-18", "2012-06-18")[0] | {"hr": "noon"}
    reply = server.post("/predict", json={"instances": [row]})
    assert reply.status_code == 422, reply.text
    assert "instances[0].hr: expected long, got str 'noon'" in reply.json()["detail"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"temp": None}, "instances[1].temp: null, but a double is required"),
        ({"humidity": 0.5}, "instances[1].humidity: unknown field"),
        ({"weathersit": 1.5}, "instances[1].weathersit: expected long, got float 1.5"),
        ({"holiday": True}, "instances[1].holiday: expected long, got bool True"),
    ],
)
def test_each_malformed_field_is_named_with_its_row(server, change, expected):
    rows = _instances("2012-06-18", "2012-06-18")[:2]
    rows[1] = rows[1] | change
    reply = server.post("/models/bike_demand/predict", json={"instances": rows})
    assert reply.status_code == 422 and expected in reply.json()["detail"], reply.text


def test_a_field_every_row_carries_is_still_checked(server):
    """Rows that all have the same fields skip the per-row field check only when those fields are valid."""
    rows = _instances("2012-06-18", "2012-06-18")[:3]
    unknown = server.post("/predict", json={"instances": [r | {"humidity": 0.5} for r in rows]})
    assert unknown.status_code == 422 and "instances[0].humidity: unknown field" in unknown.json()["detail"]
    missing = [{k: v for k, v in r.items() if k != "temp"} for r in rows]
    reply = server.post("/predict", json={"instances": missing})
    assert reply.status_code == 422 and "instances[0].temp: missing" in reply.json()["detail"], reply.text


def test_integral_floats_are_accepted_for_integer_fields(server):
    row = _instances("2012-06-18", "2012-06-18")[0]
    reply = server.post("/predict", json={"instances": [row | {"hr": 5.0}]})
    assert reply.status_code == 200, reply.text


def test_non_object_instance_is_a_422(server):
    reply = server.post("/predict", json={"instances": [[1, 2, 3]]})
    assert reply.status_code == 422 and "instances[0]: expected an object" in reply.json()["detail"]


def test_empty_and_oversized_batches_are_refused(server):
    assert server.post("/predict", json={"instances": []}).status_code == 422
    row = _instances("2012-06-18", "2012-06-18")[0]
    limit = get_settings().serving_max_batch
    reply = server.post("/predict", json={"instances": [row] * (limit + 1)})
    assert reply.status_code == 413 and f"limit of {limit}" in reply.json()["detail"]


def test_unknown_model_is_404(server):
    reply = server.post("/models/nope/predict", json={"instances": [{"a": 1}]})
    assert reply.status_code == 404 and reply.json()["error"] == "unknown_model"
    assert server.post("/admin/reload", json={"model": "nope"}, headers=admin_headers()).status_code == 404


def test_server_without_champion_answers_503_and_reload_409(data_root):
    with TestClient(create_app(get_settings(), ["bike_demand"])) as client:
        assert client.app.state.service.wait_settled(60)
        health = client.get("/health").json()
        assert health["status"] == "no_model" and health["models"]["bike_demand"]["state"] == "no_champion"
        reply = client.post("/predict", json={"instances": [{"hr": 1}]})
        assert reply.status_code == 503 and reply.json()["error"] == "no_champion" and "Retry-After" in reply.headers
        reply = client.post("/admin/reload", json={"model": "bike_demand"}, headers=admin_headers())
        assert reply.status_code == 409 and "champion" in reply.json()["detail"]


def test_champion_loads_from_the_settings_store_whatever_registry_the_process_inherited(
    use_champion_store, tmp_path, monkeypatch
):
    """mlflow.set_registry_uri() writes MLFLOW_REGISTRY_URI into os.environ, so child processes inherit it:
    a model server started from such a process must still resolve models:/ URIs in its settings' store."""
    import mlflow

    from tasks.serving.app import load_version
    from tasks.settings import get_settings

    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", other)
    monkeypatch.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", None)
    served = load_version(get_settings(), "bike_demand")
    assert served.version == use_champion_store["registered"]["version"]


def test_a_failing_warm_up_still_serves_the_champion(use_champion_store, monkeypatch, caplog):
    """The loader warms model loading first; only speed is at stake, so its failure is a warning."""
    from tasks import tracking

    def broken() -> list[str]:
        raise AttributeError("renamed in a new MLflow")

    monkeypatch.setattr(tracking, "prepare_model_loading", broken)
    with TestClient(create_app(get_settings(), ["bike_demand"])) as client:
        assert client.app.state.service.wait_settled(120)
        assert client.get("/health").json()["status"] == "ok"
        reply = client.post("/admin/reload", json={"model": "bike_demand"}, headers=admin_headers())
        assert reply.status_code == 200, reply.text  # the reload did not wait for a warm-up that never ends
    assert "warming up model loading failed" in caplog.text


def test_explain_returns_top_k_contributions_per_row_in_raw_input_terms(server):
    rows = _instances("2012-06-18", "2012-06-18")[:3]
    plain = server.post("/models/bike_demand/predict", json={"instances": rows}).json()
    assert "explanations" not in plain and "explanation_space" not in plain  # no flag: nothing computed or sent
    reply = server.post("/models/bike_demand/predict", json={"instances": rows, "explain": True, "top_k": 3})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["predictions"] == plain["predictions"] and body["explanation_space"] == "raw_margin"
    assert len(body["explanations"]) == 3 and all(len(r) == 3 for r in body["explanations"])
    raw_inputs = set(rows[0])
    for row, reasons in zip(rows, body["explanations"], strict=True):
        assert {r["feature"] for r in reasons} <= raw_inputs  # hr, not hr_sin / hr_cos
        assert all(r["value"] == row[r["feature"]] for r in reasons)
        sizes = [abs(r["contribution"]) for r in reasons]
        assert sizes == sorted(sizes, reverse=True)
    default = server.post("/predict", json={"instances": rows[:1], "explain": True}).json()
    assert len(default["explanations"][0]) == 5  # top_k defaults to 5
    by_header = server.post("/predict", json={"instances": rows[:1]}, headers={"X-Explain": "true"}).json()
    assert by_header["explanations"] == default["explanations"]  # the header asks as the body's flag does


@pytest.mark.parametrize(
    "extra", [{"explain": "yes"}, {"explain": 1}, {"explain": True, "top_k": 0}, {"explain": True, "top_k": "3"}]
)
def test_a_malformed_explain_request_is_a_422(server, extra):
    rows = _instances("2012-06-18", "2012-06-18")[:1]
    reply = server.post("/models/bike_demand/predict", json={"instances": rows, **extra})
    assert reply.status_code == 422, reply.text


def test_a_down_log_store_is_a_503_counted_in_health_and_nothing_is_answered(server):
    from tasks.prediction_log import PredictionLogWriter
    from tests.conftest import free_port

    service = server.app.state.service
    working = service.log
    service.log = PredictionLogWriter(
        f"postgresql://mlp:log-pw-1234567@127.0.0.1:{free_port()}/log", working.event_columns, timeout_s=2
    )
    try:
        reply = server.post("/predict", json={"instances": _instances("2012-06-18", "2012-06-18")[:2]})
        health = server.get("/health").json()["prediction_log"]
    finally:
        service.log.close()
        service.log = working
    assert reply.status_code == 503 and reply.json()["error"] == "log_unavailable", reply.text
    assert "mlp:***@127.0.0.1" in reply.json()["detail"] and "log-pw" not in reply.text
    assert reply.headers["Retry-After"] == "1" and "predictions" not in reply.json()
    assert health["unavailable"] == 1 and health["rows"] == 0


def test_a_locked_log_store_is_a_503_never_a_500(server, use_champion_store):
    from tasks.prediction_log import PredictionLogWriter

    service = server.app.state.service
    working = service.log
    path = DataLayout(use_champion_store["root"]).prediction_log
    service.log = PredictionLogWriter(path, working.event_columns, timeout_s=0.3)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        reply = server.post("/predict", json={"instances": _instances("2012-06-18", "2012-06-18")[:2]})
        holder.execute("ROLLBACK")
        after = server.post("/predict", json={"instances": _instances("2012-06-18", "2012-06-18")[:2]})
        health = server.get("/health").json()["prediction_log"]
    finally:
        holder.close()
        service.log.close()
        service.log = working
    assert reply.status_code == 503 and reply.json()["error"] == "log_busy", reply.text
    assert after.status_code == 200 and health["busy"] == 1 and health["rows"] == 2


def test_a_pipeline_whose_spec_appears_after_start_is_served_when_deployed(server, tmp_path, monkeypatch):
    import shutil

    from tasks.spec import pipelines_dir

    for spec in pipelines_dir().glob("*.yaml"):
        shutil.copy(spec, tmp_path / spec.name)
    monkeypatch.setenv("MLP_PIPELINES_DIR", str(tmp_path))
    reload = {"model": "bike_copy", "actor": "t"}
    before = server.post("/admin/reload", json=reload, headers=admin_headers())
    assert before.status_code == 404 and before.json()["error"] == "unknown_model"
    text = (tmp_path / "bike_demand.yaml").read_text().replace("name: bike_demand\n", "name: bike_copy\n", 1)
    (tmp_path / "bike_copy.yaml").write_text(text)  # a new pipeline, after the server started
    after = server.post("/admin/reload", json=reload, headers=admin_headers())
    # known now: the registry answers (no champion yet) instead of 404, and the server lists and logs it
    assert after.status_code == 409 and "no version of 'bike_copy' has the champion alias" in after.json()["detail"]
    health = server.get("/health").json()
    assert health["models"]["bike_copy"]["state"] == "no_champion"
    assert server.app.state.service.log.event_columns["bike_copy"] == "dteday"
    assert "/models/bike_copy/predict" in server.get("/openapi.json").json()["paths"]
    predict = server.post("/models/bike_copy/predict", json={"instances": _instances("2012-06-18", "2012-06-18")[:1]})
    assert predict.status_code == 503 and predict.json()["error"] == "no_champion"


def _with_ids(start: str, end: str) -> tuple[list[dict], list[dict]]:
    """A day's rows as callers send them, without and with the row id (``schema.id_column``: ``instant``)."""
    rows = raw_rows(FIXTURES, start, end)
    plain = rows.drop(columns=INPUT_DROP).to_dict("records")
    return plain, [row | {"instant": int(i)} for row, i in zip(plain, rows["instant"], strict=True)]


def test_a_row_may_carry_its_id_which_is_logged_not_predicted_on_and_joins_its_label(server, use_champion_store):
    """Date-less data needs the id for an exact label join: the server takes it, the model never sees it."""
    import pandas as pd

    from tasks.monitor import attach_labels
    from tasks.prediction_log import read_window
    from tasks.spec import load_spec

    plain, with_ids = _with_ids("2011-06-22", "2011-06-22")
    without = server.post("/predict", json={"instances": plain})
    reply = server.post("/models/bike_demand/predict", json={"instances": with_ids})
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"] == without.json()["predictions"]  # the id is not an input
    layout = DataLayout(use_champion_store["root"])
    logged = read_window(layout.prediction_log, "bike_demand", ["2011-06-22"])
    logged = logged[logged["request_id"] == reply.json()["request_id"]].reset_index(drop=True)
    assert logged["instant"].tolist() == [row["instant"] for row in with_ids]
    spec = load_spec("bike_demand")
    joined, how = attach_labels(spec, layout, logged.drop(columns=["hr"]))  # no hour: only the id can join
    assert how == "labels joined on ['instant']"
    truth = raw_rows(FIXTURES, "2011-06-22", "2011-06-22")["cnt"]
    pd.testing.assert_series_equal(joined["cnt"].astype(float), truth.astype(float), check_names=False)
    instance = server.get("/openapi.json").json()["components"]["schemas"]["PredictRequest_bike_demand"]
    assert "may also carry 'instant' (schema.id_column: integer" in instance["properties"]["instances"]["description"]


def test_ids_repeated_within_a_request_are_a_422_naming_them(server):
    _, rows = _with_ids("2011-06-22", "2011-06-22")
    rows = rows[:4]
    # an integral float is JSON's integer (as for integer inputs): the same id
    rows[2], rows[3] = rows[2] | {"instant": rows[0]["instant"]}, rows[3] | {"instant": float(rows[1]["instant"])}
    reply = server.post("/predict", json={"instances": rows})
    assert reply.status_code == 422 and reply.json()["error"] == "duplicate_ids", reply.text
    detail = reply.json()["detail"]
    assert f"{rows[0]['instant']}, {rows[1]['instant']}" in detail and "schema.id_column" in detail


@pytest.mark.parametrize("hostile", [True, 1.5, None, "4000", {"id": 1}, [1], 2**64])
def test_an_id_that_is_not_the_declared_kind_is_a_422_naming_it(server, hostile):
    _, rows = _with_ids("2011-06-22", "2011-06-22")
    rows = [rows[0], rows[1] | {"instant": hostile}]
    reply = server.post("/predict", json={"instances": rows})
    assert reply.status_code == 422 and reply.json()["error"] == "invalid_instances", reply.text
    assert "instances[1].instant:" in reply.json()["detail"]


def test_a_model_with_a_custom_transformer_serves_and_scores_where_the_team_module_is_not_installed(
    custom_model, tmp_path
):
    """Regression: the server and scoring loaded the spec by importing the team's module, so they failed to start
    where it is not installed, though the model carries it (code_paths). They now check the import path's syntax
    only; training, DAG parsing and `python -m tasks` still import it."""
    import json

    import mlflow
    import pandas as pd

    from tasks.evaluate import evaluate_model
    from tasks.registry import promote

    settings, spec = get_settings(), custom_model["spec"]
    datasets = custom_model["datasets"]
    evaluate_model(spec, settings, custom_model["layout"], custom_model["trained"], datasets.holdout, "run")  # smoke
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    version = mlflow.register_model(custom_model["trained"].model_uri, spec.registered_model_name).version
    promote(settings, spec.registered_model_name, str(version), None, reason="test")
    holdout = pd.read_parquet(datasets.holdout)
    rows = tmp_path / "instances.json"
    rows.write_text(json.dumps(holdout[spec.schema_.input_columns].head(5).to_dict("records")))
    script = (
        "import importlib.util, json, sys\n"
        "assert importlib.util.find_spec('team_features') is None, 'team_features is importable here'\n"
        "from fastapi.testclient import TestClient\n"
        "from tasks import stages\n"
        "from tasks.serving.app import create_app\n"
        "from tasks.settings import get_settings\n"
        "with TestClient(create_app(get_settings(), ['bike_demand'])) as client:\n"
        "    assert client.app.state.service.wait_settled(120)\n"
        "    reply = client.post('/predict', json={'instances': json.loads(open(sys.argv[1]).read())})\n"
        "scored = stages.score_partitions('bike_demand', [sys.argv[2]])\n"
        "print(json.dumps({'status': reply.status_code, 'body': reply.json(), 'scored': scored}))\n"
    )
    out = run_without_team_package(script, str(rows), custom_model["days"][-1], cwd=tmp_path)
    assert out["status"] == 200, out["body"]
    assert len(out["body"]["predictions"]) == 5 and out["body"]["model_version"] == str(version)
    assert out["scored"]["partitions"][0]["rows"] > 0
