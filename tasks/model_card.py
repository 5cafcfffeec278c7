"""Model cards: one per candidate, in markdown (the registry version's description) and HTML (to open).

Both are rendered from the same sections: what the model is, the data it saw, holdout metrics beside the
baseline and the champion, per-group metrics of the sensitive columns, every gate verdict, and the intended
use and limits the spec states. The card is logged to the candidate's MLflow run (``model_card/``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tasks.results import Datasets, Evaluation, GateDecision, ModelCardFiles, Trained
from tasks.storage import write_text

if TYPE_CHECKING:
    from tasks.spec import PipelineSpec
    from tasks.storage import DataLayout


@dataclass
class Section:
    """A heading with paragraphs, bullet items and at most one table."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def build_sections(
    spec: PipelineSpec, trained: Trained, datasets: Datasets, evaluation: Evaluation, decision: GateDecision
) -> list[Section]:
    """The card's content."""
    verdict = "PASSED" if decision.passed else "FAILED"
    promote = "will be promoted" if decision.promote else "will not be promoted"
    schema = spec.schema_
    if spec.task == "classification":
        output = f"probability that {schema.target} = {schema.positive_label}"
    else:
        output = f"predicted {schema.target}"
    overview = Section(
        "Model",
        paragraphs=[spec.description],
        items=[
            f"pipeline `{spec.name}`, task {spec.task}, owner {spec.owner}",
            f"family `{trained.family}` (baseline `{spec.training.baseline.family}`), "
            f"MLflow run `{trained.mlflow_run_id}`",
            f"output: {output}",
            f"gate ({decision.mode}): **{verdict}**; the candidate {promote}",
        ],
    )
    train_days, holdout_days = datasets.train_partitions, datasets.holdout_partitions
    sensitive_inputs = [c for c in schema.sensitive if c in schema.input_columns]
    as_inputs = f"model inputs too: {', '.join(sensitive_inputs)}" if sensitive_inputs else "not model inputs"
    other_inputs = [c for c in schema.input_columns if c not in schema.sensitive]
    data = Section(
        "Data",
        items=[
            f"training: {datasets.train_rows:,} rows from {len(train_days)} partitions "
            f"({train_days[0]} .. {train_days[-1]})",
            f"holdout: {datasets.holdout_rows:,} rows from {len(holdout_days)} partitions "
            f"({holdout_days[0]} .. {holdout_days[-1]}), the most recent ones (time-based split)",
            f"inputs: {', '.join(other_inputs)}",
            f"sensitive columns (sliced by the gate; {as_inputs}): {', '.join(schema.sensitive) or 'none declared'}",
        ],
    )
    roles = [r for r in ("candidate", "baseline", "champion") if decision.metrics.get(r)]
    champion = evaluation.champion_version
    names = {
        "candidate": "candidate",
        "baseline": f"baseline ({spec.training.baseline.family})",
        "champion": f"champion v{champion}",
    }
    metrics = Section(
        "Holdout metrics",
        paragraphs=[f"Primary metric: `{decision.primary_metric}`. All models scored on the same holdout rows."],
        header=["metric", *(names[r] for r in roles)],
        rows=[[k, *(_num(decision.metrics[r].get(k)) for r in roles)] for k in spec.metric_names],
    )
    slices = Section("Slices (sensitive columns)")
    for column, groups in decision.slices.items():
        metric = next((k for k in next(iter(groups.values())) if k not in {"rows", "judged", "note"}), "metric")
        for group, row in groups.items():
            slices.rows.append(
                [column, group, f"{row['rows']:,}", _num(row.get(metric)), "yes" if row["judged"] else row["note"]]
            )
        slices.header = ["column", "group", "holdout rows", metric, "judged"]
    if not slices.rows:
        slices.paragraphs.append("No slice check configured (gate.slices) or no sensitive columns declared.")
    checks = Section(
        "Gate verdicts",
        header=["check", "verdict", "observed", "threshold", "reason"],
        rows=[
            [c.name, "PASS" if c.passed else "FAIL", _num(c.observed), _num(c.threshold), c.reason]
            for c in decision.checks
        ],
    )
    card = spec.model_card
    use = Section("Intended use", paragraphs=[card.intended_use])
    limits = Section("Limitations", paragraphs=[card.limitations])
    sections = [overview, data, _selection(trained), metrics, _explanations(evaluation), slices, checks, use, limits]
    if card.ethical_considerations:
        sections.append(Section("Ethical considerations", paragraphs=[card.ethical_considerations]))
    return sections


