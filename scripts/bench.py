"""`make bench`: the monitoring, validation and training steps against their raw baselines, side by side.

For each size (10^4, 10^5, 10^6 rows by default) and step, our implementation and its baseline run on the
same data, each in a fresh process (so peak memory is that process's own maximum resident set):

    monitoring   what check_drift runs: the decision statistics on every served row in one pass against the
                 reference profile (tasks.drift_stats: exact KS, two-sample chi-square) and Evidently's HTML
                 report (drift preset) on a 20,000-row sample  vs  scipy ks_2samp /
                 chi2_contingency, on 20 columns of served rows against a 5,000-row reference
    monitor-old  the monitor before issue 16 (Evidently's presets over every served row), same data
    validation   tasks.validate.validate_frame (Great Expectations, the bike suite)  vs  the same checks as
                 plain vectorised pandas
    training     the train stage's model (FeatureBuilder + LightGBM from the spec)  vs  bare LightGBM with the
                 same parameters on the already-featurised matrix

    dag parse    each file under ``dags/`` executed after ``airflow.sdk`` is imported  vs  a bare
                 ``import airflow.sdk`` (each in a fresh process with warm bytecode; median of 5)
    start-up     each stage's imports in a fresh process, and a backfill of ``--backfill-days`` days
                 (ingest + validate per day) in one process with the validation cache cold vs warm, and
                 warm with a process per stage (``scripts/bench_startup.py``)

Then, with no raw baseline: ``search`` (Optuna trials per minute on the bike spec's space, 10^4 rows, each
trial a nested MLflow run) and ``explain`` (p50 of predict with and without explain's top-5 SHAP
contributions, at 1 and 100 rows; ``--extras ""`` skips them).

Rows are drawn with replacement from the real bike-sharing data (plus five jittered copies of numeric
columns to reach 20 monitored columns). Usage: ``python scripts/bench.py [--sizes 10000,100000,1000000]``.
Times exclude imports and data generation; ratio = ours / baseline.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NUMERIC = ["temp", "atemp", "hum", "windspeed", "hr", "weekday", "mnth", "casual", "registered", "cnt"]
CATEGORICAL = ["season", "yr", "holiday", "workingday", "weathersit"]
JITTERED = ["temp", "atemp", "hum", "windspeed", "cnt"]  # + 5 copies: 20 monitored columns
REFERENCE_ROWS = 5000


def _rows(n: int, seed: int, shift: float = 0.0) -> Any:
    import numpy as np
    import pandas as pd

    data = pd.read_csv(REPO.parent / "shared" / "datasets" / "bike_sharing_hour.csv.gz")
    rng = np.random.default_rng(seed)
    frame = data.iloc[rng.integers(0, len(data), n)].reset_index(drop=True)
    if shift:
        frame["temp"] = (frame["temp"] + shift).clip(0, 1)
    return frame


def _monitoring_columns(frame: Any, seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    out = frame[NUMERIC + CATEGORICAL].copy()
    for col in JITTERED:
        out[f"{col}_j"] = out[col] + rng.normal(0, 0.01, len(out))
    return out


def _numeric_columns() -> list[str]:
    return NUMERIC + [f"{c}_j" for c in JITTERED]


# ---- the measured bodies (each runs in its own process) ----------------------------------------------


def _import_monitoring() -> None:
    """Times exclude imports: scipy.stats and Evidently are loaded before the clock starts, as the baseline's scipy."""
    import evidently.presets  # noqa: F401
    import scipy.stats  # noqa: F401


