"""Reading images and masks: anything SimpleITK reads, including a DICOM series folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dtlr.shared.stage import InputError


def read_image(path: str | Path) -> sitk.Image:
    """Read a volume from a file (NIfTI, NRRD, MHA, ...) or a folder holding one DICOM series."""
    path = Path(path)
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
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1][:200]
        raise InputError(f"{path}: SimpleITK cannot read it ({last}); re-export it as NIfTI, "
                         "NRRD or MHA") from exc


def read_mask(path: str | Path, image: sitk.Image, label: int) -> sitk.Image:
    """Read a label map as UInt8-compatible integers and check it can be used with ``image``."""
    mask = read_image(path)
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: mask has {mask.GetNumberOfComponentsPerPixel()} components; "
                         "save it as a single-component label map")
    arr = sitk.GetArrayViewFromImage(mask)
    if not np.all(np.equal(np.mod(arr, 1), 0)):
        raise InputError(f"{path}: mask holds non-integer values; save it as a label map")
    if not np.any(arr == label):
        found = ", ".join(str(int(v)) for v in np.unique(arr)[:10])
        raise InputError(f"{path}: mask has no voxel with label {label} (labels found: {found}); "
                         "set the label in the parameter file or fix the mask")
    if mask.GetDimension() != image.GetDimension():
        raise InputError(f"{path}: mask is {mask.GetDimension()}-D but the image is "
                         f"{image.GetDimension()}-D; save both as 3-D volumes")
    return sitk.Cast(mask, sitk.sitkUInt32 if arr.max() > 255 else sitk.sitkUInt8)
