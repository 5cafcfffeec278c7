"""Shared names are spelled once: in tasks/names.py and nowhere else in the code (docstrings may cite them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tasks import names
from tests.conftest import REPO

CODE = sorted([*(REPO / "tasks").rglob("*.py"), *(REPO / "plugins").rglob("*.py"), *(REPO / "dags").rglob("*.py")])
SPELLED_ONCE = [
    names.SMOKE_SAMPLE,
    names.EXPECTED_COLUMN,
    names.REFERENCE_INPUTS,
    names.REFERENCE_PREDICTIONS,
    names.REFERENCE_PROFILE,
    names.LEGACY_REFERENCE,
    names.MODEL_CARD_HTML,
    names.TAG_TRAIN_PARTITIONS,
    names.TAG_HOLDOUT_PARTITIONS,
    names.TAG_GATE_CHAMPION,
    names.TAG_PROMOTION_OUTCOME,
    names.TAG_CANDIDATE_RUN,
    "gate.check.",
    "baseline_holdout_",
    "champion_holdout_",
    "ml://{pipeline}/",
]


def _strings(path: Path) -> list[str]:
    """Every string constant of a module that is not a docstring (f-string pieces included)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


STRINGS = {p.relative_to(REPO).as_posix(): _strings(p) for p in CODE if p.name != "names.py"}


@pytest.mark.parametrize("name", SPELLED_ONCE)
def test_no_module_spells_a_shared_name_itself(name):
    spelled = sorted(path for path, strings in STRINGS.items() if any(name in s for s in strings))
    assert spelled == [], f"{name!r} spelled outside tasks/names.py"


def test_aliases_are_never_spelled_at_a_registry_call():
    calls = {"set_registered_model_alias", "get_model_version_by_alias", "delete_registered_model_alias", "_version"}
    spelled = []
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            name = getattr(func, "attr", None) or getattr(func, "id", None)
            if isinstance(node, ast.Call) and name in calls:
                literal = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                spelled += [f"{path.relative_to(REPO)}:{node.lineno} {v}" for v in literal]
    assert spelled == []


def test_derived_names():
    assert names.holdout_metric("rmse") == "holdout_rmse" and names.gate_check_tag("beats_champion") == (
        "gate.check.beats_champion"
    )
    assert names.MODEL_CARD_HTML == "model_card/model_card.html"
    assert names.RETRAIN_ASSET.format(pipeline="bike_demand") == "ml://bike_demand/retrain"
    lineage = (names.TAG_AIRFLOW_RUN_ID, names.TAG_AIRFLOW_DAG_ID, names.TAG_TRAIN_PARTITIONS, names.TAG_CODE_VERSION)
    assert all(tag.startswith(names.LINEAGE_TAG_PREFIXES) for tag in (*lineage, names.TAG_PIPELINE))
    assert not names.TAG_ROLE.startswith(names.LINEAGE_TAG_PREFIXES)  # a version is not a "candidate" by lineage
