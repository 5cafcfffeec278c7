"""Search and selection: Optuna hyperparameter search per family, then the best family on a validation split.

The validation split is carved from the training window, never from the gate's holdout: the most recent days
for dated data (a time-ordered tail), a stratified sample for date-less data (``source.rows_per_day``). Each
trial is a nested MLflow run under the candidate's training run (its params and validation score); each
family's best validation score is logged on the parent. Optuna keeps its study in a journal file under the run's
folder (:meth:`DataLayout.search_journal`), or in the RDB that ``settings.search_storage_url`` names.

In the kubernetes mode with ``training.search.trials_per_pod``, :func:`plan_search` opens the candidate's run and
cuts the budget into :class:`~tasks.results.TrialBatch` es, :func:`search_trials` runs one batch per mapped pod
in the family's shared study, and training then only reads each study's best trial (``select_model(searched=True)``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.errors import PermanentError
from tasks.evaluate import target_values
from tasks.metrics import score
from tasks.names import (
    TAG_PIPELINE,
    TAG_SEARCH_FAMILY,
    TAG_SEARCH_RUN,
    TAG_SEARCH_TRIAL,
    VALIDATION_PREFIX,
)
from tasks.results import Datasets, SearchedBatch, TrialBatch
from tasks.spec import HIGHER_IS_BETTER, Choice, FloatRange, ModelSpec, PipelineSpec, SearchParam

if TYPE_CHECKING:
    import pandas as pd

    from tasks.settings import Settings
    from tasks.storage import DataLayout

log = logging.getLogger(__name__)


class SelectionError(PermanentError, ValueError):
    """The training window cannot be split for validation, or no family produced a validation score."""


@dataclass(frozen=True)
class Split:
    """Row positions of the training window used to fit and to validate, and how they were chosen."""

    fit: np.ndarray
    validation: np.ndarray
    how: str


@dataclass(frozen=True)
class FamilyResult:
    """One family's best hyperparameters and validation score."""

    model: ModelSpec
    score: float
    trials: int


@dataclass(frozen=True)
class Selection:
    """The chosen family (final params) and every family's validation score."""

    best: ModelSpec
    metric: str
    results: list[FamilyResult] = field(default_factory=list)

    @property
    def scores(self) -> dict[str, float]:
        """Family -> best validation score."""
        return {r.model.family: r.score for r in self.results}


def validation_split(spec: PipelineSpec, train_raw: pd.DataFrame) -> Split:
    """Carve the validation rows from the training window (see the module docstring).

    Raises:
        SelectionError: The window has too few days (dated data) or rows/classes (date-less) to split.
    """
    fraction = spec.training.validation_fraction
    positions = np.arange(len(train_raw))
    if spec.source.rows_per_day is None:
        days = sorted(train_raw[spec.source.partition_column].astype(str).unique())
        k = max(1, round(fraction * len(days)))
        if len(days) - k < 1:
            raise SelectionError(f"{len(days)} training days cannot spare {k} for validation")
        last = set(days[-k:])
        mask = train_raw[spec.source.partition_column].astype(str).isin(last).to_numpy()
        return Split(positions[~mask], positions[mask], f"time: the last {k} of {len(days)} training days")
    from sklearn.model_selection import train_test_split

    labels = target_values(spec, train_raw[spec.schema_.target]) if spec.task == "classification" else None
    try:
        fit, validation = train_test_split(
            positions, test_size=fraction, random_state=spec.training.seed, stratify=labels
        )
    except ValueError as exc:
        raise SelectionError(f"cannot split {len(positions)} training rows for validation: {exc}") from exc
    kind = "stratified" if labels is not None else "random"
    return Split(np.sort(fit), np.sort(validation), f"{kind}: {fraction:.0%} of the training rows")


def _suggest(trial: Any, name: str, param: SearchParam) -> Any:
    if isinstance(param, Choice):
        return trial.suggest_categorical(name, param.choices)
    if isinstance(param, FloatRange):
        return trial.suggest_float(name, param.low, param.high, log=param.log)
    return trial.suggest_int(name, param.low, param.high, log=param.log)


