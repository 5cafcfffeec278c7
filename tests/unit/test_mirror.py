"""Tests mirror the code: every module under tasks/ and plugins/mlops_airflow/ has its own test file."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "tests" / "unit"
# modules whose tests live elsewhere, and where
ELSEWHERE = {
    "plugins/mlops_airflow/pods.py": "tests/kubernetes/ (rendered pods and failure modes against a local kubelet)",
}


def _expected(module: Path) -> Path:
    rel = module.relative_to(REPO)
    if rel.parts[0] == "tasks":
        return UNIT.joinpath(*rel.parts[:-1], f"test_{rel.name}")
    return UNIT / "plugins" / f"test_{rel.name}"


def test_every_module_has_its_own_test_file():
    modules = [
        p
        for folder in (REPO / "tasks", REPO / "plugins" / "mlops_airflow")
        for p in sorted(folder.rglob("*.py"))
        if not p.name.startswith("__")
    ]
    assert len(modules) > 30
    missing = [
        f"{m.relative_to(REPO)} -> {_expected(m).relative_to(REPO)}"
        for m in modules
        if not _expected(m).is_file() and str(m.relative_to(REPO)) not in ELSEWHERE
    ]
    assert missing == [], "add the module's test file (or say in ELSEWHERE where its tests live)"
    for module in ELSEWHERE:
        assert (REPO / module).is_file(), f"{module} is gone: drop it from ELSEWHERE"
