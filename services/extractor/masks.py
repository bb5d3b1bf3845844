"""Masks from segmentation objects: DICOM SEG, DICOM RTSTRUCT and 3D Slicer ``.seg.nrrd``.

Each is turned into a label map holding one segment (chosen by name: the manifest's
``mask_segment``) with the ROI's label value, on a grid the geometry policy then judges like any
label map's (services/extractor/geometry.py):

* **DICOM SEG** (read with highdicom): its frame of reference and referenced series must be the
  image's (a DICOM series folder). Each frame of the segment is placed on the image slice it
  lies on (its ImagePositionPatient within ``ON_GRID`` of a voxel of that slice, same
  orientation and pixel spacing): the mask is then on the image's own grid, voxel for voxel.
  A SEG whose frames are not on the image's voxels is read as the regular volume its frames
  form and handed to the geometry policy (refused, or resampled with
  ``preprocess.mask_geometry: resample``). Other segments, overlapping the chosen one or not,
  are ignored; a FRACTIONAL segment is the voxels of at least 50 %.
* **DICOM RTSTRUCT** (read with pydicom): same checks; each closed planar contour of the ROI
  must lie on an image slice (within ``ON_GRID`` of a slice spacing) and inside the image. A
  slice's contours are filled by the even-odd rule (a contour inside another is a hole), a
  voxel belonging to the ROI when its centre is inside a contour or on it: contours traced
  through the centres of the boundary voxels (as rt-utils and many planning systems write
  them) give back those voxels.
* **3D Slicer .seg.nrrd** (read with SimpleITK; the header fields ``Segment<N>_Name``,
  ``Segment<N>_Layer``, ``Segment<N>_LabelValue``): the segment's voxels are those of its layer
  with its label value (files without these fields, from Slicer before 4.11, hold segment N in
  layer N with value 1). The file's grid (Slicer stores its own extent, often a crop of the
  image's) goes to the geometry policy as any label map's.

A segment is found by its name as written, else by the same name in another case when that is
unique; a file holding one segment needs no name. Every refusal is an
:class:`~dtlr.shared.stage.InputError` naming the file, what is wrong and the fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from dtlr.services.extractor import integrity
from dtlr.shared.stage import InputError

Kind = Literal["labelmap", "seg", "rtstruct", "slicer"]

SEG_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
               "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage"}
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
# A SEG frame, or an RTSTRUCT contour's plane, lies on an image slice when it is within this
# fraction of a voxel of it (positions are written as decimal strings of up to 16 characters:
# rounding moves them by far less, while a frame of another grid is off by much more).
ON_GRID = 0.05
# Image files SimpleITK reads: never tried as DICOM objects without a preamble.
_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".img", ".hdr", ".gz",
                   ".tif", ".tiff", ".png", ".jpg", ".vtk")
_SLICER_FIELD = re.compile(r"^Segment(\d+)_(ID|Name|LabelValue|Layer)$")
_EXPORT = ("export the segmentation again on this image series (or as a label map on its grid: "
           "NIfTI, NRRD), then re-submit")


# --- what kind of mask ----------------------------------------------------------------------


def _dicom_class(path: Path) -> str | None:
    """The SOP Class UID of a DICOM file (with or without its 128-byte preamble), else None."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return None
    preamble = len(head) == 132 and head[128:132] == b"DICM"
    if not preamble and path.name.lower().endswith(_IMAGE_SUFFIXES):
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not preamble,
                             specific_tags=["SOPClassUID"])
        uid = ds.get("SOPClassUID")
    except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, AttributeError,
            EOFError, OverflowError):
        return None
    return str(uid) if uid else None


def _slicer_fields(path: Path) -> dict[str, str] | None:
    """The custom fields of a NRRD file that holds a Slicer segmentation, else None."""
    if not path.name.lower().endswith((".nrrd", ".nhdr")):
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # the label-map path reports SimpleITK's reason
    keys = reader.GetMetaDataKeys()
    if not any(_SLICER_FIELD.match(k) or k.startswith("Segmentation_") for k in keys):
        return None
    return {k: reader.GetMetaData(k) for k in keys}


