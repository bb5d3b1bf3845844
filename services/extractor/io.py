"""Reading images and masks: anything SimpleITK reads, including a DICOM series folder.

Every file is checked before SimpleITK allocates it (services/extractor/integrity.py): the
voxel count its header declares against ``preprocess.max_voxels``, data cut short or
corrupted where SimpleITK would read it silently, a DICOM series' slice positions; an image's
voxels are then checked for NaN, Inf and a single value. A mask is a label map or one segment
of a DICOM SEG, DICOM RTSTRUCT or 3D Slicer .seg.nrrd (services/extractor/masks.py); it is put
on the image's grid by the geometry policy (services/extractor/geometry.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dtlr.services.extractor import integrity, masks
from dtlr.services.extractor.geometry import SITK_DEFAULT_TOLERANCE, Policy, fit_mask
from dtlr.shared.config import MAX_VOXELS
from dtlr.shared.stage import InputError


def _reason(exc: RuntimeError) -> str:
    """SimpleITK's error without its C++ source location line."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    lines = [line for line in lines if line and not line.startswith("Exception thrown in")]
    return " ".join(lines)[-300:] or "no reason given"


def _read(path: Path, max_voxels: int) -> sitk.Image:
    if not path.exists():
        raise InputError(f"{path}: file not found; fix the path in the manifest")
    try:
        if path.is_dir():
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError(f"{path}: folder holds no DICOM series; point the manifest at "
                                 "the series folder or at an image file")
            if len(series) > 1:
                raise InputError(f"{path}: folder holds {len(series)} DICOM series; give each "
                                 "series its own folder")
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
            integrity.check_series(path, files, max_voxels)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            return reader.Execute()
        integrity.check_declared_size(path, max_voxels)
        integrity.check_file_data(path)
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        nifti2 = integrity.nifti_version(path) == 2
        hint = ("it is NIfTI-2, which this SimpleITK cannot read; save it as NIfTI-1 (most "
                "volumes fit), NRRD or MHA" if nifti2 else "if it was cut short or damaged in "
                "transfer, copy it again from its source; else re-export it as NIfTI, NRRD "
                "or MHA")
        raise InputError(f"{path}: SimpleITK cannot read it ({_reason(exc)}); {hint}") from exc


def read_image(path: str | Path, max_voxels: int = MAX_VOXELS) -> sitk.Image:
    """Read a volume from a file (NIfTI, NRRD, MHA, ...) or a folder holding one DICOM series.

    Refuses (InputError) a file too large, damaged or cut short, a DICOM series with missing,
    duplicated or unevenly spaced slices, and NaN/Inf voxels or a single value everywhere.
    """
    path = Path(path)
    image = _read(path, max_voxels)
    integrity.check_values(image, path)
    return image


def read_mask(path: str | Path, image: sitk.Image, label: int, *, policy: Policy = "strict",
              tolerance: float = SITK_DEFAULT_TOLERANCE, max_voxels: int = MAX_VOXELS,
              segment: str | None = None, image_path: str | Path | None = None) -> sitk.Image:
    """Read a mask as UInt8/UInt32 on the image's grid (see :func:`read_mask_noted`)."""
    return read_mask_noted(path, image, label, policy=policy, tolerance=tolerance,
                           max_voxels=max_voxels, segment=segment, image_path=image_path)[0]


MASK_FORMATS = {"labelmap": "label map", "seg": "DICOM SEG", "rtstruct": "DICOM RTSTRUCT",
                "slicer": "3D Slicer segmentation"}


