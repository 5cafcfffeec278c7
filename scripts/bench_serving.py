"""`make bench` serving section: our model server vs ``mlflow models serve`` vs a bare Starlette app.

All three serve the same model (bike demand's champion, trained on the committed fixture rows) and get the
same real rows; each runs as its own process with one worker (ours also with two: ``serve --workers 2``),
and, with ``--serving-baseline COMMIT``, our server as it stood at that commit. ``wrk`` (one thread, C, a
few percent of a core; ``apt install wrk``) keeps N connections busy for a few seconds per cell, cycling
through the request bodies with a Lua script; where ``wrk`` is not installed, a Python load generator
(httpx on asyncio, in this process) does, and the table says so: it needs most of a core itself, so on a
small machine it caps what several workers can show. The cells are interleaved (every server once per
round, rounds repeated) so a change in the machine's load hits all of them alike. Per cell: requests/s,
rows/s, p50 and p99 latency (each round's, averaged over the rounds weighted by its requests: wrk reports
percentiles per run), errors (non-200 answers and socket errors).

    python scripts/bench.py --serving-only [--serving-seconds 5 --serving-rounds 2 --serving-root DATA_ROOT]

``--serving-root``: a data root holding a bike_demand champion (``make demo``'s); default: one is trained
once into the system's temporary folder (a few minutes) and reused by later runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "datasets"
PIPELINE = "bike_demand"
WINDOW = ("2011-05-30", "2011-06-26")
TARGETS = ["instant", "casual", "registered", "cnt"]
CELLS = [(1, 1), (1, 8), (100, 8), (10_000, 1)]  # (rows per request, connections)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # mlflow models serve runs `uvicorn`
    return env | {"MLP_SHARED_DATASETS": str(FIXTURES), "MLP_SEARCH_MAX_TRIALS": "3", "PATH": path} | extra


def champion_root(root: Path | None) -> Path:
    """A data root with a bike_demand champion: the given one, or one trained once under the temp folder."""
    if root is not None:
        return root
    root = Path(tempfile.gettempdir()) / "mlp-bench-serving" / "data"
    if (root / "champion.ok").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    print(f"training a champion into {root} (once; later runs reuse it)", flush=True)  # noqa: T201
    code = f"""
import sys; sys.path.insert(0, {str(REPO)!r})
from datetime import date, timedelta
from tasks import stages
start, end = date.fromisoformat({WINDOW[0]!r}), date.fromisoformat({WINDOW[1]!r})
days = [(start + timedelta(d)).isoformat() for d in range((end - start).days + 1)]
stages.replay("{PIPELINE}", *{WINDOW!r})
for d in days:
    stages.ingest_partition("{PIPELINE}", d)
plan = stages.plan_training("{PIPELINE}")
valid = stages.validate_data("{PIPELINE}", plan["partitions"], "bench")["valid"]
datasets = stages.build_features("{PIPELINE}", valid, "bench")
trained = stages.train_model("{PIPELINE}", datasets, "bench", {{"airflow.run_id": "bench"}})
evaluation = stages.evaluate_model("{PIPELINE}", trained, datasets, "bench")
gated = stages.gate_model("{PIPELINE}", trained, datasets, evaluation, "bench")
registered = stages.register_model("{PIPELINE}", trained, gated)
stages.promote_model("{PIPELINE}", registered["version"], gated["decision"])
"""
    subprocess.run([sys.executable, "-c", code], env=_env({"MLP_DATA_ROOT": str(root)}), cwd=REPO, check=True)
    (root / "champion.ok").write_text("ok")
    return root


def _download_model(root: Path, into: Path) -> Path:
    code = f"""
