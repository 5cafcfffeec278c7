"""Unit tests read the small real-data cuts under ``tests/fixtures/datasets``, never ``../shared``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.settings import get_settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "datasets"


@pytest.fixture(autouse=True)
def fixture_datasets(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``MLP_SHARED_DATASETS`` (what the replay stage reads) is the committed fixtures folder."""
    monkeypatch.setenv("MLP_SHARED_DATASETS", str(FIXTURES))
    get_settings.cache_clear()
    yield FIXTURES
    get_settings.cache_clear()
