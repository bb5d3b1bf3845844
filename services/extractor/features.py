"""Radiomics features with pyradiomics, driven by a pyradiomics parameter file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import radiomics
import SimpleITK as sitk
import yaml
from radiomics import featureextractor, imageoperations

radiomics.setVerbosity(logging.ERROR)


def load_params(path: str | Path) -> dict[str, Any]:
    """A pyradiomics parameter file as a dict (validated by pyradiomics when used)."""
    return yaml.safe_load(Path(path).read_text()) or {}


def make_extractor(
    params: str | Path | dict[str, Any],
) -> featureextractor.RadiomicsFeatureExtractor:
    """A pyradiomics extractor configured exactly by the parameter file."""
    if isinstance(params, (str, Path)):
        params = load_params(params)
    return featureextractor.RadiomicsFeatureExtractor(params)


def mask_label(extractor: featureextractor.RadiomicsFeatureExtractor) -> int:
    """The label value the parameter file selects (pyradiomics' default 1)."""
    return int(extractor.settings.get("label", 1))


def extract(extractor: featureextractor.RadiomicsFeatureExtractor, image: sitk.Image,
            mask: sitk.Image) -> tuple[dict[str, float], dict[str, Any]]:
    """Features (named as pyradiomics names them) and diagnostics for one image and mask.

    Resampling, cropping and filtering happen inside pyradiomics as its parameter file says,
    so results equal those of pyradiomics' own command line for the same file.
    """
    result = extractor.execute(image, mask, label=mask_label(extractor))
    features = {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}
    diagnostics = {k: v for k, v in result.items() if k.startswith("diagnostics_")}
    return features, diagnostics


def resample_like_pyradiomics(extractor: featureextractor.RadiomicsFeatureExtractor,
                              image: sitk.Image, mask: sitk.Image,
                              pad_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """Image and mask resampled as the parameter file says, cropped to the ROI box + ``pad_mm``.

    Uses pyradiomics' own resampling (image interpolator from the file, mask nearest
    neighbour), so the max slice is cut from the same grid the features were computed on.
    """
    settings = dict(extractor.settings)
    spacing = settings.get("resampledPixelSpacing") or list(image.GetSpacing())
    settings["resampledPixelSpacing"] = spacing
    settings["interpolator"] = settings.get("interpolator") or "sitkBSpline"
    settings["padDistance"] = round(pad_mm / min(spacing)) + 1
    settings["label"] = mask_label(extractor)
    return imageoperations.resampleImage(image, mask, **settings)
