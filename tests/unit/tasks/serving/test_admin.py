"""Who may change what the server serves: the admin token, the reload policy applied, the ledger, clean downloads.

The policy itself is tested in test_policy.py, the local stack's token file in tests/unit/plugins/test_localenv.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tasks.ledger import PromotionLedger
from tasks.serving.app import create_app
from tasks.settings import SettingsError, get_settings, load_settings
from tests.conftest import free_port

P = "bike_demand"


# ------------------------------------------------------------------------------------------- the token
def _client(**env: str | None) -> Any:
    """The app with these token variables, its lifespan not run (no background load: auth needs no model)."""
    for var in ("MLP_ADMIN_TOKEN", "MLP_ADMIN_TOKEN_FILE"):
        os.environ.pop(var, None)
    os.environ.update({k: v for k, v in env.items() if v is not None})
    get_settings.cache_clear()
    return nullcontext(TestClient(create_app(get_settings(), [P])))


@pytest.fixture
def token_env(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("MLP_ADMIN_TOKEN", "MLP_ADMIN_TOKEN_FILE"):
        monkeypatch.setenv(var, os.environ.get(var, ""))  # restored afterwards, whatever the test sets
    yield
    get_settings.cache_clear()


def test_no_token_configured_means_admin_is_off_not_open(token_env):
    with _client() as client:
        for headers in ({}, {"Authorization": "Bearer anything-at-all-here"}):
            reply = client.post("/admin/reload", json={"model": P}, headers=headers)
            assert reply.status_code == 403, reply.text
            assert reply.json() == {"detail": "admin API disabled: set MLP_ADMIN_TOKEN", "error": "admin_disabled"}


@pytest.mark.parametrize(
    ("header", "status", "error"),
    [
        (None, 401, "unauthorized"),
        ("Basic dXNlcjpwYXNz", 401, "unauthorized"),
        ("Bearer", 401, "unauthorized"),
        ("Bearer not-the-token-but-long-enough", 403, "forbidden"),
        ("Bearer right-token-0123456789abcde", 403, "forbidden"),  # a prefix of the token is not the token
    ],
)
def test_missing_malformed_or_wrong_token_is_refused(token_env, header, status, error):
    with _client(MLP_ADMIN_TOKEN="right-token-0123456789abcdef") as client:
        headers = {"Authorization": header} if header else {}
        reply = client.post("/admin/reload", json={"model": P}, headers=headers)
        assert (reply.status_code, reply.json()["error"]) == (status, error), reply.text
        if status == 401:
            assert reply.headers["WWW-Authenticate"] == "Bearer"
        assert "right-token" not in reply.text


def test_the_token_file_of_a_mounted_secret_is_read_and_its_newline_stripped(token_env, tmp_path):
    secret = tmp_path / "admin-token"
    secret.write_text("file-token-0123456789abcdef\n")
    with _client(MLP_ADMIN_TOKEN_FILE=str(secret)) as client:
        ok = {"Authorization": "Bearer file-token-0123456789abcdef"}
        assert client.post("/admin/reload", json={"model": "nope"}, headers=ok).status_code == 404  # past auth
        assert get_settings().admin_token.get_secret_value() == "file-token-0123456789abcdef"
        assert "file-token" not in repr(get_settings())  # a SecretStr: never printed with the settings


def test_token_settings_refuse_short_tokens_unreadable_files_and_config_files(token_env, tmp_path, monkeypatch):
    monkeypatch.setenv("MLP_ADMIN_TOKEN", "short")
    with pytest.raises(SettingsError, match="5 characters; use at least 16"):
        load_settings("local")
    monkeypatch.setenv("MLP_ADMIN_TOKEN", "")
    monkeypatch.setenv("MLP_ADMIN_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="cannot read the admin token file"):
        load_settings("local")
    monkeypatch.setenv("MLP_ADMIN_TOKEN_FILE", "")
    config = tmp_path / "config"
    shutil.copytree(Path(__file__).resolve().parents[4] / "config", config)
    with (config / "local" / "settings.yaml").open("a") as f:
        f.write("admin_token: in-a-file-0123456789abcdef\n")
    monkeypatch.setattr("tasks.settings.CONFIG_DIR", config)
    with pytest.raises(SettingsError, match="a secret never goes in settings files; set MLP_ADMIN_TOKEN"):
        load_settings("local")


# ------------------------------------------------------------------------------------------- a private store
@pytest.fixture
def store(champion_store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A copy of the session champion store's registry (artifacts stay where they are): versions, aliases and
    the ledger of this test are its own."""
    root = tmp_path / "data"
    (root / "mlflow").mkdir(parents=True)
    shutil.copyfile(champion_store["root"] / "mlflow" / "mlflow.db", root / "mlflow" / "mlflow.db")
    monkeypatch.setenv("MLP_DATA_ROOT", str(root))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    from tasks.registry import champion

    yield champion_store | {"root": root, "v1": champion(get_settings(), P).version}
    get_settings.cache_clear()


def _register(store: dict[str, Any], alias: str | None = None, model_uri: str | None = None, **tags: str) -> str:
    import mlflow

    from tasks.tracking import client, use_store

    use_store(get_settings())
    version = str(mlflow.register_model(model_uri or store["trained"]["model_uri"], P, tags=tags).version)
    if alias:
        client(get_settings()).set_registered_model_alias(P, alias, version)
    return version


def _reload(client: TestClient, **body: Any) -> Any:
    token = get_settings().admin_token.get_secret_value()
    return client.post("/admin/reload", json={"model": P} | body, headers={"Authorization": f"Bearer {token}"})


