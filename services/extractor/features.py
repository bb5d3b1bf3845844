"""Radiomics features with pyradiomics, driven by a pyradiomics parameter file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import radiomics
import SimpleITK as sitk
from pykwalify.errors import SchemaError
from radiomics import featureextractor

from dtlr.shared.config import SettingsError, load_yaml
from dtlr.shared.stage import InputError

radiomics.setVerbosity(logging.ERROR)
# pyradiomics logs INFO lines per feature class and case, and pykwalify prints its schema
# errors: neither reaches a worker's log (the errors come back in InputError's message).
logging.getLogger("radiomics").setLevel(logging.WARNING)
logging.getLogger("pykwalify").setLevel(logging.CRITICAL)


def load_params(path: str | Path) -> dict[str, Any]:
    """A pyradiomics parameter file as a dict (validated by pyradiomics when used)."""
    try:
        data = load_yaml(Path(path), "radiomics parameter file")
    except SettingsError as exc:
        raise InputError(str(exc)) from exc
    return data if isinstance(data, dict) else {}


def make_extractor(
    params: str | Path | dict[str, Any],
) -> featureextractor.RadiomicsFeatureExtractor:
    """A pyradiomics extractor configured exactly by the parameter file."""
    if isinstance(params, (str, Path)):
        params = load_params(params)
    return featureextractor.RadiomicsFeatureExtractor(params)


def check_params(path: str | Path) -> dict[str, Any]:
    """A parameter file validated against pyradiomics' own schema, or InputError naming why.

    Builds the extractor once (what pyradiomics does when it starts), so a typo such as
    ``binWidht`` refuses a run before its first patient instead of failing every one.
    """
    try:
        params = load_yaml(Path(path), "radiomics parameter file")
    except SettingsError as exc:
        raise InputError(str(exc)) from exc
    if not isinstance(params, dict):
        raise InputError(f"radiomics parameter file {path}: holds a {type(params).__name__}, "
                         "not a mapping of sections (imageType, featureClass, setting)")
    try:
        make_extractor(params)
    except SchemaError as exc:
        found = [line.strip(" -.") for line in str(exc.msg).splitlines()[1:]] or [str(exc.msg)]
        raise InputError(f"radiomics parameter file {path} is not valid for pyradiomics: "
                         f"{'; '.join(found)}; fix the key (see pyradiomics' parameter file "
                         "documentation)") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"radiomics parameter file {path}: {exc}") from exc
    return params


def mask_label(extractor: featureextractor.RadiomicsFeatureExtractor) -> int:
    """The label value the parameter file selects (pyradiomics' default 1)."""
    return int(extractor.settings.get("label", 1))


def extract(extractor: featureextractor.RadiomicsFeatureExtractor, image: sitk.Image,
            mask: sitk.Image, label: int | None = None
            ) -> tuple[dict[str, float], dict[str, Any]]:
    """Features (named as pyradiomics names them) and diagnostics for one image and mask.

    Resampling, cropping and filtering happen inside pyradiomics as its parameter file says,
    so results equal those of pyradiomics' own command line for the same file. ``label``
    overrides the parameter file's (a patient's ``mask_label``).
    """
    result = extractor.execute(image, mask,
                               label=mask_label(extractor) if label is None else label)
    features = {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}
    diagnostics = {k: v for k, v in result.items() if k.startswith("diagnostics_")}
    return features, diagnostics