def monitoring_ours(n: int) -> dict[str, Any]:
    from tasks.drift_stats import ReferenceProfile
    from tasks.monitor import drift_statistics, sample_report, window_statistics

    reference = _monitoring_columns(_rows(REFERENCE_ROWS, 1), 1)
    current = _monitoring_columns(_rows(n, 2, shift=0.05), 2)
    _import_monitoring()
    t0 = time.perf_counter()
    # what check_drift runs: the reference profile (stored with the model; computed here, as for an older
    # champion), the decision statistics on every row in one pass, Evidently's report on a bounded sample
    profile = ReferenceProfile.of(reference, CATEGORICAL)
    stats = window_statistics(profile, current, _numeric_columns() + CATEGORICAL)
    share, columns = drift_statistics(stats, 0.05)
    sample_report(reference, current, _numeric_columns(), CATEGORICAL, 0.3, 0.05)
    return {"seconds": time.perf_counter() - t0, "result": f"share {share:.2f} of {len(columns)}"}


def monitoring_evidently_all(n: int) -> dict[str, Any]:
    from tasks.monitor import drift_report

    reference = _monitoring_columns(_rows(REFERENCE_ROWS, 1), 1)
    current = _monitoring_columns(_rows(n, 2, shift=0.05), 2)
    _import_monitoring()
    t0 = time.perf_counter()
    # the monitor before issue 16: Evidently's drift and data summary presets over every served row
    _, share, columns = drift_report(reference, current, _numeric_columns(), CATEGORICAL, 0.3, 0.05, summary=True)
    return {"seconds": time.perf_counter() - t0, "result": f"share {share:.2f} of {len(columns)}"}


def monitoring_baseline(n: int) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    from scipy import stats

    reference = _monitoring_columns(_rows(REFERENCE_ROWS, 1), 1)
    current = _monitoring_columns(_rows(n, 2, shift=0.05), 2)
    t0 = time.perf_counter()
    drifted = 0
    for col in _numeric_columns():
        drifted += stats.ks_2samp(reference[col].to_numpy(), current[col].to_numpy()).pvalue < 0.05
    for col in CATEGORICAL:
        table = pd.concat([reference[col].value_counts(), current[col].value_counts()], axis=1).fillna(0)
        table = table.loc[table.sum(axis=1) > 0].to_numpy()
        drifted += table.shape[0] > 1 and stats.chi2_contingency(table)[1] < 0.05
    share = float(drifted) / (len(_numeric_columns()) + len(CATEGORICAL))
    return {"seconds": time.perf_counter() - t0, "result": f"share {share:.2f} of {np.int64(20)}"}


def _suite() -> Any:
    from tasks.spec import load_spec
    from tasks.validate import load_suite

    suite = load_suite(load_spec("bike_demand").expectations_path)
    # a day has at most 24 rows; here one batch holds n rows: drop the row-count bound, keep every other check
    suite.expectations = [e for e in suite.expectations if e.expectation_type != "expect_table_row_count_to_be_between"]
    return suite


def validation_ours(n: int) -> dict[str, Any]:
    from tasks.validate import validate_frame

    suite = _suite()
    frame = _rows(n, 3)
    t0 = time.perf_counter()
    failures = validate_frame(frame, suite)
    return {"seconds": time.perf_counter() - t0, "result": f"{len(failures)} failed of {len(suite.expectations)}"}


def validation_baseline(n: int) -> dict[str, Any]:
    suite = _suite()
    checks = [(e.expectation_type, dict(e.configuration.kwargs)) for e in suite.expectations]
    frame = _rows(n, 3)
    t0 = time.perf_counter()
    failed = 0
    for kind, kw in checks:
        col = frame[kw["column"]] if "column" in kw else None
        if kind == "expect_table_columns_to_match_set":
            bad = set(frame.columns) != set(kw["column_set"])
        elif kind == "expect_column_values_to_not_be_null":
            bad = bool(col.isna().any())
        elif kind == "expect_column_values_to_be_between":
            values = col.dropna()
            bad = bool(
                ((values < kw.get("min_value", -float("inf"))) | (values > kw.get("max_value", float("inf")))).any()
            )
        elif kind == "expect_column_values_to_be_in_set":
            bad = bool((~col.dropna().isin(kw["value_set"])).any())
        elif kind == "expect_column_values_to_be_in_type_list":
            bad = col.dtype.name not in kw["type_list"]
        elif kind == "expect_column_values_to_be_unique":
            bad = bool(col.duplicated().any())
        elif kind == "expect_column_values_to_match_regex":
            bad = bool((~col.dropna().astype(str).str.match(kw["regex"])).any())
        elif kind == "expect_column_mean_to_be_between":
            mean = col.mean()
            bad = not (kw.get("min_value", -float("inf")) <= mean <= kw.get("max_value", float("inf")))
        else:
            raise SystemExit(f"baseline has no pandas version of {kind}; add one to keep the comparison fair")
        failed += bad
    return {"seconds": time.perf_counter() - t0, "result": f"{failed} failed of {len(checks)}"}


