"""Mapped trial pods through Airflow: the train phase in kubernetes mode with ``training.search.trials_per_pod``.

``dag.test()`` runs the spec's train DAG with ``ML_ENV=prod`` (gate in ``dry_run``: nothing to deploy, so no
model server): ``plan_search`` in the worker, then
``search_trials`` mapped over its batches (one pod each through the provider and the local kubelet, as local
processes), then the train pod, which reads the study the pods filled (the journal in the run's folder on the
shared store: no RDB here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tasks.settings import Settings, get_settings
from tests.conftest import REPO, write_spec
from tests.kubernetes.kubelet import LocalKubelet

pytestmark = [pytest.mark.e2e, pytest.mark.needs_data]
DAYS = [f"2011-06-{d:02d}" for d in range(1, 21)]


@pytest.mark.timeout(1200)
def test_trial_batches_run_as_mapped_pods_and_train_reads_their_study(
    airflow_db: None, kubelet: LocalKubelet, prod_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna
    from airflow.dag_processing.dagbag import DagBag
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tasks import stages
    from tasks.storage import DataLayout

    folder = write_spec(tmp_path / "specs")  # the shipped search, capped at 3 trials
    raw = yaml.safe_load((folder / "bike_demand.yaml").read_text())
    raw["training"]["search"]["trials_per_pod"] = 2
    raw["gate"]["mode"] = "dry_run"  # judged and registered, never promoted: the run needs no model server
    (folder / "bike_demand.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLP_PIPELINES_DIR", str(folder))
    get_settings.cache_clear()
    kubelet.image_env["MLP_PIPELINES_DIR"] = str(folder)
    settings = get_settings()
    assert settings.execution_mode == "kubernetes" and settings.search_storage_url is None
    stages.replay("bike_demand", DAYS[0], DAYS[-1])
    for day in DAYS:
        stages.ingest_partition("bike_demand", day)

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    run = bag.dags["bike_demand_train"].test()
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in run.get_task_instances()}
    assert states.pop(("promote_model", -1)) == "success" and states.pop(("deploy_model", -1)) == "skipped", states
    assert all(s == "success" for s in states.values()), states
    assert {k for k in states if k[0] == "search_trials"} == {("search_trials", 0), ("search_trials", 1)}
    pod_stages = [p.spec.containers[0].args[0] for p in kubelet.created]
    assert pod_stages == ["validate_data", "build_features", "search_trials", "search_trials", "train_model"] + [
        "evaluate_model"
    ]
    assert all(r["returncode"] == 0 for r in kubelet.runs)

    results = DataLayout(settings.data_root).run_dir("bike_demand", run.run_id) / "results"
    batches = [json.loads((results / f"search_trials.map{i}.try1.json").read_text())["result"] for i in (0, 1)]
    # batch 0 runs 2 trials, batch 1 runs 1; each reports the study's trials when it ends, and dag.test() may
    # run either map index first
    assert [b["index"] for b in batches] == [0, 1]
    assert (batches[0]["trials"], batches[1]["trials"]) in {(2, 3), (3, 1)}, batches
    trained = json.loads((results / "train_model.try1.json").read_text())["result"]
    assert trained["trials"] == {"lightgbm": 3}

    journal = DataLayout(settings.data_root).search_journal("bike_demand", run.run_id)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    (summary,) = optuna.get_all_study_summaries(storage)
    assert summary.study_name == f"bike_demand-{trained['mlflow_run_id']}-lightgbm"
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert len(study.trials) == 3  # the train pod ran none of its own
    assert {k: trained["params"][k] for k in study.best_params} == study.best_params
