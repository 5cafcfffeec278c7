"""`make bench`'s start-up section: what a stage pays before it works, and a backfill with the cache cold and warm.

stage imports   for each stage, a fresh interpreter importing what that stage's call imports (its module and
                the heavy libraries it loads lazily), median of 3 with warm bytecode: what every Airflow task
                or pod of that stage pays before its first line of work. ``validate (judged)`` is a batch
                without a kept verdict (Great Expectations runs); ``validate (verdict kept)`` one whose verdict
                is in ``cache/`` (no suite, no pandas).
backfill        ``--backfill-days`` days of bike_demand replayed into an empty data root, each day ingested
                and validated the way one ingest run does it (``ingest_partitions`` then ``validate_partitions``):
                in one process with the cache cold (every batch judged), then again warm (every verdict kept),
                then warm as two ``python -m tasks`` processes per day (each stage a fresh interpreter),
                then warm as two processes per day forked from a forkserver that preloaded the stage
                libraries (how the local stack's LocalExecutor starts task processes). The forked row
                excludes the server's one-off preload. Seconds in total and per day.

Usage: ``python scripts/bench_startup.py [--backfill-days 10]`` (also run by ``scripts/bench.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

STAGE_IMPORTS: dict[str, list[str]] = {
    "(bare interpreter)": [],
    "(the CLI: tasks.__main__ + stages)": ["tasks.__main__", "tasks.stages"],
    "ingest_partitions": ["tasks.stages", "tasks.ingest", "pyarrow.parquet"],
    "validate (verdict kept)": ["tasks.stages", "tasks.validate"],
    "validate (judged)": ["tasks.stages", "tasks.validate", "pandas", "great_expectations"],
    "plan_training": ["tasks.stages", "tasks.plan", "tasks.registry", "mlflow"],
    "build_features": ["tasks.stages", "tasks.features"],
    "train_model": ["tasks.stages", "tasks.train", "mlflow.sklearn", "lightgbm"],
    "evaluate_model": ["tasks.stages", "tasks.evaluate", "tasks.explain", "mlflow.pyfunc", "lightgbm"],
    "gate_model": ["tasks.stages", "tasks.gate", "tasks.model_card", "mlflow"],
    "register_model / promote_model": ["tasks.stages", "tasks.registry", "mlflow"],
    "check_drift": ["tasks.stages", "tasks.monitor", "evidently"],
}
"""What each stage's call imports (its module imports the rest lazily, inside the functions that need them)."""

_PROBE = "import time; t = time.perf_counter()\n{imports}\nprint(time.perf_counter() - t)"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # warm .pyc, as a worker has
    env.update({"GX_ANALYTICS_ENABLED": "False", "PYTHONWARNINGS": "ignore", **extra})
    return env


def stage_imports(runs: int = 3) -> list[dict[str, Any]]:
    """Median seconds a fresh interpreter spends importing each stage's modules."""
    rows = []
    for stage, modules in STAGE_IMPORTS.items():
        code = _PROBE.format(imports="\n".join(f"import {m}" for m in modules) or "pass")
        samples = []
        for _ in range(runs + 1):  # the first writes bytecode
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True, check=True
            )
            samples.append((time.perf_counter() - t0, float(out.stdout.strip().splitlines()[-1])))
        rows.append(
            {
                "stage": stage,
                "process_s": statistics.median(s[0] for s in samples[1:]),
                "imports_s": statistics.median(s[1] for s in samples[1:]),
            }
        )
    return rows


def _days(start: str, n: int) -> list[str]:
    first = date.fromisoformat(start)
    return [(first + timedelta(days=i)).isoformat() for i in range(n)]


def _in_process(days: list[str], run: str) -> dict[str, Any]:
    """Child body: ingest + validate each day, as one ingest run per day, in this process."""
    t0 = time.perf_counter()
    from tasks import stages

    cached = 0
    for day in days:
        ingested = stages.ingest_partitions("bike_demand", [day], False, f"{run}-{day}")
        validation = stages.validate_partitions(
            "bike_demand", ingested["new"], f"{run}-{day}", ingested["staged"], ingested["refused"]
        )
        cached += len(validation["cached"])
    return {"seconds": time.perf_counter() - t0, "cached": cached}


