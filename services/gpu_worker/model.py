"""ResNet50 with a dropout head; weights from torchvision's cache, a local file, or random init.

The network's 2048-d penultimate features (global average pool of layer4) are the DTL features;
the head (dropout, then one linear unit: the logit of high grade) is what fine-tuning trains
for the task. Random initialisation happens only when ``cnn.weights`` is "random", and is then
recorded in the model's provenance and the report.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from dtlr.services.gpu_worker.data import normalise
from dtlr.services.gpu_worker.profiles import Runtime, deterministic, on_device
from dtlr.shared.hashing import file_digest
from dtlr.shared.store import Store

FEATURES = 2048
IMAGENET = torchvision.models.ResNet50_Weights.IMAGENET1K_V2


class WeightsError(RuntimeError):
    """Initial weights that cannot be used; the message says where they were looked for."""


class DTLNet(nn.Module):
    """torchvision ResNet50 (``backbone``, fc removed) + ``head`` (dropout, linear -> 1 logit)."""

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        # zero_init_residual: each residual block starts as the identity (Goyal et al. 2017), so
        # training from random weights is stable; loaded weights overwrite it.
        self.backbone = torchvision.models.resnet50(weights=None, zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(FEATURES, 1))
        # Zero-initialised head: training starts at loss log(2) and the first steps fit the head
        # on the backbone's features before the backbone moves (linear probe, then fine-tune:
        # Kumar et al., ICLR 2022), which keeps pretrained features from being distorted early.
        nn.init.zeros_(self.head[1].weight)
        nn.init.zeros_(self.head[1].bias)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised images -> (N, 2048, S/32, S/32) layer4 feature map."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised images -> (N, 2048) penultimate features, always fp32.

        The trunk may run under autocast (training on a GPU); the global average pool runs in
        fp32 outside it, so a feature is an fp32 mean of the map rather than a bf16 number
        (bf16 keeps 8 bits: 78 % of feature columns tied across 24 slices).
        """
        fmap = self.trunk(x)
        with torch.autocast(x.device.type, enabled=False):
            return torch.flatten(nn.functional.adaptive_avg_pool2d(fmap.float(), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised images -> (N,) fp32 logits of high grade (head in fp32)."""
        feats = self.features(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.head(feats).squeeze(1)


def weights_identity(weights: str) -> dict[str, str]:
    """What the initial weights are, for the model id and provenance (no download, no load)."""
    if weights == "imagenet":
        return {"source": "imagenet", "name": "ResNet50_Weights.IMAGENET1K_V2",
                "url": IMAGENET.url}
    if weights == "random":
        return {"source": "random"}
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"cnn.weights {weights!r}: no such file; give 'imagenet', 'random' or "
                           "the path of a torchvision ResNet50 state dict (.pth)")
    return {"source": "file", "path": str(path.resolve()), "sha256": file_digest(path)}


def _strip(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A backbone state dict from a torchvision, DataParallel or DTLR checkpoint's keys."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        if not key.startswith(("fc.", "head.")):
            out[key] = value
    return out


def backbone_state(weights: str) -> dict[str, torch.Tensor] | None:
    """The initial backbone weights (None for random initialisation)."""
    if weights == "random":
        return None
    if weights == "imagenet":
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET.url).name
        try:
            return IMAGENET.get_state_dict(progress=False)
        except (OSError, RuntimeError) as exc:
            raise WeightsError(
                f"ImageNet weights (ResNet50_Weights.IMAGENET1K_V2) are not in torchvision's "
                f"cache ({cached}) and could not be downloaded ({exc}); bring {IMAGENET.url} "
                "from a machine with internet access and run `dtlr weights install FILE`, or "
                "set cnn.weights to a local state-dict file (--weights PATH), or to 'random' to "
                "train from scratch (recorded in the report)") from exc
    path = Path(weights).expanduser()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise WeightsError(f"cnn.weights {path}: cannot load it as a state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"cnn.weights {path}: holds a {type(state).__name__}, not a state "
                           "dict; save one with torch.save(model.state_dict(), path)")
    return _strip(state)


DOWNLOAD_TIMEOUT_S = 20  # an offline machine gives up on the ImageNet download this fast


def check_weights(weights: str) -> dict[str, str]:
    """Make sure the initial weights load into ResNet50 (downloading ImageNet's once).

    Raises :class:`WeightsError` with the fix; returns their identity. Runs on the CPU only
    (it never initialises CUDA), so a GPU worker's parent process can answer it.
    """
    identity = weights_identity(weights)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        build_model(weights, dropout=0.5, seed=0)
    finally:
        socket.setdefaulttimeout(previous)
    return identity


def build_model(weights: str, dropout: float, seed: int) -> DTLNet:
    """A DTLNet with seeded initialisation, its backbone loaded from ``weights``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DTLNet(dropout)
    state = backbone_state(weights)
    if state is not None:
        try:
            model.backbone.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"cnn.weights {weights}: not a ResNet50 state dict "
                               f"({str(exc).splitlines()[0]})") from exc
    return model


def save_checkpoint(store: Store, model: DTLNet, path: Path) -> None:
    """The model's state dict (CPU tensors), loadable with torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().to("cpu", copy=True).contiguous()
                for k, v in model.state_dict().items()},
               buffer)
    store.write_bytes(buffer.getvalue(), path)


def load_checkpoint(path: Path, dropout: float) -> DTLNet:
    """A DTLNet in eval mode with the weights of a saved checkpoint."""
    model = DTLNet(dropout)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def batched(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, runtime: Runtime,
            batch_size: int) -> torch.Tensor:
    """``fn`` over normalised batches of a uint8 image tensor: inference mode, fp32, no TF32
    (deterministic kernels), on the runtime's device; so a checkpoint's outputs agree between
    CPU and GPU workers (tests/gpu_worker/test_device.py states the tolerance)."""
    outs = []
    with torch.inference_mode(), on_device(runtime.device), deterministic(runtime.device):
        for start in range(0, images.shape[0], batch_size):
            x = normalise(images[start:start + batch_size], runtime.channels_last)
            outs.append(fn(x).float())
    return torch.cat(outs)
