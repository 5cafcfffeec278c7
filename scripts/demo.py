"""`make demo`: start the local stack and drive the bike-demand lifecycle through Airflow.

Usage: ``python scripts/demo.py [run|up|story|stop|status|ledger|airflow ARGS...]`` (``run``: up + the story).

The story (all through Airflow's scheduler, driven over its REST API):
  1. replay June 2011 into the landing zone (one day deliberately corrupted) and ingest it, a run per day;
     each run validates its day, and the corrupted one is quarantined on arrival;
  2. train: LightGBM beats the ridge baseline on the good days, v1 becomes champion
     and the model server starts serving it;
  3. serve a week of June 2012 traffic; the delayed labels (June 2012 partitions) land and are ingested;
  4. the nightly monitor sees the drift (2012 is hotter and demand much higher) and requests a retrain;
  5. the retrain on 2012 data becomes champion v2, deployed without restarting anything; its search trials
     (MLflow), the model card's explanations, one explained prediction and one batch-scored day are shown;
  6. a second pipeline from its spec alone: UCI Adult income classification, gated on ROC AUC, calibration
     and per-group gaps over sex and race, with a model card linked from the gate task, served beside bike.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from mlops_airflow.localenv import local_env

REPO = Path(__file__).resolve().parent.parent

STATE = REPO / ".local" / "demo"
PIDS = STATE / "pids.json"
# ports: settings with defaults (MLP_AIRFLOW_PORT, MLP_MLFLOW_PORT, MLP_SERVING_PORT; Airflow's log servers:
# MLP_WORKER_LOG_PORT, MLP_TRIGGER_LOG_PORT in local_env), so a second stack or a test can run beside this one
API_PORT = int(os.environ.get("MLP_AIRFLOW_PORT", "8080"))
MLFLOW_PORT = int(os.environ.get("MLP_MLFLOW_PORT", "5000"))
SERVING_PORT = int(os.environ.get("MLP_SERVING_PORT", "8000"))
API = f"http://localhost:{API_PORT}"
MLFLOW = f"http://localhost:{MLFLOW_PORT}"
SERVER = f"http://127.0.0.1:{SERVING_PORT}"
P = "bike_demand"
BIN = Path(sys.executable).parent
T0 = time.monotonic()
TERMINAL = {"success", "failed"}


def say(msg: str) -> None:
    """Progress line with elapsed time."""
    print(f"[{time.monotonic() - T0:6.0f}s] {msg}", flush=True)  # noqa: T201 - CLI progress


def env() -> dict[str, str]:
    return local_env(STATE, api_port=API_PORT, serving_port=SERVING_PORT)


def _components(e: dict[str, str]) -> dict[str, list[str]]:
    data = Path(e["MLP_DATA_ROOT"])
    return {
        "api-server": [str(BIN / "airflow"), "api-server", "--port", str(API_PORT)],
        "scheduler": [str(BIN / "airflow"), "scheduler"],
        "dag-processor": [str(BIN / "airflow"), "dag-processor"],
        "triggerer": [str(BIN / "airflow"), "triggerer"],
        "mlflow-ui": [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{data / 'mlflow' / 'mlflow.db'}",
            "--default-artifact-root",
            (data / "mlflow" / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(MLFLOW_PORT),
            "--workers",
            "1",
        ],
        "model-server": [
            sys.executable,
            "-m",
            "tasks",
            "serve",
            "--port",
            str(SERVING_PORT),
        ],  # every pipeline's champion
    }


def stop() -> None:
    """Stop every process ``up`` started (by process group)."""
    if not PIDS.is_file():
        print("nothing to stop")  # noqa: T201
        return
    for name, pid in json.loads(PIDS.read_text()).items():
        try:
            os.killpg(pid, signal.SIGTERM)
            print(f"stopped {name} (pid {pid})")  # noqa: T201
        except ProcessLookupError:
            pass
    time.sleep(3)
    for pid in json.loads(PIDS.read_text()).values():
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    PIDS.unlink()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 180, every: float = 2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}; logs: {STATE / 'logs'}")


def up() -> None:
    """Fresh state, migrate the metadata DB, start Airflow, the MLflow UI and the model server."""
    if PIDS.is_file():
        stop()
    if STATE.exists():
        say(f"removing the previous demo state in {STATE}")
        shutil.rmtree(STATE)
    (STATE / "logs").mkdir(parents=True)
    e = env()
    backend = "SQLite" if e["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite") else "PostgreSQL"
    say(f"airflow db migrate (Airflow metadata on {backend})")
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=e, check=True, capture_output=True)
    say("initialise the MLflow store (SQLite) before its readers start")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from tasks.settings import get_settings; from tasks.tracking import "
            "ensure_store; ensure_store(get_settings())",
        ],
        env=e,
        check=True,
        capture_output=True,
    )
    pids = {}
    for name, cmd in _components(e).items():
        log = open(STATE / "logs" / f"{name}.log", "w")  # noqa: SIM115 - handed to the child process
        pids[name] = subprocess.Popen(
            cmd, env=e, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        ).pid
    PIDS.write_text(json.dumps(pids))
    say(f"started {', '.join(pids)}; logs in {STATE / 'logs'}")
    wait_for("the Airflow API server", lambda: httpx.get(f"{API}/api/v2/monitor/health").status_code == 200)
    wait_for(
        "the DAGs to be parsed",
        lambda: all(httpx.get(f"{API}/api/v2/dags/{P}_{s}").status_code == 200 for s in ("ingest", "train", "monitor")),
    )
    wait_for("the MLflow UI", lambda: httpx.get(f"{MLFLOW}/health").status_code == 200)
    wait_for("the model server", lambda: httpx.get(f"{SERVER}/health").status_code == 200)
    say(f"stack is up: Airflow {API}  MLflow {MLFLOW}  model server {SERVER}")


# ---- Airflow REST helpers -------------------------------------------------------------------------


def api(method: str, path: str, **kw: Any) -> Any:
    """Call Airflow's REST API, riding out SQLite write locks.

    With SQLite metadata a write can meet the scheduler's lock: Airflow answers 503 or a 500 "Database
    error" and nothing was written, so the call is retried. A 409 on a retry means an earlier attempt
    did land (same logical date), which is what we wanted.
    """
    for attempt in range(30):
        r = httpx.request(method, f"{API}/api/v2{path}", timeout=30, **kw)
        busy = r.status_code == 503 or (r.status_code == 500 and "Database error" in r.text)
        if not busy:
            break
        say(f"  Airflow metadata DB busy (SQLite lock), retrying {method} {path} ({attempt + 1})")
        time.sleep(2)
    if r.status_code == 409 and attempt > 0:
        return {}
    if r.status_code >= 400:
        raise SystemExit(f"Airflow API {method} {path}: HTTP {r.status_code} {r.text}")
    return r.json()


def unpause(dag_id: str) -> None:
    api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})


def runs(dag_id: str, **params: Any) -> list[dict[str, Any]]:
    """Every run of the DAG, oldest first, page by page (the API returns at most 100 a page).

    Ordered by id, so a run created while the pages are read lands after them and shifts none. (Reading only
    the newest 100 hid every run beyond them: a 365-day ingest never looked finished.)
    """
    found: list[dict[str, Any]] = []
    while True:
        page_params = {**params, "limit": 100, "offset": len(found), "order_by": "id"}
        reply = api("GET", f"/dags/{dag_id}/dagRuns", params=page_params)
        found += reply["dag_runs"]
        if not reply["dag_runs"] or len(found) >= reply["total_entries"]:  # not "< 100": the server may cap pages
            return found


def task_states(dag_id: str, run_id: str) -> list[dict[str, Any]]:
    return api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]


def wait_runs(
    dag_id: str, expect: int, since: str, timeout: float = 900, keys: set[str] | None = None
) -> list[dict[str, Any]]:
    """Wait until ``expect`` runs created after ``since`` (of partition ``keys``) have finished, printing progress.

    ``keys`` leaves out the run Airflow makes for yesterday's key when the ingest DAG is unpaused (the demo's
    landing zone has no file for yesterday: its sensor fails at once after the deadline, noon UTC with ``@daily``,
    and waits until then before it).
    """
    last = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = [r for r in runs(dag_id) if (r.get("queued_at") or "") >= since]
        current = [r for r in current if keys is None or r.get("partition_key") in keys]
        done = [r for r in current if r["state"] in TERMINAL]
        line = f"{dag_id}: {len(done)}/{expect} runs finished ({sum(r['state'] == 'failed' for r in done)} failed)"
        if line != last:
            say(line)
            last = line
        if len(done) >= expect:
            return current
        time.sleep(3)
    raise SystemExit(f"timed out waiting for {dag_id}; see the Airflow UI at {API}")


def wait_idle(dag_id: str, since: str, quiet_s: float = 20, timeout: float = 900) -> list[dict[str, Any]]:
    """Wait until the DAG has had no queued/running run for ``quiet_s`` seconds, printing each task's progress."""
    seen: dict[tuple[str, str], str] = {}
    finished: set[str] = set()
    quiet_from = time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = [r for r in runs(dag_id) if (r.get("queued_at") or "") >= since]
        for r in current:
            if r["dag_run_id"] in finished:
                continue
            for ti in task_states(dag_id, r["dag_run_id"]):
                key = (r["dag_run_id"], ti["task_id"])
                state = ti["state"] or "none"
                if state != seen.get(key, "none"):
                    seen[key] = state
                    took = f" in {ti['duration']:.1f}s" if ti.get("duration") else ""
                    say(f"  {dag_id} [{r['run_type']}] {ti['task_id']:<18} {state}{took}")
            if r["state"] in TERMINAL:
                finished.add(r["dag_run_id"])
                say(f"  {dag_id} run {r['dag_run_id']}: {r['state']}")
        if any(r["state"] not in TERMINAL for r in current):
            quiet_from = time.monotonic()
        elif time.monotonic() - quiet_from > quiet_s:
            return current
        time.sleep(3)
    raise SystemExit(f"timed out waiting for {dag_id} to go idle; see {API}")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))


