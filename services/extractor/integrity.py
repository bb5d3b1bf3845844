"""Image integrity before extraction: refuse damage that SimpleITK would read without a word.

What SimpleITK 2.5 (ITK 5.4) does by itself with damaged files (tests/extractor/test_integrity.py
holds the evidence) and what is checked here:

=====================  ==========================  ==========================  ===================
format                 damage                      SimpleITK alone             here
=====================  ==========================  ==========================  ===================
NIfTI .nii (.hdr/.img) data shorter than declared  reads the rest as zeros     refused (length)
NIfTI .nii.gz          stream cut short            zeros, or reads it whole    refused (end marker)
NIfTI .nii.gz          corrupted bytes             wrong voxels                refused (CRC-32)
NIfTI (float voxels)   NaN or Inf voxels           reads them as zeros         refused (data scan)
NRRD raw / gzip        data shorter than declared  refuses                     (SimpleITK's error)
NRRD gzip / bzip2      corrupted bytes, cut end    reads most of them          refused (CRC)
MHA / MHD raw, zlib    data shorter than declared  refuses, "No such file"     refused (length)
MHA / MHD zlib         corrupted bytes             wrong voxels                refused (Adler-32)
NIfTI-2                any                         cannot read the format      (SimpleITK's error)
any file, DICOM        header declares 1000^3      allocates it all            refused from header
DICOM series           missing, duplicated or      one warning on stderr       refused, positions
                       unevenly spaced slices
NRRD, MHA, DICOM       NaN or Inf voxels           reads them                  refused
any                    one value everywhere        reads it                    refused
=====================  ==========================  ==========================  ===================

Every check reads headers, or streams compressed data in 1 MiB pieces, before SimpleITK
allocates the volume; each problem is an :class:`~dtlr.shared.stage.InputError` naming the
file, what is wrong and the fix.
"""

from __future__ import annotations

import bz2
import gzip
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

from dtlr.shared.stage import InputError

CHUNK = 1 << 20  # bytes read (and decompressed) at a time: memory stays flat whatever the file
# Slice gaps of a DICOM series may differ from their median by this fraction (1 %): positions
# are written with about 6 significant digits, so rounding moves gaps by far less, while a
# slice acquired apart from the others (or a gap) moves them by much more.
SLICE_GAP_TOLERANCE = 0.01
RECOPY = "copy it again from its source (the transfer or export was interrupted), then re-submit"


def _name(path: Path) -> str:
    return path.name.lower()


# --- declared size ------------------------------------------------------------------------


def check_voxel_cap(path: Path, size: Sequence[int], components: int, max_voxels: int,
                    source: str = "its header declares") -> None:
    """Refuse a volume whose declared voxel count exceeds ``max_voxels`` (nothing allocated)."""
    voxels = math.prod(int(s) for s in size) * max(1, int(components))
    if voxels > max_voxels:
        dims = " x ".join(str(int(s)) for s in size)
        extra = f" x {components} components" if components > 1 else ""
        raise InputError(
            f"{path}: {source} {dims}{extra} voxels ({voxels / 1e6:,.0f} million, "
            f"{voxels * 4 / 2**30:,.1f} GiB as 32-bit floats), more than preprocess.max_voxels "
            f"({max_voxels:,}); a header this size on a small file is damaged: {RECOPY}; a "
            "volume really this large: crop or downsample it, or raise preprocess.max_voxels "
            "where the workers have the memory")


