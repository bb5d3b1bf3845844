"""CI smoke run of benchmarks/bench_cohort.py: the paper-geometry cohort, small, end to end.

`python -m benchmarks.bench_cohort --patients 10` (10 training + 4 test patients at the paper's
acquisition geometry, a private redis-server, one CPU worker per core and a gpu-queue worker,
the real `dtlr submit`) must exit 0, write its section with every stage and the totals, and
leave a store in which every patient is extracted and embedded and one model run is done.
About 4 minutes on 2 cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dtlr.shared.stage import COHORT
from dtlr.shared.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.redis]

REPO = Path(__file__).resolve().parents[1]
COHORTS = ("paper-hospitalA", "paper-hospitalB")
PATIENTS = 10  # the smallest the benchmark accepts (5 of each grade for the modeler)


def test_bench_cohort_smoke_run(tmp_path: Path) -> None:
    results, work = tmp_path / "RESULTS.md", tmp_path / "work"
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_cohort", "--patients", str(PATIENTS),
         "--results", str(results), "--work", str(work)],
        cwd=REPO, capture_output=True, text=True, timeout=900, encoding="utf-8")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]

    text = results.read_text(encoding="utf-8")
    assert "## Paper-sized cohort on one node" in text
    section = text.split("## Paper-sized cohort on one node", 1)[1]
    for row in ("| extract | cpu queue |", "| finetune | gpu queue |", "| embed | gpu queue |",
                "| model | coordinator |", "| **total** |", "| **end to end** |"):
        assert row in section, row
    assert "**End to end:" in section and "does not apply" in section
    assert "python -m benchmarks.bench_cohort" in section

    store = Store(work / "store")
    sizes = {}
    for cohort in COHORTS:
        patients = set(pd.read_csv(work / "data" / cohort / "manifest.csv")["patient_id"])
        sizes[cohort] = len(patients)
        records = store.statuses(cohort)
        for stage in ("extract", "embed"):
            done = {r.patient_id for r in records if r.stage == stage and r.state == "done"}
            assert done == patients, (cohort, stage)
        assert not [r for r in records if r.state == "failed"]
    assert sizes == {COHORTS[0]: PATIENTS, COHORTS[1]: 4}
    models = [r for r in store.statuses(COHORTS[0])
              if r.stage == "model" and r.patient_id == COHORT]
    assert [r.state for r in models] == ["done"]