def _training_data(n: int) -> tuple[Any, Any, Any]:
    from tasks.features import FeatureBuilder
    from tasks.spec import load_spec

    spec = load_spec("bike_demand")
    frame = _rows(n, 4)
    return spec, frame, FeatureBuilder.from_spec(spec.features)


def training_ours(n: int) -> dict[str, Any]:
    from sklearn.pipeline import Pipeline

    from tasks.train import make_estimator

    spec, frame, builder = _training_data(n)
    inputs = frame[spec.schema_.input_columns]
    t0 = time.perf_counter()
    model = Pipeline([("features", builder), ("model", make_estimator(spec.training.model, spec.training.seed, spec))])
    model.fit(inputs, frame[spec.schema_.target])
    return {"seconds": time.perf_counter() - t0, "result": f"{model[-1].n_estimators_} trees"}


def training_baseline(n: int) -> dict[str, Any]:
    import lightgbm as lgb

    spec, frame, builder = _training_data(n)
    matrix = builder.transform(frame).to_numpy()  # the same matrix, built before the clock starts
    target = frame[spec.schema_.target].to_numpy()
    t0 = time.perf_counter()
    model = lgb.LGBMRegressor(random_state=spec.training.seed, verbose=-1, **spec.training.model.params)
    model.fit(matrix, target)
    return {"seconds": time.perf_counter() - t0, "result": f"{model.n_estimators_} trees"}


def search_rate(n: int) -> dict[str, Any]:
    """Optuna trials per minute on the bike spec's search space (sequential, local journal, MLflow file store)."""
    import tempfile

    import mlflow

    from tasks.search import select_model, validation_split
    from tasks.spec import PipelineSpec

    spec, frame, builder = _training_data(n)
    raw = spec.model_dump(by_alias=True, exclude_none=True)
    raw["training"]["search"] |= {"trials": SEARCH_TRIALS, "minutes": None}
    spec = PipelineSpec.model_validate(raw)
    frame["dteday"] = frame["dteday"].astype(str)
    features = builder.transform(frame).assign(**{spec.schema_.target: frame[spec.schema_.target].to_numpy()})
    split = validation_split(spec, frame)
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        with mlflow.start_run() as parent:
            t0 = time.perf_counter()
            selection = select_model(spec, features, split, parent.info.run_id, None, Path(tmp) / "journal.log")
            seconds = time.perf_counter() - t0
    rate = SEARCH_TRIALS / seconds * 60
    return {"seconds": seconds, "result": f"{rate:.1f} trials/min, best rmse {selection.scores['lightgbm']:.1f}"}


def explain_latency(n: int) -> dict[str, Any]:
    """p50 of the served computation (predict) with and without explain's top-5 contributions, at n rows."""
    import statistics

    from sklearn.pipeline import Pipeline

    from tasks.explain import contributions, top_k
    from tasks.train import make_estimator

    spec, frame, builder = _training_data(20_000)
    inputs = frame[spec.schema_.input_columns]
    model = Pipeline([("features", builder), ("model", make_estimator(spec.training.model, spec.training.seed, spec))])
    model.fit(inputs, frame[spec.schema_.target])
    batch = inputs.head(n)

    def p50(fn: Any) -> float:
        times = []
        for _ in range(LATENCY_REPEATS):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    plain = p50(lambda: model.predict(batch))
    explained = p50(lambda: (model.predict(batch), top_k(contributions(model, batch), batch, 5)))
    return {
        "seconds": explained,
        "result": f"p50 {plain * 1000:.2f} ms plain, {explained * 1000:.2f} ms explained ({explained / plain:.1f}x)",
    }


