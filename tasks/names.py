"""Names the stores share: registry aliases, MLflow tags, artifact paths, metric prefixes, Asset URIs.

A name written by one stage and read by another (a tag training sets and the registry copies, an artifact
evaluation logs and the model server reads) is spelled here once; no other module spells it.
"""

from __future__ import annotations

# ---- Airflow Assets ----
RETRAIN_ASSET = "ml://{pipeline}/retrain"
RAW_ASSET = "ml://{pipeline}/raw"
LANDING_ASSET = "ml://{pipeline}/landing"
WATCHED_ASSET = "ml://{pipeline}/landing/watched"  # what the AssetWatchers record (no partition key)
PARTITION_KEY_FORMAT = "%Y-%m-%d"  # an Airflow partition key of a daily pipeline: the day

# ---- registry aliases (never MLflow stages) ----
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"

# ---- MLflow run tags written at training ----
TAG_PIPELINE = "pipeline"
TAG_ROLE = "role"  # candidate | baseline
TAG_CANDIDATE_RUN = "candidate_mlflow_run_id"  # on a baseline's run: the candidate it was trained beside
TAG_CODE_VERSION = "code_version"
TAG_MODEL_FAMILY = "model_family"
TAG_TRAIN_PARTITIONS = "data.train_partitions"
TAG_HOLDOUT_PARTITIONS = "data.holdout_partitions"
TAG_VALIDATION_SPLIT = "data.validation_split"
TAG_SEARCH_FAMILY = "search.family"  # on a trial's nested run
TAG_SEARCH_TRIAL = "search.trial"  # on a trial's nested run: the Optuna trial number
TAG_SEARCH_RUN = "search.run"  # on a candidate's run opened before mapped trial batches: its Airflow run (folder)
TAG_CALIBRATION = "calibration"  # on a candidate's run: isotonic | sigmoid
TAG_AIRFLOW_DAG_ID = "airflow.dag_id"
TAG_AIRFLOW_RUN_ID = "airflow.run_id"
LINEAGE_TAG_PREFIXES = ("data.", "airflow.", TAG_CODE_VERSION, TAG_PIPELINE)
"""Run tags every registered version copies from its training run (one source of lineage)."""

# ---- gate tags (on the candidate's run and on its registered version) ----
TAG_GATE_MODE = "gate.mode"
TAG_GATE_PASSED = "gate.passed"
TAG_GATE_PROMOTE = "gate.promote"
TAG_GATE_CHECKS = "gate.checks"
TAG_GATE_CHAMPION = "gate.champion_at_evaluation"


def gate_check_tag(check: str) -> str:
    """The tag holding one gate check's verdict (``pass`` / ``fail``)."""
    return f"gate.check.{check}"


# ---- registered-version tags ----
TAG_MLFLOW_RUN_ID = "mlflow_run_id"
TAG_PROMOTION_OUTCOME = "promotion.outcome"
TAG_PROMOTED_FROM = "promoted_from"

# ---- monitoring run tags (experiment ``<pipeline>-monitoring``) ----
TAG_WINDOW_END = "window_end"
TAG_STATUS = "status"
TAG_CHAMPION_VERSION = "champion_version"
TAG_VIOLATIONS = "violations"
TAG_RETRAIN = "retrain"

# ---- artifacts on a candidate's MLflow run ----
MODEL_ARTIFACT = "model"
SMOKE_SAMPLE = "smoke/holdout_sample.parquet"
"""Holdout rows with the candidate's offline predictions: the model server's deploy smoke test."""
EXPECTED_COLUMN = "__expected_prediction__"
"""The smoke sample's column of expected predictions."""
REFERENCE_INPUTS = "reference/inputs.parquet"
"""Training sample (inputs and target): the reference of input and target drift."""
REFERENCE_PREDICTIONS = "reference/predictions.parquet"
"""The candidate's predictions on its holdout: the reference of prediction drift."""
REFERENCE_PROFILE = "reference/profile.json"
"""The reference sample's distinct values and counts per column: the monitor's decision statistics (one pass)."""
LEGACY_REFERENCE = "reference/reference.parquet"
"""Champions trained before the split: training sample with in-sample predictions in one file."""
IMPORTANCE_JSON = "explanations/importance.json"
"""Global importance: mean |SHAP contribution| per raw input column on a holdout sample."""
IMPORTANCE_PLOT = "explanations/importance.png"
MODEL_CARD_DIR = "model_card"
MODEL_CARD_HTML = f"{MODEL_CARD_DIR}/model_card.html"

PREDICTION = "prediction"
"""Column of a model's output in the prediction log, the reference predictions and drift reports."""

# ---- metric prefixes on a candidate's run ----
TRAIN_PREFIX = "train_"
VALIDATION_PREFIX = "validation_"
"""On a candidate's run: each family's best validation score (``validation_<family>_<metric>``); on a trial's
nested run: the trial's score (``validation_<metric>``)."""
HOLDOUT_PREFIX = "holdout_"
BASELINE_HOLDOUT_PREFIX = "baseline_holdout_"
CHAMPION_HOLDOUT_PREFIX = "champion_holdout_"
FIT_PREFIX = "fit."
ROLE_PREFIXES = {"candidate": HOLDOUT_PREFIX, "baseline": BASELINE_HOLDOUT_PREFIX, "champion": CHAMPION_HOLDOUT_PREFIX}
"""Holdout metric prefix per evaluated role."""


def holdout_metric(metric: str) -> str:
    """The candidate's holdout figure of ``metric`` as logged on its run (e.g. ``holdout_rmse``)."""
    return f"{HOLDOUT_PREFIX}{metric}"