def check_declared_size(path: Path, max_voxels: int) -> None:
    """Read only the header of an image file and refuse it above ``max_voxels``."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    check_voxel_cap(path, reader.GetSize(), reader.GetNumberOfComponents(), max_voxels)


# --- compressed streams -------------------------------------------------------------------


class _StreamError(Exception):
    """A compressed stream that ends early or fails its checksum (message: what happened)."""


Sink = Callable[[bytes], None]


def _count(read: Callable[[int], bytes], sink: Sink | None) -> int:
    n = 0
    while chunk := read(CHUNK):
        n += len(chunk)
        if sink is not None:
            sink(chunk)
    return n


def _stream_length(path: Path, offset: int, codec: str, sink: Sink | None = None) -> int:
    """Bytes the stream at ``offset`` of ``path`` holds, decompressed, each piece fed to ``sink``.

    ``codec`` "raw" reads the bytes as they are. Raises _StreamError when a compressed stream
    stops before its end marker (a cut file) or fails its checksum (CRC-32 for gzip and bzip2,
    Adler-32 for zlib): corrupted bytes.
    """
    with open(path, "rb") as raw:
        raw.seek(offset)
        try:
            if codec == "raw":
                return _count(raw.read, sink)
            if codec == "gzip":
                with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                    return _count(gz.read, sink)
            if codec == "bzip2":
                with bz2.BZ2File(raw, mode="rb") as bz:
                    return _count(bz.read, sink)
            return _zlib_length(raw, sink)
        except EOFError as exc:
            raise _StreamError("the compressed data stops before its end marker: the file "
                               "was cut short") from exc
        except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise _StreamError(f"the compressed data is corrupted ({exc}): the voxels read "
                               "from it would be wrong") from exc


def _zlib_length(raw: BinaryIO, sink: Sink | None) -> int:
    inflate = zlib.decompressobj()
    n = 0
    while not inflate.eof and (data := raw.read(CHUNK)):
        while data and not inflate.eof:
            out = inflate.decompress(data, CHUNK)
            n += len(out)
            if sink is not None:
                sink(out)
            data = inflate.unconsumed_tail
    if not inflate.eof:
        raise EOFError("zlib stream ended early")
    return n


def _decompressed_length(path: Path, offset: int, codec: str, named: str = "",
                         sink: Sink | None = None) -> int:
    """Decompressed length, or InputError naming the damage and the fix."""
    try:
        return _stream_length(path, offset, codec, sink)
    except _StreamError as exc:
        raise InputError(f"{named or path}: {exc}; {RECOPY}") from exc


def _named(path: Path, data_file: Path) -> str:
    """How messages name a file whose data may lie in another file (.mhd/.raw, .hdr/.img)."""
    return str(path) if data_file == path else f"{path} (its data file {data_file.name})"


def _short(path: str, declared: str, need: int, have: int, zeros: bool = True) -> InputError:
    consequence = " (SimpleITK would read the missing voxels as zeros)" if zeros else ""
    return InputError(
        f"{path}: the file is cut short: its header declares {declared} ({need:,} bytes of "
        f"data) but it holds only {max(have, 0):,} ({100 * max(have, 0) / need:.0f} %)"
        f"{consequence}; {RECOPY}")


# --- NIfTI --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NiftiHeader:
    """What the integrity check needs from a NIfTI-1 or NIfTI-2 header."""

    version: int
    shape: tuple[int, ...]
    bitpix: int
    vox_offset: int
    datatype: int = 0
    endian: str = "<"

    @property
    def float_dtype(self) -> np.dtype | None:
        """The voxels' floating-point type (NIFTI_TYPE_FLOAT32/64), None for other types."""
        kind = {16: "f4", 64: "f8"}.get(self.datatype)
        return np.dtype(self.endian + kind) if kind else None

    @property
    def data_bytes(self) -> int:
        return math.ceil(math.prod(self.shape) * self.bitpix / 8)

    def describe(self) -> str:
        return f"{' x '.join(map(str, self.shape))} voxels of {self.bitpix} bits"


