"""The import graph points one way: dags -> plugins -> tasks; tasks never imports Airflow, plugins or dags.

Read with ``ast`` from the files (imports inside functions count too), so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# layer -> the top-level packages it must never import
FORBIDDEN = {
    "tasks": {"airflow", "mlops_airflow", "dags"},
    "plugins": {"dags"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (absolute names; relative imports resolve inside its own package)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations(root: Path, dag_modules: set[str] | None = None) -> list[str]:
    """``file:line imports module`` for each import against the layering under ``root``."""
    dag_modules = dag_modules if dag_modules is not None else {p.stem for p in (root / "dags").glob("*.py")}
    out = []
    for layer, banned in FORBIDDEN.items():
        for path in sorted((root / layer).rglob("*.py")):
            for line, module in _imports(path):
                top = module.split(".")[0]
                if top in banned or top in dag_modules:
                    out.append(f"{path.relative_to(root)}:{line} imports {module}")
    return out


def test_the_layers_import_one_way():
    assert violations(REPO) == []


def test_plugins_and_dags_are_really_checked():
    """The walk finds the real imports it allows: dags -> plugins -> tasks."""
    dag_imports = {m for p in (REPO / "dags").glob("*.py") for _, m in _imports(p)}
    plugin_imports = {m for p in (REPO / "plugins").rglob("*.py") for _, m in _imports(p)}
    assert any(m.startswith("mlops_airflow") for m in dag_imports)
    assert any(m.startswith("tasks") for m in plugin_imports) and any(m.startswith("airflow") for m in plugin_imports)


@pytest.mark.parametrize(
    ("layer", "source", "bad"),
    [
        ("tasks", "from airflow.sdk import task\n", "airflow.sdk"),
        ("tasks", "def f():\n    import mlops_airflow.blocks\n", "mlops_airflow.blocks"),
        ("plugins/mlops_airflow", "import pipelines\n", "pipelines"),
        ("tasks/serving", "from dags.pipelines import x\n", "dags.pipelines"),
    ],
)
def test_an_import_against_the_layers_is_named_with_its_file_and_line(tmp_path, layer, source, bad):
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "pipelines.py").write_text("from mlops_airflow import blocks\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "plugins").mkdir()
    folder = tmp_path / layer
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bad.py").write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(f"{layer}/bad.py:") and found[0].endswith(f"imports {bad}")
