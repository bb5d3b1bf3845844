"""One validated settings file (YAML) with the paper's values as defaults.

The radiomics part is a pyradiomics parameter file (``radiomics.params``), the format
radiomics users already know; everything else is a section below. Load with
:func:`load_settings`; unknown keys are refused so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PARAMS_DIR = resources.files("dtlr.shared") / "params"
MAX_VOXELS = 100_000_000  # default of preprocess.max_voxels (see there)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessSettings(_Section):
    """Reading the images (integrity, mask geometry) and N4 bias-field correction (N4ITK as
    3D Slicer runs it, the paper's tool)."""

    n4: bool = True
    # Shrink factor for the finest axis; coarser axes shrink proportionally less, so 5 mm slices
    # are not shrunk. Chosen by measurement: benchmarks/RESULTS.md, "N4 shrink factor".
    n4_shrink_factor: int = Field(8, ge=1, le=16)
    n4_iterations: tuple[int, ...] = (50, 40, 30)
    n4_convergence_threshold: float = 1e-4
    n4_spline_order: int = 3
    n4_control_points: int = Field(4, ge=4)
    # Largest image (voxels x components) a worker reads, checked on the file's header before
    # anything is allocated, so a damaged header (a 1.4 KB NIfTI declaring 1000^3 voxels) is
    # refused instead of exhausting the worker's memory. Extraction peaks at about 36 bytes a
    # voxel (read, float copies, N4, pyradiomics: 310 MB on a 240 x 240 x 155 BraTS volume), so
    # 100 M voxels need ~3.6 GB, within a 4 GB-per-core worker (16 cores, 64 GB), while the
    # largest head MR volumes scanners write pass (0.5 mm 3D T1, 512 x 512 x 350 = 92 M).
    # Raise it only where workers have the memory.
    max_voxels: int = Field(MAX_VOXELS, ge=1)
    # A mask that is neither on the image's grid (within the parameter file's
    # geometryTolerance) nor a voxel-aligned crop of it: "strict" refuses the patient, naming
    # both geometries; "resample" resamples the mask onto the image grid (nearest neighbour)
    # and says so in the patient's status record.
    mask_geometry: Literal["strict", "resample"] = "strict"


class RadiomicsSettings(_Section):
    """pyradiomics parameter file: a shipped name ("paper") or a path to a YAML file."""

    params: str = "paper"
    reader2: bool = True

    def params_path(self) -> Path:
        """The parameter file this setting names."""
        shipped = PARAMS_DIR / f"{self.params}.yaml"
        if shipped.is_file():
            return Path(str(shipped))
        path = Path(self.params).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"radiomics parameter file {self.params!r} not found: give a path to a pyradiomics "
                f"YAML file or one of the shipped names: {', '.join(shipped_params())}"
            )
        return path.resolve()


class MaxSliceSettings(_Section):
    """The 2D input of the CNN: the axial slice with the largest ROI area."""

    size: int = Field(224, ge=16)
    margin_mm: float = Field(10.0, ge=0)