import sys; sys.path.insert(0, {str(REPO)!r})
import mlflow
from tasks.settings import get_settings
from tasks.tracking import use_store
use_store(get_settings())
print(mlflow.artifacts.download_artifacts("models:/{PIPELINE}@champion", dst_path={str(into)!r}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env({"MLP_DATA_ROOT": str(root)}), cwd=REPO, check=True, capture_output=True
    )
    return Path(out.stdout.decode().strip().splitlines()[-1])


BARE_APP = """
import sys
import mlflow.pyfunc
import pandas as pd
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

model = mlflow.pyfunc.load_model(sys.argv[1])


async def invocations(request: Request) -> JSONResponse:
    body = await request.json()
    predictions = model.predict(pd.DataFrame.from_records(body["instances"]))
    return JSONResponse({"predictions": [float(p) for p in predictions]})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/invocations", invocations, methods=["POST"]), Route("/health", health)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


class Server:
    """One server process: its name, URL, predict path and the command that starts it."""

    def __init__(self, name: str, argv: list[str], path: str, env: dict[str, str], cwd: Path, logs: Path) -> None:
        self.name, self.path = name, path
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.log = logs / f"{name.replace(' ', '_')}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait(self, probe: dict[str, Any], timeout: float = 300) -> None:
        """Until a prediction of ``probe`` answers 200 (the model is loaded)."""
        import httpx

        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if (
                    self.path.startswith("/models/")
                    and httpx.get(f"{self.url}/health", timeout=5).json()["status"] != "ok"
                ):
                    time.sleep(0.5)  # ours: no prediction while the champion loads (b0127e9 broke its mlflow import)
                    continue
                reply = httpx.post(self.url + self.path, json=probe, timeout=5)
                if reply.status_code == 200:
                    return
                last = f"{reply.status_code} {reply.text[:500]}"
            time.sleep(0.5)
        raise SystemExit(f"{self.name} did not answer within {timeout:.0f}s ({last}):\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM the process group (SIGKILL after 20 s)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


async def _load(url: str, bodies: list[bytes], conns: int, seconds: float) -> dict[str, Any]:
    """Keep ``conns`` connections busy for ``seconds``; latencies of the answered requests, errors counted."""
    import httpx

    latencies: list[float] = []
    errors = 0
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    reply = await client.post(url, content=bodies[i % len(bodies)], headers=headers)
                    ok = reply.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
                i += conns

        end = time.perf_counter() + min(1.0, seconds / 4)  # warm-up, not counted
        await asyncio.gather(*(worker(k) for k in range(conns)))
        latencies.clear()
        errors = 0
        started = time.perf_counter()
        end = started + seconds
        await asyncio.gather(*(worker(k) for k in range(conns)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": _percentile(latencies, 0.99),
    }


WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
local path = os.getenv("BENCH_PATH")
local headers = {["Content-Type"] = "application/json"}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", path, headers, bodies[(i % #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %d, "us": %d, "status": %d, "socket": %d, "p50": %.1f, "p99": %.1f}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _wrk(url: str, path: str, bodies: list[bytes], conns: int, seconds: float, work: Path) -> dict[str, Any]:
    """One wrk run (one thread, ``conns`` connections) after a short warm-up; its counts and percentiles."""
    import hashlib
    import json

    digest = hashlib.sha256(b"".join(bodies)).hexdigest()[:16]
    body_file = work / f"bodies-{digest}.jsonl"
    script = work / "bench.lua"
    script.write_text(WRK_SCRIPT)
    if not body_file.exists():
        body_file.write_bytes(b"\n".join(bodies) + b"\n")
    env = os.environ | {"BENCH_BODIES": str(body_file), "BENCH_PATH": path}
    out: dict[str, Any] = {}
    for duration in (min(1.0, seconds / 4), seconds):  # warm-up, not counted; then the measured run
        argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "60s", "-s", str(script), url]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if line is None:
            raise SystemExit(f"wrk printed no summary:\n{proc.stdout}\n{proc.stderr}")
        got = json.loads(line[len("BENCH ") :])
        out = {  # wrk counts every answer in requests (a non-2xx one also in status), socket errors apart
            "requests": got["requests"] - got["status"],
            "errors": got["status"] + got["socket"],
            "seconds": got["us"] / 1e6,
            "p50": got["p50"] / 1e6,
            "p99": got["p99"] / 1e6,
        }
    return out


def _bodies(rows: list[dict[str, Any]], per_request: int) -> list[bytes]:
    import json

    pool = rows * (per_request // len(rows) + 1)  # the real rows, repeated to fill a 10,000-row request
    return [
        json.dumps({"instances": pool[i : i + per_request]}).encode()
        for i in range(0, len(pool) - per_request + 1, per_request)
    ][:200]


PREDICT_REFERENCE = "predict in process"


def _predict_reference(model_dir: Path, body: bytes, repeats: int = 5) -> dict[str, Any]:
    """The model's own predict of one request's rows, in a fresh process, the rows framed beforehand.

    The 10,000-row goal's yardstick: the scikit-learn pipeline under the pyfunc, with the server's threads.
    """
    code = f"""
import json, statistics, sys, time
sys.path.insert(0, {str(REPO)!r})
import mlflow.pyfunc, pandas as pd
from tasks.serving.app import _limit_threads
from tasks.settings import get_settings
model = mlflow.pyfunc.load_model({str(model_dir)!r})
_limit_threads(model, get_settings().serving_model_threads)
frame = pd.DataFrame.from_records(json.loads(open({str(model_dir / "reference.json")!r}).read())["instances"])
raw = model.get_raw_model()
raw.predict(frame)
times = []
for _ in range({repeats}):
    started = time.perf_counter(); raw.predict(frame); times.append(time.perf_counter() - started)
print(json.dumps({{"p50": statistics.median(times), "p99": max(times)}}))
"""
    (model_dir / "reference.json").write_bytes(body)
    out = subprocess.run([sys.executable, "-c", code], env=_env({}), cwd=REPO, check=True, capture_output=True)
    got = __import__("json").loads(out.stdout.decode().strip().splitlines()[-1])
    return {"requests": 1, "seconds": got["p50"], "p50": got["p50"], "p99": got["p99"], "errors": 0}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@contextlib.contextmanager
def _servers(root: Path, baseline: str | None, work: Path) -> Iterator[list[Server]]:
    """Start every server (ours 1 and 2 workers, the baseline commit's, mlflow, bare); stop them all after."""
    model_dir = _download_model(root, work / "model")
    bin_dir = Path(sys.executable).parent
    ours_env = {"MLP_DATA_ROOT": str(root), "MLP_PIPELINES_DIR": str(REPO / "config" / "pipelines")}
    serve = [sys.executable, "-m", "tasks", "serve", "--pipelines", PIPELINE, "--port", "{port}"]
    path = f"/models/{PIPELINE}/predict"
    plans: list[tuple[str, list[str], str, dict[str, str], Path]] = [
        ("ours", serve, path, ours_env | {"MLP_PREDICTION_LOG_URI": f"sqlite:///{work / 'log1.sqlite'}"}, REPO),
        (
            "ours 2 workers",
            [*serve, "--workers", "2"],
            path,
            ours_env | {"MLP_PREDICTION_LOG_URI": f"sqlite:///{work / 'log2.sqlite'}"},
            REPO,
        ),
    ]
    if baseline:
        tree = work / f"tree-{baseline}"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), baseline], check=True)
        old_root = work / "baseline-data"  # its own log (its schema), the same MLflow store
        old_root.mkdir()
        old_env = {
            "MLP_DATA_ROOT": str(old_root),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
            "MLP_PIPELINES_DIR": str(tree / "config" / "pipelines"),
            "PYTHONPATH": str(tree),
        }
        plans.append((f"ours @{baseline}", serve, path, old_env, tree))
    plans += [
        (
            "mlflow models serve",
            [str(bin_dir / "mlflow"), "models", "serve", "-m", str(model_dir), "-h", "127.0.0.1", "-p", "{port}"]
            + ["--env-manager", "local", "-w", "1"],
            "/invocations",
            {},
            REPO,
        ),
        ("bare starlette", [sys.executable, "-c", BARE_APP, str(model_dir), "{port}"], "/invocations", {}, REPO),
    ]
    servers: list[Server] = []
    try:
        for name, argv, route, extra, cwd in plans:
            servers.append(Server(name, argv, route, _env(extra), cwd, work))
        yield servers
    finally:
        for server in servers:
            server.stop()
        if baseline:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / f"tree-{baseline}")], check=False
            )