def parse_nifti_header(head: bytes) -> NiftiHeader | None:
    """The header's dimensions, voxel size and data offset; None if this is no NIfTI header."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack_from(endian + "i", head, 0)[0] == 348:
            version = 1
            dim = struct.unpack_from(endian + "8h", head, 40)
            datatype, bitpix = struct.unpack_from(endian + "2h", head, 70)
            offset = struct.unpack_from(endian + "f", head, 108)[0]
            break
        if len(head) >= 540 and struct.unpack_from(endian + "i", head, 0)[0] == 540:
            version = 2
            datatype, bitpix = struct.unpack_from(endian + "2h", head, 12)
            dim = struct.unpack_from(endian + "8q", head, 16)
            offset = struct.unpack_from(endian + "q", head, 168)[0]
            break
    else:
        return None
    ndim = dim[0]
    if (not 1 <= ndim <= 7 or any(d < 1 for d in dim[1:ndim + 1]) or bitpix <= 0
            or not math.isfinite(offset) or offset < 0):
        return None  # a header this check does not understand: SimpleITK decides
    return NiftiHeader(version, tuple(int(d) for d in dim[1:ndim + 1]), int(bitpix), int(offset),
                       int(datatype), endian)


def _nifti_files(path: Path) -> tuple[Path, Path] | None:
    """(header file, data file) of a NIfTI single file or .hdr/.img pair; None if neither."""
    name = _name(path)
    if name.endswith((".nii", ".nii.gz")):
        return path, path
    for hdr, img in ((".hdr", ".img"), (".hdr.gz", ".img.gz"), (".hdr", ".img.gz")):
        if name.endswith(hdr):
            return path, path.with_name(path.name[: -len(hdr)] + img)
        if name.endswith(img):
            return path.with_name(path.name[: -len(img)] + hdr), path
    return None


def _read_head(path: Path, n: int) -> bytes:
    if _name(path).endswith(".gz"):
        try:
            with gzip.open(path, "rb") as gz:
                return gz.read(n)
        except (OSError, EOFError, zlib.error):
            return b""  # unreadable: SimpleITK's own error will say so
    with open(path, "rb") as f:
        return f.read(n)


def nifti_version(path: Path) -> int | None:
    """1 or 2 for a NIfTI file (or pair) with a header this module understands, else None."""
    files = _nifti_files(path)
    if files is None or not files[0].is_file():
        return None
    header = parse_nifti_header(_read_head(files[0], 540))
    return header.version if header else None


class _NonFinite:
    """Counts NaN and Inf values of ``dtype`` in bytes [start, start + length) of a stream fed
    to it piece by piece (see :func:`_stream_length`)."""

    def __init__(self, dtype: np.dtype, start: int, length: int) -> None:
        self.dtype, self.start, self.end = dtype, start, start + length
        self.at = 0  # stream position of the next byte fed
        self.carry = b""  # bytes of a value split between pieces
        self.nan = self.inf = 0
        self.first: int | None = None  # flat index of the first non-finite value

    def __call__(self, chunk: bytes) -> None:
        lo, hi = max(self.start - self.at, 0), min(self.end - self.at, len(chunk))
        self.at += len(chunk)
        if hi <= lo:
            return
        data = self.carry + chunk[lo:hi]
        usable = len(data) - len(data) % self.dtype.itemsize
        self.carry = data[usable:]
        values = np.frombuffer(data[:usable], self.dtype)
        bad = ~np.isfinite(values)
        if bad.any():
            done = (self.at - len(chunk) + hi - self.start - len(data)) // self.dtype.itemsize
            if self.first is None:
                self.first = done + int(np.argmax(bad))
            n_nan = int(np.isnan(values).sum())
            self.nan += n_nan
            self.inf += int(bad.sum()) - n_nan


def non_finite_error(path: str | Path, n_nan: int, n_inf: int, total: int,
                     first: tuple[int, ...], note: str = "") -> InputError:
    """The refusal of an image holding NaN or Inf voxels."""
    return InputError(
        f"{path}: {n_nan:,} NaN and {n_inf:,} infinite voxels (of {total:,}; the first at voxel "
        f"{first}){note}: features computed from them would be wrong; re-export the image "
        "without NaN/Inf (e.g. replace them by 0 outside the head, or fix the step that "
        "produced them), then re-submit")


def check_nifti(path: Path) -> None:
    """Refuse a NIfTI file whose data is shorter than its header declares, damaged, or (float
    voxels) holding NaN or Inf, which SimpleITK's NIfTI reader turns into zeros."""
    files = _nifti_files(path)
    if files is None or not all(p.is_file() for p in files):
        return
    header_file, data_file = files
    header = parse_nifti_header(_read_head(header_file, 540))
    if header is None:
        return
    need = header.vox_offset + header.data_bytes
    named = _named(path, data_file)
    dtype = header.float_dtype
    scan = _NonFinite(dtype, header.vox_offset, header.data_bytes) if dtype else None
    codec = "gzip" if _name(data_file).endswith(".gz") else "raw"
    if codec == "raw" and scan is None:
        have = data_file.stat().st_size
    else:
        have = _decompressed_length(data_file, 0, codec, named, scan)
    if have < need:
        raise _short(named, header.describe(), header.data_bytes, have - header.vox_offset)
    if scan is not None and scan.first is not None:
        nx = (*header.shape, 1, 1)[:3]
        x, rest = scan.first % nx[0], scan.first // nx[0]
        first = (x, rest % nx[1], rest // nx[1])
        raise non_finite_error(named, scan.nan, scan.inf, math.prod(header.shape), first,
                               " (SimpleITK's NIfTI reader would read them as zeros)")


# --- NRRD ---------------------------------------------------------------------------------


def _text_header(path: Path, end: Callable[[str], bool], limit: int = 1 << 20
                 ) -> tuple[list[str], int] | None:
    """Lines of a text header up to (and including) the line where ``end`` is true.

    Returns the lines and the byte offset just after them, or None when no such line comes
    within ``limit`` bytes (a file this check does not understand).
    """
    lines: list[str] = []
    with open(path, "rb") as f:
        while f.tell() < limit:
            raw = f.readline(limit)
            if not raw:
                return None
            line = raw.decode("latin-1").rstrip("\r\n")
            lines.append(line)
            if end(line):
                return lines, f.tell()
    return None


def check_nrrd(path: Path) -> None:
    """Refuse a gzip or bzip2 NRRD whose stream ends early or fails its checksum.

    SimpleITK refuses NRRD data shorter than declared by itself; it does not check the
    stream's checksum, and read 2 of 20 files with one corrupted byte as wrong voxels.
    """
    parsed = _text_header(path, lambda line: line == "")
    if parsed is None or not parsed[0][0].startswith("NRRD"):
        return
    lines, offset = parsed
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        fields[key.strip().lower()] = value.strip()
    codec = {"gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}.get(
        fields.get("encoding", "").lower())
    if codec is None or fields.get("line skip", "0") != "0":
        return
    data_file = path
    detached = fields.get("data file") or fields.get("datafile")
    if detached:
        if detached.startswith("LIST") or " " in detached:
            return  # several data files: SimpleITK checks their lengths
        data_file, offset = path.parent / detached, 0
        if not data_file.is_file():
            return
    _decompressed_length(data_file, offset, codec, _named(path, data_file))


# --- MetaImage ----------------------------------------------------------------------------

_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
              "MET_UINT": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def check_metaimage(path: Path) -> None:
    """Refuse an MHA/MHD whose data is shorter than declared, or whose zlib stream is damaged.

    SimpleITK refuses short data by itself, but says "No such file or directory"; it reads a
    compressed file with corrupted bytes without checking the stream's Adler-32 checksum.
    """
    parsed = _text_header(path, lambda line: line.split("=")[0].strip() == "ElementDataFile")
    if parsed is None:
        return
    lines, offset = parsed
    fields = {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in lines)}
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        need = (math.prod(dims) * int(fields.get("ElementNumberOfChannels", "1"))
                * _MET_BYTES[fields["ElementType"]])
    except (KeyError, ValueError):
        return
    data = fields["ElementDataFile"]
    data_file = path
    if data != "LOCAL":
        if data.startswith("LIST") or " " in data:
            return
        data_file, offset = path.parent / data, 0
        if not data_file.is_file():
            return
    compressed = fields.get("CompressedData", "False").lower() == "true"
    named = _named(path, data_file)
    if compressed:
        have = _decompressed_length(data_file, offset, "zlib", named)
    else:
        skip = int(fields.get("HeaderSize", "0") or 0) if data != "LOCAL" else 0
        if skip < 0:
            return  # data at the end of the file: its length cannot be short
        have = data_file.stat().st_size - offset - skip
    if have < need:
        declared = f"{' x '.join(map(str, dims))} voxels of {fields['ElementType']}"
        raise _short(named, declared, need, have, zeros=False)