def _cli(stage: str, args: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "tasks", stage, "--pipeline", "bike_demand", "--args", json.dumps(args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _per_process(days: list[str], run: str, env: dict[str, str]) -> dict[str, Any]:
    """Each day's two stages as ``python -m tasks`` processes (what per-task start-up costs)."""
    t0 = time.perf_counter()
    cached = 0
    for day in days:
        key = f"{run}-{day}"
        ingested = _cli("ingest_partitions", {"days": [day], "run_key": key}, env)
        args = {"partitions": ingested["new"], "run_key": key, "staged": ingested["staged"]}
        cached += len(_cli("validate_partitions", args | {"refused": ingested["refused"]}, env)["cached"])
    return {"seconds": time.perf_counter() - t0, "cached": cached}


def _forked_stage(stage: str, args: dict[str, Any], out: Any) -> None:
    from tasks.stages import STAGES

    out.put(STAGES[stage]("bike_demand", **args) if stage in STAGES else {})


def _forked(days: list[str], run: str) -> dict[str, Any]:
    """Each day's two stages as processes forked from a forkserver that preloaded the stage libraries.

    What the local stack's LocalExecutor does (``[scheduler] mp_start_method = forkserver`` with
    ``mp_forkserver_preload``, see ``mlops_airflow.localenv``): a task process starts with them imported.
    """
    import multiprocessing as mp

    from mlops_airflow.localenv import PRELOAD

    ctx = mp.get_context("forkserver")
    # not Airflow's own modules (no task runner here); the GC freeze stays, last, as the scheduler's has it
    ctx.set_forkserver_preload([m for m in PRELOAD if not m.startswith(("airflow", "mlops_airflow.blocks"))])
    out = ctx.Queue()

    def call(stage: str, args: dict[str, Any]) -> Any:
        proc = ctx.Process(target=_forked_stage, args=(stage, args, out))
        proc.start()
        result = out.get(timeout=600)
        proc.join()
        return result

    call("(start)", {})  # the server starts and preloads once, as the scheduler's does
    t0 = time.perf_counter()
    cached = 0
    for day in days:
        key = f"{run}-{day}"
        ingested = call("ingest_partitions", {"days": [day], "run_key": key})
        args = {"partitions": ingested["new"], "run_key": key, "staged": ingested["staged"]}
        cached += len(call("validate_partitions", args | {"refused": ingested["refused"]})["cached"])
    return {"seconds": time.perf_counter() - t0, "cached": cached}


def backfill(n: int, start: str = "2011-03-01") -> list[dict[str, Any]]:
    """The backfill rows: cold and warm in one process, warm as one process per stage."""
    days = _days(start, n)
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as root:
        env = _env(MLP_DATA_ROOT=root, ML_ENV=os.environ.get("ML_ENV", "local"))
        replay = {"start": days[0], "end": days[-1]}
        subprocess.run(
            [sys.executable, "-m", "tasks", "replay", "--pipeline", "bike_demand", "--args", json.dumps(replay)],
            cwd=REPO,
            env=env,
            capture_output=True,
            check=True,
        )
        past = time.time() - 3600  # delivered an hour ago: settled
        for path in (Path(root) / "landing" / "bike_demand").glob("*.csv"):
            os.utime(path, (past, past))
        rows = []
        for label, mode in [("one process, cache cold", "cold"), ("one process, cache warm", "warm")]:
            code = (
                f"import json, sys; sys.path.insert(0, {str(REPO / 'scripts')!r}); import bench_startup as b; "
                f"print(json.dumps(b._in_process({days!r}, {mode!r})))"
            )
            out = subprocess.run(
                [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
            )
            rows.append({"mode": label} | json.loads(out.stdout.strip().splitlines()[-1]))
        rows.append({"mode": "a process per stage, cache warm"} | _per_process(days, "procs", env))
        code = (
            f"import json, sys; sys.path[:0] = [{str(REPO / 'scripts')!r}, {str(REPO / 'plugins')!r}]; "
            f"import bench_startup as b; print(json.dumps(b._forked({days!r}, 'forked')))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
        )
        forked = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"mode": "forked from a preloaded server, warm"} | forked)
    return rows


def print_startup(backfill_days: int) -> list[dict[str, Any]]:
    """Print both tables; return their rows."""
    print(f"{'stage start-up (fresh process)':<36} {'process s':>9} {'imports s':>9}", flush=True)  # noqa: T201
    imports = stage_imports()
    for row in imports:
        print(f"{row['stage']:<36} {row['process_s']:>9.2f} {row['imports_s']:>9.2f}", flush=True)  # noqa: T201
    rows: list[dict[str, Any]] = [{"section": "stage_imports", "rows": imports}]
    if backfill_days:
        print(f"{f'backfill of {backfill_days} days':<36} {'total s':>9} {'per day':>9} {'kept':>5}", flush=True)  # noqa: T201
        filled = backfill(backfill_days)
        for row in filled:
            per_day = row["seconds"] / backfill_days
            print(f"{row['mode']:<36} {row['seconds']:>9.1f} {per_day:>9.2f} {row['cached']:>5}", flush=True)  # noqa: T201
        rows.append({"section": "backfill", "days": backfill_days, "rows": filled})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backfill-days", type=int, default=10, help="0: only the stage imports")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = print_startup(args.backfill_days)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