def kind_of(path: str | Path) -> Kind:
    """Which reader a mask file needs: a label map (anything SimpleITK reads), a DICOM SEG, a
    DICOM RTSTRUCT or a 3D Slicer segmentation (a NRRD file with ``Segment<N>_`` fields)."""
    path = Path(path)
    if not path.is_file():
        return "labelmap"
    if _slicer_fields(path) is not None:
        return "slicer"
    uid = _dicom_class(path)
    if uid in SEG_CLASSES:
        return "seg"
    if uid == RTSTRUCT_CLASS:
        return "rtstruct"
    return "labelmap"


# --- choosing a segment ---------------------------------------------------------------------


def _listing(segments: dict[int, str], what: str) -> str:
    shown = [f"{name!r} ({what} {number})" for number, name in sorted(segments.items())[:30]]
    more = f" and {len(segments) - 30} more" if len(segments) > 30 else ""
    return ", ".join(shown) + more


def choose(segments: dict[int, str], wanted: str | None, path: Path, what: str,
           column: str) -> int:
    """The number of the segment named ``wanted`` (the only one when ``wanted`` is None).

    ``segments``: number -> name; ``what``: "segment" or "ROI"; ``column``: where the name is
    given ("the manifest's mask_segment", "--segment"), for the fix.
    """
    if not segments:
        raise InputError(f"{path}: holds no {what}; {_EXPORT}")
    if wanted is None or not wanted.strip():
        if len(segments) == 1:
            return next(iter(segments))
        raise InputError(f"{path}: holds {len(segments)} {what}s ({_listing(segments, what)}) and "
                         f"none is named; give the tumour's {what} name in {column}")
    exact = [n for n, name in segments.items() if name == wanted]
    loose = [n for n, name in segments.items()
             if name.strip().casefold() == wanted.strip().casefold()]
    found = exact or loose
    if len(found) == 1:
        return found[0]
    if found:
        raise InputError(f"{path}: {len(found)} {what}s are named {wanted!r} "
                         f"({_listing({n: segments[n] for n in found}, what)}); rename them "
                         "in the segmentation so that the tumour's name is unique, then re-export")
    raise InputError(f"{path}: {what} {wanted!r} not found; the file's {what}s: "
                     f"{_listing(segments, what)}; give one of them in {column} (names are "
                     "matched as written, or in another case)")


# --- the image series -----------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesReference:
    """What a DICOM image series says about where its voxels are, as SEG/RTSTRUCT refer to it."""

    folder: Path
    series_uid: str
    frame_of_reference: str
    positions: np.ndarray  # (slices, 3): ImagePositionPatient of each slice, in the image's order
    row: np.ndarray  # direction of increasing column index (x)
    col: np.ndarray  # direction of increasing row index (y)
    spacing: tuple[float, float]  # (x, y): between columns, between rows (mm)
    size: tuple[int, int]  # (columns, rows)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.col)

    @property
    def along(self) -> np.ndarray:
        """Each slice's position along the slice normal (mm)."""
        return self.positions @ self.normal

    @property
    def slice_step(self) -> float:
        along = np.sort(self.along)
        gaps = np.diff(along)
        return float(np.median(gaps)) if gaps.size else 1.0


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip(" \x00") if reader.HasMetaDataKey(key) else ""


def series_reference(image_path: str | Path | None, image: sitk.Image, mask: Path,
                     what: str) -> SeriesReference:
    """The image series a SEG or RTSTRUCT ``mask`` must refer to; refused unless ``image_path``
    is a folder holding one DICOM series (the one ``image`` was read from)."""
    folder = Path(image_path) if image_path is not None else None
    if folder is None or not folder.is_dir():
        raise InputError(
            f"{mask}: a DICOM {what} places its voxels in the frame of reference of the DICOM "
            f"series it was drawn on, but the image ({folder or 'not a file'}) is not a DICOM "
            "series folder, so DTLR cannot check that they belong together; give the image as "
            f"the folder of that DICOM series, or convert the {what} to a label map on the "
            "image's grid (NIfTI, NRRD)")
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    slices = [integrity.slice_info(f) for f in files]
    if len(slices) != image.GetDepth() or any(s.position is None for s in slices):
        raise InputError(f"{mask}: the image series {folder} has {len(slices)} files with "
                         f"positions for {image.GetDepth()} slices; a multi-frame DICOM image "
                         f"cannot be matched to a {what} yet: export the image as one file per "
                         "slice, or the mask as a label map on the image's grid")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    return SeriesReference(
        folder=folder, series_uid=_tag(reader, "0020|000e"),
        frame_of_reference=_tag(reader, "0020|0052"),
        positions=np.array([s.position for s in slices], dtype=float),
        row=direction[:, 0], col=direction[:, 1], spacing=(spacing[0], spacing[1]),
        size=(image.GetWidth(), image.GetHeight()))


