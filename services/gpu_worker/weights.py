"""ImageNet weights for offline workstations: check a carried-in file, put it in the cache.

torchvision publishes ResNet50's IMAGENET1K_V2 weights at a URL whose file name carries the
first hex digits of the file's SHA-256 (``resnet50-11ad3fa6.pth``); ``torch.hub`` checks that
prefix when it downloads, and looks for the file in ``$TORCH_HOME/hub/checkpoints/``. A file
copied from a machine with internet access is checked the same way here and put where
torchvision (and so ``cnn.weights: imagenet``) finds it, without any download.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torchvision

# torchvision's published ResNet50 IMAGENET1K_V2 file (.../resnet50-11ad3fa6.pth).
IMAGENET_URL: str = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
_CHUNK = 1 << 20


class WeightsFileError(ValueError):
    """A weights file that is not the published one; the message says what to do."""


def published_name(url: str = IMAGENET_URL) -> tuple[str, str]:
    """The published file name and the SHA-256 prefix it carries (torch.hub's HASH_REGEX)."""
    name = url.rsplit("/", 1)[-1]
    match = re.search(r"-([a-f0-9]+)\.", name)
    if match is None:
        raise ValueError(f"{url}: no checksum in the file name")
    return name, match.group(1)


def cache_dir() -> Path:
    """Where torchvision looks for downloaded weights ($TORCH_HOME/hub/checkpoints)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class WeightsStatus:
    """What the cache holds for the ImageNet weights."""

    path: Path
    present: bool
    size: int = 0
    checksum_ok: bool = False
    sha256: str = ""


def status(url: str = IMAGENET_URL) -> WeightsStatus:
    """Whether torchvision's cache holds the published file, and whether it checks out."""
    name, prefix = published_name(url)
    path = cache_dir() / name
    if not path.is_file():
        return WeightsStatus(path, False)
    digest = sha256(path)
    return WeightsStatus(path, True, path.stat().st_size, digest.startswith(prefix), digest)


def install(source: Path, url: str = IMAGENET_URL) -> Path:
    """Check ``source`` against the published checksum and copy it into torchvision's cache.

    Raises :class:`WeightsFileError` (nothing is copied) when it is not the published file.
    """
    name, prefix = published_name(url)
    if not source.is_file():
        raise WeightsFileError(f"{source}: no such file")
    digest = sha256(source)
    if not digest.startswith(prefix):
        raise WeightsFileError(
            f"{source} is not torchvision's ResNet50 IMAGENET1K_V2 file: its SHA-256 begins "
            f"{digest[:len(prefix)]}, the published file's begins {prefix} ({url}); download "
            "that file on a machine with internet access and copy it here unchanged (or give "
            "your own weights with --weights PATH, which are used as they are)")
    target = cache_dir() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