class _Data:
    """Featurised fit and validation rows."""

    def __init__(self, spec: PipelineSpec, features: pd.DataFrame, split: Split) -> None:
        target = spec.schema_.target
        X = features.drop(columns=[target])  # noqa: N806 - ML convention
        self.X_fit, self.y_fit = X.iloc[split.fit], features[target].iloc[split.fit]
        self.X_val = X.iloc[split.validation]
        self.y_val = target_values(spec, features[target].iloc[split.validation])


def _validation_score(spec: PipelineSpec, model: ModelSpec, data: _Data, metric: str) -> float:
    from tasks.train import make_estimator

    estimator = make_estimator(model, spec.training.seed, spec).fit(data.X_fit, data.y_fit)
    value = float(score(metric, data.y_val, np.asarray(estimator.predict(data.X_val), dtype="float64")))
    if not np.isfinite(value):
        raise SelectionError(f"{model.family} has no finite validation {metric} (one class in validation?)")
    return value


def _storage(url: str | None, journal: Any) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tasks.storage import database_url

    if url:
        return optuna.storages.RDBStorage(database_url(url))  # compose and prod: PostgreSQL through psycopg2
    journal.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal)))


def study_name(spec: PipelineSpec, parent_run_id: str, family: str) -> str:
    """One study per family and training run: the mapped trial batches and the train stage all join it."""
    return f"{spec.name}-{parent_run_id}-{family}"


def trial_budget(spec: PipelineSpec, max_trials: int | None) -> int | None:
    """Trials per searched family: the spec's budget, lowered (or set, minutes-only) by the environment's cap."""
    search = spec.training.search
    budgets = [t for t in (search.trials if search else None, max_trials) if t is not None]
    return min(budgets) if budgets else None


def open_search_run(spec: PipelineSpec, experiment_id: str, run_id: str, tags: dict[str, str]) -> str:
    """The candidate's MLflow run of training run ``run_id``, opened before the mapped trial batches nest under it.

    Idempotent: a retried plan finds the run it opened and training has not finished yet (tag ``search.run``)
    instead of opening a second one. ``train_model`` resumes it (``search_run_id``) and finishes it.
    """
    import mlflow

    client = mlflow.MlflowClient()
    query = f"tags.`{TAG_SEARCH_RUN}` = '{run_id}' and attributes.status = 'RUNNING'"
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        return str(found[0].info.run_id)
    run = client.create_run(
        experiment_id,
        run_name=f"{spec.name}-{spec.training.model.family}",
        # no role tag yet: a run whose batches never finished is no candidate (train tags it when it resumes it)
        tags={**tags, TAG_PIPELINE: spec.name, TAG_SEARCH_RUN: run_id},
    )
    return str(run.info.run_id)


def plan_batches(spec: PipelineSpec, max_trials: int | None, parent_run_id: str) -> list[TrialBatch]:
    """Each searched family's trial budget cut into batches of at most ``search.trials_per_pod``.

    Raises:
        SelectionError: The spec searches nothing, or sets no ``trials_per_pod`` (nothing to map).
    """
    search = spec.training.search
    if search is None or search.trials_per_pod is None:
        raise SelectionError(f"{spec.name}: training.search.trials_per_pod is not set: there are no trial batches")
    budget = trial_budget(spec, max_trials)
    assert budget is not None  # noqa: S101 - trials_per_pod needs a trials budget (SearchSpec)
    batches = []
    for model in spec.training.families:
        if model.family not in search.space:
            continue
        sizes = [min(search.trials_per_pod, budget - start) for start in range(0, budget, search.trials_per_pod)]
        batches += [
            TrialBatch(family=model.family, trials=n, index=i, parent_run_id=parent_run_id) for i, n in enumerate(sizes)
        ]
    return batches


BATCH_ATTR = "batch"
"""The Optuna user attribute naming the mapped batch that ran a trial."""


def _done(study: Any, index: int | None = None) -> int:
    """Completed trials of the study (of one batch, when given: a retried batch runs only what it still owes)."""
    from optuna.trial import TrialState

    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if index is None or t.user_attrs.get(BATCH_ATTR) == index
    )