def check_references(mask: Path, what: str, ref: SeriesReference,
                     frames_of_reference: Sequence[str], series: Sequence[str]) -> None:
    """Refuse a SEG/RTSTRUCT of another frame of reference, or drawn on another series."""
    frames = [f for f in frames_of_reference if f]
    if frames and ref.frame_of_reference and ref.frame_of_reference not in frames:
        listed = ", ".join(frames[:3]) + (" ..." if len(frames) > 3 else "")
        raise InputError(
            f"{mask}: the {what} is in frame of reference {listed}, the image {ref.folder} in "
            f"{ref.frame_of_reference}: they were not acquired in one coordinate system "
            "(another patient, study or session), so its voxels cannot be placed on this "
            "image; give the segmentation drawn on this series, or the series it was drawn on "
            "as the image")
    wanted = [s for s in series if s]
    if wanted and ref.series_uid and ref.series_uid not in wanted:
        listed = ", ".join(wanted[:5]) + (" ..." if len(wanted) > 5 else "")
        raise InputError(
            f"{mask}: the {what} refers to series {listed}, but the image {ref.folder} is series "
            f"{ref.series_uid}: it was drawn on another series; give the segmentation drawn on "
            "this series, or the series it was drawn on as the image")


# --- placing points on the image grid -------------------------------------------------------


