"""Airflow puts the plugin folders on sys.path: a plugin module named like a standard-library module shadows
it in every Airflow process (a ``secrets.py`` once broke the scheduler's ``from secrets import token_hex``)."""

from __future__ import annotations

import sys

from tests.conftest import REPO


def test_no_plugin_module_shadows_the_standard_library():
    modules = {p.stem for p in (REPO / "plugins").rglob("*.py")} - {"__init__"}
    assert modules and not (modules & set(sys.stdlib_module_names)), modules & set(sys.stdlib_module_names)