# ---- the story -----------------------------------------------------------------------------------


def stage(name: str, pipeline: str = P, **kwargs: Any) -> Any:
    """Run a stage function in a subprocess with the stack's environment (replay is a data-delivery tool)."""
    out = subprocess.run(
        [sys.executable, "-m", "tasks", name, "--pipeline", pipeline, "--args", json.dumps(kwargs)],
        env=env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def ingest_partitions(start: str, end: str, pipeline: str = P) -> None:
    """One ``bike_demand_ingest`` run per day, each with the day as its partition key.

    ``airflow backfill create`` does the same job, but on SQLite Airflow cannot create a backfill while the
    scheduler writes (it answers 503 "use PostgreSQL or MySQL", and a retried attempt can leave duplicate
    runs behind), so the embedded demo triggers the daily runs itself.
    """
    from datetime import date, timedelta

    d0, d1 = date.fromisoformat(start), date.fromisoformat(end)
    days = [(d0 + timedelta(days=i)).isoformat() for i in range((d1 - d0).days + 1)]
    since = now_iso()
    say(f"{pipeline}_ingest: one run per day {start}..{end} ({len(days)} runs)")
    for day in days:
        body = {"logical_date": f"{day}T00:00:00Z", "partition_key": day}
        api("POST", f"/dags/{pipeline}_ingest/dagRuns", json=body)
    wait_runs(f"{pipeline}_ingest", len(days), since, timeout=900 + 5 * len(days), keys=set(days))


def serve_traffic(start: str, end: str) -> tuple[str, float]:
    """POST the real rows of [start, end] to /predict, one request per day; return version and MAE vs truth."""
    import pandas as pd

    data = pd.read_csv(REPO.parent / "shared" / "datasets" / "bike_sharing_hour.csv.gz")
    rows = data[(data.dteday >= start) & (data.dteday <= end)]
    inputs = [c for c in rows.columns if c not in {"instant", "casual", "registered", "cnt"}]
    errors, version = [], ""
    for _, day in rows.groupby("dteday"):
        reply = httpx.post(f"{SERVER}/predict", json={"instances": day[inputs].to_dict("records")}, timeout=30)
        reply.raise_for_status()
        body = reply.json()
        version = body["model_version"]
        errors += [abs(p - y) for p, y in zip(body["predictions"], day["cnt"], strict=True)]
    return version, sum(errors) / len(errors)


def health() -> dict[str, Any]:
    return httpx.get(f"{SERVER}/health", timeout=10).json()


def story() -> None:
    say("1/6 replay June 2011 into the landing zone (2011-06-08 deliberately corrupted)")
    stage("replay", start="2011-05-30", end="2011-06-26", corrupt=["2011-06-08"])
    unpause(f"{P}_ingest")
    ingest_partitions("2011-05-30", "2011-06-26")

    say("2/6 train the first model (validation -> features -> LightGBM + ridge -> gate -> registry -> deploy)")
    since = now_iso()
    unpause(f"{P}_train")
    api("POST", f"/dags/{P}_train/dagRuns", json={"logical_date": None, "conf": {}})
    wait_idle(f"{P}_train", since)
    for path in sorted((Path(env()["MLP_DATA_ROOT"]) / "quarantine" / P).glob("dt=*/*/reasons.json")):
        q = json.loads(path.read_text())
        broken = "; ".join(
            f"{f['expectation']}({f['column']}): {f['unexpected_count']}/{f['element_count']} rows"
            for f in q["failures"]
        )
        say(f"quarantined {q['partition']}: {broken}")
        say("  -> on arrival: that day's ingest run fails at report_quarantine on purpose; training never saw it")
    h = health()
    if not h.get("version"):
        raise SystemExit(f"no champion is being served after training: {h}; see {API}")
    say(f"model server serves {h['model']} v{h['version']}")

    say("3/6 serve a week of June 2012 traffic, then the delayed labels land and are ingested")
    v1, mae1 = serve_traffic("2012-06-18", "2012-06-24")
    say(f"served 168 hourly requests with v{v1}: mean absolute error vs actual demand {mae1:.1f} rentals/hour")
    stage("replay", start="2012-05-28", end="2012-06-24")
    since = now_iso()
    ingest_partitions("2012-05-28", "2012-06-24")
    wait_idle(f"{P}_train", since)

    say("4/6 the nightly monitor for 2012-06-25 compares served traffic with v1's training data")
    since = now_iso()
    unpause(f"{P}_monitor")
    run = api("POST", f"/dags/{P}_monitor/dagRuns", json={"logical_date": "2012-06-25T02:00:00Z", "conf": {}})
    wait_idle(f"{P}_monitor", since, quiet_s=5)
    summary_path = Path(env()["MLP_DATA_ROOT"]) / "monitoring" / P / _safe(run["dag_run_id"]) / "summary.json"
    summary = json.loads(summary_path.read_text())
    say(f"drift check: {summary['status']} - {summary.get('reason')}; drifted: {summary.get('drifted_columns')}")
    pred = summary.get("prediction_drift") or {}
    if pred.get("score") is not None:
        say(
            f"prediction drift: Wasserstein {pred['score']:.3f} (threshold {pred['threshold']}); input quality: "
            + ("; ".join(summary["input_quality"]["breaches"]) or "no breach")
        )
    say(f"violations: {', '.join(summary.get('violations') or []) or 'none'} -> {summary.get('decision')}")

    say("5/6 the retrain request schedules bike_demand_train on 2012 data")
    wait_idle(f"{P}_train", since)
    h = health()
    v2, mae2 = serve_traffic("2012-06-18", "2012-06-24")
    models = models_story()
    quarantined = sorted(p.name for p in (Path(env()["MLP_DATA_ROOT"]) / "quarantine" / P).glob("dt=*"))
    adult = adult_story()
    print(
        f"""
================================================================================
 Done in {time.monotonic() - T0:.0f}s. The bike-demand lifecycle ran through Airflow on real data.
   champion before drift : v{v1}  MAE on the served June 2012 week {mae1:6.1f}
   champion after retrain: v{v2}  MAE on the same week            {mae2:6.1f}
   quarantined partitions: {", ".join(quarantined) or "none"} (reasons.json beside each)

 Look around:
   Airflow UI      {API}            (DAGs bike_demand_ingest / _train / _score / _monitor; no login locally)
   MLflow UI       {MLFLOW}            (experiment bike_demand; model bike_demand @champion)
   adult_income    v{adult["version"]} ROC AUC {adult["auc"]:.3f} on its holdout; gate {adult["verdicts"]}
   Model card      {adult["card"]}
   Search          {models["search"]}
   Explanations    {models["card"]}  (section "Explanations"; plot {models["plot"]})
   Batch scores    {models["scored"]}
   Drift report    {summary.get("report_url") or summary.get("report_html")}  (check_drift's "Drift report" link)
   Model endpoint  {SERVER}/health   POST {SERVER}/predict (bike)   POST {SERVER}/models/adult_income/predict
   Ledger          make ledger      (every promotion, lost race, rejection and rollback: who, when, why)
   Roll back       the 'rollback' DAG in the Airflow UI (param pipeline; optional version)
   Data root       {env()["MLP_DATA_ROOT"]}  (landing/ raw/ quarantine/ runs/ scores/ monitoring/ serving/)

 Try it:  curl -s {SERVER}/health
 Stop everything with: make stop
================================================================================""",
        flush=True,
    )  # noqa: T201


def mlflow_api(method: str, path: str, **kw: Any) -> Any:
    reply = httpx.request(method, f"{MLFLOW}/api/2.0/mlflow/{path}", timeout=30, **kw)
    reply.raise_for_status()
    return reply.json()


def search_summary() -> str:
    """The champion's training run: its search trials (nested MLflow runs) and the parameters it chose."""
    experiment = mlflow_api("GET", "experiments/get-by-name", params={"experiment_name": P})["experiment"]
    ids = [experiment["experiment_id"]]
    found = mlflow_api(
        "POST",
        "runs/search",
        json={
            "experiment_ids": ids,
            "filter": "tags.role = 'candidate'",
            "order_by": ["start_time DESC"],
            "max_results": 1,
        },
    ).get("runs", [])
    if not found:
        return "(no candidate run found)"
    run = found[0]
    run_id = run["info"]["run_id"]
    trials = mlflow_api(
        "POST",
        "runs/search",
        json={"experiment_ids": ids, "filter": f"tags.mlflow.parentRunId = '{run_id}'", "max_results": 1000},
    ).get("runs", [])
    params = {
        p["key"][len("model.") :]: p["value"] for p in run["data"].get("params", []) if p["key"].startswith("model.")
    }
    return f"{len(trials)} trials nested under run {run_id[:8]} (MLflow); chosen: {params}"


def models_story() -> dict[str, str]:
    """Search trials, the model card's explanations, one explained prediction and one batch-scored day."""
    say("   the champion's search, its explanations, one explained prediction, one batch-scored day")
    search = search_summary()
    say(f"  search: {search}")
    root = Path(env()["MLP_DATA_ROOT"])
    cards = sorted((root / "runs" / P).glob("*/model_card.html"), key=lambda p: p.stat().st_mtime)
    plots = sorted((root / "runs" / P).glob("*/explanations/importance.png"), key=lambda p: p.stat().st_mtime)
    card, plot = (str(cards[-1]) if cards else "(none)"), (str(plots[-1]) if plots else "(none)")
    say(f"  model card with its Explanations section: {card}")
    import pandas as pd

    data = pd.read_csv(REPO.parent / "shared" / "datasets" / "bike_sharing_hour.csv.gz")
    row = data[(data.dteday == "2012-06-24") & (data.hr == 18)].drop(columns=["instant", "casual", "registered", "cnt"])
    body = {"instances": row.to_dict("records"), "explain": True, "top_k": 3}
    reply = httpx.post(f"{SERVER}/predict", json=body, timeout=30).json()
    reasons = ", ".join(f"{r['feature']}={r['value']} ({r['contribution']:+.0f})" for r in reply["explanations"][0])
    say(f"  explained: 2012-06-24 18:00 -> {reply['predictions'][0]:.0f} rentals/hour; top reasons {reasons}")
    day, since = "2012-06-24", now_iso()
    unpause(f"{P}_score")
    api("POST", f"/dags/{P}_score/dagRuns", json={"logical_date": None, "conf": {"partition": day}})
    wait_idle(f"{P}_score", since, quiet_s=5)
    manifest = root / "scores" / P / f"dt={day}" / "scored.json"
    if not manifest.is_file():
        raise SystemExit(f"{P}_score wrote no scores for {day}; see {API}")
    scored = json.loads(manifest.read_text())
    where = f"{manifest.parent / scored['file']} ({scored['rows']} rows, model v{scored['model_version']})"
    say(f"  batch-scored {day}: {where}")
    return {"search": search, "card": card, "plot": plot, "scored": where}


A = "adult_income"


def adult_story() -> dict[str, Any]:
    """The second pipeline, from its spec alone: 14 days of UCI Adult, one training run, one prediction."""
    say("6/6 adult_income: a classification pipeline from a spec and a suite (UCI Adult, 2,000 rows a day)")
    stage("replay", A, start="2024-01-01", end="2024-01-14")
    unpause(f"{A}_ingest")
    ingest_partitions("2024-01-01", "2024-01-14", A)
    since = now_iso()
    unpause(f"{A}_train")
    api("POST", f"/dags/{A}_train/dagRuns", json={"logical_date": None, "conf": {}})
    wait_idle(f"{A}_train", since)
    gate = json.loads(
        max(
            (Path(env()["MLP_DATA_ROOT"]) / "runs" / A).glob("*/gate.json"), key=lambda p: p.stat().st_mtime
        ).read_text()
    )
    for c in gate["checks"]:
        say(f"  gate [{'PASS' if c['passed'] else 'FAIL'}] {c['name']}: {c['reason']}")
    version = health()["models"].get(A, {}).get("version")
    if not version:
        raise SystemExit(f"adult_income is not served after training; see {API}")
    row = {"age": 45, "workclass": "Private", "education": "Masters", "education-num": 14,
           "marital-status": "Married-civ-spouse", "occupation": "Exec-managerial", "relationship": "Husband",
           "capital-gain": 0, "capital-loss": 0, "hours-per-week": 50, "native-country": "United-States"}  # fmt: skip
    reply = httpx.post(f"{SERVER}/models/{A}/predict", json={"instances": [row]}, timeout=30).json()
    say(f"  P(income >50K) for a 45-year-old married manager with a master's degree: {reply['predictions'][0]:.2f}")
    links = api("GET", f"/dags/{A}_train/dagRuns", params={"limit": 1, "order_by": "-run_after"})["dag_runs"]
    card = ""
    if links:
        found = api("GET", f"/dags/{A}_train/dagRuns/{links[0]['dag_run_id']}/taskInstances/gate_model/links")
        card = (found.get("extra_links") or {}).get("Model card", "")
    passed = sum(c["passed"] for c in gate["checks"])
    return {
        "version": version,
        "auc": gate["metrics"]["candidate"]["roc_auc"],
        "verdicts": f"{passed}/{len(gate['checks'])} checks passed",
        "card": card or "(see the gate_model task's 'Model card' link)",
    }


def _safe(run_id: str) -> str:
    from tasks.storage import safe_key

    return safe_key(run_id)


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) > 1 else "run"
    if cmd == "stop":
        stop()
    elif cmd == "up":
        up()
    elif cmd == "status":
        print(json.dumps(health(), indent=2))  # noqa: T201
    elif cmd == "airflow":  # the Airflow CLI against the demo stack's metadata DB and settings
        raise SystemExit(subprocess.call([str(BIN / "airflow"), *sys.argv[2:]], env=env(), cwd=REPO))
    elif cmd == "ledger":  # the promotion ledger of the demo stack
        raise SystemExit(subprocess.call([sys.executable, "-m", "tasks", "ledger", *sys.argv[2:]], env=env(), cwd=REPO))
    elif cmd == "story":
        story()
    elif cmd == "run":
        up()
        story()
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
