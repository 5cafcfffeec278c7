"""The bad-input corpus through the ingest DAG: no file, however broken, loses or corrupts good data.

Four real days are ingested first; then every case of ``tests/ingest_corpus.py`` is delivered (many as bad
re-deliveries of those four days) and run through ``bike_demand_ingest`` with ``dag.test()`` (the trigger
form's ``partition``), against a real SQLite metadata DB and the real expectation suite. Each case's outcome,
failing task and reason text (from ``reasons.json``) are asserted; at the end the four good partitions are
byte for byte what they were. The spec is the shipped one with a 1 s settle time and a 3.6 s landing
timeout, so the waiting cases end quickly.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.settings import get_settings
from tasks.storage import safe_key
from tests.conftest import REPO
from tests.ingest_corpus import CASES, GOOD_DAYS, Case, real, write_big

pytestmark = [pytest.mark.e2e, pytest.mark.needs_data]
P = "bike_demand"
SETTLE_S = 1.0


def _spec(folder: Path, **source: Any) -> None:
    raw = yaml.safe_load((REPO / "config" / "pipelines" / f"{P}.yaml").read_text())
    raw["landing_timeout_hours"] = 0.001  # a file that never completes fails the sensor after 3.6 s
    raw["source"] |= {"settle_seconds": SETTLE_S, "events": {}, **source}
    (folder / f"{P}.yaml").write_text(yaml.safe_dump(raw))


@pytest.fixture(scope="module")
def corpus_stack(tmp_path_factory: pytest.TempPathFactory, airflow_db: None) -> Iterator[dict[str, Any]]:
    """The corpus spec, a fresh data root and the parsed DAGs (no model server: ingest needs none)."""
    tmp = tmp_path_factory.mktemp("corpus")
    specs = tmp / "specs"
    specs.mkdir()
    _spec(specs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLP_PIPELINES_DIR", str(specs))
        mp.setenv("MLP_DATA_ROOT", str(tmp / "data"))
        get_settings.cache_clear()
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert bag.import_errors == {}
        try:
            yield {"dag": bag.dags[f"{P}_ingest"], "root": tmp / "data", "specs": specs}
        finally:
            get_settings.cache_clear()


def _states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _deliver(root: Path, day: str, data: bytes) -> Path:
    path = root / "landing" / P / f"{day}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class _SlowWriter(threading.Thread):
    """Upstream still writing: 19 rows at once, then a byte every 0.2 s until told to finish."""

    def __init__(self, path: Path, data: bytes) -> None:
        super().__init__(daemon=True)
        self.path, self.data, self.finish = path, data, threading.Event()
        self.head = len(b"".join(data.splitlines(keepends=True)[:20]))

    def run(self) -> None:
        with self.path.open("wb") as f:
            f.write(self.data[: self.head])
            f.flush()
            at = self.head
            while not self.finish.is_set() and at < len(self.data) - 1:
                f.write(self.data[at : at + 1])
                f.flush()
                at += 1
                time.sleep(0.2)
            f.write(self.data[at:])


def _check_quarantined(case: Case, root: Path, run: Any, landing_sha: str) -> None:
    states = _states(run)
    assert str(run.state) == "failed" and states["report_quarantine"] == "failed", (case.id, states)
    assert states["ingest_partitions"] == "success" and states["publish_partitions"] == "skipped", (case.id, states)
    record = root / "quarantine" / P / f"dt={case.day}" / safe_key(run.run_id) / "reasons.json"
    reasons = json.loads(record.read_text())
    said = " | ".join(reasons["reasons"])
    assert case.reason in said, (case.id, said)
    assert reasons["stage"] == case.stage and reasons["sha256"] == landing_sha, (case.id, reasons)
    evidence = record.parent / ("part.parquet" if case.stage == "validation" else f"{case.day}.csv")
    assert evidence.is_file(), (case.id, sorted(p.name for p in record.parent.iterdir()))
    if case.stage == "ingest":  # the landing file itself, copied (upstream owns landing/)
        assert _sha(evidence) == landing_sha
    history = [json.loads(line) for line in (root / "raw" / P / f"dt={case.day}" / "_versions.jsonl").open()]
    assert history[-1]["outcome"] == "quarantined" and history[-1]["landing_sha256"] == landing_sha


def _check_ingested(case: Case, root: Path, run: Any, landing_sha: str) -> None:
    import pandas as pd

    states = _states(run)
    assert str(run.state) == "success", (case.id, states)
    part = root / "raw" / P / f"dt={case.day}" / "part.parquet"
    frame = pd.read_parquet(part)
    assert len(frame) == case.rows and (frame["dteday"] == case.day).all(), case.id
    assert list(frame["hr"]) == sorted(frame["hr"]) and frame["temp"].dtype == "float64"
    source = json.loads(part.with_name("_source.json").read_text())
    assert source["sha256"] == landing_sha and (not case.reason or case.reason in source["notes"]), (case.id, source)
    history = [json.loads(line) for line in part.with_name("_versions.jsonl").open()]
    assert history[-1]["outcome"] == "accepted" and history[-1]["parquet_sha256"] == _sha(part)


def _check_waiting(case: Case, root: Path, run: Any) -> None:
    from tasks import stages

    states = _states(run)
    assert str(run.state) == "failed" and states["wait_for_landing"] == "failed", (case.id, states)
    assert states["ingest_partitions"] == "upstream_failed", (case.id, states)
    assert not (root / "quarantine" / P / f"dt={case.day}").exists()  # not refused: not complete yet
    assert not (root / "raw" / P / f"dt={case.day}" / "part.parquet").exists()
    status = stages.landing_status(P, case.day)  # what the sensor saw, in words
    assert not status["ready"] and case.reason in status["reason"], (case.id, status)


def _check_rejected(case: Case, dag: Any, root: Path) -> None:
    from tasks import stages
    from tasks.landing import BadPartitionError

    with pytest.raises(Exception, match="is not a 'date'"):  # the trigger form refuses it before a run exists
        dag.test(run_conf={"partition": case.day})
    for stage in (stages.landing_status, stages.ingest_partitions):  # an event naming it: the sensor and ingest refuse
        with pytest.raises(BadPartitionError, match=case.reason):
            stage(P, case.day) if stage is stages.landing_status else stage(P, [case.day])
    assert not (root / "raw" / P / f"dt={case.day}").exists()
    assert not (root / "quarantine" / P / f"dt={case.day}").exists()


def _prepare(case: Case, root: Path, writers: dict[str, _SlowWriter]) -> Path:
    """Deliver the case's file the way its upstream would."""
    landing = root / "landing" / P / f"{case.day}.csv"
    if case.id == "over_max_bytes_200mib":
        write_big(landing, case.day)
    elif case.id == "still_being_written":
        writers[case.day] = _SlowWriter(landing, real(case.day))
        writers[case.day].start()
        time.sleep(0.5)
    elif case.id == "finished_after_waiting":
        writers[case.day].finish.set()
        writers[case.day].join(10)
    elif case.id == "marker_written":
        (landing.parent / f"{landing.name}.done").write_bytes(b"")
    elif case.id == "rename_temporary_name":
        landing.with_name(f".{landing.name}.tmp").write_bytes(real(case.day))
    elif case.build is not None:
        _deliver(root, case.day, case.build())
    return landing