def _ledger() -> list[Any]:
    return PromotionLedger(get_settings().ledger_uri).read(P)


def test_only_champion_previous_or_gate_passed_versions_load_and_every_reload_is_recorded(store):
    v1 = store["v1"]
    failed = _register(store, "challenger", **{"gate.passed": "False"})  # what dry-run / disabled modes register
    passed = _register(store, None, **{"gate.passed": "True"})
    rolled = _register(store, "previous", **{"gate.passed": "False"})
    with TestClient(create_app(get_settings(), [P])) as client:
        assert client.app.state.service.wait_settled(120)
        assert client.get("/health").json()["version"] == v1

        refused = _reload(client, version=failed, actor="alice")
        assert refused.status_code == 403 and refused.json()["error"] == "policy_refused", refused.text
        assert f"v{failed} is neither champion nor previous" in refused.json()["detail"]
        assert f"still serving v{v1}" in refused.json()["detail"]
        no_reason = _reload(client, version=failed, force=True, reason="", actor="alice")
        assert no_reason.status_code == 403 and "force needs a non-empty reason" in no_reason.json()["detail"]
        assert client.get("/health").json()["version"] == v1  # nothing was even downloaded

        for version, why in ((passed, "passed its gate"), (rolled, "previous alias"), (v1, "champion alias")):
            done = _reload(client, version=version, actor="airflow:rollback/run-1")
            assert done.status_code == 200 and why in done.json()["why"], done.text
            assert client.get("/health").json()["version"] == version
        forced = _reload(client, version=failed, force=True, reason="incident 42: v1 leaks", actor="bob")
        assert forced.status_code == 200 and forced.json()["why"].startswith("forced: incident 42")

    rows = [(e.action, e.from_version, e.to_version, e.actor) for e in _ledger()]
    assert rows == [
        ("serve_refused", v1, failed, "alice via admin token"),
        ("serve_refused", v1, failed, "alice via admin token"),
        ("serve", v1, passed, "airflow:rollback/run-1 via admin token"),
        ("serve", passed, rolled, "airflow:rollback/run-1 via admin token"),
        ("serve", rolled, v1, "airflow:rollback/run-1 via admin token"),
        ("serve", v1, failed, "bob via admin token"),
    ]
    last = _ledger()[-1]
    assert last.reason == "incident 42: v1 leaks" and last.details["forced"] is True
    assert last.details["smoke_test"]["holdout_rows"] > 0


def _version_without_smoke_sample(store: dict[str, Any]) -> str:
    """The champion's model logged again in a run that has no smoke sample, registered as gate-passed."""
    import mlflow
    from mlflow.models import Model

    from tasks.tracking import use_store

    use_store(get_settings())
    uri = f"models:/{P}/{store['v1']}"
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(store["root"] / "dl"))
    meta = Model.load(local)
    experiment = mlflow.create_experiment("no-smoke", artifact_location=(store["root"] / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(
            mlflow.sklearn.load_model(uri),
            name="model",
            signature=meta.signature,
            input_example=meta.load_input_example(local),
            serialization_format="cloudpickle",
        )
    return _register(store, None, model_uri=info.model_uri, **{"gate.passed": "True"})


def test_a_version_without_its_smoke_sample_is_refused_and_reloads_leave_no_folder_behind(store, monkeypatch):
    unchecked = _version_without_smoke_sample(store)
    other = _register(store, None, **{"gate.passed": "True"})
    tmp = store["root"].parent / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # every temporary folder of this process goes here
    with TestClient(create_app(get_settings(), [P])) as client:
        assert client.app.state.service.wait_settled(120)
        refused = _reload(client, version=unchecked, actor="carol")
        assert refused.status_code == 409 and refused.json()["error"] == "load_failed", refused.text
        assert "smoke sample smoke/holdout_sample.parquet" in refused.json()["detail"]
        assert "refusing to serve" in refused.json()["detail"] and "still serving v" in refused.json()["detail"]
        for version in (other, store["v1"], other):
            assert _reload(client, version=version).status_code == 200
        [downloads] = list(tmp.iterdir())  # the server's own folder, and nothing else
        assert [p.name.startswith(f"{P}-v{other}-") for p in downloads.iterdir()] == [True]  # the served version
    assert list(tmp.iterdir()) == []  # shutdown removes the served version's files too
    refusal = _ledger()[0]
    assert refusal.action == "serve_refused" and refusal.to_version == unchecked and "unchecked" in refusal.reason


def test_no_switch_without_its_ledger_row(store, monkeypatch):
    """The ledger is unreachable: the checked version is not switched to (503, retryable) and the old one serves."""
    with TestClient(create_app(get_settings(), [P])) as client:
        assert client.app.state.service.wait_settled(120)
        monkeypatch.setenv("MLP_LEDGER_URI", f"postgresql://mlp:ledger-pw-123456@127.0.0.1:{free_port()}/ledger")
        get_settings.cache_clear()
        client.app.state.service.settings = get_settings()
        other = _register(store, None, **{"gate.passed": "True"})
        reply = _reload(client, version=other)
        assert reply.status_code == 503 and reply.json()["error"] == "ledger_unavailable", reply.text
        assert reply.headers["Retry-After"] and f"not switching (still serving v{store['v1']})" in reply.text
        assert "ledger-pw-123456" not in reply.text and "mlp:***@127.0.0.1" in reply.text
        assert client.get("/health").json()["version"] == store["v1"]