def read_mask_noted(path: str | Path, image: sitk.Image, label: int, *,
                    policy: Policy = "strict", tolerance: float = SITK_DEFAULT_TOLERANCE,
                    max_voxels: int = MAX_VOXELS, segment: str | None = None,
                    image_path: str | Path | None = None,
                    segment_column: str = "the manifest's mask_segment"
                    ) -> tuple[sitk.Image, str]:
    """Read a mask as UInt8/UInt32 on the image's grid, and a note on how it got there.

    The mask is a label map (anything SimpleITK reads; ``label`` selects the ROI), or one
    segment of a DICOM SEG, a DICOM RTSTRUCT or a 3D Slicer ``.seg.nrrd``, chosen by its name
    ``segment`` (needed when the file holds several; ``segment_column`` names where it is given,
    for messages) and converted to a label map holding ``label``
    (services/extractor/masks.py). SEG and RTSTRUCT need ``image_path``, the DICOM series
    folder the image was read from: their frame of reference and referenced series are
    checked against it, and they are placed on its grid voxel for voxel.

    The note is "" for a mask on the image's grid, else what the geometry policy did (a crop
    placed into the grid, or a resampling the policy allows); a mismatch it refuses is an
    InputError naming both geometries (services/extractor/geometry.py). ``tolerance`` is the
    parameter file's geometryTolerance (:func:`~dtlr.services.extractor.geometry.tolerance_of`).
    """
    path = Path(path)
    kind = masks.kind_of(path)
    if kind == "seg":
        mask, exact = masks.read_seg(path, image, image_path, label, segment, segment_column,
                                     max_voxels)
        mask = _labelled(mask, label)
        if exact:
            return _fit(path, mask, image, label, "strict", tolerance)[0], ""
        fitted, note = _fit(path, mask, image, label, policy, tolerance)
        return fitted, f"(a DICOM SEG whose frames are not on the image's voxels) {note}"
    if kind == "rtstruct":
        mask = masks.read_rtstruct(path, image, image_path, label, segment, segment_column)
        return _fit(path, _labelled(mask, label), image, label, "strict", tolerance)[0], ""
    mask = _read(path, max_voxels)
    if kind == "slicer":
        if mask.GetDimension() != 3:
            raise InputError(f"{path}: the segmentation is {mask.GetDimension()}-D; DTLR needs "
                             "3-D segmentations of 3-D images")
        mask = _labelled(masks.read_slicer(path, mask, segment, segment_column), label)
    elif segment:
        raise InputError(f"{path}: {segment_column} names segment {segment!r}, but the mask is a "
                         "label map, whose segments have no names; leave it empty and give the "
                         "label value (mask_label, or the parameter file's label), or give a "
                         "DICOM SEG, RTSTRUCT or 3D Slicer .seg.nrrd")
    return _fit(path, mask, image, label, policy, tolerance)


def _labelled(binary: sitk.Image, label: int) -> sitk.Image:
    """A 0/1 mask as a label map holding ``label``."""
    arr = sitk.GetArrayViewFromImage(binary).astype(bool)
    out = sitk.GetImageFromArray((arr * label).astype(np.uint32 if label > 255 else np.uint8))
    out.CopyInformation(binary)
    return out


def _fit(path: Path, mask: sitk.Image, image: sitk.Image, label: int, policy: Policy,
         tolerance: float) -> tuple[sitk.Image, str]:
    """A label map checked (one component, integers, the label present, 3-D like the image)
    and put on the image's grid by the geometry policy."""
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: mask has {mask.GetNumberOfComponentsPerPixel()} components; "
                         "save it as a single-component label map")
    arr = sitk.GetArrayViewFromImage(mask)
    if not np.all(np.equal(np.mod(arr, 1), 0)):
        raise InputError(f"{path}: mask holds non-integer values; save it as a label map")
    if not np.any(arr == label):
        found = ", ".join(str(int(v)) for v in np.unique(arr)[:10])
        raise InputError(f"{path}: mask has no voxel with label {label} (labels found: {found}); "
                         "set the label in the parameter file (or the patient's mask_label in "
                         "the manifest) or fix the mask")
    if mask.GetDimension() != image.GetDimension():
        raise InputError(f"{path}: mask is {mask.GetDimension()}-D but the image is "
                         f"{image.GetDimension()}-D; save both as 3-D volumes")
    mask = sitk.Cast(mask, sitk.sitkUInt32 if arr.max() > 255 else sitk.sitkUInt8)
    return fit_mask(mask, image, policy=policy, tolerance=tolerance, label=label, path=path)
