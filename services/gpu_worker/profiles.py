"""Run profiles: the paper's fine-tuning on a GPU, and a quick one a CPU-only demo can afford.

``paper`` (the default wherever CUDA is available): 224x224 input, whole ResNet50 trained,
SGD lr 0.01, batch 32, 30 epochs (the paper's settings); on CUDA bf16 autocast, channels_last
and the training step captured in a CUDA graph; all CPU cores for reading and writing files.

``quick`` (the default on a CPU-only machine, so ``dtlr-submit --cohort demo`` fits its
5-minute budget on 2 cores): the same network, every layer trained, on 112x112 input (4x
fewer pixels: layer4 is 4x4), 6 epochs of batch 16 (more SGD steps than batch 32 on ~100
slices), lr 0.01, fp32, channels_last, one CPU thread. One thread because on a small machine
that is busy with anything else, every parallel region of a two-thread ResNet step waits for
the descheduled thread (measured on the 2-core development machine under load: a step took
0.78 s on one thread, 1.55 s on two), and one thread makes results independent of the
machine's core count.

Measured on the 2-core development machine (AMD EPYC, other jobs running), random initial
weights (no ImageNet download there): synthetic slices (tests/synthetic/slices.py),
120-patient training cohort (96 trained, 24 validation): fine-tuning 30 s, validation AUC
0.74 -> 0.84 over the 6 epochs; embedding 180 patients (200 slices) 3.8 s. In
``dtlr-submit --cohort demo`` (120 + 40 patients, 20 second readers): fine-tuning 30 s,
embedding 3.4 s; from random weights the CNN does not learn the demo's phantoms in 6 epochs
(validation AUC about 0.5), which is what ImageNet weights are for.

Any field set in :class:`shared.config.CNNSettings` overrides the profile's value.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from dtlr.shared.config import CNNSettings


@dataclass(frozen=True)
class Profile:
    """The hyper-parameters that shape the fine-tuned network (all part of its model id)."""

    name: str
    epochs: int
    batch_size: int
    lr: float
    image_size: int
    embed_batch_size: int


PAPER = Profile("paper", epochs=30, batch_size=32, lr=0.01, image_size=224, embed_batch_size=256)
QUICK = Profile("quick", epochs=6, batch_size=16, lr=0.01, image_size=112, embed_batch_size=64)
QUICK_THREADS = 1  # see the module docstring
PROFILES = {"paper": PAPER, "quick": QUICK}


@dataclass(frozen=True)
class Runtime:
    """Where and how the network runs: device, numeric precision, memory layout, graph capture."""

    device: torch.device
    profile: Profile
    precision: str  # "bf16" (autocast) or "fp32"
    channels_last: bool
    cuda_graph: bool
    threads: int

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for provenance."""
        name = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                else "cpu")
        return {"device": str(self.device), "device_name": name, "precision": self.precision,
                "channels_last": self.channels_last, "cuda_graph": self.cuda_graph,
                "threads": self.threads, "profile": asdict(self.profile)}


def pick_device(setting: str) -> torch.device:
    """The device a ``cnn.device`` setting names; "auto" is CUDA when available, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"cnn.device is {setting!r} but CUDA is not available here; use "
                         "'auto' or 'cpu'")
    return device


def cpu_threads(setting: int | None, profile: str) -> int:
    """CPU threads: the setting, else 1 for the quick profile, else $DTLR_THREADS (dtlr-worker's
    share of the cores), else every core this process may use."""
    if setting:
        return setting
    if profile == "quick":
        return QUICK_THREADS
    env = os.environ.get("DTLR_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0))


def resolve(cnn: CNNSettings) -> Runtime:
    """The runtime for these settings on this machine, and set torch's CPU thread count."""
    device = pick_device(cnn.device)
    name = cnn.profile if cnn.profile != "auto" else ("paper" if device.type == "cuda"
                                                      else "quick")
    base = PROFILES[name]
    overrides = {k: getattr(cnn, k) for k in ("epochs", "batch_size", "lr", "image_size",
                                              "embed_batch_size")
                 if getattr(cnn, k) is not None}
    profile = replace(base, **overrides)
    threads = cpu_threads(cnn.threads, name)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    cuda = device.type == "cuda"
    return Runtime(device=device, profile=profile,
                   precision="bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32",
                   channels_last=True, cuda_graph=cuda and cnn.cuda_graph, threads=threads)


@contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Reproducible kernels: deterministic algorithms on the CPU, deterministic cuDNN on CUDA.

    On CUDA, training runs outside this (some backward kernels have no deterministic version,
    and the speed target needs the fast ones); embedding runs inside it, so a checkpoint's
    features are reproducible.
    """
    if device.type == "cuda":
        old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            yield
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old
        return
    old_flag = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_flag)


def autocast(runtime: Runtime, cache: bool = True) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA (weight-cast cache off inside a CUDA graph), nothing in fp32."""
    if runtime.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.autocast_dtype, cache_enabled=cache)
