"""Fixtures of the integrity and geometry tests: small real cases and a store extracted once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.images import CASES, TEST_PARAMS, Base, Case, crop_case, dtlr, write_manifest


@pytest.fixture(scope="session")
def cases(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """The real TCGA cases cropped around their tumours (tests/images.py)."""
    root = tmp_path_factory.mktemp("good")
    return {name: crop_case(data_dir, name, root) for name in CASES}


@pytest.fixture(scope="session")
def base(cases: dict[str, Case], tmp_path_factory: pytest.TempPathFactory) -> Base:
    """Both cases registered as cohort "base" and extracted by `dtlr submit`."""
    root = tmp_path_factory.mktemp("base")
    params = root / "params.yaml"
    params.write_text(TEST_PARAMS, encoding="utf-8")
    settings = root / "settings.yaml"
    settings.write_text(f"preprocess: {{n4: false}}\nradiomics: {{params: {params}}}\n",
                        encoding="utf-8")
    store = root / "store"
    manifest = write_manifest(root / "base.csv", cases)
    added = dtlr("cohort", "add", "base", str(manifest), "--store", str(store),
                 "--data-root", str(tmp_path_factory.getbasetemp()))  # the cases lie in good0/
    assert added.returncode == 0, added.stdout + added.stderr
    run = dtlr("submit", "--cohort", "base", "--store", str(store), "--jobs", "1",
               "--config", str(settings))
    assert run.returncode == 0, run.stdout + run.stderr
    return Base(root, cases, params, settings, store)
