"""The GPU path's device logic, tested where no GPU is: what can be checked on a CPU.

Device resolution without CUDA, GPU counting that never initialises CUDA in the process that
Celery forks, a worker started for a GPU that cannot use one failing loudly, the training
precision as a function of compute capability, and fp32 features that do not depend on the
batch size (the property that makes a CPU worker's and a GPU worker's features of one
checkpoint agree; benchmarks/bench_gpu.py measures that agreement on a GPU).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision

from dtlr.services.gpu_worker import embed
from dtlr.services.gpu_worker.data import list_slices, load_images
from dtlr.services.gpu_worker.model import DTLNet, build_model
from dtlr.services.gpu_worker.profiles import (
    WORKER_DEVICE_ENV,
    DeviceError,
    pick_device,
    precision_for,
    resolve,
)
from dtlr.shared.config import CNNSettings, Settings
from dtlr.shared.store import Store

# Agreement of fp32 features computed in different batches (and, by bench_gpu, on different
# devices), relative to each feature vector's norm.
FEATURE_TOLERANCE = 1e-4


@pytest.mark.parametrize("capability,expected", [
    ((9, 0), "bf16"),  # H100, H200
    ((8, 0), "bf16"),  # A100
    ((8, 9), "bf16"),  # L4, RTX 40xx
    ((7, 5), "fp32"),  # T4: bf16 only emulated
    ((7, 0), "fp32"),  # V100
    ((6, 1), "fp32"),
])
def test_bf16_only_with_native_support(capability: tuple[int, int], expected: str) -> None:
    assert precision_for("cuda", capability) == expected


def test_the_cpu_trains_in_fp32() -> None:
    assert precision_for("cpu", None) == "fp32"
    assert resolve(CNNSettings(device="cpu")).precision == "fp32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_device_resolution_without_cuda() -> None:
    assert pick_device("auto") == torch.device("cpu")
    for setting in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA is not available here"):
            pick_device(setting)
    runtime = resolve(CNNSettings())
    assert runtime.device.type == "cpu" and runtime.profile.name == "quick"
    assert runtime.cuda_graph is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_a_worker_started_for_a_gpu_never_falls_back_to_the_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKER_DEVICE_ENV, "GPU 0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(DeviceError, match=r"started for GPU 0 .* CUDA is not usable"):
        resolve(CNNSettings())


def test_counting_gpus_does_not_initialise_cuda_in_the_worker_process() -> None:
    code = ("import sys; from dtlr.services.coordinator.worker import visible_gpus; "
            "n = visible_gpus(); "
            "print(n, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300, encoding="utf-8")
    count, torch_loaded = out.stdout.split()
    assert int(count) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert torch_loaded == "False"  # counted in a child process


def test_features_are_fp32_and_do_not_depend_on_the_batch(
        trained: tuple[Store, str, Settings], tiny_settings: Callable[..., Settings]) -> None:
    store, model_id, settings = trained
    runtime = resolve(settings.cnn)
    loaded = embed.load_model(store, model_id, runtime)
    refs = list_slices(store, "train", readers=(1, 2))
    images, _ = load_images(refs, loaded.image_size, runtime.device)
    runs = []
    for batch in (1, 5, len(refs)):
        rt = replace(runtime, profile=replace(runtime.profile, embed_batch_size=batch))
        runs.append(embed.embed_images(loaded.net, images, rt))
    assert all(r.dtype == np.float32 for r in runs)
    scale = np.linalg.norm(runs[0], axis=1, keepdims=True)
    for other in runs[1:]:
        assert np.abs(other - runs[0]).max() <= FEATURE_TOLERANCE * scale.min()


def test_pooling_is_torchvisions_average_pool_in_fp32() -> None:
    net = build_model("random", dropout=0.5, seed=3).eval()
    reference = torchvision.models.resnet50()
    reference.load_state_dict({**net.backbone.state_dict(),
                               "fc.weight": torch.zeros(1000, 2048),
                               "fc.bias": torch.zeros(1000)})
    reference.fc = torch.nn.Identity()
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        ours = net.features(x)
        theirs = reference.eval()(x)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert isinstance(net, DTLNet)