def _run_case(case: Case, dag: Any, root: Path, writers: dict[str, _SlowWriter]) -> None:
    if case.outcome == "rejected":
        _deliver(root, case.day, case.build() if case.build else b"")
        _check_rejected(case, dag, root)
        return
    landing = _prepare(case, root, writers)
    run = dag.test(run_conf={"partition": case.day})
    if case.outcome == "waiting":
        _check_waiting(case, root, run)
    elif case.outcome == "quarantined":
        _check_quarantined(case, root, run, _sha(landing))
    else:
        _check_ingested(case, root, run, _sha(landing))
    if case.id == "over_max_bytes_200mib":
        for big in (landing, *root.glob(f"quarantine/{P}/dt={case.day}/*/{landing.name}")):
            os.remove(big)  # 400 MiB of test data need not outlive the case


def test_every_corpus_case_through_the_ingest_dag(corpus_stack: dict[str, Any]) -> None:
    from tasks import stages
    from tasks.storage import DataLayout

    dag, root, specs = corpus_stack["dag"], corpus_stack["root"], corpus_stack["specs"]
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)

    # the good days from the replay tool's files (dag.test() sets no partition key: the logical date names the day)
    stages.replay(P, GOOD_DAYS[0], GOOD_DAYS[-1])
    for day in GOOD_DAYS:
        run = dag.test(logical_date=datetime.fromisoformat(day).replace(tzinfo=UTC))
        assert str(run.state) == "success", (day, _states(run))
    good = {d: _sha(root / "raw" / P / f"dt={d}" / "part.parquet") for d in GOOD_DAYS}

    source: dict[str, Any] = {}
    writers: dict[str, _SlowWriter] = {}
    timings = []
    for case in CASES:
        if case.source != source:
            _spec(specs, **case.source)
            source = case.source
        t0 = time.monotonic()
        _run_case(case, dag, root, writers)
        if case.day in good:  # whatever was re-delivered, the last valid version is untouched
            assert _sha(root / "raw" / P / f"dt={case.day}" / "part.parquet") == good[case.day], case.id
        timings.append((case.id, round(time.monotonic() - t0, 1)))

    assert {d: _sha(root / "raw" / P / f"dt={d}" / "part.parquet") for d in GOOD_DAYS} == good
    # training only ever sees validated partitions: the good days and the cases that were ingested
    ingested = sorted({*GOOD_DAYS, *(c.day for c in CASES if c.outcome == "ingested")})
    assert DataLayout(root).raw_partitions(P) == ingested
    print("corpus timings (s):", timings)  # noqa: T201 - for whoever tunes the test's wall time
