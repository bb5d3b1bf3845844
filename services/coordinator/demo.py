"""The built-in synthetic demo: two hospitals of contrast-enhanced T1 meningioma MRI.

``make_demo(out_dir)`` writes ``demo-hospitalA`` (the training cohort) and ``demo-hospitalB``
(the external test cohort), each a folder with ``manifest.csv``, ``images/<pid>.nii.gz`` and
``masks/<pid>.nii.gz`` (+ ``masks/<pid>_reader2.nii.gz`` for ``n_reader2`` training patients), in
the layout of DESIGN.md section 4. Everything follows from ``seed``: the same seed gives
byte-identical files, and each patient's image comes from its own random stream (a
``SeedSequence`` spawn key per patient), so a patient renders the same alone or in its cohort.

DEMO_SCALE = 0.4 -- READ THIS BEFORE COMPARING SIZES
    Tumours are drawn at 40 % of their recorded size: a tumour's maximal diameter in the image is
    ``size_mm * DEMO_SCALE`` (at least MIN_DIAMETER_MM = 10 mm), while ``size_mm`` in the
    manifest keeps Table 1's scale (the clinical models see realistic sizes). Heads are small
    too (a field of view of about 160 mm, 176 x 176 or 168 x 168 voxels, 16 slices of 5 mm
    around the tumour). This keeps the whole pipeline (N4, 1 mm resampling, ~1130 pyradiomics
    features, the CNN, the models) within 5 minutes on a 2-core laptop (benchmarks/RESULTS.md,
    "Demo end to end").

What is synthetic and how it follows the paper (Li et al., Sci Rep 2025, Materials and Table 1):

* Labels are balanced 1:1 in each hospital, as in the paper; about 88 % of high grade are WHO 2.
* Clinical variables are drawn per grade at Table 1's training-set rates in both hospitals.
  (The test-set column, from 102 patients, is more extreme -- e.g. indistinct margin 2/51 vs
  22/51 -- and with it the clinical model alone reaches AUC ~0.94 on hospital B, far above the
  paper's 0.788; the 340-patient training column gives ~0.83.) Age and size are normal
  (Table 1 mean +- SD, clipped to 18-90 years and 15-100 mm); sex, location and the six
  findings are Bernoulli with Table 1's per-grade proportions. The draws are stratified (Latin
  hypercube), so even a 40-patient cohort has Table 1's proportions, not a chance version.
* Images: the two hospitals differ as two scanners would (in-plane 0.90 vs 0.95 mm, intensity
  scale 0.7 vs 0.8, noise, and hospital B stores its axes right/anterior-first). Each finding
  changes the rendered tumour (see :mod:`dtlr.services.coordinator.phantom`), and a latent
  "aggressiveness", higher
  in high grade but independent of the findings given the grade, changes enhancement texture,
  lobulation, margin and oedema, so the images carry information beyond the clinical table.
* Masks: reader 1 is the tumour as drawn (enhancing tumour with any necrotic core, without
  oedema or dural tail); reader 2 moves the boundary by a smooth, slice-dependent 0.5-2 voxels.

``geometry="paper"``: THE PAPER'S COHORT, NOT THE DEMO
    ``make_demo(out, geometry="paper")`` writes ``paper-hospitalA`` (340 training patients) and
    ``paper-hospitalB`` (102 test patients), the paper's sizes, at its acquisition geometry:
    256 x 256 in-plane (hospital A 0.94 mm, a 240 mm field of view; hospital B 0.70 mm,
    179 mm, the smallest field of view that holds the phantom's head: 0.5 mm would need a
    larger matrix), 25 slices of 5 mm, and tumours drawn at their recorded ``size_mm``
    (``scale`` 1.0, not DEMO_SCALE). The clinical tables, the findings' effects and the
    per-patient seeds are the demo's (same seed and size: the same manifest rows); only the
    scanners and the tumour scale differ. benchmarks/bench_cohort.py runs it end to end.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy.special import ndtri

from dtlr.services.coordinator.phantom import Phantom, Scanner, TumourSpec, render

DEMO_COHORTS = ("demo-hospitalA", "demo-hospitalB")
PAPER_COHORTS = ("paper-hospitalA", "paper-hospitalB")  # geometry="paper": training, test
DEMO_SCALE = 0.4  # image tumour diameter = size_mm * DEMO_SCALE (see the module docstring)
MIN_DIAMETER_MM = 10.0  # ... but at least this, so the smallest tumours still fill a mask
MANIFEST_COLUMNS = (
    "patient_id", "image", "mask", "mask_reader2", "grade", "age", "sex", "location", "size_mm",
    "shape", "heterogeneous_enhancement", "necrosis_cystic", "dural_tail", "indistinct_margin",
    "peritumoral_edema", "surrounding_invasion",
)
FINDINGS = ("heterogeneous_enhancement", "necrosis_cystic", "dural_tail", "indistinct_margin",
            "peritumoral_edema", "surrounding_invasion")

# Table 1 of the paper, per set and grade (0 = WHO 1, 1 = WHO 2-3): (mean, SD) of age and
# size, and counts of male sex, skull-base location, irregular shape and the six findings
# out of ``n`` patients.
TABLE1: dict[str, dict[int, dict[str, float | tuple[float, float]]]] = {
    "train": {
        0: {"n": 170, "age": (55.58, 10.84), "size_mm": (43.86, 17.45), "male": 34,
            "skull_base": 73, "irregular": 33, "heterogeneous_enhancement": 45,
            "necrosis_cystic": 23, "dural_tail": 105, "indistinct_margin": 10,
            "peritumoral_edema": 59, "surrounding_invasion": 13},
        1: {"n": 170, "age": (55.83, 12.85), "size_mm": (54.88, 18.98), "male": 74,
            "skull_base": 71, "irregular": 88, "heterogeneous_enhancement": 73,
            "necrosis_cystic": 48, "dural_tail": 118, "indistinct_margin": 51,
            "peritumoral_edema": 106, "surrounding_invasion": 47},
    },
    "test": {
        0: {"n": 51, "age": (55.92, 9.25), "size_mm": (44.66, 16.92), "male": 10,
            "skull_base": 19, "irregular": 8, "heterogeneous_enhancement": 18,
            "necrosis_cystic": 11, "dural_tail": 33, "indistinct_margin": 2,
            "peritumoral_edema": 17, "surrounding_invasion": 6},
        1: {"n": 51, "age": (60.78, 11.08), "size_mm": (65.55, 17.85), "male": 27,
            "skull_base": 17, "irregular": 31, "heterogeneous_enhancement": 29,
            "necrosis_cystic": 25, "dural_tail": 32, "indistinct_margin": 22,
            "peritumoral_edema": 40, "surrounding_invasion": 13},
    },
}
WHO3_SHARE = 0.12  # of high grade; the paper pools WHO 2 and 3
LATENT_SHIFT = 1.6  # aggressiveness ~ N(0, 1) in WHO 1, N(1.6, 1) in WHO 2, N(2.1, 1) in WHO 3


@dataclass(frozen=True)
class Hospital:
    """One demo hospital: its patient-id prefix, Table 1 columns, scanner and the scale at
    which tumours are drawn (image diameter = ``size_mm * scale``, at least MIN_DIAMETER_MM)."""

    prefix: str
    table: str
    scanner: Scanner
    scale: float = DEMO_SCALE


HOSPITALS = {
    "demo-hospitalA": Hospital("A", "train", Scanner(
        spacing_xy=0.9, matrix=176, n_slices=16, slice_mm=5.0, flip_xy=False,
        intensity_scale=0.7, noise_fraction=0.03)),
    "demo-hospitalB": Hospital("B", "train", Scanner(
        spacing_xy=0.95, matrix=168, n_slices=16, slice_mm=5.0, flip_xy=True,
        intensity_scale=0.8, noise_fraction=0.025)),
    # geometry="paper" (see the module docstring): the paper's matrix, slices and tumour sizes
    "paper-hospitalA": Hospital("A", "train", Scanner(
        spacing_xy=0.94, matrix=256, n_slices=25, slice_mm=5.0, flip_xy=False,
        intensity_scale=0.7, noise_fraction=0.03), scale=1.0),
    "paper-hospitalB": Hospital("B", "train", Scanner(
        spacing_xy=0.70, matrix=256, n_slices=25, slice_mm=5.0, flip_xy=True,
        intensity_scale=0.8, noise_fraction=0.025), scale=1.0),
}
# make_demo's ``geometry``: the (training, test) cohorts it writes and their default sizes
GEOMETRIES = {"demo": (DEMO_COHORTS, (120, 40)), "paper": (PAPER_COHORTS, (340, 102))}


@dataclass(frozen=True)
class DemoPatient:
    """One planned patient: the manifest's clinical row, what to render and its seeds."""

    row: dict[str, object]  # patient_id, grade and the clinical columns
    spec: TumourSpec
    image_seed: np.random.SeedSequence
    reader2_seed: np.random.SeedSequence | None