def _on_slices(ref: SeriesReference, along: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For positions along the normal: the nearest slice and the distance to it, in slices."""
    slices = ref.along
    k = np.abs(along[:, None] - slices[None, :]).argmin(axis=1)
    return k, np.abs(along - slices[k]) / max(ref.slice_step, 1e-9)


def _in_plane(ref: SeriesReference, points: np.ndarray, k: int) -> np.ndarray:
    """(n, 2) continuous (x, y) voxel indices of points on slice ``k``."""
    offset = points - ref.positions[k]
    return np.stack([offset @ ref.row / ref.spacing[0], offset @ ref.col / ref.spacing[1]], 1)


def _as_label(array: np.ndarray, image: sitk.Image, label: int) -> sitk.Image:
    out = sitk.GetImageFromArray((array.astype(bool) * label).astype(
        np.uint32 if label > 255 else np.uint8))
    out.CopyInformation(image)
    return out


# --- DICOM SEG ------------------------------------------------------------------------------


def _group(frame: Any, shared: Any, name: str) -> Any:
    for groups in (frame, shared):
        if groups is not None and name in groups:
            return groups[name].value[0]
    return None


def _seg_volume(seg: Any, number: int, path: Path) -> sitk.Image:
    """The segment as the regular volume its frames form (for the geometry policy)."""
    try:
        volume = seg.get_volume(segment_numbers=[number], combine_segments=True,
                                skip_overlap_checks=True)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise InputError(f"{path}: the segment's frames lie neither on the image's voxels nor on "
                         f"a regular grid ({exc}); {_EXPORT}") from exc
    affine = np.asarray(volume.affine, dtype=float)
    # highdicom's array is (slice, row, column); SimpleITK's index is (column, row, slice)
    axes = affine[:3, [2, 1, 0]]
    spacing = np.linalg.norm(axes, axis=0)
    out = sitk.GetImageFromArray((np.asarray(volume.array) > 0).astype(np.uint8))
    out.SetSpacing([float(s) for s in spacing])
    out.SetOrigin([float(v) for v in affine[:3, 3]])
    out.SetDirection([float(v) for v in (axes / spacing).ravel()])
    return out


def read_seg(path: Path, image: sitk.Image, image_path: str | Path | None, label: int,
             segment: str | None, column: str, max_voxels: int) -> tuple[sitk.Image, bool]:
    """A DICOM SEG's segment as a label map; True when it lies on the image's grid voxel for
    voxel, False when it is on the grid its frames form (for the geometry policy)."""
    import highdicom as hd
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        integrity.check_voxel_cap(path, (int(header.Columns), int(header.Rows), frames), 1,
                                  max_voxels, "its header declares")
        seg = hd.seg.segread(path)
    except InputError:
        raise
    except Exception as exc:  # pydicom and highdicom raise many kinds for damaged files
        raise InputError(f"{path}: cannot be read as a DICOM SEG ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); if it was cut short or damaged in transfer, "
                         f"{integrity.RECOPY}; else {_EXPORT}") from exc
    ref = series_reference(image_path, image, path, "SEG")
    check_references(path, "SEG", ref, [str(seg.get("FrameOfReferenceUID", ""))],
                     [str(s.get("SeriesInstanceUID", ""))
                      for s in seg.get("ReferencedSeriesSequence", [])])
    names = {int(d.SegmentNumber): str(d.get("SegmentLabel", "")) for d in seg.SegmentSequence}
    number = choose(names, segment, path, "segment", column)
    kind = str(seg.SegmentationType)
    top = float(seg.get("MaximumFractionalValue", 1) or 1)
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg \
        else None
    per_frame = seg.get("PerFrameFunctionalGroupsSequence", [])
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape[:3], bool)
    width, height = ref.size
    aligned, any_voxel = True, False
    for f in range(len(per_frame)):
        groups = per_frame[f]
        if kind != "LABELMAP":
            ident = _group(groups, shared, "SegmentIdentificationSequence")
            if ident is None or int(ident.ReferencedSegmentNumber) != number:
                continue
        stored = seg.get_stored_frame(f + 1)
        if kind == "LABELMAP":
            pixels = stored == number
        elif kind == "FRACTIONAL":
            pixels = stored >= 0.5 * top
        else:
            pixels = stored > 0
        if not pixels.any():
            continue
        any_voxel = True
        position = _group(groups, shared, "PlanePositionSequence")
        orientation = _group(groups, shared, "PlaneOrientationSequence")
        measures = _group(groups, shared, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise InputError(f"{path}: frame {f + 1} has no position, orientation or pixel "
                             f"spacing, so it cannot be placed; {_EXPORT}")
        iop = np.asarray(orientation.ImageOrientationPatient, dtype=float)
        row_spacing, col_spacing = (float(v) for v in measures.PixelSpacing)
        same_plane = (np.allclose(iop[:3], ref.row, atol=1e-4)
                      and np.allclose(iop[3:], ref.col, atol=1e-4)
                      and math.isclose(col_spacing, ref.spacing[0], rel_tol=1e-4)
                      and math.isclose(row_spacing, ref.spacing[1], rel_tol=1e-4))
        origin = np.asarray(position.ImagePositionPatient, dtype=float)
        k, off = _on_slices(ref, np.array([origin @ ref.normal]))
        xy = _in_plane(ref, origin[None, :], int(k[0]))[0]
        start = np.rint(xy)
        if not (same_plane and off[0] <= ON_GRID and np.all(np.abs(xy - start) <= ON_GRID)):
            aligned = False
            break
        rows, cols = np.nonzero(pixels)
        x, y = cols + int(start[0]), rows + int(start[1])
        if x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height:
            raise InputError(f"{path}: segment {names[number]!r} extends beyond the image "
                             f"(frame {f + 1} reaches voxel ({int(x.max())}, {int(y.max())}) "
                             f"of a {width} x {height} slice); {_EXPORT}")
        array[int(k[0]), y, x] = True
    if not any_voxel:
        raise InputError(f"{path}: segment {names[number]!r} (segment {number}) is empty: no "
                         f"frame holds a voxel of it; {_EXPORT}")
    if not aligned:
        return _seg_volume(seg, number, path), False
    return _as_label(array, image, 1), True


# --- DICOM RTSTRUCT -------------------------------------------------------------------------


def _fill(polygons: list[np.ndarray], width: int, height: int, eps: float = 1e-6
          ) -> np.ndarray:
    """(height, width) voxels whose centres lie inside the polygons (even-odd rule: a polygon
    inside another is a hole) or on one of their edges; vertices in (x, y) voxel indices."""
    out = np.zeros((height, width), bool)
    starts = np.concatenate([p for p in polygons])
    ends = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    x0, y0, x1, y1 = starts[:, 0], starts[:, 1], ends[:, 0], ends[:, 1]
    # interiors: for each voxel row, where the edges cross it (half-open in y), filled in pairs
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.maximum(np.ceil(lo), 0).astype(int)
    last = np.minimum(np.ceil(hi) - 1, height - 1).astype(int)
    count = np.maximum(last - first + 1, 0)
    edge = np.repeat(np.arange(len(x0)), count)
    rows = first[edge] + (np.arange(edge.size) - np.repeat(np.cumsum(count) - count, count))
    t = (rows - y0[edge]) / (y1[edge] - y0[edge])
    xs = x0[edge] + t * (x1[edge] - x0[edge])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    for r in np.unique(rows):
        at = xs[rows == r]
        for a, b in zip(at[0::2], at[1::2], strict=False):
            i0, i1 = max(math.ceil(a - eps), 0), min(math.floor(b + eps), width - 1)
            if i0 <= i1:
                out[r, i0:i1 + 1] = True
    # edges: voxel centres on them (the lattice points each edge passes through)
    for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
        dx, dy = bx - ax, by - ay
        points = []
        if abs(dy) > eps:
            for r in range(math.ceil(min(ay, by) - eps), math.floor(max(ay, by) + eps) + 1):
                points.append((ax + (r - ay) * dx / dy, r))
        if abs(dx) > eps:
            for c in range(math.ceil(min(ax, bx) - eps), math.floor(max(ax, bx) + eps) + 1):
                points.append((c, ay + (c - ax) * dy / dx))
        if abs(dx) <= eps and abs(dy) <= eps:
            points.append((ax, ay))
        for px, py in points:
            cx, cy = round(px), round(py)
            if (abs(px - cx) <= eps and abs(py - cy) <= eps
                    and 0 <= cx < width and 0 <= cy < height):
                out[cy, cx] = True
    return out


def read_rtstruct(path: Path, image: sitk.Image, image_path: str | Path | None, label: int,
                  segment: str | None, column: str) -> sitk.Image:
    """An RTSTRUCT ROI as a label map on the image's grid (its contours filled per slice)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
        rois = {int(r.ROINumber): str(r.get("ROIName", "")) for r in ds.StructureSetROISequence}
    except Exception as exc:  # pydicom raises many kinds for damaged files
        raise InputError(f"{path}: cannot be read as a DICOM RTSTRUCT ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); if it was cut short or damaged in transfer, "
                         f"{integrity.RECOPY}; else {_EXPORT}") from exc
    ref = series_reference(image_path, image, path, "RTSTRUCT")
    frames = list(ds.get("ReferencedFrameOfReferenceSequence", []))
    series = [str(s.get("SeriesInstanceUID", "")) for f in frames
              for study in f.get("RTReferencedStudySequence", [])
              for s in study.get("RTReferencedSeriesSequence", [])]
    check_references(path, "RTSTRUCT", ref,
                     [str(f.get("FrameOfReferenceUID", "")) for f in frames], series)
    number = choose(rois, segment, path, "ROI", column)
    name = rois[number]
    roi_item = next(r for r in ds.StructureSetROISequence if int(r.ROINumber) == number)
    check_references(path, f"RTSTRUCT ROI {name!r}", ref,
                     [str(roi_item.get("ReferencedFrameOfReferenceUID", ""))], [])
    contours = [c for item in ds.get("ROIContourSequence", [])
                if int(item.get("ReferencedROINumber", -1)) == number
                for c in item.get("ContourSequence", [])]
    closed = [c for c in contours if str(c.get("ContourGeometricType", "")) == "CLOSED_PLANAR"
              and len(c.get("ContourData", [])) >= 3]
    if not closed:
        kinds = sorted({str(c.get("ContourGeometricType", "?")) for c in contours})
        held = f"only {', '.join(kinds)} contours, which enclose no volume" if kinds else \
            "no contours"
        raise InputError(f"{path}: ROI {name!r} has {held}, so it has no contour on the image; "
                         "give the ROI that outlines the tumour (closed planar contours), or "
                         + _EXPORT)
    width, height = ref.size
    by_slice: dict[int, list[np.ndarray]] = {}
    off_slices: list[float] = []
    outside = 0
    for c in closed:
        points = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
        along = points @ ref.normal
        k, off = _on_slices(ref, np.array([float(along.mean())]))
        if off[0] > ON_GRID or np.ptp(along) > ON_GRID * ref.slice_step:
            off_slices.append(float(along.mean()))
            continue
        xy = _in_plane(ref, points, int(k[0]))
        if (xy.min(axis=0) < -0.5 - ON_GRID).any() or xy[:, 0].max() > width - 0.5 + ON_GRID \
                or xy[:, 1].max() > height - 0.5 + ON_GRID:
            outside += 1
        by_slice.setdefault(int(k[0]), []).append(xy)
    slices = np.sort(ref.along)
    extent = f"the image's {len(slices)} slices lie at {slices[0]:.3f} to {slices[-1]:.3f} mm"
    if off_slices and not by_slice:
        raise InputError(f"{path}: ROI {name!r} has no contour on the image: its "
                         f"{len(off_slices)} contours lie at {min(off_slices):.3f} to "
                         f"{max(off_slices):.3f} mm along the slice normal, where {extent} "
                         f"{ref.slice_step:.3f} mm apart; give the RTSTRUCT drawn on this "
                         "series, or " + _EXPORT)
    if off_slices:
        raise InputError(f"{path}: {len(off_slices)} of ROI {name!r}'s {len(closed)} contours "
                         f"lie off the image's slices (e.g. at {off_slices[0]:.3f} mm along the "
                         f"slice normal; {extent}, {ref.slice_step:.3f} mm apart), so the ROI "
                         "would be cut; give the RTSTRUCT drawn on this series, or " + _EXPORT)
    if outside:
        raise InputError(f"{path}: {outside} of ROI {name!r}'s contours reach beyond the image "
                         f"({width} x {height} voxels per slice), so the ROI would be cut; "
                         "check that the RTSTRUCT belongs to this image, or " + _EXPORT)
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape[:3], bool)
    for k, polygons in by_slice.items():
        array[k] = _fill(polygons, width, height)
    if not array.any():
        raise InputError(f"{path}: ROI {name!r}'s contours enclose no voxel centre of the image "
                         "(the ROI is smaller than a voxel); give a larger ROI, or " + _EXPORT)
    return _as_label(array, image, 1)


