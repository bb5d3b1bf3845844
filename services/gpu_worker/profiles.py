"""Run profiles: the paper's fine-tuning on a GPU, and a quick one a CPU-only demo can afford.

``paper`` (the default wherever CUDA is available): 224x224 input, whole ResNet50 trained,
SGD lr 0.01, batch 32, 30 epochs (the paper's settings); on CUDA bf16 autocast, channels_last
and the training step captured in a CUDA graph; all CPU cores for reading and writing files.

``quick`` (the default on a CPU-only machine, so ``dtlr submit --cohort demo`` fits its
5-minute budget on 2 cores): the same network, every layer trained, on 112x112 input (4x
fewer pixels: layer4 is 4x4), 4 epochs of batch 16 (more SGD steps than batch 32 on ~100
slices), lr 0.01, fp32, channels_last, one CPU thread. 4 epochs, not 6: the leakage-safe
protocol fine-tunes the CNN and 5 cross-fitted fold CNNs (two at a time on 2 cores), and 6
epochs put the demo at about 6 minutes. One thread because on a small machine that is busy
with anything else, every parallel region of a two-thread ResNet step waits for the
descheduled thread (measured on the 2-core development machine under load: a step took
0.78 s on one thread, 1.55 s on two), and one thread makes results independent of the
machine's core count.

Measured on the 2-core development machine (AMD EPYC), random initial weights (no ImageNet
download there): one quick fine-tune of the demo's 96 training slices took about 30-40 s at
6 epochs; from random weights the CNN does not learn the demo's phantoms in so few epochs
(validation AUC about 0.5), which is what ImageNet weights are for.

Any field set in :class:`dtlr.shared.config.CNNSettings` overrides the profile's value.

Devices and numbers. A worker pinned to a GPU runs all its CUDA work inside that device
(:func:`on_device`: streams, the captured graph and allocations live on it). Training runs in
bf16 autocast on GPUs with native bf16 (compute capability >= 8) and in fp32 elsewhere
(:func:`precision_for`); the global pool and the head are fp32 in any case. Inference
(validation logits, DTL features, Grad-CAM) is always fp32 with deterministic kernels and no
TF32, so the features of one checkpoint agree between CPU and GPU workers (to 1e-4 of the
feature vector's norm; tests/gpu_worker/test_device.py and benchmarks/bench_gpu.py) and do not
depend on the batch size: their key names the checkpoint, not the device. What is not
deterministic on CUDA: fine-tuning (cuDNN's fastest backward kernels and atomics reorder
sums), so two GPU runs of the same inputs give different weights. A model id therefore names
the training procedure (inputs, settings, seed, device type, precision), not its exact
weights: a finished model is reused rather than retrained, the same policy as not retraining
it at all; on the CPU fine-tuning is bit-reproducible (deterministic algorithms, one thread).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from dtlr.shared.config import CNNSettings
from dtlr.shared.stage import InputError


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
QUICK = Profile("quick", epochs=4, batch_size=16, lr=0.01, image_size=112, embed_batch_size=64)
QUICK_THREADS = 1  # see the module docstring
PROFILES = {"paper": PAPER, "quick": QUICK}


@dataclass(frozen=True)
class Runtime:
    """Where and how the network runs: device, numeric precision, memory layout, graph capture."""

    device: torch.device
    profile: Profile
    precision: str  # of the training step: "bf16" (autocast) or "fp32"; inference is fp32
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


# Set by `dtlr worker --queue gpu --gpu N` / `--gpus all`: this process is meant to run on a
# GPU, so falling back to the CPU would silently train the quick CPU profile instead.
WORKER_DEVICE_ENV = "DTLR_WORKER_DEVICE"


class DeviceError(InputError):
    """The process cannot use the device it was started for; the message says what to check."""


def precision_for(device_type: str, capability: tuple[int, int] | None) -> str:
    """Training precision: bf16 autocast on GPUs with native bf16 (compute capability >= 8:
    A100, H100/H200, L4, RTX 30xx and newer), fp32 everywhere else.

    ``torch.cuda.is_bf16_supported()`` also says yes on V100 and T4, where bf16 is emulated
    and slow; fp16 would need a gradient scaler, whose overflow checks synchronise with the
    host and break the captured CUDA graph, so those GPUs train in fp32 (still with the graph).
    """
    if device_type == "cuda" and capability is not None and capability >= (8, 0):
        return "bf16"
    return "fp32"


def on_device(device: torch.device) -> AbstractContextManager[Any]:
    """Make ``device`` the current CUDA device for the block (streams, graphs, allocations);
    a no-op on the CPU. Every CUDA operation of a worker runs inside it."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def resolve(cnn: CNNSettings) -> Runtime:
    """The runtime for these settings on this machine, and set torch's CPU thread count.

    A worker started for a GPU (``$DTLR_WORKER_DEVICE``) that cannot use CUDA fails loudly
    (:class:`DeviceError`) instead of falling back to the CPU.
    """
    expected = os.environ.get(WORKER_DEVICE_ENV)
    device = pick_device(cnn.device)
    if expected and device.type != "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise DeviceError(
            f"this gpu-queue worker was started for {expected} (CUDA_VISIBLE_DEVICES={visible}) "
            "but CUDA is not usable in this process (torch.cuda.is_available() is False): check "
            "the driver and the container's GPU runtime (nvidia-smi), or start the worker "
            "without --gpu/--gpus to run the CNN on the CPU")
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
    capability = torch.cuda.get_device_capability(device) if cuda else None
    return Runtime(device=device, profile=profile, precision=precision_for(device.type,
                                                                           capability),
                   channels_last=True, cuda_graph=cuda and cnn.cuda_graph, threads=threads)


@contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Reproducible fp32 kernels: deterministic algorithms on the CPU; on CUDA deterministic
    cuDNN and no TF32 (its 10-bit mantissa would make a GPU's features differ from a CPU's).

    On CUDA, training runs outside this (some backward kernels have no deterministic version,
    and the speed target needs the fast ones); embedding and validation run inside it.
    """
    if device.type == "cuda":
        flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                 torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = flags
        return
    old_flag = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_flag)


def autocast(runtime: Runtime, cache: bool = True) -> AbstractContextManager[Any]:
    """bf16 autocast for the training step on CUDA (weight-cast cache off inside a CUDA
    graph); nothing in fp32. Inference (validation logits, DTL features) never autocasts."""
    if runtime.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.autocast_dtype, cache_enabled=cache)