def check_file_data(path: Path) -> None:
    """The data checks for the file's format (no-op for formats SimpleITK checks itself)."""
    name = _name(path)
    if _nifti_files(path) is not None:
        check_nifti(path)
    elif name.endswith((".nrrd", ".nhdr")):
        check_nrrd(path)
    elif name.endswith((".mha", ".mhd")):
        check_metaimage(path)


# --- DICOM series -------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceInfo:
    """One file of a DICOM series: where its slice lies."""

    file: Path
    position: tuple[float, ...] | None  # ImagePositionPatient (0020,0032)
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (0020,0037)
    size: tuple[int, ...]
    components: int


def _floats(text: str) -> tuple[float, ...] | None:
    try:
        return tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None


def slice_info(file: str | Path) -> SliceInfo:
    """A DICOM file's position, orientation and size, from its header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()

    def tag(key: str, n: int) -> tuple[float, ...] | None:
        if not reader.HasMetaDataKey(key):
            return None
        values = _floats(reader.GetMetaData(key))
        return values if values is not None and len(values) == n else None

    return SliceInfo(Path(file), tag("0020|0032", 3), tag("0020|0037", 6),
                     tuple(reader.GetSize()), reader.GetNumberOfComponents())


def _positions_text(positions: Sequence[float], most: int = 24) -> str:
    shown = [f"{p:.3f}".replace("-0.000", "0.000") for p in positions]
    if len(shown) > most:
        shown = [*shown[: most // 2], "...", *shown[-(most // 2):]]
    return ", ".join(shown)


def check_series(folder: Path, files: Sequence[str | Path], max_voxels: int,
                 tolerance: float = SLICE_GAP_TOLERANCE) -> list[SliceInfo]:
    """Refuse a DICOM series that is too large, or whose slices are missing, duplicated or
    unevenly spaced (every message lists the slice positions along the slice normal)."""
    slices = [slice_info(f) for f in files]
    first = slices[0]
    depth = len(slices) if len(slices) > 1 else (first.size[2] if len(first.size) > 2 else 1)
    check_voxel_cap(folder, (*first.size[:2], depth), first.components, max_voxels,
                    f"its {len(slices)} DICOM files declare")
    if len(slices) < 2:
        return slices
    fix_export = ("re-export the whole series from the scanner or PACS into its own folder, "
                  "then re-submit")
    for s in slices:
        if s.position is None or s.orientation is None:
            raise InputError(f"{folder}: DICOM file {s.file.name} has no valid "
                             "ImagePositionPatient (0020,0032) or ImageOrientationPatient "
                             "(0020,0037), so its slice cannot be placed; " + fix_export)
        if s.size[:2] != first.size[:2]:
            raise InputError(f"{folder}: DICOM file {s.file.name} is {s.size[0]} x {s.size[1]} "
                             f"but {first.file.name} is {first.size[0]} x {first.size[1]}: the "
                             "folder mixes images of different series; " + fix_export)
        if not np.allclose(s.orientation, first.orientation, atol=1e-4):
            raise InputError(f"{folder}: DICOM files {first.file.name} and {s.file.name} have "
                             f"different orientations ({first.orientation} vs {s.orientation}): "
                             "the folder mixes acquisitions (a localizer?); " + fix_export)
    assert first.orientation is not None
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    normal = np.cross(row, col)
    along = sorted((float(np.dot(s.position, normal)), s.file.name) for s in slices
                   if s.position is not None)
    positions = [p for p, _ in along]
    listed = (f"slice positions along the slice normal (mm, {len(positions)} files): "
              f"{_positions_text(positions)}")
    gaps = np.diff(positions)
    real = gaps[gaps > 1e-3]
    if real.size == 0:
        raise InputError(f"{folder}: all {len(slices)} DICOM files lie at one position "
                         f"({positions[0]:.3f} mm): copies of one slice, or a 2-D series; "
                         + fix_export)
    step = float(np.median(real))
    for i, gap in enumerate(gaps):
        (a, fa), (b, fb) = along[i], along[i + 1]
        if gap <= tolerance * step:
            raise InputError(f"{folder}: duplicated slice: DICOM files {fa} and {fb} both lie "
                             f"at {a:.3f} mm ({listed}); remove the duplicate (or give each "
                             "acquisition its own folder), then re-submit")
    for i, gap in enumerate(gaps):
        (a, fa), (b, fb) = along[i], along[i + 1]
        if gap > (1.5 + tolerance) * step:
            missing = round(gap / step) - 1
            raise InputError(f"{folder}: missing slice: {gap:.3f} mm between {fa} ({a:.3f}) and "
                             f"{fb} ({b:.3f}), where slices are {step:.3f} mm apart (about "
                             f"{missing} slice{'s' if missing != 1 else ''} missing; {listed}); "
                             + fix_export)
    uneven = np.abs(gaps - step) > tolerance * step
    if uneven.any():
        i = int(np.argmax(np.abs(gaps - step)))
        (a, fa), (b, fb) = along[i], along[i + 1]
        raise InputError(f"{folder}: unevenly spaced slices: gaps from {gaps.min():.3f} to "
                         f"{gaps.max():.3f} mm (median {step:.3f}; {gaps[i]:.3f} mm between "
                         f"{fa} and {fb}), more than {tolerance:.0%} apart, so a regular grid "
                         f"would misplace them ({listed}); convert the series with a tool that "
                         "resamples variable slice spacing (e.g. dcm2niix), check the result and "
                         "give that file in the manifest")
    return slices


# --- voxel values -------------------------------------------------------------------------


def check_values(image: sitk.Image, path: Path) -> None:
    """Refuse NaN or Inf voxels (anywhere in the volume) and a volume of one value."""
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            n_nan = int(np.isnan(arr).sum())
            first = tuple(int(i) for i in np.argwhere(bad)[0][::-1])  # x, y, z as SimpleITK
            raise non_finite_error(path, n_nan, int(bad.sum()) - n_nan, arr.size, first)
    if arr.size and arr.min() == arr.max():
        raise InputError(f"{path}: every voxel has the same value ({arr.flat[0]}): an empty or "
                         "failed export, not an MR volume; re-export the image, then re-submit")
