"""Input pipeline: percentile scaling, batched augmentation, reading slices, profiles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dtlr.services.gpu_worker.data import (
    N_AUG,
    augment,
    list_slices,
    load_images,
    normalise,
    scale_to_uint8,
)
from dtlr.services.gpu_worker.profiles import PAPER, QUICK, resolve
from dtlr.shared.config import CNNSettings
from dtlr.shared.store import Store


def test_scaling_windows_each_slice_to_its_percentiles() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (64, 64)).astype(np.float32)
    image[0, 0], image[0, 1] = -1e4, 1e4  # outliers are clipped, not stretched to
    raw = torch.from_numpy(np.stack([np.stack([image, np.zeros_like(image)]),
                                     np.stack([image * 3 + 7, np.zeros_like(image)])]))
    out = scale_to_uint8(raw, 64)
    assert out.dtype == torch.uint8 and out.shape == (2, 1, 64, 64)
    assert torch.equal(out[0], out[1])  # affine intensity changes do not matter
    assert out.min() == 0 and out.max() == 255
    assert scale_to_uint8(raw, 32).shape == (2, 1, 32, 32)
    flat = scale_to_uint8(torch.zeros(1, 2, 16, 16), 16)
    assert int(flat.max()) == 0


def test_normalise_replicates_to_three_imagenet_channels() -> None:
    x = torch.full((2, 1, 8, 8), 124, dtype=torch.uint8)
    out = normalise(x, channels_last=True)
    assert out.shape == (2, 3, 8, 8) and out.is_contiguous(memory_format=torch.channels_last)
    expected = (124 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    assert torch.allclose(out[0, :, 0, 0], expected)


def test_augmentation_is_batched_seeded_and_exact_at_the_identity() -> None:
    x = torch.rand(4, 1, 16, 16)
    identity = torch.full((4, N_AUG), 0.5)
    assert torch.allclose(augment(x, identity), x, atol=1e-5)
    flip = identity.clone()
    flip[:, 0] = 0.0  # horizontal flip only
    assert torch.allclose(augment(x, flip), x.flip(-1), atol=1e-5)
    flip[:, 1] = 0.0  # and vertical
    assert torch.allclose(augment(x, flip), x.flip(-1).flip(-2), atol=1e-5)
    u = torch.rand(4, N_AUG, generator=torch.Generator().manual_seed(3))
    out = augment(x, u)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, augment(x, u))
    assert not torch.allclose(out, x)


def test_reading_slices_reports_bad_files(tmp_path: Path,
                                          make_store: Callable[..., Store]) -> None:
    store = make_store(tmp_path)
    refs = list_slices(store, "train", readers=(1, 2))
    assert sum(r.reader == 2 for r in refs) == 4
    assert all(r.label in (0, 1) for r in refs)
    refs[0].path.write_bytes(b"not a numpy file")
    images, problems = load_images(refs, 32, torch.device("cpu"))
    assert images.shape == (len(refs), 1, 32, 32)
    assert problems[0] and str(refs[0].path) in problems[0]
    assert not any(problems[1:])


def test_profiles() -> None:
    assert (PAPER.epochs, PAPER.batch_size, PAPER.lr, PAPER.image_size) == (30, 32, 0.01, 224)
    cpu = resolve(CNNSettings(device="cpu"))
    assert cpu.profile == QUICK and cpu.precision == "fp32" and not cpu.cuda_graph
    assert cpu.threads == 1 and torch.get_num_threads() == 1
    custom = resolve(CNNSettings(device="cpu", profile="paper", epochs=3, threads=2))
    assert custom.profile.epochs == 3 and custom.profile.image_size == 224
    assert custom.threads == 2 and torch.get_num_threads() == 2
    resolve(CNNSettings(device="cpu"))