def _tried(study: Any, index: int) -> int:
    """Trials of batch ``index`` in any state (what earlier attempts of the batch started)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get(BATCH_ATTR) == index)


RETRY_SEED_STRIDE = 7919  # far above any batch count: a retry never reuses a first attempt's seed


def search_family(
    spec: PipelineSpec,
    model: ModelSpec,
    data: _Data,
    storage: Any,
    parent_run_id: str,
    max_trials: int | None,
    batch: TrialBatch | None = None,
    read_only: bool = False,
) -> FamilyResult:
    """Optuna search over the family's space; each trial a nested MLflow run under ``parent_run_id``.

    ``max_trials`` (the environment's cap) lowers the spec's trial budget, or sets one where it has only minutes.
    The study (:func:`study_name`) is loaded if it exists: by default the trials the budget still lacks run (in a
    new study, all of them: the local path); with ``batch``, that batch's trials run (those it still owes, on a
    retry), sampled with the seed ``search.seed + batch.index`` so concurrent batches do not propose the same
    values. ``read_only`` (training after the mapped batches) runs no
    trial: the batches ran the budget as ``plan_search`` planned it, whatever cap this process's settings set.

    Raises:
        SelectionError: ``read_only`` and the study holds no completed trial (the batches used another storage?).
    """
    import mlflow
    import optuna

    search = spec.training.search
    assert search is not None  # noqa: S101 - the caller checked
    space = search.space[model.family]
    metric = spec.selection_metric
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id

    def objective(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, p) for name, p in space.items()}
        if batch is not None:
            trial.set_user_attr(BATCH_ATTR, batch.index)
        candidate = model.model_copy(update={"params": {**model.params, **params}})
        run = client.create_run(
            experiment_id,
            run_name=f"{spec.name}-{model.family}-trial-{trial.number}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                TAG_PIPELINE: spec.name,
                TAG_SEARCH_FAMILY: model.family,
                TAG_SEARCH_TRIAL: str(trial.number),
            },
        )
        try:
            for k, v in params.items():
                client.log_param(run.info.run_id, f"model.{k}", v)
            value = _validation_score(spec, candidate, data, metric)
            client.log_metric(run.info.run_id, f"{VALIDATION_PREFIX}{metric}", value)
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
        client.set_terminated(run.info.run_id)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name(spec, parent_run_id, model.family),
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=search.seed + (batch.index if batch else 0)),
        direction="maximize" if metric in HIGHER_IS_BETTER else "minimize",
        load_if_exists=True,
    )
    if read_only:
        if not _done(study):
            raise SelectionError(
                f"{spec.name}: study {study.study_name!r} holds no completed trial; did the search_trials batches "
                "run against the same storage (search_storage_url, else the run folder's journal)?"
            )
        trials: int | None = 0
    elif batch is not None:
        trials = batch.trials - _done(study, batch.index)
        tried = _tried(study, batch.index)
        if tried:  # a retried batch: a sampler seeded as on the first attempt would propose its trials again
            study.sampler = optuna.samplers.TPESampler(seed=search.seed + batch.index + RETRY_SEED_STRIDE * tried)
    else:
        budget = trial_budget(spec, max_trials)
        trials = None if budget is None else budget - _done(study)
    started = time.monotonic()
    if trials is None or trials > 0:
        study.optimize(
            objective,
            n_trials=trials,
            timeout=search.minutes * 60 if search.minutes else None,
            n_jobs=1 if trials else search.n_jobs,  # a trial budget runs sequentially: reproducible
        )
    else:
        log.info("%s: the study already holds its trials (mapped batches): only its best trial is read", model.family)
    best = study.best_trial
    log.info(
        "%s: %d trials in %.1fs, best #%d %s=%.4f %s",
        model.family,
        _done(study),
        time.monotonic() - started,
        best.number,
        metric,
        best.value,
        best.params,
    )
    final = model.model_copy(update={"params": {**model.params, **best.params}})
    return FamilyResult(final, float(best.value), _done(study))  # type: ignore[arg-type]


def search_batch(
    spec: PipelineSpec, features: pd.DataFrame, split: Split, storage_url: str | None, journal: Any, batch: TrialBatch
) -> FamilyResult:
    """Run one batch of a family's trials in the run's shared study (a mapped pod's work).

    Returns:
        The family's best trial so far (over every batch that has finished) and the study's completed trials.
    """
    search = spec.training.search
    models = {m.family: m for m in spec.training.families}
    if search is None or batch.family not in search.space or batch.family not in models:
        raise SelectionError(f"{spec.name}: {batch.family!r} is not a searched family of this spec")
    data = _Data(spec, features, split)
    storage = _storage(storage_url, journal)
    return search_family(spec, models[batch.family], data, storage, batch.parent_run_id, None, batch)


def select_model(
    spec: PipelineSpec,
    features: pd.DataFrame,
    split: Split,
    parent_run_id: str,
    storage_url: str | None,
    journal: Any,
    max_trials: int | None = None,
    searched: bool = False,
) -> Selection:
    """Search each searched family, score each fixed one, on the validation split; the best one wins.

    Args:
        spec: The pipeline (``training.model``, ``candidates``, ``search``).
        features: The featurised training window (with the target).
        split: Fit and validation rows of that window.
        parent_run_id: The candidate's MLflow run (trials nest under it; scores are logged on it).
        storage_url: Optuna RDB storage URL, or None for the journal file.
        journal: Path of the journal file.
        max_trials: The environment's cap on trials per family (``settings.search_max_trials``).
        searched: The mapped trial batches ran (``plan_search``'s run): read each study's best trial, run none.

    Returns:
        The best family with its final parameters, and every family's validation score.
    """
    import mlflow

    metric = spec.selection_metric
    data = _Data(spec, features, split)
    search = spec.training.search
    storage = _storage(storage_url, journal) if search else None
    results = []
    for model in spec.training.families:
        if search and model.family in search.space:
            results.append(search_family(spec, model, data, storage, parent_run_id, max_trials, read_only=searched))
        else:
            results.append(FamilyResult(model, _validation_score(spec, model, data, metric), 0))
    client = mlflow.MlflowClient()
    for r in results:
        client.log_metric(parent_run_id, f"{VALIDATION_PREFIX}{r.model.family}_{metric}", r.score)
    pick = max if metric in HIGHER_IS_BETTER else min
    best = pick(results, key=lambda r: r.score)
    log.info("validation %s per family: %s; candidate: %s", metric, {r.model.family: r.score for r in results}, best)
    return Selection(best.model, metric, results)


def plan_search(
    spec: PipelineSpec, settings: Settings, run_id: str, lineage: dict[str, str] | None = None
) -> list[TrialBatch]:
    """Open the candidate's MLflow run and cut each searched family's budget into batches (mapped pods).

    Args:
        spec: The pipeline (``training.search.trials_per_pod``).
        settings: Environment settings (tracking store, ``search_max_trials``).
        run_id: The Airflow run (output folder; the studies' journal lives there without an RDB storage).
        lineage: Tags of the candidate's run, e.g. the Airflow DAG and run ids.

    Raises:
        SelectionError: The spec sets no ``training.search.trials_per_pod``.
    """
    from tasks.tracking import start_tracking

    if spec.training.search is None or spec.training.search.trials_per_pod is None:
        raise SelectionError(f"{spec.name}: training.search.trials_per_pod is not set: there are no trial batches")
    experiment_id = start_tracking(settings, spec.name)
    parent = open_search_run(spec, experiment_id, run_id, lineage or {})
    return plan_batches(spec, settings.search_max_trials, parent)


def search_trials(
    spec: PipelineSpec, settings: Settings, layout: DataLayout, datasets: Datasets, run_id: str, batch: TrialBatch
) -> SearchedBatch:
    """One mapped pod's work: ``batch.trials`` trials of its family in the run's shared study.

    The validation split is carved exactly as ``train_model`` carves it, so the train stage reads scores of the
    same rows. The study lives in ``settings.search_storage_url`` (PostgreSQL in compose and prod), else in the
    journal file under the run's folder, which in kubernetes mode is on the shared store every pod mounts.
    """
    import pandas as pd

    from tasks.tracking import start_tracking

    features = pd.read_parquet(datasets.train_features)
    train_raw = pd.read_parquet(datasets.train_raw)
    start_tracking(settings, spec.name)
    split = validation_split(spec, train_raw)
    journal = layout.search_journal(spec.name, run_id)
    result = search_batch(spec, features, split, settings.search_storage_url, journal, batch)
    return SearchedBatch(family=batch.family, index=batch.index, trials=result.trials, best_value=result.score)
