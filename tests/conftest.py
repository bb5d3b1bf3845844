"""Shared test fixtures: the team's real reference data beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The commands these tests start print UTF-8 (tables, '…') whatever locale the suite runs
# under; test_cli_errors checks what a user with an ASCII locale sees.
os.environ["PYTHONUTF8"] = "1"

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (real public images, baselines and statistics reference sets)."""
    if not DATA.is_dir():
        pytest.fail(f"reference data not found at {DATA}; the repo must sit beside shared/")
    return DATA
