"""The GPU benchmark script runs end to end on the CPU (--tiny) and writes its section."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_gpu_tiny_writes_its_results_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_gpu", "--tiny", "--root",
                           str(tmp_path / "store"), "--results", str(results),
                           "--crossfit", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
                          encoding="utf-8")
    assert done.returncode == 0, done.stderr[-3000:]
    text = results.read_text(encoding="utf-8")
    assert "## GPU worker: fine-tune and embed, CPU (tiny check)" in text
    assert "**fine-tune, total**" in text and "**embed 32 patients**" in text
    assert "32 trained, 8 for validation" in text
    assert "Cross-fit (`--crossfit 2`): the CNN and its 2 fold CNNs" in text
    assert "stated tolerance 1e-4" in text