def _rng(seed: np.random.SeedSequence) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


# Clinical variables drawn per patient from a stratified uniform (see :func:`plan_cohort`).
_VARIABLES = ("who3", "age", "size_mm", "male", "skull_base", "irregular", *FINDINGS)


def _stratified(rng: np.random.Generator, m: int) -> np.ndarray:
    """``m`` uniforms, one in each of ``m`` equal strata of (0, 1), in random order."""
    return (rng.permutation(m) + rng.random(m)) / m


def plan_cohort(cohort: str, seed: int, n: int, n_reader2: int = 0) -> list[DemoPatient]:
    """Draw a cohort's labels, clinical rows and render specifications (cheap, no images).

    Labels are exactly 1:1 (an odd patient out is low grade). Clinical values are Latin
    hypercube draws: within each grade every variable's uniform comes from its own stratum, so
    each patient's value is marginally Table 1's normal or Bernoulli while the cohort's counts
    match Table 1's proportions to within one patient at any size. Labels and clinical values
    come from the seed sequence ``(seed; cohort, 0)``, the choice of the ``n_reader2`` patients
    with a second reading from ``(seed; cohort, 2)``; patient ``i`` draws its latent
    aggressiveness, its image and its second reading from ``(seed; cohort, 1, i)``.
    """
    hospital = HOSPITALS[cohort]
    k = 0 if cohort in (DEMO_COHORTS[0], PAPER_COHORTS[0]) else 1
    if not 0 <= n_reader2 <= n:
        raise ValueError(f"n_reader2={n_reader2} must be between 0 and the cohort size {n}")
    cohort_rng = _rng(np.random.SeedSequence(seed, spawn_key=(k, 0)))
    labels = cohort_rng.permutation(np.arange(n) < n // 2).astype(int)
    reader2_rng = _rng(np.random.SeedSequence(seed, spawn_key=(k, 2)))
    reader2 = set(reader2_rng.choice(n, size=n_reader2, replace=False).tolist())
    uniforms = np.empty((n, len(_VARIABLES)))
    for label in (0, 1):
        group = np.nonzero(labels == label)[0]
        for j in range(len(_VARIABLES)):
            uniforms[group, j] = _stratified(cohort_rng, len(group))
    patients = []
    for i in range(n):
        latent_ss, image_ss, reader2_ss = np.random.SeedSequence(
            seed, spawn_key=(k, 1, i)).spawn(3)
        u = dict(zip(_VARIABLES, uniforms[i].tolist(), strict=True))
        row, spec = _draw_patient(hospital, int(labels[i]), u, _rng(latent_ss).normal())
        row = {"patient_id": f"{hospital.prefix}{i + 1:03d}", **row}
        patients.append(DemoPatient(row, spec, image_ss, reader2_ss if i in reader2 else None))
    return patients


def _draw_patient(hospital: Hospital, label: int, u: dict[str, float], latent: float
                  ) -> tuple[dict[str, object], TumourSpec]:
    """Clinical variables at Table 1's rates for this grade from the uniforms ``u``, and the
    tumour to render; ``latent`` is the patient's N(0, 1) share of aggressiveness."""
    stats = TABLE1[hospital.table][label]
    grade = (3 if u["who3"] < WHO3_SHARE else 2) if label else 1

    def bernoulli(key: str) -> int:
        return int(u[key] < float(stats[key]) / float(stats["n"]))

    def normal(key: str, lo: float, hi: float) -> float:
        mean, sd = stats[key]
        return float(np.clip(mean + sd * ndtri(u[key]), lo, hi))

    age = round(normal("age", 18, 90))
    size = round(normal("size_mm", 15.0, 100.0), 1)
    male, skull_base, irregular = bernoulli("male"), bernoulli("skull_base"), bernoulli("irregular")
    findings = {key: bernoulli(key) for key in FINDINGS}
    aggressiveness = latent + LATENT_SHIFT * label + 0.5 * (grade == 3)
    row = {
        "grade": grade, "age": age, "sex": "male" if male else "female",
        "location": "skull_base" if skull_base else "non_skull_base", "size_mm": size,
        "shape": "irregular" if irregular else "regular", **findings,
    }
    spec = TumourSpec(
        diameter_mm=max(size * hospital.scale, MIN_DIAMETER_MM), skull_base=bool(skull_base),
        irregular=bool(irregular),
        heterogeneous=bool(findings["heterogeneous_enhancement"]),
        necrosis=bool(findings["necrosis_cystic"]), dural_tail=bool(findings["dural_tail"]),
        indistinct=bool(findings["indistinct_margin"]),
        edema=bool(findings["peritumoral_edema"]),
        invasion=bool(findings["surrounding_invasion"]), aggressiveness=float(aggressiveness),
    )
    return row, spec


def demo_table(cohort: str, seed: int = 20250513, n: int | None = None) -> pd.DataFrame:
    """The clinical part of a demo manifest (no paths, no images): what ``make_demo`` would
    write for ``cohort`` with this seed and size (default: 120 for A, 40 for B; 340 and 102
    for the paper's cohorts)."""
    if n is None:
        cohorts, sizes = GEOMETRIES["paper" if cohort in PAPER_COHORTS else "demo"]
        n = sizes[cohorts.index(cohort)]
    return pd.DataFrame([p.row for p in plan_cohort(cohort, seed, n)])


def render_patient(patient: DemoPatient, cohort: str) -> Phantom:
    """Render one planned patient's image and mask(s) (tissue labels included)."""
    reader2 = None if patient.reader2_seed is None else _rng(patient.reader2_seed)
    return render(HOSPITALS[cohort].scanner, patient.spec, float(patient.row["age"]),
                  _rng(patient.image_seed), reader2)


def _write(array: np.ndarray, phantom: Phantom, path: Path) -> None:
    """Write an array on the phantom's grid as gzipped NIfTI (zlib's header has no mtime,
    so the bytes depend only on the data)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(phantom.spacing)
    image.SetOrigin(phantom.origin)
    image.SetDirection(phantom.direction)
    sitk.WriteImage(image, str(path), True)


def _write_patient(patient: DemoPatient, cohort: str, root: Path) -> dict[str, object]:
    """Render one patient, write its files under ``root``; its manifest row."""
    pid = patient.row["patient_id"]
    phantom = render_patient(patient, cohort)
    paths = {"image": f"images/{pid}.nii.gz", "mask": f"masks/{pid}.nii.gz", "mask_reader2": ""}
    _write(phantom.image, phantom, root / paths["image"])
    _write(phantom.mask, phantom, root / paths["mask"])
    if phantom.mask_reader2 is not None:
        paths["mask_reader2"] = f"masks/{pid}_reader2.nii.gz"
        _write(phantom.mask_reader2, phantom, root / paths["mask_reader2"])
    return {**patient.row, **paths}


def make_demo(out_dir: Path, seed: int = 20250513, n_train: int | None = None,
              n_test: int | None = None, n_reader2: int = 20, geometry: str = "demo",
              jobs: int = 1) -> dict[str, Path]:
    """Write both demo cohorts under ``out_dir``; return each cohort's manifest path.

    ``geometry`` "demo" (the default) writes ``demo-hospitalA`` and ``demo-hospitalB`` (120 and
    40 patients by default), small volumes with tumours at DEMO_SCALE; "paper" writes
    ``paper-hospitalA`` and ``paper-hospitalB`` (340 and 102 patients by default) at the
    paper's acquisition geometry, tumours at their recorded size (see the module docstring).
    ``n_reader2`` training patients, chosen at random, also get a second reader's mask. Demo
    images and masks left in ``out_dir`` by an earlier, different call are removed, so each
    cohort folder holds exactly what its manifest lists. ``jobs`` > 1 renders patients in that
    many processes (the files are the same: each patient has its own random stream).
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry={geometry!r}: choose one of {', '.join(GEOMETRIES)}")
    cohorts, sizes = GEOMETRIES[geometry]
    n_train = sizes[0] if n_train is None else n_train
    n_test = sizes[1] if n_test is None else n_test
    out_dir = Path(out_dir)
    manifests = {}
    pool = ProcessPoolExecutor(jobs) if jobs > 1 else None
    try:
        for cohort, n, n2 in ((cohorts[0], n_train, n_reader2), (cohorts[1], n_test, 0)):
            root = out_dir / cohort
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "masks").mkdir(parents=True, exist_ok=True)
            patients = plan_cohort(cohort, seed, n, n2)
            if pool is None:
                rows = [_write_patient(p, cohort, root) for p in patients]
            else:
                rows = list(pool.map(_write_patient, patients, [cohort] * n, [root] * n))
            written = {root / p for row in rows for p in (row["image"], row["mask"],
                                                           row["mask_reader2"]) if p}
            for stale in [*root.glob("images/*.nii.gz"), *root.glob("masks/*.nii.gz")]:
                if stale not in written:
                    stale.unlink()
            manifest = root / "manifest.csv"
            tmp = manifest.with_suffix(".csv.tmp")
            pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(
                tmp, index=False, float_format="%.1f", lineterminator="\n")
            tmp.replace(manifest)
            manifests[cohort] = manifest
    finally:
        if pool is not None:
            pool.shutdown()
    return manifests
