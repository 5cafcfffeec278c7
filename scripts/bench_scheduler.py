"""`make bench` scheduler section: bike_demand through the demo stack's real scheduler, in three configurations.

Each configuration starts the demo's stack (Airflow api-server, scheduler, dag-processor, triggerer on SQLite
with the LocalExecutor; MLflow; the model server) in its own temporary folder on free ports, so a running
``make demo`` is left alone, then:

* ingests 28 days of bike_demand, one run per partition key, 8 at a time (wall time and seconds per day);
* runs the training DAG ``--scheduler-train-runs`` times (the first one cold, the others with ``force``: those
  retrain on the same days, tie with the champion and fail at the gate, by design, in both places);
  per run: wall time (run start to end), the sum of its task bodies (from each task log's "DAG bundles
  loaded" to its last line: imports a task does itself included), the same stages called in one warm process
  (``1 proc s``: imports paid before the clock; no deploy to the model server), the wall time over that, and
  the seconds in which no task of the run was running (the scheduler's hops between tasks);
* measures the idle scheduler's CPU for 20 s after the runs.

Configurations: ``before`` = task processes forked without the preloading forkserver
(``mp_start_method=fork``, nothing preloaded), the scheduler's default 1 s idle sleep, the supervisor's default
5 s ``min_heartbeat_interval`` and the MLflow server's default job runner; ``no-freeze`` = the
preloading forkserver without its last module, ``mlops_airflow.gc_freeze``; ``after`` = what
``mlops_airflow.localenv`` sets today. Plugin discovery (``plugins/.airflowignore``) is on in all three. Each
configuration runs once, in this order: read the figures as one run each, not as a distribution.

    python scripts/bench.py --scheduler-only [--scheduler-train-runs 3]

``--scheduler-year POSTGRES_URL`` (``scripts/bench.py``) instead ingests a year (365 days of 2011) as configured,
with Airflow's metadata on a fresh database of that PostgreSQL server (the embedded SQLite stack does not take
365 runs created at once: its scheduler died on "database is locked" once in two tries), against the same
ingests in one warm process; the database is dropped afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins"))
from mlops_airflow.localenv import PRELOAD  # noqa: E402 - no Airflow import: it only builds the environment

assert PRELOAD[-1] == "mlops_airflow.gc_freeze"
DAYS = ("2011-05-30", "2011-06-26")
CONFIGS: dict[str, dict[str, str]] = {
    "before": {
        "AIRFLOW__SCHEDULER__MP_START_METHOD": "fork",
        "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": "",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "1",
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "5",  # Airflow's defaults
        "AIRFLOW__WORKERS__MAX_FAILED_HEARTBEATS": "3",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true",  # MLflow's default: its idle job runner
    },
    # everything but the last step: the preloaded heap is left to each task process's garbage collector
    "no-freeze": {"AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": ",".join(PRELOAD[:-1])},
    "after": {},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _body_seconds(log: Path) -> float | None:
    """A task log's body: from "DAG bundles loaded" (the task runner is up) to its last line."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    stamps = [(str(line.get("event", "")), _ts(line["timestamp"])) for line in lines if "timestamp" in line]
    start = next((t for event, t in stamps if "DAG bundles loaded" in event), None)
    return (stamps[-1][1] - start).total_seconds() if start and stamps else None


def _idle_seconds(wall_start: datetime, wall_end: datetime, intervals: list[tuple[datetime, datetime]]) -> float:
    """Seconds of the run in which none of its tasks was running."""
    covered, current = 0.0, None
    for a, b in sorted(intervals):
        if current is None or a > current[1]:
            covered += (current[1] - current[0]).total_seconds() if current else 0.0
            current = [a, b]
        else:
            current[1] = max(current[1], b)
    covered += (current[1] - current[0]).total_seconds() if current else 0.0
    return (wall_end - wall_start).total_seconds() - covered


