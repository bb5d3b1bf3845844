"""Segmentation objects written the way clinical tools write them (tests of mask readers).

* DICOM SEG with highdicom's ``Segmentation`` (BINARY, one or more segments, overlapping ones
  allowed), referencing the DICOM series it was drawn on;
* DICOM RTSTRUCT with pydicom, each slice's contours traced through the centres of the ROI's
  boundary voxels as rt-utils' ``RTStructBuilder`` traces them (OpenCV ``findContours``,
  ``RETR_TREE`` with ``CHAIN_APPROX_SIMPLE``: outer contours and holes);
* 3D Slicer ``.seg.nrrd``: the NRRD header and ``Segment<N>_``/``Segmentation_`` fields Slicer
  5 writes (slicer.readthedocs.io, "Segmentation labelmap file format"): overlapping segments
  in separate layers of a 4-D file (a ``list`` axis first), cropped to the segments' extent.

Masks are NumPy arrays in SimpleITK's (z, y, x) order on the image's grid; slice k of a series
written by tests/images.py ``write_dicom_series`` is file ``slice{k:03d}.dcm``.
"""

from __future__ import annotations

import gzip
from datetime import datetime
from pathlib import Path

import contourpy
import cv2
import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def series_datasets(series: Path) -> list[Dataset]:
    """The headers of a series' files, slice 0 first."""
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(series.glob("*.dcm"))]


def write_seg(series: Path, segments: dict[str, np.ndarray], path: Path) -> Path:
    """A BINARY DICOM SEG of ``series`` holding ``segments`` (name -> mask), numbered 1, 2, ..."""
    sources = series_datasets(series)
    names = list(segments)
    pixels = np.stack([segments[n].astype(bool) for n in names], axis=-1)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=name,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for i, name in enumerate(names)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="DTLR tests",
        manufacturer_model_name="tests/segmentations.py", software_versions="1",
        device_serial_number="1")
    seg.save_as(path)
    return path


def _contours(mask: np.ndarray, smooth: float = 0.0) -> list[np.ndarray]:
    """(n, 2) (x, y) voxel indices of each contour of one slice (outer contours and holes).

    Through the boundary voxels' centres (rt-utils), or with ``smooth`` > 0 the 50 % line of
    the slice blurred by a Gaussian of that sigma (voxels): a smooth outline between voxel
    centres, like a planning system's or 3D Slicer's smoothed planar contours.
    """
    if smooth > 0:
        blurred = ndimage.gaussian_filter(np.pad(mask.astype(float), 2), smooth)
        lines = contourpy.contour_generator(z=blurred).lines(0.5)
        return [np.asarray(line, dtype=float)[:-1] - 2 for line in lines if len(line) > 3]
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    return [c[:, 0, :].astype(float) for c in found]


def write_rtstruct(series: Path, rois: dict[str, np.ndarray], path: Path,
                   smooth: float = 0.0) -> Path:
    """An RT Structure Set on ``series`` with one ROI per entry of ``rois`` (name -> mask);
    ``smooth``: contours between voxel centres (see :func:`_contours`)."""
    sources = series_datasets(series)
    first = sources[0]
    row = np.asarray(first.ImageOrientationPatient[:3], dtype=float)
    col = np.asarray(first.ImageOrientationPatient[3:], dtype=float)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    frame_uid = str(first.FrameOfReferenceUID)
    now = datetime.now()

    def image_ref(ds: Dataset) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        return item

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_CLASS, meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.StudyDate = ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.StructureSetTime = now.strftime("%H%M%S")
    ds.Manufacturer = "DTLR tests"
    ds.PatientName, ds.PatientID = first.get("PatientName", ""), first.get("PatientID", "")
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 200, 1
    ds.FrameOfReferenceUID = frame_uid
    ds.StructureSetLabel = "DTLR test"
    series_item = Dataset()
    series_item.SeriesInstanceUID = first.SeriesInstanceUID
    series_item.ContourImageSequence = Sequence([image_ref(s) for s in sources])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
    study_item.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = frame_uid
    frame_item.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_item])
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    ds.RTROIObservationsSequence = Sequence()
    for number, (name, mask) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, frame_uid
        roi.ROIName, roi.ROIGenerationAlgorithm = name, "MANUAL"
        ds.StructureSetROISequence.append(roi)
        contours = Sequence()
        for k in range(mask.shape[0]):
            if not mask[k].any():
                continue
            origin = np.asarray(sources[k].ImagePositionPatient, dtype=float)
            for xy in _contours(mask[k], smooth):
                points = (origin + np.outer(xy[:, 0] * col_spacing, row)
                          + np.outer(xy[:, 1] * row_spacing, col))
                contour = Dataset()
                contour.ContourImageSequence = Sequence([image_ref(sources[k])])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourData = [f"{v:.10g}" for v in points.ravel()]
                contours.append(contour)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = [255, 0, 0]
        roi_contour.ContourSequence = contours
        roi_contour.ReferencedROINumber = number
        ds.ROIContourSequence.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "GTV", ""
        ds.RTROIObservationsSequence.append(observation)
    ds.save_as(path, enforce_file_format=True)
    return path


