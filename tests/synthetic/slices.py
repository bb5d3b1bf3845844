"""Synthetic max slices written through the real Store API, for the benchmark and the tests.

Not a phantom of the head (the demo generator is shared/phantom.py): a (2, S, S) slice centred
on a bright tumour with a mask, in MR-like units. High grade tends to be lobulated,
heterogeneous with dark necrotic foci and surrounded by darker oedema; low grade round and
homogeneous; each finding is drawn with a grade-dependent probability, so the task is learnable
but not trivial. Used where only max slices matter (fine-tuning, embedding, Grad-CAM).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import ndimage

from dtlr.shared.hashing import content_key
from dtlr.shared.store import Store


def _smooth_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-smoothed noise."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    return (field - field.mean()) / (field.std() + 1e-9)


def synthetic_slice(rng: np.random.Generator, high_grade: bool, size: int = 224) -> np.ndarray:
    """One (2, size, size) float32 max slice: image (MR-like units) and tumour mask (0/1)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size - 0.5
    cy, cx = rng.uniform(-0.04, 0.04, 2)
    radius = rng.uniform(0.26, 0.34)
    theta = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot(yy - cy, xx - cx)
    p = 0.8 if high_grade else 0.2
    lobes = rng.integers(3, 7)
    wobble = 0.16 * np.sin(lobes * theta + rng.uniform(0, 2 * np.pi)) if rng.random() < p else 0
    edge = radius * (1 + wobble + 0.03 * np.sin(2 * theta + rng.uniform(0, 2 * np.pi)))
    mask = dist <= edge
    image = 820 + 90 * _smooth_field(rng, size, size / 16)
    if rng.random() < p:  # peritumoral oedema: a darker rim outside the tumour
        image = np.where((dist > edge) & (dist <= edge + 0.07), 560 + 40 * _smooth_field(
            rng, size, size / 32), image)
    tumour = 1900 + 60 * _smooth_field(rng, size, size / 24)
    if rng.random() < p:  # heterogeneous enhancement with necrotic foci
        tumour += 260 * _smooth_field(rng, size, size / 48)
        for _ in range(rng.integers(1, 4)):
            fy, fx = rng.uniform(-0.5, 0.5, 2) * radius * 0.8 + (cy, cx)
            tumour = np.where(np.hypot(yy - fy, xx - fx) < radius * rng.uniform(0.12, 0.25),
                              650.0, tumour)
    image = np.where(mask, tumour, image) + rng.normal(0, 25, (size, size))
    return np.stack([image, mask]).astype(np.float32)


def reader2_mask(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A second reader's outline: the first one grown or shrunk by 1-2 pixels."""
    steps = int(rng.integers(1, 3))
    op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
    return op(mask > 0.5, iterations=steps).astype(np.float32)


def write_cohort(store: Store, cohort: str, n: int, seed: int, size: int = 224,
                 n_reader2: int = 0, high_fraction: float = 0.5) -> pd.DataFrame:
    """Register a synthetic cohort (manifest + reader 1 and 2 max slices) in ``store``."""
    rng = np.random.default_rng(seed)
    n_high = round(n * high_fraction)
    labels = rng.permutation(np.r_[np.ones(n_high, int), np.zeros(n - n_high, int)])
    ids = [f"{cohort}-{i:04d}" for i in range(n)]
    for i, (pid, label) in enumerate(zip(ids, labels, strict=True)):
        arr = synthetic_slice(rng, bool(label), size)
        store.write_array(arr, store.maxslice_path(
            cohort, 1, pid, content_key("synthetic", cohort, pid, seed, size, 1)))
        if i < n_reader2:
            arr2 = np.stack([arr[0], reader2_mask(rng, arr[1])])
            store.write_array(arr2, store.maxslice_path(
                cohort, 2, pid, content_key("synthetic", cohort, pid, seed, size, 2)))
    table = pd.DataFrame({
        "cohort": cohort, "patient_id": ids,
        "image": [f"synthetic://{cohort}/{pid}" for pid in ids],
        "mask": [f"synthetic://{cohort}/{pid}/mask" for pid in ids],
        "mask_reader2": [f"synthetic://{cohort}/{pid}/mask2" if i < n_reader2 else None
                         for i, pid in enumerate(ids)],
        "grade": pd.array(np.where(labels == 1, 2, 1), dtype="Int8"),
        "label": pd.array(labels, dtype="Int8"),
    })
    store.write_table(pa.Table.from_pandas(table, preserve_index=False),
                      store.manifest_path(cohort), {"source": "synthetic", "seed": seed})
    return table