def run(root: Path | None, seconds: float, rounds: int, baseline: str | None) -> list[dict[str, Any]]:
    """Every server x cell, interleaved over ``rounds``; one row per server and cell."""
    import pandas as pd

    root = champion_root(root)
    data = pd.read_csv(FIXTURES / "bike_sharing_hour.csv.gz")
    rows = data.drop(columns=TARGETS).to_dict("records")
    work = Path(tempfile.mkdtemp(prefix="mlp-bench-serving-"))
    results: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    generator = "wrk" if shutil.which("wrk") else "httpx"
    if generator == "httpx":
        print("wrk is not installed (apt install wrk): the load comes from httpx in this process", flush=True)  # noqa: T201
    try:
        with _servers(root, baseline, work) as servers:
            for server in servers:
                server.wait({"instances": rows[:1]})
            bodies = {n: _bodies(rows, n) for n, _ in CELLS}
            for _ in range(rounds):
                for n, conns in CELLS:
                    for server in servers:
                        if server.name == "ours 2 workers" and n != 100:
                            continue  # the worker comparison is at 100 rows
                        if generator == "wrk":
                            got = _wrk(server.url, server.path, bodies[n], conns, seconds, work)
                        else:
                            got = asyncio.run(_load(server.url + server.path, bodies[n], conns, seconds))
                        results.setdefault((server.name, n, conns), []).append(got)
            largest = max(n for n, _ in CELLS)
            for server in servers:
                server.stop()  # a quiet machine for the yardstick
            model_dir = next((work / "model").rglob("MLmodel")).parent
            results[(PREDICT_REFERENCE, largest, 0)] = [_predict_reference(model_dir, bodies[largest][0])]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [_cell(name, n, conns, runs, generator) for (name, n, conns), runs in results.items()]


