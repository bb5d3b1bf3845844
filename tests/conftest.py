"""Shared test fixtures: the team's real reference data beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (real public images, baselines and statistics reference sets)."""
    if not DATA.is_dir():
        pytest.fail(f"reference data not found at {DATA}; the repo must sit beside shared/")
    return DATA