SEARCH_TRIALS = 10
LATENCY_REPEATS = 50
EXTRAS = {"search": (search_rate, [10_000]), "explain": (explain_latency, [1, 100])}
"""Model steps without a raw baseline: search throughput, and the cost of explanations per request."""

STEPS = {
    "monitoring": (monitoring_ours, monitoring_baseline, "scipy ks_2samp / chi2"),
    "monitor-old": (monitoring_evidently_all, monitoring_baseline, "scipy ks_2samp / chi2"),
    "validation": (validation_ours, validation_baseline, "vectorised pandas"),
    "training": (training_ours, training_baseline, "bare LightGBM"),
}


def _child(fn_name: str, n: int, queue: Any) -> None:
    import logging
    import traceback
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    try:
        result = globals()[fn_name](n)
    except BaseException:  # noqa: BLE001 - report any failure to the parent, which names the step
        queue.put({"error": traceback.format_exc()})
        return
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def measure(fn_name: str, n: int) -> dict[str, Any]:
    """Run one body in a fresh process; its time and its own peak resident memory."""
    import queue as queues

    ctx = mp.get_context("spawn")
    channel = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn_name, n, channel))
    proc.start()
    while True:
        try:
            result = channel.get(timeout=5)
            break
        except queues.Empty:
            if not proc.is_alive():
                raise SystemExit(f"{fn_name}({n:,}) died with exit code {proc.exitcode} (out of memory?)") from None
    proc.join()
    if "error" in result:
        raise SystemExit(f"{fn_name}({n:,}) failed:\n{result['error']}")
    return dict(result)


_PARSE_PROBE = """
import json, runpy, sys, time
sys.path[:0] = [{repo!r}, {plugins!r}]
t0 = time.perf_counter()
import airflow.sdk  # noqa: F401
t1 = time.perf_counter()
if {path!r}:
    runpy.run_path({path!r})
print(json.dumps({{"sdk": t1 - t0, "file": time.perf_counter() - t1}}))
"""


def dag_parse(runs: int = 5) -> list[dict[str, Any]]:
    """Median wall time of each DAG file after ``airflow.sdk`` is loaded, and of ``import airflow.sdk`` alone."""
    import os
    import statistics
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # warm .pyc, as a scheduler has

    def probe(path: str) -> dict[str, float]:
        code = _PARSE_PROBE.format(repo=str(REPO), plugins=str(REPO / "plugins"), path=path)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    rows = []
    for path in ["", *sorted(str(p) for p in (REPO / "dags").glob("*.py"))]:
        probe(path)  # warm-up: bytecode written, file cache warm
        samples = [probe(path) for _ in range(runs)]
        rows.append(
            {
                "file": Path(path).name if path else "(bare import airflow.sdk)",
                "sdk_s": statistics.median(s["sdk"] for s in samples),
                "file_s": statistics.median(s["file"] for s in samples),
            }
        )
    return rows


