"""The CNN's input: the axial slice with the largest ROI area, cropped around the ROI, resized.

The slice is taken on the image's own grid, the one the mask was drawn on: an acquired slice,
never one interpolated between acquisitions. (Choosing it after 1 mm resampling would make the
five 1 mm copies of a 5 mm slice tie, take the first of them, 2 mm off the acquired slice, and
give the CNN B-spline-interpolated data.) Where several consecutive slices tie for the largest
area, the middle one of that run is taken. In-plane, the crop is resized once, from the native
resolution to the CNN's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass
class MaxSlice:
    """A (2, size, size) float32 array (channel 0 image, channel 1 mask) and where it came from."""

    array: np.ndarray
    slice_index: int  # on the image's own (acquired) grid, along ``axial_axis``
    areas_mm2: np.ndarray
    axial_axis: int
    position_mm: tuple[float, float, float]  # the chosen slice's centre in patient (LPS) space


def choose_slice(areas: np.ndarray) -> int:
    """The slice with the largest area; for a run of consecutive ties, the run's middle."""
    best = float(areas.max())
    tied = np.isclose(areas, best, rtol=1e-9, atol=0.0)
    first = int(np.argmax(tied))
    last = first
    while last + 1 < len(areas) and tied[last + 1]:
        last += 1
    return (first + last) // 2


def axial_axis(image: sitk.Image) -> int:
    """The array axis (NumPy order z, y, x) most aligned with the patient's superior axis."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    itk_axis = int(np.argmax(np.abs(direction[2, :])))  # column i = image axis i in LPS space
    return 2 - itk_axis


def max_slice(image: sitk.Image, mask: sitk.Image, size: int, margin_mm: float,
              label: int = 1) -> MaxSlice:
    """Cut the largest-area axial ROI slice from an image and its mask (same grid).

    The crop is the square around the ROI's in-slice bounding box plus ``margin_mm``, so the
    tumour keeps its aspect ratio; it is resized to ``size`` x ``size`` (image linear, mask
    nearest neighbour). Parts of the square outside the volume are filled with the image minimum.
    """
    axis = axial_axis(image)
    img = np.moveaxis(sitk.GetArrayFromImage(image).astype(np.float32), axis, 0)
    roi = np.moveaxis(sitk.GetArrayFromImage(mask) == label, axis, 0)
    spacing_zyx = np.asarray(image.GetSpacing())[::-1]
    in_plane = np.delete(spacing_zyx, axis)
    areas = roi.reshape(roi.shape[0], -1).sum(axis=1) * float(np.prod(in_plane))
    index = choose_slice(areas)
    ys, xs = np.nonzero(roi[index])
    lo = np.array([ys.min(), xs.min()], dtype=float)
    hi = np.array([ys.max(), xs.max()], dtype=float) + 1
    centre_mm = (lo + hi) / 2 * in_plane
    side_mm = float(np.max((hi - lo) * in_plane)) + 2 * margin_mm
    step = side_mm / size
    # Output pixel centres in the slice's own (row, column) millimetre coordinates.
    coords = (np.arange(size) + 0.5) * step - side_mm / 2
    rows = (centre_mm[0] + coords) / in_plane[0] - 0.5
    cols = (centre_mm[1] + coords) / in_plane[1] - 0.5
    src = sitk.GetImageFromArray(img[index])
    src_mask = sitk.GetImageFromArray(roi[index].astype(np.uint8))
    ref = sitk.Image(size, size, sitk.sitkFloat32)
    ref.SetOrigin((float(cols[0]), float(rows[0])))
    ref.SetSpacing((step / in_plane[1], step / in_plane[0]))
    fill = float(img[index].min())
    out_img = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, fill, sitk.sitkFloat32)
    out_mask = sitk.Resample(src_mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                             sitk.sitkUInt8)
    array = np.stack([sitk.GetArrayFromImage(out_img), sitk.GetArrayFromImage(out_mask)])
    centre = [s // 2 for s in image.GetSize()]
    centre[2 - axis] = index  # NumPy axis -> ITK index axis
    position = image.TransformIndexToPhysicalPoint([int(c) for c in centre])
    return MaxSlice(array=array.astype(np.float32), slice_index=index, areas_mm2=areas,
                    axial_axis=axis, position_mm=tuple(float(v) for v in position))
