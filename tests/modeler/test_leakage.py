"""No leakage: changing a test cohort's features and labels changes no fitted parameter."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dtlr.services.modeler.models import DTLRModel
from dtlr.services.modeler.persist import load_model
from dtlr.services.modeler.run import RunResult, run_modeler
from dtlr.shared.config import Settings
from dtlr.shared.manifest import register
from dtlr.shared.store import Store
from tests.synthetic.cohorts import DATA_ROOTS, SyntheticStore, build_store


def fitted_parameters(obj: Any, path: str = "model") -> dict[str, Any]:
    """Every leaf value reachable from a fitted model: attributes, steps, calibrators, arrays."""
    out: dict[str, Any] = {}
    if isinstance(obj, np.ndarray | numbers.Number | str | bytes | type(None)):
        out[path] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(fitted_parameters(v, f"{path}[{k!r}]"))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out.update(fitted_parameters(v, f"{path}[{i}]"))
    elif hasattr(obj, "__dict__"):
        for k, v in vars(obj).items():
            out.update(fitted_parameters(v, f"{path}.{k}"))
    else:
        out[path] = repr(obj)
    return out


def assert_same_parameters(a: DTLRModel, b: DTLRModel) -> dict[str, Any]:
    """Bit-identical leaves; returns them for further checks."""
    pa_, pb = fitted_parameters(a), fitted_parameters(b)
    assert pa_.keys() == pb.keys()
    for key, va in pa_.items():
        vb = pb[key]
        if isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and va.shape == vb.shape, key
            if va.dtype.kind == "f":
                assert np.array_equal(va, vb, equal_nan=True), key
            else:
                assert np.array_equal(va, vb), key
        elif isinstance(va, float) and np.isnan(va):
            assert np.isnan(vb), key
        else:
            assert va == vb, key
    return pa_


def perturb_test_cohort(syn: SyntheticStore, cohort: str) -> None:
    """Scramble the cohort's feature values, flip its labels and clinical findings."""
    store, rng = syn.store, np.random.default_rng(99)
    for family_dir in (store.root / "features").glob(f"*/cohort={cohort}/*"):
        for patient, _, path in list(Store.keyed_files(family_dir, ".parquet")):
            table = pq.read_table(path).to_pandas()  # long: one row per feature
            values = table["value"].to_numpy()
            table["value"] = values * rng.uniform(0.2, 5.0, len(values)) + rng.normal(
                size=len(values))
            key = f"{rng.integers(2**63):016x}"
            store.write_table(pa.Table.from_pandas(table, preserve_index=False),
                              path.with_name(f"{patient}.{key}.parquet"), {"key": key})
    csv = store.root / "manifests" / f"{cohort}.csv"
    manifest = pd.read_csv(csv, dtype=str, keep_default_na=False)
    manifest["label"] = (1 - manifest["label"].astype(int)).astype(str)
    manifest["sex"] = manifest["sex"].map({"male": "female", "female": "male"})
    manifest["age"] = (manifest["age"].astype(float) + 30).astype(str)
    flipped = csv.with_name(f"{cohort}-perturbed.csv")
    manifest.to_csv(flipped, index=False)
    register(store, cohort, flipped, DATA_ROOTS)


def _two_runs(tmp: Path, n_dtl: int) -> tuple[RunResult, RunResult, SyntheticStore]:
    syn = build_store(tmp, {"A": 120, "B": 60}, n_radiomics=40, n_dtl=n_dtl, seed=11)
    before = run_modeler(syn.store, "A", ["B"], Settings())
    perturb_test_cohort(syn, "B")
    after = run_modeler(syn.store, "A", ["B"], Settings())
    return before, after, syn


def _check(before: RunResult, after: RunResult, syn: SyntheticStore) -> None:
    # The perturbation reached the test cohort: different inputs, different test results.
    assert before.run_id != after.run_id
    auc = {r.run_id: r.table3.set_index(["cohort", "model"])["auc"] for r in (before, after)}
    assert not np.allclose(auc[before.run_id].loc["B"], auc[after.run_id].loc["B"])
    pd.testing.assert_series_equal(auc[before.run_id].loc["A"], auc[after.run_id].loc["A"])
    # ...and no fitted parameter moved, in memory or as saved.
    leaves = assert_same_parameters(before.model, after.model)
    assert_same_parameters(load_model(syn.store, before.run_id)[0],
                           load_model(syn.store, after.run_id)[0])
    names = " ".join(leaves)
    for needle in ("support_vectors_", "dual_coef_", "alpha_", "mean_", "scale_", "icc_",
                   "thresholds_", "nomogram_coef_", "univariable_", "calibrators", "coef_path_"):
        assert needle in names, needle
    assert len(leaves) > 100


def test_test_cohort_changes_leave_every_fitted_parameter_identical(tmp_path: Path) -> None:
    before, after, syn = _two_runs(tmp_path, n_dtl=0)
    _check(before, after, syn)
    assert before.model.families_ == ["radiomics"]


def test_no_leakage_with_the_dtl_family(tmp_path: Path) -> None:
    before, after, syn = _two_runs(tmp_path, n_dtl=24)
    assert before.model.families_ == ["radiomics", "dtl"]
    _check(before, after, syn)