def _train_run(demo: Any, run_id: str) -> dict[str, Any]:
    dag = f"{demo.P}_train"
    run = demo.api("GET", f"/dags/{dag}/dagRuns/{run_id}")
    tis = demo.api("GET", f"/dags/{dag}/dagRuns/{run_id}/taskInstances")["task_instances"]
    ran = [t for t in tis if t.get("start_date") and t.get("end_date")]
    bodies = []
    for t in ran:
        logs = sorted((demo.STATE / "logs" / "airflow").glob(f"dag_id={dag}/run_id={run_id}/task_id={t['task_id']}/*"))
        body = _body_seconds(logs[-1]) if logs else None
        bodies.append(body if body is not None else float(t["duration"] or 0))
    start, end = _ts(run["start_date"]), _ts(run["end_date"])
    wall = (end - start).total_seconds()
    failed = {}
    for t in tis:
        if t["state"] in ("failed", "upstream_failed"):
            pattern = f"dag_id={dag}/run_id={run_id}/task_id={t['task_id']}/*"
            logs = sorted((demo.STATE / "logs" / "airflow").glob(pattern))
            lines = [json.loads(ln) for ln in (logs[-1].read_text().splitlines() if logs else []) if ln.startswith("{")]
            errors = [str(ln.get("event", ""))[:300] for ln in lines if ln.get("level") == "error"]
            failed[t["task_id"]] = errors[-1] if errors else t["state"]
    return {
        "state": run["state"],
        "failed": failed,
        "wall_s": wall,
        "tasks": len(ran),
        "bodies_s": sum(bodies),
        "durations_s": sum(float(t["duration"] or 0) for t in ran),
        "no_task_running_s": _idle_seconds(start, end, [(_ts(t["start_date"]), _ts(t["end_date"])) for t in ran]),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children that were waited for (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _demo_stack(work: Path, overrides: dict[str, str]) -> Any:
    """``scripts/demo.py`` set up for a stack of its own: free ports, ``overrides``, its state under ``work``.

    The caller restores ``os.environ`` afterwards.
    """
    os.environ.update(
        {
            "MLP_AIRFLOW_PORT": str(_free_port()),
            "MLP_MLFLOW_PORT": str(_free_port()),
            "MLP_SERVING_PORT": str(_free_port()),
            "MLP_WORKER_LOG_PORT": str(_free_port()),
            "MLP_TRIGGER_LOG_PORT": str(_free_port()),
            **overrides,
        }
    )
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(var, None)
    sys.path.insert(0, str(REPO / "scripts"))
    sys.modules.pop("demo", None)
    import demo  # the ports are read when it is imported

    demo.STATE, demo.PIDS = work / "demo", work / "demo" / "pids.json"
    return demo


def _in_process(code: str, data_root: Path) -> Any:
    """Run ``code`` in a fresh interpreter with the demo's environment on ``data_root``; its ``INPROC`` JSON."""
    import subprocess

    sys.path.insert(0, str(REPO / "scripts"))
    import demo

    env = demo.env() | {"MLP_DATA_ROOT": str(data_root)}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(var, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("INPROC ")), None)
    if line is None:
        raise SystemExit(f"the in-process reference failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(line[len("INPROC ") :])


def _timed_ingest(demo: Any, first: str, last: str) -> float:
    """Land the days' files, then the wall time of one ingest run per day (8 at a time) under the scheduler."""
    demo.stage("replay", start=first, end=last)
    demo.unpause(f"{demo.P}_ingest")
    started = time.monotonic()
    demo.ingest_partitions(first, last)
    return time.monotonic() - started


def measure(name: str, overrides: dict[str, str], train_runs: int) -> dict[str, Any]:
    """One configuration, start to stop, in its own folder and ports."""
    saved = dict(os.environ)
    work = Path(tempfile.mkdtemp(prefix=f"mlp-bench-scheduler-{name}-"))
    demo = _demo_stack(work, overrides)
    result: dict[str, Any] = {"config": name, "overrides": overrides}
    try:
        demo.up()
        result["ingest_s"] = _timed_ingest(demo, *DAYS)
        demo.unpause(f"{demo.P}_train")
        runs = []
        for i in range(train_runs):
            since = demo.now_iso()
            conf = {"force": True} if i else {}
            run = demo.api("POST", f"/dags/{demo.P}_train/dagRuns", json={"logical_date": None, "conf": conf})
            demo.wait_idle(f"{demo.P}_train", since, quiet_s=3)
            runs.append(_train_run(demo, run["dag_run_id"]))
        result["train"] = runs
        scheduler = json.loads(demo.PIDS.read_text())["scheduler"]
        before = _cpu_seconds(scheduler)
        time.sleep(20)
        result["idle_scheduler_cpu"] = (_cpu_seconds(scheduler) - before) / 20
    finally:
        demo.stop()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(work, ignore_errors=True)
    return result


IN_PROCESS = """
import json, sys, time
from datetime import date, timedelta
sys.path.insert(0, {repo!r})
from tasks import stages
P, runs = "bike_demand", {runs}
start, end = (date.fromisoformat(d) for d in {days!r})
stages.replay(P, start.isoformat(), end.isoformat())
for d in range((end - start).days + 1):
    stages.ingest_partition(P, (start + timedelta(d)).isoformat())
import tasks.evaluate, tasks.features, tasks.gate, tasks.registry, tasks.train, tasks.validate
import great_expectations, lightgbm, mlflow.sklearn, optuna, shap
from tasks.gate import GateFailedError
times = []
for i in range(runs):
    key = "inproc-%d" % i
    t0 = time.perf_counter()
    plan = stages.plan_training(P, force=i > 0)
    valid = stages.validate_data(P, plan["partitions"], key)["valid"]
    datasets = stages.build_features(P, valid, key)
    trained = stages.train_model(P, datasets, key, {{"airflow.run_id": key}})
    evaluation = stages.evaluate_model(P, trained, datasets, key)
    try:
        gated = stages.gate_model(P, trained, datasets, evaluation, key)
    except GateFailedError:  # a forced retrain on the same days ties with the champion: the run stops here too
        times.append(time.perf_counter() - t0)
        continue
    registered = stages.register_model(P, trained, gated)
    stages.promote_model(P, registered["version"], gated["decision"])
    times.append(time.perf_counter() - t0)
print("INPROC " + json.dumps(times))
"""


YEAR = ("2011-01-01", "2011-12-31")
IN_PROCESS_INGEST = """
import json, sys, time
from datetime import date, timedelta
sys.path.insert(0, {repo!r})
from tasks import stages
import tasks.ingest, tasks.validate, great_expectations, pandas
start, end = (date.fromisoformat(d) for d in {days!r})
stages.replay("bike_demand", start.isoformat(), end.isoformat())
t0 = time.perf_counter()
for d in range((end - start).days + 1):
    stages.ingest_partition("bike_demand", (start + timedelta(d)).isoformat())
print("INPROC " + json.dumps(time.perf_counter() - t0))
"""


def year(postgres: str, config: str = "after") -> dict[str, Any]:
    """A year of bike_demand ingest under the real scheduler, metadata on a fresh PostgreSQL database."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"mlp_bench_year_{os.getpid()}"
    server = make_url(postgres).set(drivername="postgresql+psycopg2")
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    days = (datetime.fromisoformat(YEAR[1]) - datetime.fromisoformat(YEAR[0])).days + 1
    saved = dict(os.environ)
    work = Path(tempfile.mkdtemp(prefix="mlp-bench-year-"))
    result: dict[str, Any] = {"config": config, "days": days, "metadata": "postgresql"}
    try:
        result["in_process_s"] = float(
            _in_process(IN_PROCESS_INGEST.format(repo=str(REPO), days=YEAR), work / "inproc")
        )
        print(f"a year of ingests in one warm process: {result['in_process_s']:.1f} s", flush=True)  # noqa: T201
        demo = _demo_stack(work, {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url, **CONFIGS[config]})
        try:
            demo.up()
            result["wall_s"] = _timed_ingest(demo, *YEAR)
            logs = (demo.STATE / "logs" / "airflow").glob(f"dag_id={demo.P}_ingest/run_id=*/task_id=*/*")
            bodies = [b for b in map(_body_seconds, logs) if b is not None]
            result["tasks"], result["bodies_s"] = len(bodies), sum(bodies)
        finally:
            demo.stop()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(work, ignore_errors=True)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return result


def print_year(r: dict[str, Any]) -> None:
    """The year's figures: wall time, per day, the task bodies' sum and the same ingests in one process."""
    days = r["days"]
    print(  # noqa: T201 - the benchmark's output
        f"a year of bike_demand ingest ({days} runs, 8 at a time, metadata on PostgreSQL, {r['config']}): "
        f"{r['wall_s']:.0f} s, {r['wall_s'] / days:.2f} s a day; {r['tasks']} task bodies {r['bodies_s']:.0f} s "
        f"({r['bodies_s'] / days:.2f} s a day); the same ingests in one warm process {r['in_process_s']:.0f} s "
        f"({r['in_process_s'] / days:.2f} s a day): wall / one process {r['wall_s'] / r['in_process_s']:.1f}x"
    )


def in_process(train_runs: int) -> list[float]:
    """The same training stages called in one warm process (imports paid before the clock), per run."""
    work = Path(tempfile.mkdtemp(prefix="mlp-bench-scheduler-inproc-"))
    try:
        code = IN_PROCESS.format(repo=str(REPO), runs=train_runs, days=DAYS)
        return [float(x) for x in _in_process(code, work / "data")]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(train_runs: int = 3) -> list[dict[str, Any]]:
    reference = in_process(train_runs)
    print(f"the training stages in one warm process: {', '.join(f'{t:.1f} s' for t in reference)}", flush=True)  # noqa: T201
    results = [measure(name, overrides, train_runs) for name, overrides in CONFIGS.items()]
    for r in results:
        r["in_process_s"] = reference
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    """Per configuration: the 28-day ingest, each training run against the same stages in one process."""
    days = 28
    header = (
        f"{'scheduler':<10} {'what':<22} {'wall s':>8} {'bodies s':>9} {'1 proc s':>8} {'ratio':>6} {'no task s':>10}"
    )
    print(header)  # noqa: T201 - the benchmark's output
    print("-" * len(header))  # noqa: T201
    for r in results:
        ingest = f"{r['config']:<10} {f'ingest {days} days':<22} {r['ingest_s']:>8.1f}"
        print(f"{ingest}{'':>40}{r['ingest_s'] / days:.2f} s/day")  # noqa: T201
        for i, t in enumerate(r["train"]):
            label = f"train run {i + 1} ({'cold' if i == 0 else 'force'})"
            work = r["in_process_s"][i]
            print(  # noqa: T201
                f"{r['config']:<10} {label:<22} {t['wall_s']:>8.1f} {t['bodies_s']:>9.1f} {work:>8.1f} "
                f"{t['wall_s'] / work:>5.2f}x {t['no_task_running_s']:>10.1f}  {t['tasks']} tasks, {t['state']}"
            )
            for task, error in t["failed"].items():
                print(f"{'':<11}{task} failed: {error}")  # noqa: T201
        print(f"{r['config']:<10} {'idle scheduler CPU':<22} {r['idle_scheduler_cpu'] * 100:>7.1f}% of a core")  # noqa: T201
    if len(results) >= 2:
        a, b = results[0], results[-1]

        def ratio(r: dict[str, Any], forced: bool) -> str:
            pairs = list(zip(r["train"], r["in_process_s"], strict=False))
            pairs = pairs[1:] if forced else pairs[:1]
            return f"{statistics.median(t['wall_s'] / w for t, w in pairs):.2f}x" if pairs else "-"

        was = ", ".join(f"{r['config']} {ratio(r, False)} / {ratio(r, True)}" for r in results[:-1])
        print(  # noqa: T201
            f"{b['config']} vs {a['config']}: ingest {a['ingest_s'] / b['ingest_s']:.2f}x faster. Under the scheduler "
            f"/ the same stages in one warm process: the full training run {ratio(b, False)}, the forced re-runs "
            f"that stop at the gate (median) {ratio(b, True)} ({was})"
        )


if __name__ == "__main__":
    print_table(run(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
