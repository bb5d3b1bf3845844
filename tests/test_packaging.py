"""The installed package is `dtlr` alone, and its metadata raises no deprecation warning.

Builds the wheel `pip install .` would install (no build isolation: the environment's
setuptools, which meets the project's build requirement) and reads its file list.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "--no-cache-dir", "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=600, encoding="utf-8")
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("dtlr-*.whl")
    return path, done.stdout + done.stderr


def test_only_dtlr_lands_at_the_top_of_site_packages(wheel: tuple[Path, str]) -> None:
    path, _ = wheel
    names = zipfile.ZipFile(path).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"dtlr", f"{path.name.split('-')[0]}-{path.name.split('-')[1]}.dist-info"}
    for module in ("dtlr/__init__.py", "dtlr/shared/store.py", "dtlr/shared/params/paper.yaml",
                   "dtlr/services/coordinator/cli.py", "dtlr/services/extractor/stage.py",
                   "dtlr/services/gpu_worker/train.py", "dtlr/services/modeler/run.py"):
        assert module in names
    assert not any(n.startswith(("dtlr/tests/", "dtlr/benchmarks/")) for n in names)
    entry = zipfile.ZipFile(path).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script in ("dtlr =", "dtlr-submit =", "dtlr-sql =", "dtlr-worker ="):
        assert script in entry


def test_the_metadata_is_current(wheel: tuple[Path, str]) -> None:
    path, output = wheel
    assert "deprecat" not in output.lower(), output
    metadata = zipfile.ZipFile(path).read(
        next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
