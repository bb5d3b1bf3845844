"""One case, the way the pyradiomics command line does it (plus N4 and DTLR's input checks).

What ``dtlr extract`` and ``dtlr.extract_case`` run: the same integrity checks and mask
geometry policy as the extraction stage, then pyradiomics exactly as its parameter file says.
"""

from __future__ import annotations

from pathlib import Path

from dtlr.services.extractor import features as rad
from dtlr.services.extractor.geometry import tolerance_of
from dtlr.services.extractor.io import read_image, read_mask_noted
from dtlr.services.extractor.preprocess import n4_correct
from dtlr.shared.config import MAX_VOXELS, PreprocessSettings, RadiomicsSettings
from dtlr.shared.stage import InputError


def extract_one(image: Path, mask: Path, params: str = "paper", n4: bool = True,
                label: int | None = None, mask_geometry: str = "strict",
                max_voxels: int = MAX_VOXELS, notes: list[str] | None = None,
                segment: str | None = None) -> dict[str, float]:
    """Features of one image and mask, named as pyradiomics names them.

    ``segment``: the segment or ROI of a DICOM SEG, RTSTRUCT or Slicer .seg.nrrd mask.
    Raises :class:`InputError` naming the files for anything that cannot be used; the mask
    geometry policy's note (a crop placed into the grid, a resampled mask) goes to ``notes``.
    """
    try:
        params_path = RadiomicsSettings(params=params).params_path()
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from exc
    config = rad.load_params(params_path)
    if label is not None:
        config.setdefault("setting", {})["label"] = label
    pre = PreprocessSettings(max_voxels=max_voxels, mask_geometry=mask_geometry)
    try:
        extractor = rad.make_extractor(config)
        img = read_image(image, pre.max_voxels)
        roi, note = read_mask_noted(mask, img, rad.mask_label(extractor),
                                    policy=pre.mask_geometry,
                                    tolerance=tolerance_of(extractor.settings),
                                    max_voxels=pre.max_voxels, segment=segment,
                                    image_path=image, segment_column="--segment")
        if note and notes is not None:
            notes.append(f"{mask}: mask {note}")
        if n4:
            img, _ = n4_correct(img, pre)
        values, _ = rad.extract(extractor, img, roi)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"{image} / {mask}: {exc}") from exc
    return values
