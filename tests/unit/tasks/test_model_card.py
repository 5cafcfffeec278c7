"""The model card from typed results: its sections, markdown for the registry, HTML that escapes what it shows."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.gate import decide_promotion
from tasks.model_card import build_sections, to_html, to_markdown, write_card
from tasks.results import Datasets, Evaluation, Trained
from tasks.spec import GateSpec, load_spec
from tasks.storage import DataLayout

RNG = np.random.default_rng(3)
N = 600
Y = (RNG.random(N) < 0.3).astype(float)
GOOD = np.clip(0.3 + 0.45 * (Y - 0.3) + RNG.normal(0, 0.18, N), 0.001, 0.999)
WEAK = np.clip(0.3 + 0.1 * (Y - 0.3) + RNG.normal(0, 0.18, N), 0.001, 0.999)
TRAINED = Trained(
    mlflow_run_id="0123456789abcdef",
    model_uri="models:/m-1",
    baseline_mlflow_run_id="fedcba9876543210",
    baseline_model_uri="models:/m-2",
    family="lightgbm",
    train_rows=12000,
)
DATASETS = Datasets(
    train_raw="t.parquet",
    train_features="f.parquet",
    holdout="h.parquet",
    train_partitions=["2024-01-01", "2024-01-02", "2024-01-03"],
    holdout_partitions=["2024-01-04"],
    train_rows=6000,
    holdout_rows=N,
)


def _card_inputs(**gate_changes):
    spec = load_spec("adult_income")
    gate = GateSpec.model_validate(spec.gate.model_dump(by_alias=True) | gate_changes)
    groups = {"sex": np.where(np.arange(N) < 200, "Female", "Male"), "race": np.array(["White"] * N)}
    preds = {"candidate": GOOD, "baseline": WEAK, "champion": WEAK}
    decision = decide_promotion(spec.metric_names, gate, Y, preds, groups, "7", seed=1)
    scores = decision.metrics
    evaluation = Evaluation(
        candidate=scores["candidate"],
        baseline=scores["baseline"],
        champion=scores["champion"],
        champion_version="7",
        holdout_rows=N,
        predictions_uri="p.parquet",
        smoke_sample_uri="s.parquet",
        reference_predictions_uri="r.parquet",
    )
    return spec, evaluation, decision


def test_sections_cover_model_data_metrics_slices_verdicts_and_use():
    spec, evaluation, decision = _card_inputs()
    titles = [s.title for s in build_sections(spec, TRAINED, DATASETS, evaluation, decision)]
    assert titles == [
        "Model",
        "Data",
        "Model selection",
        "Holdout metrics",
        "Explanations",
        "Slices (sensitive columns)",
        "Gate verdicts",
        "Intended use",
        "Limitations",
        "Ethical considerations",
    ]
    md = to_markdown("card", build_sections(spec, TRAINED, DATASETS, evaluation, decision))
    assert "| metric | candidate | baseline (logistic_regression) | champion v7 |" in md
    assert "training: 6,000 rows from 3 partitions (2024-01-01 .. 2024-01-03)" in md
    assert "MLflow run `0123456789abcdef`" in md and "probability that income = >50K" in md
    assert "| sex | Female | 200 |" in md and "| race | White | 600 |" in md
    # sensitive columns are listed on their own line, never among the inputs
    inputs = next(line for line in md.splitlines() if "inputs: " in line and "sensitive" not in line)
    assert "sex" not in inputs and "race" not in inputs and "age" in inputs
    assert "sensitive columns (sliced by the gate; not model inputs): sex, race" in md


def test_failed_checks_are_marked_in_the_html(tmp_path):
    spec, evaluation, decision = _card_inputs(thresholds={"roc_auc": {"min": 0.999}})
    assert not decision.passed
    page = to_html("card", build_sections(spec, TRAINED, DATASETS, evaluation, decision))
    assert page.count('class="fail"') == len(decision.failed()) >= 1
    assert "<strong>FAILED</strong>" in page and "will not be promoted" in page


def test_html_escapes_text_from_the_spec(monkeypatch):
    spec, evaluation, decision = _card_inputs()
    hostile = spec.model_copy(update={"description": '<img src=x onerror="alert(1)"> & **bold** `code`'})
    page = to_html("<card>", build_sections(hostile, TRAINED, DATASETS, evaluation, decision))
    assert "<img" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "<strong>bold</strong>" in page and "<code>code</code>" in page and "<title>&lt;card&gt;</title>" in page


def test_markdown_table_cells_cannot_break_the_table():
    spec, evaluation, decision = _card_inputs()
    checks = [c.model_copy(update={"reason": "a | b"}) for c in decision.checks]
    md = to_markdown(
        "card", build_sections(spec, TRAINED, DATASETS, evaluation, decision.model_copy(update={"checks": checks}))
    )
    assert "a / b" in md and "a | b" not in md


def test_card_is_written_where_the_layout_says(tmp_path):
    spec, evaluation, decision = _card_inputs()
    layout = DataLayout(tmp_path)
    files = write_card(spec, TRAINED, DATASETS, evaluation, decision, layout, "run-1")
    assert files.markdown == str(layout.model_card("adult_income", "run-1", "md"))
    assert files.html == str(layout.model_card("adult_income", "run-1", "html"))
    text = layout.model_card("adult_income", "run-1", "md").read_text()
    assert text.startswith("# Model card: adult_income, candidate run 01234567 (")
    with pytest.raises(ValueError, match="md or html"):
        layout.model_card("adult_income", "run-1", "pdf")


def test_selection_and_explanations_sections_show_validation_scores_and_importance():
    spec, evaluation, decision = _card_inputs()
    selected = TRAINED.model_copy(
        update={
            "params": {"num_leaves": 12, "learning_rate": 0.05},
            "selection_metric": "roc_auc",
            "validation_scores": {"lightgbm": 0.91, "random_forest": 0.88},
            "trials": {"lightgbm": 20, "random_forest": 0},
            "calibration": "isotonic",
        }
    )
    explained = evaluation.model_copy(
        update={
            "importance": {"relationship": 0.75, "age": 0.25},
            "importance_space": "raw_margin",
            "importance_plot": "x.png",
        }
    )
    md = to_markdown("card", build_sections(spec, selected, DATASETS, explained, decision))
    assert "| lightgbm | 0.9100 | 20 | yes |" in md and "| random_forest | 0.8800 | fixed |  |" in md
    assert "with learning_rate=0.05, num_leaves=12" in md and "calibrated (isotonic) on the validation split" in md
    assert "| relationship | 0.7500 | 75.0% |" in md and "explanations/importance.png" in md
    plain = to_markdown("card", build_sections(spec, TRAINED, DATASETS, evaluation, decision))
    assert "no search, no selection" in plain and "No explanation was computed" in plain