class CNNSettings(_Section):
    """ResNet50 fine-tuning and embedding (services/gpu_worker; profiles in its profiles.py).

    ``profile`` "auto" is "paper" where CUDA is available and "quick" on a CPU-only machine.
    Fields left at None take the profile's value. Paper: SGD lr 0.01, batch 32, 30 epochs, with
    momentum 0.9 (the paper gives none; 0.9 is torchvision's ImageNet recipe and the usual
    fine-tuning choice) and dropout before the classification layer.
    """

    profile: Literal["auto", "paper", "quick"] = "auto"
    weights: str = "imagenet"  # "imagenet" (torchvision cache), "random", or a state-dict path
    protocol: Literal["leakage-safe", "paper"] = "leakage-safe"
    # Leakage-safe protocol: each training patient's DTL features come from one of this many
    # CNNs, each fine-tuned without that patient's fold (test cohorts: the CNN fine-tuned on
    # the whole training cohort). 0 or 1: the training patients' own CNN (in-sample).
    crossfit_folds: int = Field(5, ge=0, le=20)
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=2)  # >= 2: batch-norm statistics need two samples
    lr: float | None = Field(None, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    dropout: float = Field(0.5, ge=0, lt=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    image_size: int | None = Field(None, ge=32)  # model input side; max slices are resized to it
    embed_batch_size: int | None = Field(None, ge=1)
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda", "cuda:N"
    cuda_graph: bool = True  # capture the training step in a CUDA graph (CUDA only)
    threads: int | None = Field(None, ge=1)  # CPU threads; None: 1 (quick), else all cores
    gradcam_cases: int = Field(2, ge=0)  # Grad-CAM cases per grade per cohort in the report


class ModelerSettings(_Section):
    """Feature selection, models and evaluation (DESIGN.md section 1; services/modeler)."""

    # Inter-reader ICC: ICC2 = ICC(2,1) two-way random, absolute agreement, single rater
    # (Koo & Li 2016, inter-rater reliability); ICC1 = one-way random; ICC3 = two-way mixed,
    # consistency.
    icc_form: Literal["ICC1", "ICC2", "ICC3"] = "ICC2"
    icc_threshold: float = Field(0.8, ge=0, le=1)
    spearman_threshold: float = Field(0.9, gt=0, le=1)
    lasso_cv_folds: int = Field(10, ge=2)
    lasso_max_steps: int = Field(100, ge=2)  # LARS steps: about the most features LASSO keeps
    clinical_p_threshold: float = Field(0.05, gt=0, lt=1)
    svm_kernel: Literal["rbf", "linear"] = "rbf"
    svm_c: float = Field(1.0, gt=0)
    platt_cv_folds: int = Field(5, ge=2)  # folds for the SVMs' Platt-scaled probabilities
    # Nomogram: L2-penalised logistic regression with this C on z-scored predictors (finite
    # coefficients even when in-sample scores separate the grades); null = unpenalised MLE.
    nomogram_c: float | None = Field(1.0, gt=0)
    # Rad/DTL scores the nomogram is fitted on: "out-of-fold" (each training patient scored by
    # selection pipelines fitted without its fold; see services/modeler/models.py) or the
    # paper's "in-sample" scores.
    nomogram_scores: Literal["out-of-fold", "in-sample"] = "out-of-fold"
    nomogram_folds: int = Field(5, ge=2)
    # Each model's Youden threshold is chosen on out-of-fold predictions of the whole pipeline
    # refitted on this many seeded stratified folds of the training cohort.
    threshold_folds: int = Field(5, ge=2)
    # Harrell's bootstrap optimism correction of the training AUCs: the whole pipeline refitted
    # on this many seeded bootstrap samples (rms::validate's default B = 40; 0 = not computed).
    optimism_bootstraps: int = Field(40, ge=0)
    # Processes for those refits (joblib; -1 = every core, null = 1).
    n_jobs: int | None = -1
    hosmer_lemeshow_groups: int = Field(10, ge=3)
    # Population prevalence of high grade for PPV, NPV and decision curves when the cohorts are
    # case-control or matched samples (the paper matched the grades 1:1, so each cohort's own
    # prevalence is 50%); null = each cohort's own prevalence.
    prevalence: float | None = Field(None, gt=0, lt=1)
    # Nomogram axes: "full" = each predictor's training range, min to max, as R's rms draws
    # them (rms::nomogram uses datadist's full range); "datadist" = datadist's display limits
    # (the 10th smallest to 10th largest value from 200 patients on), so one outlier does not
    # squeeze every other axis. Points and risks are the same either way.
    nomogram_axes: Literal["full", "datadist"] = "full"
    calibration_bins: int = Field(10, ge=2)


class Settings(_Section):
    """All of DTLR's settings."""

    seed: int = 2025
    preprocess: PreprocessSettings = PreprocessSettings()
    radiomics: RadiomicsSettings = RadiomicsSettings()
    maxslice: MaxSliceSettings = MaxSliceSettings()
    cnn: CNNSettings = CNNSettings()
    modeler: ModelerSettings = ModelerSettings()

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v < 2**32:
            raise ValueError("seed must be in [0, 2**32)")
        return v


class SettingsError(ValueError):
    """A settings file that cannot be used; the message says which key and why."""


_THREAD_LIMITS: list[object] = []


def share_cores(threads: int) -> None:
    """Limit this process's SimpleITK, BLAS and OpenMP threads to its share of the cores.

    Processes working side by side must not each start one thread per core: OpenBLAS threads
    spinning on busy cores made pyradiomics' GLCM (eigenvalues of small matrices) ten times
    slower (benchmarks/RESULTS.md).
    """
    import SimpleITK as sitk
    from threadpoolctl import threadpool_limits

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _THREAD_LIMITS.append(threadpool_limits(limits=threads))


def shipped_params() -> list[str]:
    """Names of the pyradiomics parameter files that ship with DTLR."""
    return sorted(p.name.removesuffix(".yaml") for p in PARAMS_DIR.iterdir()
                  if p.name.endswith(".yaml"))


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as 'line L, column C: problem', without quoting the file's contents."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    if mark is None:
        return str(problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def load_yaml(path: Path, what: str) -> object:
    """A YAML file's data; errors name the file and the place, never quote its contents."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise SettingsError(f"cannot read {what} {path}: {reason}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"{what} {path} is not valid YAML ({yaml_problem(exc)})") from exc


def load_settings(path: str | Path | None = None) -> Settings:
    """Settings from a YAML file (missing keys take the paper's defaults), or the defaults."""
    if path is None:
        return Settings()
    path = Path(path)
    data = load_yaml(path, "settings file") or {}
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path} holds a {type(data).__name__}, not a "
                            "mapping of sections (seed, preprocess, radiomics, cnn, modeler)")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise SettingsError(f"settings file {path}: {problems}") from exc