def _selection(trained: Trained) -> Section:
    """How the candidate was chosen: each family's validation score, trials, final params, calibration."""
    section = Section("Model selection")
    params = ", ".join(f"{k}={v}" for k, v in sorted(trained.params.items())) or "the family's defaults"
    if not trained.validation_scores:
        section.paragraphs.append(f"One family with fixed hyperparameters (no search, no selection): {params}.")
        return section
    section.paragraphs.append(
        f"Each family scored on a validation split of the training window (never the holdout); the best "
        f"`{trained.selection_metric}` became the candidate, `{trained.family}`, with {params}."
    )
    section.header = ["family", f"validation {trained.selection_metric}", "search trials", "chosen"]
    section.rows = [
        [family, _num(value), str(trained.trials.get(family) or "fixed"), "yes" if family == trained.family else ""]
        for family, value in trained.validation_scores.items()
    ]
    if trained.calibration:
        section.items.append(f"probabilities calibrated ({trained.calibration}) on the validation split")
    return section


def _explanations(evaluation: Evaluation) -> Section:
    """Global importance: mean |SHAP contribution| per raw input column on a holdout sample."""
    section = Section("Explanations")
    if not evaluation.importance:
        section.paragraphs.append("No explanation was computed for this model.")
        return section
    space = "the raw margin (log-odds for a classifier), before calibration"
    if evaluation.importance_space != "raw_margin":
        space = "the model's output (model-agnostic permutation SHAP)"
    section.paragraphs.append(
        f"Mean absolute SHAP contribution of each input column over a sample of holdout rows, on {space}. "
        "One-hot and cyclical features are summed back to the input column they come from."
    )
    if evaluation.importance_plot:
        section.items.append("plot: `explanations/importance.png` on the candidate's MLflow run")
    total = sum(evaluation.importance.values()) or 1.0
    section.header = ["input column", "mean |contribution|", "share"]
    section.rows = [[c, _num(v), f"{v / total:.1%}"] for c, v in evaluation.importance.items()]
    return section


def to_markdown(title: str, sections: list[Section]) -> str:
    """Markdown (MLflow renders it as the registry version's description)."""
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        out += [p + "\n" for p in s.paragraphs]
        out += [f"- {i}" for i in s.items]
        if s.items:
            out.append("")
        if s.header:
            out.append("| " + " | ".join(s.header) + " |")
            out.append("|" + "---|" * len(s.header))
            out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in s.rows]
            out.append("")
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold** spans."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def to_html(title: str, sections: list[Section]) -> str:
    """A standalone HTML page."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
        if s.items:
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in s.items) + "</ul>")
        if s.header:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in s.header)
            rows = []
            for row in s.rows:
                cls = ' class="fail"' if "FAIL" in row else ""
                rows.append(f"<tr{cls}>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.3rem .6rem;"
        "text-align:left;vertical-align:top}th{background:#f3f3f3}tr.fail td{background:#fde8e8}"
        "code{background:#f3f3f3;padding:0 .2rem}"
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_card(
    spec: PipelineSpec,
    trained: Trained,
    datasets: Datasets,
    evaluation: Evaluation,
    decision: GateDecision,
    layout: DataLayout,
    run_id: str,
) -> ModelCardFiles:
    """Render the card as the run's ``model_card.md`` and ``model_card.html``; return both paths."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"Model card: {spec.name}, candidate run {trained.mlflow_run_id[:8]} ({stamp})"
    sections = build_sections(spec, trained, datasets, evaluation, decision)
    md = write_text(layout.model_card(spec.name, run_id, "md"), to_markdown(title, sections))
    page = write_text(layout.model_card(spec.name, run_id, "html"), to_html(title, sections))
    return ModelCardFiles(markdown=str(md), html=str(page))
