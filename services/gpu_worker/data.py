"""Max slices from the store as network input: intensity scaling, resizing and augmentation.

Intensity scaling (documented choice; the paper gives none): each slice's image channel is
windowed to its own 0.5th-99.5th percentile range, mapped to [0, 1] and kept as uint8
(0..255), i.e. what a radiologist's PNG export of the slice would hold, which is the kind of
input ImageNet weights were trained on. Percentile windowing removes the arbitrary MR units
(N4-corrected intensities differ between scanners) and ignores the few extreme voxels. The
grey slice is then replicated to three channels and normalised with the ImageNet mean and
standard deviation. The mask channel is not given to the network; Grad-CAM uses it.

The whole data set lives on the device as one uint8 tensor; augmentation (training only) runs
there in batch: random horizontal and vertical flips, rotation within +/-15 degrees, zoom
0.9-1.1, shift within +/-6% of the side (one affine_grid/grid_sample call), then contrast
0.85-1.15 and brightness +/-0.08. Its random numbers come in as a tensor, so the caller draws
them with a seeded generator (and a captured CUDA graph can read them from a fixed buffer).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.functional import affine_grid, grid_sample, interpolate

from dtlr.shared import manifest
from dtlr.shared.store import Store

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WINDOW_PERCENTILES = (0.5, 99.5)
N_AUG = 8  # uniform random numbers per image consumed by :func:`augment`
MAX_ROTATION_DEG = 15.0
MAX_ZOOM = 0.10
MAX_SHIFT = 0.06  # fraction of the side (affine_grid coordinates span 2 per side)
MAX_CONTRAST = 0.15
MAX_BRIGHTNESS = 0.08
_CHUNK = 256  # slices prepared per device transfer: bounds memory for large cohorts


@dataclass(frozen=True)
class SliceRef:
    """One max-slice file of the store and the patient's label (None when unlabelled)."""

    cohort: str
    patient_id: str
    reader: int
    key: str
    path: Path
    label: int | None


def cohort_labels(store: Store, cohort: str) -> dict[str, int | None]:
    """patient_id -> label (1 = high grade) from the cohort's manifest; None where unknown."""
    table = manifest.load(store, cohort)
    return {pid: (None if pd.isna(lab) else int(lab))
            for pid, lab in zip(table["patient_id"], table["label"], strict=True)}


def list_slices(store: Store, cohort: str, readers: Iterable[int] = (1,),
                patient_ids: Iterable[str] | None = None) -> list[SliceRef]:
    """The cohort's max-slice files for ``readers``, for patients of its manifest, sorted."""
    labels = cohort_labels(store, cohort)
    wanted = set(labels) if patient_ids is None else set(patient_ids) & set(labels)
    refs = [SliceRef(cohort, pid, reader, key, path, labels[pid])
            for reader in readers
            for pid, key, path in store.keyed_files(store.maxslice_dir(cohort, reader), ".npy")
            if pid in wanted]
    return sorted(refs, key=lambda r: (r.patient_id, r.reader))


