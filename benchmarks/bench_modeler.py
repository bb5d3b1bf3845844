"""Modeler benchmark: the paper's scale, 442 patients x (1143 radiomics + 2048 DTL) features.

Builds a synthetic store with the real Store API (one Parquet per patient per reader for
radiomics, one per patient for DTL with the rows of every reader, as the extractor and GPU
worker write them; manifests registered; catalog refreshed): training cohort A (340, 20 with a
second reader) and test cohort B (102). Then times ``run_modeler`` (load, fit with the
out-of-fold thresholds, bootstrap optimism, evaluation, model file, metrics, full HTML report)
twice: first without the bootstrap (``optimism_bootstraps: 0``; the first run to read the
feature files and to add the ``metrics`` view to the catalog), then with the defaults (40
bootstrap refits of the whole pipeline); and ``predict_cohort`` on B. Writes the "Modeler"
section of benchmarks/RESULTS.md.

Run: ``python -m benchmarks.bench_modeler [--root DIR]`` (about 8 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks._results import write_section
from dtlr.services.modeler.run import predict_cohort, run_modeler
from dtlr.shared.config import Settings
from tests.synthetic.cohorts import build_store

TARGET_S = 20.0
PHASES = ("load", "fit", "optimism", "evaluate", "save", "report", "total")


def main() -> None:
    """Build the store, time cold and warm runs and a prediction, write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="store folder to build (default: a temporary folder, removed)")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="dtlr-bench-modeler-"))
    try:
        t0 = time.perf_counter()
        syn = build_store(root, {"A": 340, "B": 102}, n_radiomics=1143, n_dtl=2048,
                          n_reader2=20, seed=2025)
        build_s = time.perf_counter() - t0
        files = sum(1 for _ in (root / "features").rglob("*.parquet"))
        size_mb = sum(p.stat().st_size for p in (root / "features").rglob("*")
                      if p.is_file()) / 1e6
        settings = Settings()
        load_before = os.getloadavg()[0]
        first = run_modeler(syn.store, "A", ["B"], Settings(modeler={"optimism_bootstraps": 0}),
                            run_id="bench-first")
        second = run_modeler(syn.store, "A", ["B"], settings, run_id="bench-second")
        t0 = time.perf_counter()
        pred = predict_cohort(syn.store, "bench-second", "B")
        predict_s = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    m = second.model
    selected = {f: int(m.family_models_[f].named_steps["lasso"].support_.sum())
                for f in m.families_}
    lam = {f: m.family_models_[f].named_steps["lasso"].alpha_ for f in m.families_}
    auc = second.table3.set_index(["cohort", "model"])["auc"]
    rows = "\n".join(
        f"| {label} | " + " | ".join(f"{r.seconds[p]:.2f}" for p in PHASES) + " |"
        for label, r in (("no bootstrap (optimism_bootstraps: 0)", first),
                         ("defaults (40 bootstrap refits)", second)))
    worst = second.seconds["total"]
    verdict = "meets" if worst <= TARGET_S else "misses"
    corrected = second.table3.set_index(["cohort", "model"])["auc_corrected"]
    apparent = second.table3.set_index(["cohort", "model"])["auc"]
    body = f"""
Synthetic store: training cohort A = 340 patients (20 with a second reader), test cohort B =
102; 1143 radiomics + 2048 DTL features per patient; {files} Parquet files, {size_mb:.0f} MB
(built in {build_s:.0f} s, not timed below). `run_modeler(store, "A", ["B"], settings)`, every
phase included (load through DuckDB; fit: selection and models, and the 5 out-of-fold refits
of the whole pipeline that set the thresholds; optimism: Harrell's bootstrap, one refit of the
whole pipeline per sample, in `modeler.n_jobs` = -1 processes; evaluation with DeLong, HL,
calibration and DCA; model file + metrics; HTML report). Seconds:

| run | load | fit | optimism | evaluate | save | report | total |
|---|---|---|---|---|---|---|---|
{rows}

`dtlr-predict` on B ({len(pred)} patients): {predict_s:.2f} s.
Load average (1 min) before / after: {load_before:.1f} / {load_after:.1f}.

Target {TARGET_S:.0f} s (set before the modeler refitted itself for thresholds and optimism):
with the defaults it {verdict} it ({worst:.1f} s); the bootstrap is
{second.seconds['optimism']:.1f} s of that, {second.seconds['optimism'] / 40:.1f} s per refit
on {os.cpu_count()} cores; `optimism_bootstraps` trades it (0: none; rms::validate's default is
40) and each added core divides it. Feature files are long (one row per feature), so reading
all {files} of them is a single DuckDB scan.
Training AUC, apparent / optimism-corrected: {', '.join(
        f"{k} {apparent[('A', k)]:.3f} / {corrected[('A', k)]:.3f}" for k in m.model_names)}.

Selected: {', '.join(f'{f} {n} (lambda {lam[f]:.4f})' for f, n in selected.items())};
nomogram predictors {', '.join(m.nomogram_features_)}.
Test AUC: clinical {auc[('B', 'clinical')]:.3f}, radiomics {auc[('B', 'radiomics')]:.3f},
DTL {auc[('B', 'dtl')]:.3f}, nomogram {auc[('B', 'nomogram')]:.3f}.
"""
    write_section("Modeler", body)
    print(body)


if __name__ == "__main__":
    main()