# --- 3D Slicer .seg.nrrd --------------------------------------------------------------------


def slicer_segments(fields: dict[str, str]) -> dict[int, dict[str, str]]:
    """Segment index -> its fields (ID, Name, LabelValue, Layer) from a .seg.nrrd header."""
    out: dict[int, dict[str, str]] = {}
    for key, value in fields.items():
        m = _SLICER_FIELD.match(key)
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = value.strip()
    return out


def read_slicer(path: Path, mask: sitk.Image, segment: str | None, column: str) -> sitk.Image:
    """A Slicer segmentation's segment as a binary image on the file's own grid."""
    fields = {k: mask.GetMetaData(k) for k in mask.GetMetaDataKeys()}
    source = (fields.get("Segmentation_SourceRepresentation")
              or fields.get("Segmentation_MasterRepresentation") or "Binary labelmap").strip()
    if source != "Binary labelmap":
        raise InputError(f"{path}: the segmentation is stored as {source!r}, not as a binary "
                         "labelmap; in 3D Slicer set the segmentation's source representation "
                         "to Binary labelmap and save it again")
    segments = slicer_segments(fields)
    names = {i: s.get("Name", s.get("ID", f"Segment_{i}")) for i, s in segments.items()}
    index = choose(names, segment, path, "segment", column)
    layers = mask.GetNumberOfComponentsPerPixel()
    try:
        layer = int(segments[index].get("Layer", index if layers > 1 else 0))
        value = int(float(segments[index].get("LabelValue", 1)))
    except ValueError as exc:
        raise InputError(f"{path}: segment {names[index]!r} has an unreadable Layer or "
                         f"LabelValue field ({exc}); save the segmentation again from 3D "
                         "Slicer") from exc
    if not 0 <= layer < layers:
        raise InputError(f"{path}: segment {names[index]!r} is in layer {layer}, but the file "
                         f"has {layers} layer(s): the header does not match the data; save the "
                         "segmentation again from 3D Slicer")
    voxels = sitk.VectorIndexSelectionCast(mask, layer) if layers > 1 else mask
    binary = sitk.Cast(sitk.Equal(voxels, value), sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        raise InputError(f"{path}: segment {names[index]!r} is empty (no voxel of label "
                         f"{value} in layer {layer}); draw the segment in 3D Slicer and save "
                         "it again, or name another segment in the manifest")
    return binary
