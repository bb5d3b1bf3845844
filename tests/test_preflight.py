"""What a run needs that is not per patient is checked before the first patient starts.

Each case runs the real `dtlr-submit` and must stop within seconds with exit code 2 (refused),
the reason and its fix, having started no patient.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.cluster import BIN, free_port

FAST_S = 30  # interpreter start-up and imports included


def submit(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    t0 = time.monotonic()
    out = subprocess.run([str(BIN / "dtlr-submit"), *args], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COLUMNS": "200", **(env or {})},
                         encoding="utf-8")
    return out.returncode, out.stdout + out.stderr, time.monotonic() - t0


def test_a_typo_in_the_parameter_file_refuses_the_run(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("imageType:\n  Original: {}\nsetting:\n  binWidht: 25\n", encoding="utf-8")
    config = tmp_path / "settings.yaml"
    config.write_text(f"radiomics:\n  params: {params}\n", encoding="utf-8")
    code, output, seconds = submit("--cohort", "demo", "--config", str(config), "--store",
                                   str(tmp_path / "store"), "--weights", "random")
    assert code == 2, output
    assert "binWidht" in output and str(params) in output and "fix the key" in output
    assert seconds < FAST_S
    assert not (tmp_path / "store" / "status").exists()  # no patient was started
    assert not (tmp_path / "store" / "demo-data").exists()  # nor the demo generated


def test_no_imagenet_weights_offline_stops_before_any_patient(tmp_path: Path) -> None:
    offline = {"TORCH_HOME": str(tmp_path / "torch"),  # an empty cache
               "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    code, output, seconds = submit("--cohort", "demo", "--store", str(tmp_path / "store"),
                                   env=offline)
    assert code == 2, output
    assert "ImageNet weights" in output and "WEIGHTS=random" in output
    assert seconds < FAST_S
    assert not (tmp_path / "store" / "demo-data").exists()


def test_unreachable_broker_refuses_the_run(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, output, seconds = submit("--cohort", "demo", "--store", str(tmp_path / "store"),
                                   "--broker", url)
    assert code == 3, output
    assert f"cannot reach the broker at {url}" in output and "start Redis" in output
    assert seconds < FAST_S


def test_unwritable_store_refuses_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    code, output, _ = submit("--cohort", "demo", "--store", str(blocker / "store"),
                             "--weights", "random")
    assert code == 2, output
    assert "cannot be written" in output and str(blocker / "store") in output