def _print_dag_parse() -> None:
    print(f"{'dag parse':<36} {'airflow.sdk s':>13} {'file s':>8}", flush=True)  # noqa: T201
    for row in dag_parse():
        print(f"{row['file']:<36} {row['sdk_s']:>13.3f} {row['file_s']:>8.3f}", flush=True)  # noqa: T201


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--extras", default=",".join(EXTRAS), help="search (trials/min), explain (latency)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--dag-parse-only", action="store_true", help="only the DAG parse section")
    parser.add_argument("--serving-only", action="store_true", help="only the serving section (bench_serving.py)")
    parser.add_argument("--no-serving", action="store_true", help="skip the serving section")
    parser.add_argument("--serving-seconds", type=float, default=5, help="seconds per serving cell and round")
    parser.add_argument("--serving-rounds", type=int, default=2, help="interleaved rounds of the serving cells")
    parser.add_argument("--serving-root", type=Path, help="a data root with a bike_demand champion")
    parser.add_argument("--serving-baseline", help="also serve our server as it stood at this commit")
    parser.add_argument("--startup-only", action="store_true", help="only the stage start-up and backfill section")
    parser.add_argument("--scheduler-only", action="store_true", help="only the real-scheduler section (3 configs)")
    parser.add_argument("--no-scheduler", action="store_true", help="skip the real-scheduler section (~16 min)")
    parser.add_argument("--scheduler-train-runs", type=int, default=3, help="training runs per scheduler config")
    parser.add_argument(
        "--scheduler-year",
        metavar="POSTGRES_URL",
        help="only a year of ingest under the real scheduler, Airflow's metadata on a fresh database of this server",
    )
    parser.add_argument("--backfill-days", type=int, default=10, help="days in the backfill figure (0: none)")
    args = parser.parse_args()
    if args.serving_only:
        _serving(args)
        return
    if args.scheduler_year:
        import bench_scheduler

        bench_scheduler.print_year(bench_scheduler.year(args.scheduler_year))
        return
    if args.scheduler_only:
        _scheduler(args)
        return
    if not args.startup_only:
        _print_dag_parse()
    if args.dag_parse_only:
        return
    from scripts.bench_startup import print_startup

    print_startup(args.backfill_days)
    if args.startup_only:
        return
    rows = _measured(args)
    if not args.no_serving:
        rows += _serving(args)
    if not args.no_scheduler:
        rows += _scheduler(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _measured(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The steps against their baselines, then the extras (search, explain): printed, and their rows."""
    sizes = [int(s) for s in args.sizes.split(",")]
    header = f"{'step':<11} {'rows':>9}  {'ours s':>8} {'baseline s':>10} {'ratio':>6}  "
    header += f"{'ours MB':>8} {'base MB':>8}  baseline"
    print(header, flush=True)  # noqa: T201 - the benchmark's output
    print("-" * len(header), flush=True)  # noqa: T201
    rows = []
    for step in [s for s in args.steps.split(",") if s]:
        ours, base, label = STEPS[step]
        for n in sizes:
            a, b = measure(ours.__name__, n), measure(base.__name__, n)
            ratio = a["seconds"] / b["seconds"] if b["seconds"] else float("inf")
            rows.append({"step": step, "rows": n, "ours": a, "baseline": b, "ratio": ratio})
            print(  # noqa: T201
                f"{step:<11} {n:>9,}  {a['seconds']:>8.2f} {b['seconds']:>10.2f} {ratio:>5.1f}x  "
                f"{a['peak_mb']:>8.0f} {b['peak_mb']:>8.0f}  {label} ({a['result']} | {b['result']})",
                flush=True,
            )
    for extra in [e for e in args.extras.split(",") if e]:
        fn, extra_sizes = EXTRAS[extra]
        for n in extra_sizes:
            a = measure(fn.__name__, n)
            rows.append({"step": extra, "rows": n, "ours": a})
            print(f"{extra:<11} {n:>9,}  {a['seconds']:>8.3f} {'':>10} {'':>6}  {a['peak_mb']:>8.0f}  {a['result']}")  # noqa: T201
    return rows


def _serving(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The serving section (scripts/bench_serving.py): its table, and its rows for --json."""
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_serving

    rows = bench_serving.run(args.serving_root, args.serving_seconds, args.serving_rounds, args.serving_baseline)
    bench_serving.print_table(rows)
    if args.json and args.serving_only:
        args.json.write_text(json.dumps(rows, indent=2))
    return [{"step": "serving", **r} for r in rows]


def _scheduler(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The real-scheduler section (scripts/bench_scheduler.py): three configurations of the demo stack."""
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_scheduler

    results = bench_scheduler.run(args.scheduler_train_runs)
    bench_scheduler.print_table(results)
    if args.json and args.scheduler_only:
        args.json.write_text(json.dumps(results, indent=2))
    return [{"step": "scheduler", **r} for r in results]


if __name__ == "__main__":
    main()
