"""`dtlr weights`: ImageNet weights carried onto an offline workstation, checked, installed.

The refusal path runs the real command on a small stand-in file; the checksum path installs a
file whose hash the test computes, under a published name built from that hash (the real
IMAGENET1K_V2 file is 100 MB and cannot be downloaded here).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from dtlr.services.gpu_worker import weights
from tests.cluster import BIN


def dtlr_weights(torch_home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dtlr"), "weights", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TORCH_HOME": str(torch_home)},
                          encoding="utf-8")


def test_a_file_that_is_not_the_published_one_is_refused(tmp_path: Path) -> None:
    stand_in = tmp_path / "resnet50-11ad3fa6.pth"
    stand_in.write_bytes(b"not the ImageNet weights")
    out = dtlr_weights(tmp_path / "torch", "install", str(stand_in))
    assert out.returncode == 2, out.stderr
    assert "is not torchvision's ResNet50 IMAGENET1K_V2 file" in out.stderr
    assert "11ad3fa6" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "torch" / "hub" / "checkpoints").exists()
    missing = dtlr_weights(tmp_path / "torch", "status")
    assert missing.returncode == 1 and "not in torchvision's cache" in missing.stderr
    assert "dtlr weights install resnet50-11ad3fa6.pth" in missing.stderr


def test_a_file_with_the_published_checksum_is_installed_where_torchvision_looks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = tmp_path / "carried.pth"
    source.write_bytes(os.urandom(4096))
    prefix = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    url = f"https://download.pytorch.org/models/resnet50-{prefix}.pth"
    target = weights.install(source, url)
    assert target == tmp_path / "torch" / "hub" / "checkpoints" / f"resnet50-{prefix}.pth"
    assert target.read_bytes() == source.read_bytes()
    st = weights.status(url)
    assert st.present and st.checksum_ok and st.size == 4096
    target.write_bytes(b"damaged in the cache")
    assert not weights.status(url).checksum_ok
    assert weights.published_name()[0] == "resnet50-11ad3fa6.pth"  # torchvision's own file
