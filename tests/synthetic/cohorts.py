"""A synthetic store with a planted signal, written through the real Store API.

Used by the modeler's tests and benchmark: cohorts registered from a manifest CSV, radiomics
(and optionally DTL) features as one Parquet file per patient per reader, then the catalog.
The signal follows the paper's picture: sex, shape, indistinct margin and peritumoral edema
differ between grades; feature clusters share latent factors (so Spearman has pairs to drop);
some features are unstable between readers (so the ICC filter has something to remove).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dtlr.shared.hashing import content_key
from dtlr.shared.manifest import register
from dtlr.shared.store import Store, feature_table

# Any readable image/mask pair satisfies the manifest's file checks; features are synthetic.
REFERENCE_IMAGE = Path("/work/shared/data/pyradiomics/brain1_image.nrrd")
REFERENCE_MASK = Path("/work/shared/data/pyradiomics/brain1_label.nrrd")
# The manifests name the reference files where they are, outside the manifests' folder.
DATA_ROOTS = (REFERENCE_IMAGE.parent, REFERENCE_MASK.parent)

# P(finding present | low grade), P(finding present | high grade): the paper's Table 1 rates.
_BINARY_RATES = {
    "sex": (0.20, 0.44),  # male
    "shape": (0.19, 0.52),  # irregular
    "location": (0.43, 0.42),  # skull base
    "heterogeneous_enhancement": (0.26, 0.43),
    "necrosis_cystic": (0.14, 0.28),
    "dural_tail": (0.62, 0.69),
    "indistinct_margin": (0.06, 0.30),
    "peritumoral_edema": (0.35, 0.62),
    "surrounding_invasion": (0.08, 0.28),
}
_LEVELS = {"sex": ("female", "male"), "shape": ("regular", "irregular"),
           "location": ("non_skull_base", "skull_base")}


@dataclass(frozen=True)
class SyntheticStore:
    """The store and what was planted in it."""

    store: Store
    cohorts: dict[str, int]
    n_radiomics: int
    n_dtl: int
    dtl_model_id: str | None
    reader2_patients: list[str]


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Balanced 0/1 labels in random order (the paper matched grades 1:1)."""
    y = np.zeros(n, dtype=np.int64)
    y[: n // 2] = 1
    return rng.permutation(y)


def _clinical(rng: np.random.Generator, y: np.ndarray) -> pd.DataFrame:
    """Clinical columns with the paper's between-grade differences, a few values missing."""
    n = y.size
    out = pd.DataFrame({
        "age": np.round(rng.normal(55.7, 11.5, n), 0).clip(18, 90),
        "size_mm": np.round(rng.normal(np.where(y == 1, 52.0, 45.0), 18.0), 1).clip(5, 120),
    })
    for col, (p0, p1) in _BINARY_RATES.items():
        hit = rng.random(n) < np.where(y == 1, p1, p0)
        if col in _LEVELS:
            out[col] = np.where(hit, _LEVELS[col][1], _LEVELS[col][0])
        else:
            out[col] = hit.astype(int).astype(str)
    # One missing value per 50 patients in a non-selected column, to exercise imputation.
    missing = rng.choice(n, size=max(1, n // 50), replace=False)
    out.loc[missing, "dural_tail"] = ""
    return out


@dataclass(frozen=True)
class _Structure:
    """A feature family's fixed make-up, shared by every cohort: loadings, scales, reader noise."""

    shift: np.ndarray  # per latent factor: mean difference high - low grade
    which: np.ndarray  # per feature: the factor it measures
    noise: np.ndarray  # per feature: own noise SD (lower = closer to its factor)
    scale: np.ndarray
    offset: np.ndarray
    reader_sd: np.ndarray  # per feature: SD a second reader adds (ICC control)
    nonnegative: bool


def _structure(rng: np.random.Generator, p: int, strength: float, nonnegative: bool) -> _Structure:
    """Draw a family: p // 6 factors (up to 4 carry the label), a third of features unstable."""
    n_factors = max(4, p // 6)
    k = max(1, min(4, n_factors // 4))
    shift = np.zeros(n_factors)
    shift[:k] = strength * np.linspace(1.0, 0.4, k)
    unstable = rng.random(p) < 0.33
    return _Structure(
        shift=shift,
        which=rng.integers(0, n_factors, p),
        noise=rng.uniform(0.05, 1.2, p),
        scale=np.ones(p) if nonnegative else 10.0 ** rng.uniform(-2, 3, p),
        offset=np.zeros(p) if nonnegative else rng.normal(0, 5, p),
        reader_sd=np.where(unstable, 1.2, 0.08),
        nonnegative=nonnegative,
    )


def _draw(rng: np.random.Generator, s: _Structure, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reader-1 values and the latent (pre-scaling) values of one cohort's patients."""
    factors = rng.normal(size=(y.size, s.shift.size)) + np.outer(y - 0.5, s.shift)
    latent = factors[:, s.which] + rng.normal(size=(y.size, s.which.size)) * s.noise
    return _observe(s, latent), latent


def _observe(s: _Structure, latent: np.ndarray) -> np.ndarray:
    """Latent values as stored: softplus for DTL embeddings, affine scale for radiomics."""
    if s.nonnegative:
        return np.logaddexp(0.0, latent)
    return (latent + s.offset) * s.scale


def _write_family(
    store: Store, family: str, cohort: str, patients: list[str], rows: dict[int, np.ndarray],
    names: list[str], model_id: str | None,
) -> None:
    """One Parquet per patient as the extractor (radiomics: one file per reader) or the GPU
    worker (DTL: one file with the rows of every reader) writes them.

    ``rows`` maps reader -> (n patients, p) values, NaN rows for patients that reader lacks.
    """
    for i, pid in enumerate(patients):
        present = [r for r, v in rows.items() if not np.isnan(v[i]).all()]
        key = content_key(family, cohort, pid, model_id,
                          [rows[r][i].tobytes().hex()[:64] for r in present])
        ids = [{"cohort": cohort, "patient_id": pid, "reader": r}
               | ({"model_id": model_id} if family == "dtl" else {}) for r in present]
        if family == "dtl":
            assert model_id is not None
            table = feature_table(ids, names, np.stack([rows[r][i] for r in present]))
            store.write_table(table, store.dtl_path(cohort, model_id, pid, key),
                              {"key": key, "synthetic": True})
            continue
        for r, row_ids in zip(present, ids, strict=True):
            store.write_table(feature_table([row_ids], names, rows[r][i][None]),
                              store.radiomics_path(cohort, r, pid, key),
                              {"key": key, "synthetic": True})


def radiomics_names(n: int) -> list[str]:
    """pyradiomics-looking feature names (image type, class, index)."""
    kinds = ("original", "wavelet-LLH", "wavelet-HLL", "log-sigma-3-0-mm-3D")
    classes = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
    return [f"{kinds[i % 4]}_{classes[(i // 4) % 6]}_F{i:04d}" for i in range(n)]


def dtl_names(n: int) -> list[str]:
    """The DTL view's column names: dtl_0000, dtl_0001, ..."""
    return [f"dtl_{i:04d}" for i in range(n)]


def build_store(
    root: str | Path,
    cohorts: dict[str, int] | None = None,
    n_radiomics: int = 60,
    n_dtl: int = 0,
    n_reader2: int = 20,
    seed: int = 0,
    dtl_model_id: str = "resnet50-synthetic",
    radiomics_strength: float = 1.2,
    dtl_strength: float = 1.0,
) -> SyntheticStore:
    """Write cohorts (first = training, with a second reader for ``n_reader2`` patients)."""
    cohorts = cohorts or {"A": 120, "B": 60}
    store = Store(root)
    rng = np.random.default_rng(seed)
    manifest_dir = store.root / "manifests"
    manifest_dir.mkdir(parents=True, exist_ok=True)
    families = [
        (name, p, cols, _structure(rng, p, strength, name == "dtl"))
        for name, p, cols, strength in (
            ("radiomics", n_radiomics, radiomics_names(n_radiomics), radiomics_strength),
            ("dtl", n_dtl, dtl_names(n_dtl), dtl_strength),
        )
        if p > 0
    ]
    reader2_ids: list[str] = []
    for c_index, (cohort, n) in enumerate(cohorts.items()):
        y = _labels(rng, n)
        patients = [f"{cohort}{i:04d}" for i in range(n)]
        clinical = _clinical(rng, y)
        has_reader2 = np.zeros(n, dtype=bool)
        if c_index == 0:
            has_reader2[rng.choice(n, size=min(n_reader2, n), replace=False)] = True
            reader2_ids = [p for p, r in zip(patients, has_reader2, strict=True) if r]
        manifest = pd.DataFrame({
            "patient_id": patients,
            "image": str(REFERENCE_IMAGE),
            "mask": str(REFERENCE_MASK),
            "mask_reader2": np.where(has_reader2, str(REFERENCE_MASK), ""),
            "label": y.astype(str),
            **{c: clinical[c] for c in clinical.columns},
        })
        csv = manifest_dir / f"{cohort}.csv"
        manifest.to_csv(csv, index=False)
        register(store, cohort, csv, DATA_ROOTS)
        for family, p, names, structure in families:
            values, latent = _draw(rng, structure, y)
            rows = {1: values}
            idx = np.flatnonzero(has_reader2)
            if idx.size:
                second = np.full_like(values, np.nan)
                noisy = latent[idx] + rng.normal(size=(idx.size, p)) * structure.reader_sd
                second[idx] = _observe(structure, noisy)
                rows[2] = second
            _write_family(store, family, cohort, patients, rows, names,
                          dtl_model_id if family == "dtl" else None)
    store.refresh_catalog()
    return SyntheticStore(store, dict(cohorts), n_radiomics, n_dtl,
                          dtl_model_id if n_dtl else None, reader2_ids)