def _cell(name: str, n: int, conns: int, runs: list[dict[str, Any]], generator: str) -> dict[str, Any]:
    """One server x cell over its rounds: rates from the summed counts, percentiles weighted by requests."""
    done, seconds = sum(r["requests"] for r in runs), sum(r["seconds"] for r in runs)

    def weighted(key: str) -> float:
        return sum(r[key] * r["requests"] for r in runs) / done * 1000 if done else float("nan")

    return {
        "server": name,
        "rows": n,
        "conns": conns,
        "req_s": done / seconds,
        "rows_s": done * n / seconds,
        "p50_ms": weighted("p50"),
        "p99_ms": weighted("p99"),
        "errors": sum(r["errors"] for r in runs),
        "generator": generator,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """The serving table, then ours against the others per cell."""
    header = f"{'serving':<22} {'rows':>4} {'conns':>5}  {'req/s':>8} {'rows/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    header += f" {'errors':>6}"
    if rows:
        print(f"load generator: {rows[0]['generator']}")  # noqa: T201 - the benchmark's output
    print(header)  # noqa: T201
    print("-" * len(header))  # noqa: T201
    for r in sorted(rows, key=lambda r: (r["rows"], r["conns"], r["server"])):
        print(  # noqa: T201
            f"{r['server']:<22} {r['rows']:>4} {r['conns']:>5}  {r['req_s']:>8.1f} {r['rows_s']:>9.0f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>6}"
        )
    by = {(r["server"], r["rows"], r["conns"]): r["req_s"] for r in rows}
    for n, conns in CELLS:
        ours = by.get(("ours", n, conns))
        if not ours:
            continue
        parts = [f"{other} {ours / by[(other, n, conns)]:.2f}x" for other in ("mlflow models serve", "bare starlette")]
        if ("ours 2 workers", n, conns) in by:
            parts.append(f"2 workers / 1 worker {by[('ours 2 workers', n, conns)] / ours:.2f}x")
        print(f"ours vs, {n} rows x {conns} conns: " + ", ".join(parts))  # noqa: T201
    reference = next((r for r in rows if r["server"] == PREDICT_REFERENCE), None)
    ours = next((r for r in rows if r["server"] == "ours" and reference and r["rows"] == reference["rows"]), None)
    if reference and ours:
        print(  # noqa: T201
            f"ours, one {reference['rows']:,}-row request: p50 {ours['p50_ms'] / reference['p50_ms']:.2f}x the model's "
            f"own predict of those rows in one process ({reference['p50_ms']:.0f} ms, framed beforehand, the "
            "server's threads)"
        )