def _layers(segments: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """(layer, label value) of each segment: as few layers as the overlaps allow (Slicer)."""
    placed: list[np.ndarray] = []
    out = []
    for mask in segments.values():
        layer = next((i for i, used in enumerate(placed) if not (used & mask).any()),
                     len(placed))
        if layer == len(placed):
            placed.append(np.zeros(mask.shape, bool))
        value = 1 + sum(1 for lay, _ in out if lay == layer)
        placed[layer] |= mask
        out.append((layer, value))
    return out


def write_seg_nrrd(image: sitk.Image, segments: dict[str, np.ndarray], path: Path, *,
                   crop: bool = True, legacy: bool = False) -> Path:
    """A 3D Slicer segmentation of ``image`` holding ``segments`` (name -> mask on its grid).

    Cropped to the segments' extent unless ``crop`` is False (the NRRD's space origin moves with
    the crop, as Slicer writes it). ``legacy``: the Slicer 4.10 layout, one layer per segment
    and no ``Layer``/``LabelValue`` fields.
    """
    names = list(segments)
    masks = [segments[n].astype(bool) for n in names]
    union = np.logical_or.reduce(masks)
    shape = union.shape
    if crop:
        z, y, x = np.nonzero(union)
        start = [int(v.min()) for v in (z, y, x)]
        stop = [int(v.max()) + 1 for v in (z, y, x)]
    else:
        start, stop = [0, 0, 0], list(shape)
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    placement = [(i, 1) for i in range(len(names))] if legacy else _layers(segments)
    n_layers = 1 + max(layer for layer, _ in placement)
    data = np.zeros((*[b - a for a, b in zip(start, stop, strict=True)], n_layers), np.uint8)
    for mask, (layer, value) in zip(masks, placement, strict=True):
        data[..., layer][mask[box]] = value
    spacing = np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = image.TransformIndexToPhysicalPoint(start[::-1])
    axes = " ".join("(" + ",".join(f"{v:.17g}" for v in direction[:, i] * spacing[i]) + ")"
                    for i in range(3))
    layered = n_layers > 1
    header = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        "type: unsigned char",
        f"dimension: {4 if layered else 3}",
        "space: left-posterior-superior",
        "sizes: " + " ".join(map(str, [n_layers] * layered + list(data.shape[:3][::-1]))),
        "space directions: " + ("none " if layered else "") + axes,
        "kinds: " + ("list " if layered else "") + "domain domain domain",
        "encoding: gzip",
        "space origin: (" + ",".join(f"{v:.17g}" for v in origin) + ")",
    ]
    for i, (name, mask, (layer, value)) in enumerate(zip(names, masks, placement, strict=True)):
        z, y, x = np.nonzero(mask[box])
        extent = " ".join(f"{int(v.min())} {int(v.max())}" for v in (x, y, z))
        header += [f"Segment{i}_Color:=0.5 0.68 0.5", f"Segment{i}_ColorAutoGenerated:=1",
                   f"Segment{i}_Extent:={extent}", f"Segment{i}_ID:=Segment_{i + 1}"]
        if not legacy:
            header += [f"Segment{i}_LabelValue:={value}", f"Segment{i}_Layer:={layer}"]
        header += [f"Segment{i}_Name:={name}", f"Segment{i}_NameAutoGenerated:=0",
                   f"Segment{i}_Tags:=Segmentation.Status:inprogress|TerminologyEntry:"
                   "Segmentation category and type - 3D Slicer General Anatomy list"
                   "~SCT^49755003^Morphologically Altered Structure~SCT^108369006^Neoplasm"
                   "~^^~Anatomic codes - DICOM master list~^^~^^|"]
    header += [
        "Segmentation_ContainedRepresentationNames:=Binary labelmap|Closed surface|",
        "Segmentation_ConversionParameters:=Collapse labelmaps|1|Merge the labelmaps into as "
        "few shared labelmaps as possible 1 = created labelmaps will be shared if possible "
        "without overwriting each other.&Compute surface normals|1|Compute surface normals. 1 "
        "(default) = surface normals are computed. 0 = surface normals are not computed "
        "(slightly faster but produces less smooth surface display).",
        "Segmentation_MasterRepresentation:=Binary labelmap",
        "Segmentation_ReferenceImageExtentOffset:=" + " ".join(map(str, start[::-1])),
    ]
    body = data if layered else data[..., 0]
    path.write_bytes(("\n".join(header) + "\n\n").encode()
                     + gzip.compress(np.ascontiguousarray(body).tobytes()))
    return path
