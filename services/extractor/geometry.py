"""Image/mask geometry as an explicit policy (in the spirit of pyradiomics' checkMask).

pyradiomics compares the mask's grid with the image's within ``geometryTolerance`` and, with
``correctMask: true``, silently resamples any mask whose ROI lies inside the image. DTLR
decides before pyradiomics sees the mask, with the same tolerance as ITK applies it
(origin and spacing within ``tolerance x`` the image's first spacing, direction cosines
within ``tolerance``; pyradiomics' geometryTolerance sets both):

* the same grid within tolerance: used, on the image's exact grid;
* an exact voxel-aligned crop of the image grid (same spacing and direction, origin an integer
  number of voxels away, inside the image): placed into the image grid, and recorded;
* anything else (a shift, another spacing, direction or size): refused with both geometries,
  unless ``preprocess.mask_geometry: resample``, which resamples the mask onto the image grid
  (nearest neighbour) and records it.

The mask handed to pyradiomics is then always on the image's grid, so pyradiomics never
resamples it on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from dtlr.shared.stage import InputError

Policy = Literal["strict", "resample"]
# SimpleITK's own default coordinate and direction tolerances (used when the parameter file
# sets no geometryTolerance, as pyradiomics then leaves SimpleITK's defaults in place).
SITK_DEFAULT_TOLERANCE = 1e-6


def _vec(values: Any, digits: int = 6) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in values) + ")"


@dataclass(frozen=True)
class Geometry:
    """Where an image's voxels lie: origin, spacing (mm), size (voxels), direction cosines."""

    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    size: tuple[int, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(tuple(image.GetOrigin()), tuple(image.GetSpacing()), tuple(image.GetSize()),
                   tuple(image.GetDirection()))

    def describe(self) -> str:
        return (f"origin {_vec(self.origin)} mm, spacing {_vec(self.spacing)} mm, size "
                f"{' x '.join(map(str, self.size))}, direction {_vec(self.direction, 4)}")


def tolerance_of(settings: dict[str, Any]) -> float:
    """The geometry tolerance a pyradiomics parameter file's settings give."""
    value = settings.get("geometryTolerance")
    return SITK_DEFAULT_TOLERANCE if value is None else float(value)


def _close(a: tuple[float, ...], b: tuple[float, ...], atol: float) -> bool:
    return len(a) == len(b) and bool(np.all(np.abs(np.subtract(a, b)) <= atol))


def same_grid(image: Geometry, mask: Geometry, tolerance: float) -> bool:
    """True when both lie on one grid, within tolerance as ITK's filters check it."""
    coord = abs(tolerance * image.spacing[0])
    return (image.size == mask.size and _close(image.origin, mask.origin, coord)
            and _close(image.spacing, mask.spacing, coord)
            and _close(image.direction, mask.direction, tolerance))


def crop_offset(image: sitk.Image, mask: Geometry, tolerance: float) -> tuple[int, ...] | None:
    """The voxel index of the mask's first voxel when the mask is an exact crop of the image.

    Same spacing and direction (within tolerance), origin on an image voxel centre, and the
    whole mask inside the image; None otherwise.
    """
    geom = Geometry.of(image)
    coord = abs(tolerance * geom.spacing[0])
    if not (_close(geom.spacing, mask.spacing, coord)
            and _close(geom.direction, mask.direction, tolerance)):
        return None
    index = image.TransformPhysicalPointToContinuousIndex(mask.origin)
    k = tuple(round(i) for i in index)
    if not _close(image.TransformIndexToPhysicalPoint(k), mask.origin, coord):
        return None
    if any(o < 0 or o + s > n for o, s, n in zip(k, mask.size, geom.size, strict=True)):
        return None
    return k


def differences(image: Geometry, mask: Geometry, tolerance: float) -> str:
    """What differs between the two grids, in words (for messages and records)."""
    coord = abs(tolerance * image.spacing[0])
    out = []
    if not _close(image.origin, mask.origin, coord):
        out.append(f"origin differed by {_vec(np.subtract(mask.origin, image.origin), 4)} mm")
    if not _close(image.spacing, mask.spacing, coord):
        out.append(f"spacing {_vec(mask.spacing)} mm vs the image's {_vec(image.spacing)}")
    if not _close(image.direction, mask.direction, tolerance):
        out.append(f"direction {_vec(mask.direction, 4)} vs the image's "
                   f"{_vec(image.direction, 4)}")
    if image.size != mask.size:
        out.append(f"size {' x '.join(map(str, mask.size))} vs the image's "
                   f"{' x '.join(map(str, image.size))}")
    return "; ".join(out)


def _on_image_grid(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def _roi_inside(mask: sitk.Image, image: sitk.Image, label: int) -> bool:
    """True when the corners of the ROI's bounding box lie inside the image, within 1e-3 of a
    voxel (what pyradiomics' _checkROI asks before it resamples a mask)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    if label not in stats.GetLabels():
        return False
    box = stats.GetBoundingBox(label)
    dim = mask.GetDimension()
    start, size = box[:dim], box[dim:]
    hi = np.array(image.GetSize()) - 0.5 + 1e-3
    for corner in product(*[(s - 0.5, s + n - 0.5) for s, n in zip(start, size, strict=True)]):
        point = mask.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
        index = np.array(image.TransformPhysicalPointToContinuousIndex(point))
        if np.any(index < -0.5 - 1e-3) or np.any(index > hi):
            return False
    return True


def fit_mask(mask: sitk.Image, image: sitk.Image, *, policy: Policy, tolerance: float,
             label: int, path: str | Path) -> tuple[sitk.Image, str]:
    """The mask on the image's exact grid, and a note on what was done ("" when nothing).

    Raises InputError (naming both geometries and the fix) for a mismatch the policy refuses,
    or a resampled ROI that leaves the image.
    """
    img, msk = Geometry.of(image), Geometry.of(mask)
    if same_grid(img, msk, tolerance):
        if img != msk:  # within tolerance: put it on the image's exact grid, as pyradiomics
            mask = sitk.Image(mask)
            mask.CopyInformation(image)
        return mask, ""
    offset = crop_offset(image, msk, tolerance)
    if offset is not None:
        array = np.zeros(sitk.GetArrayViewFromImage(image).shape[:3],
                         sitk.GetArrayViewFromImage(mask).dtype)
        region = tuple(slice(o, o + s) for o, s in zip(offset, msk.size, strict=True))[::-1]
        array[region] = sitk.GetArrayViewFromImage(mask)
        note = (f"is a voxel-aligned crop of the image grid ({' x '.join(map(str, msk.size))} "
                f"voxels at voxel {offset}): placed into the image grid")
        return _on_image_grid(array, image), note
    what = differences(img, msk, tolerance)
    if policy != "resample":
        raise InputError(
            f"{path}: the mask does not lie on the image's grid ({what}; tolerance "
            f"{tolerance:g}, the parameter file's geometryTolerance): image {img.describe()}; "
            f"mask {msk.describe()}. Export the mask on the image's grid (same origin, spacing, "
            "size and direction: save it from the segmentation with the image as reference), "
            "or set preprocess.mask_geometry: resample (dtlr extract: --mask-geometry resample) "
            "to resample it onto the image grid (nearest neighbour; recorded in the patient's "
            "status)")
    if not _roi_inside(mask, image, label):
        raise InputError(
            f"{path}: the mask's ROI (label {label}) lies partly or wholly outside the image "
            f"({what}): image {img.describe()}; mask {msk.describe()}; resampling would cut "
            "it. Check that mask and image belong together (same patient, same series), then "
            "re-submit")
    resampled = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              mask.GetPixelID())
    if not np.any(sitk.GetArrayViewFromImage(resampled) == label):
        raise InputError(f"{path}: no voxel of label {label} is left after resampling the mask "
                         f"onto the image grid ({what}): the ROI is smaller than the image's "
                         "voxels; export the mask on the image's grid, then re-submit")
    return resampled, f"resampled onto the image grid ({what})"