def _load_one(ref: SliceRef) -> np.ndarray | str:
    """The (2, H, W) float32 array of one file, or the reason it cannot be used."""
    try:
        arr = np.load(ref.path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        return f"cannot read {ref.path}: {exc}"
    if arr.ndim != 3 or arr.shape[0] != 2 or arr.shape[1] != arr.shape[2]:
        return (f"{ref.path} has shape {arr.shape}; a max slice is (2, size, size) "
                "(image, mask): re-run the extraction stage")
    if not np.isfinite(arr[0]).all():
        return f"{ref.path} holds NaN or infinite intensities: re-run the extraction stage"
    return arr.astype(np.float32, copy=False)


def read_slices(refs: Sequence[SliceRef], threads: int = 8) -> tuple[np.ndarray, list[str | None]]:
    """Stack the files into (N, 2, H, W) float32; per file, None or the reason it failed.

    A failed file leaves zeros in its place, so one bad patient never stops a cohort.
    """
    with ThreadPoolExecutor(max(1, min(threads, len(refs)))) as pool:
        loaded = list(pool.map(_load_one, refs))
    shapes = [a.shape for a in loaded if not isinstance(a, str)]
    shape = max(set(shapes), key=shapes.count) if shapes else (2, 1, 1)
    out = np.zeros((len(refs), *shape), np.float32)
    problems: list[str | None] = []
    for i, a in enumerate(loaded):
        if isinstance(a, str):
            problems.append(a)
        elif a.shape != shape:
            problems.append(f"{refs[i].path} has shape {a.shape} but the cohort's slices are "
                            f"{shape}: re-run the extraction stage with one max-slice size")
        else:
            out[i] = a
            problems.append(None)
    return out, problems


def scale_to_uint8(raw: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 2, H, W) raw slices -> (N, 1, size, size) uint8: percentile window, resize, quantise."""
    image = raw[:, :1].float()
    flat = image.flatten(1)
    n = flat.shape[1]
    k_lo = max(1, round(WINDOW_PERCENTILES[0] / 100 * n))
    k_hi = max(1, round(WINDOW_PERCENTILES[1] / 100 * n))
    lo = flat.kthvalue(k_lo, dim=1).values.view(-1, 1, 1, 1)
    hi = flat.kthvalue(k_hi, dim=1).values.view(-1, 1, 1, 1)
    scaled = ((image - lo) / (hi - lo).clamp_min(1e-6)).clamp_(0, 1)
    if scaled.shape[-1] != size:
        scaled = interpolate(scaled, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False).clamp_(0, 1)
    return scaled.mul_(255).round_().to(torch.uint8)


def load_images(refs: Sequence[SliceRef], size: int, device: torch.device,
                threads: int = 8) -> tuple[torch.Tensor, list[str | None]]:
    """Read, scale and resize slices onto ``device`` as one (N, 1, size, size) uint8 tensor."""
    chunks, problems = [], []
    for start in range(0, len(refs), _CHUNK):
        raw, probs = read_slices(refs[start:start + _CHUNK], threads)
        chunks.append(scale_to_uint8(torch.from_numpy(raw).to(device), size))
        problems += probs
    if not chunks:
        return torch.zeros((0, 1, size, size), dtype=torch.uint8, device=device), []
    return torch.cat(chunks), problems


@functools.cache
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, 3, 1, 1) tensors, made once per device: a host-to-device copy per
    step would synchronise, and is not allowed inside a CUDA graph capture."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    return mean, torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)


def normalise(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (or [0, 1] float) (N, 1, S, S) -> ImageNet-normalised float (N, 3, S, S)."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    mean, std = _imagenet_stats(x.device)
    x = (x.expand(-1, 3, -1, -1) - mean) / std
    return x.contiguous(memory_format=torch.channels_last if channels_last
                        else torch.contiguous_format)


def augment(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Random flips, rotation, zoom, shift, contrast and brightness of a [0, 1] float batch.

    ``u`` is (B, N_AUG) uniform [0, 1) numbers; every operation is batched and branch-free
    (no host synchronisation), so it can run inside a captured CUDA graph.
    """
    fx = torch.where(u[:, 0] < 0.5, -1.0, 1.0)
    fy = torch.where(u[:, 1] < 0.5, -1.0, 1.0)
    angle = (u[:, 2] * 2 - 1) * math.radians(MAX_ROTATION_DEG)
    zoom = 1 + (u[:, 3] * 2 - 1) * MAX_ZOOM
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift = (u[:, 4:6] * 2 - 1) * (2 * MAX_SHIFT)
    # Output -> input sampling coordinates: rotate(angle) @ flip(fx, fy) / zoom, then shift.
    theta = torch.stack([torch.stack([cos * fx, -sin * fy, shift[:, 0]], 1),
                         torch.stack([sin * fx, cos * fy, shift[:, 1]], 1)], 1)
    grid = affine_grid(theta, list(images.shape), align_corners=False)
    out = grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                      align_corners=False)
    contrast = (1 + (u[:, 6] * 2 - 1) * MAX_CONTRAST).view(-1, 1, 1, 1)
    brightness = ((u[:, 7] * 2 - 1) * MAX_BRIGHTNESS).view(-1, 1, 1, 1)
    return ((out - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)


def split_validation(refs: Sequence[SliceRef], fraction: float,
                     seed: int) -> tuple[list[SliceRef], list[SliceRef]]:
    """Stratified split of labelled training-cohort slices into (fit, validation), seeded.

    At least one slice of each grade goes to validation when the grade has two or more, so the
    validation AUC is defined.
    """
    fit: list[SliceRef] = []
    val: list[SliceRef] = []
    for label in (0, 1):
        group = sorted((r for r in refs if r.label == label), key=lambda r: r.patient_id)
        order = np.random.default_rng([seed, label]).permutation(len(group))
        n_val = min(len(group) - 1, max(1, round(fraction * len(group)))) if group else 0
        val += [group[i] for i in order[:n_val]]
        fit += [group[i] for i in order[n_val:]]
    order_key = attrgetter("cohort", "patient_id")
    return sorted(fit, key=order_key), sorted(val, key=order_key)
