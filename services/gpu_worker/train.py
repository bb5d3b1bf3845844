"""The fine-tuning loop: data on the device, batched augmentation there, one host sync per epoch.

Every epoch draws a permutation of the training slices and the augmentation's random numbers
for all its steps from one seeded ``torch.Generator`` on the device. An epoch has
ceil(N / batch) full batches: like torch's DistributedSampler, the last batch is completed
with slices from the start of the permutation, so every step has the same shape (which a CUDA
graph needs) and no slice is dropped. The step (gather, augment, normalise, forward under
autocast, loss, backward, SGD) adds its loss to a device tensor; nothing is read back until the
epoch's validation, which sends the mean loss and the validation logits to the host in one
transfer. The epoch kept is the one with the highest validation AUC (ties: lower validation
loss, then the earlier epoch); the validation slices come from the training cohort only.

On CUDA with ``cuda_graph``, the first steps run eagerly on a side stream (they create the
momentum buffers and let cuDNN settle), then one step is captured and replayed: per step the
host only copies the batch's indices and random numbers into the graph's input buffers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.nn.functional import binary_cross_entropy_with_logits

from dtlr.services.gpu_worker.data import N_AUG, augment, normalise
from dtlr.services.gpu_worker.model import DTLNet, batched
from dtlr.services.gpu_worker.profiles import Runtime, autocast, deterministic, on_device
from dtlr.shared.config import CNNSettings

WARMUP_STEPS = 3  # eager steps before a CUDA graph is captured (PyTorch's documented recipe)


@dataclass
class EpochLog:
    """One epoch of the training log."""

    epoch: int
    train_loss: float
    val_loss: float
    val_auc: float
    seconds: float


@dataclass
class FitResult:
    """The training log, the epoch whose weights the model now holds, and timings.

    ``seconds``: "setup" (optimizer, buffers) and "epochs" (all epochs with their validation;
    epoch 1 includes a CUDA graph's warm-up and capture). Each epoch ends with a host
    transfer, so per-epoch seconds are real device time even on CUDA.
    """

    log: list[EpochLog]
    chosen_epoch: int
    seconds: dict[str, float]
    notes: list[str]

    def to_json(self) -> dict[str, object]:
        return {"epochs": [asdict(e) for e in self.log], "chosen_epoch": self.chosen_epoch,
                "seconds": self.seconds, "notes": self.notes}


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, NaN when the validation split holds one grade only."""
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def _better(auc: float, loss: float, best: tuple[float, float] | None) -> bool:
    """Whether (auc, loss) beats the best so far: higher AUC, then lower loss; NaN AUC last."""
    if best is None:
        return True
    key = (-math.inf if math.isnan(auc) else auc, -loss)
    best_key = (-math.inf if math.isnan(best[0]) else best[0], -best[1])
    return key > best_key


def _make_step(model: DTLNet, opt: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, loss_sum: torch.Tensor, runtime: Runtime,
               in_graph: bool) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One SGD step on the batch ``images[idx]``, augmented with the uniforms ``u``."""

    def step(idx: torch.Tensor, u: torch.Tensor) -> None:
        x = augment(images.index_select(0, idx).float().div_(255), u)
        with autocast(runtime, cache=not in_graph):
            logits = model(normalise(x, runtime.channels_last))
        loss = binary_cross_entropy_with_logits(logits.float(), labels.index_select(0, idx))
        loss.backward()
        opt.step()
        loss_sum.add_(loss.detach())

    return step


def fit(model: DTLNet, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
        val_y: torch.Tensor, runtime: Runtime, cnn: CNNSettings, seed: int) -> FitResult:
    """Fine-tune ``model`` on the runtime's device (made the current CUDA device, so the
    capture stream and the graph live on it: cuda:1 captures on cuda:1, not on cuda:0)."""
    with on_device(runtime.device):
        return _fit(model, train_x, train_y, val_x, val_y, runtime, cnn, seed)


def _fit(model: DTLNet, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
         val_y: torch.Tensor, runtime: Runtime, cnn: CNNSettings, seed: int) -> FitResult:
    """Fine-tune ``model`` in place and leave it holding the chosen epoch's weights.

    ``train_x``/``val_x``: (N, 1, S, S) uint8 on the runtime's device; ``*_y``: float 0/1.
    Without validation slices (protocol paper: every slice is trained on) the last epoch is
    kept and the log's validation columns are NaN.
    """
    device, prof = runtime.device, runtime.profile
    t_setup = time.perf_counter()
    model.to(device, memory_format=torch.channels_last if runtime.channels_last
             else torch.preserve_format)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=prof.lr, momentum=cnn.momentum,
                          weight_decay=cnn.weight_decay)
    n, batch = train_x.shape[0], prof.batch_size
    steps = math.ceil(n / batch)
    gen = torch.Generator(device=device).manual_seed(seed)
    loss_sum = torch.zeros((), device=device)
    val_host = val_y.cpu().numpy()
    validate = val_x.shape[0] > 0
    eager = _make_step(model, opt, train_x, train_y, loss_sum, runtime, in_graph=False)
    graph: torch.cuda.CUDAGraph | None = None
    static_idx = torch.zeros(batch, dtype=torch.long, device=device)
    static_u = torch.zeros(batch, N_AUG, device=device)
    log: list[EpochLog] = []
    best: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] = {}
    chosen = 1
    notes: list[str] = []
    # Dropout draws from torch's global generators: fork them so seeding stays local.
    devices = [torch.cuda.current_device()] if device.type == "cuda" else []
    exact = deterministic(device) if device.type == "cpu" else nullcontext()
    t_epochs = time.perf_counter()
    with torch.random.fork_rng(devices=devices), exact:
        torch.manual_seed(seed)
        for epoch in range(1, prof.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(n, generator=gen, device=device)
            order = perm.repeat(math.ceil(steps * batch / n))[:steps * batch].view(steps, batch)
            uniforms = torch.rand(steps, batch, N_AUG, generator=gen, device=device)
            first = 0
            if runtime.cuda_graph and epoch == 1:
                first = min(WARMUP_STEPS, steps)
                graph = _warm_up_and_capture(model, opt, train_x, train_y, loss_sum, runtime,
                                             order[:first], uniforms[:first], static_idx,
                                             static_u, notes)
            for s in range(first, steps):
                if graph is not None:
                    static_idx.copy_(order[s])
                    static_u.copy_(uniforms[s])
                    graph.replay()
                else:
                    opt.zero_grad(set_to_none=True)
                    eager(order[s], uniforms[s])
            model.eval()
            if not validate:  # protocol paper: no held-out slices, the last epoch is kept
                train_loss = float((loss_sum / steps).cpu())
                loss_sum.zero_()
                log.append(EpochLog(epoch, train_loss, math.nan, math.nan,
                                    round(time.perf_counter() - t0, 4)))
                chosen = epoch
                continue
            val_logits = batched(model, val_x, runtime, prof.embed_batch_size)
            val_loss = binary_cross_entropy_with_logits(val_logits, val_y)
            host = torch.cat([(loss_sum / steps).view(1), val_loss.view(1), val_logits]).cpu()
            loss_sum.zero_()
            t_end = time.perf_counter()
            auc = _auc(val_host, host[2:].numpy())
            entry = EpochLog(epoch, float(host[0]), float(host[1]), auc, round(t_end - t0, 4))
            log.append(entry)
            if _better(auc, entry.val_loss, best):
                best = (auc, entry.val_loss)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                chosen = epoch
    if validate:
        model.load_state_dict(best_state)
    model.eval()
    seconds = {"setup": t_epochs - t_setup, "epochs": time.perf_counter() - t_epochs}
    return FitResult(log=log, chosen_epoch=chosen,
                     seconds={k: round(v, 4) for k, v in seconds.items()}, notes=notes)


def _warm_up_and_capture(model: DTLNet, opt: torch.optim.Optimizer, images: torch.Tensor,
                         labels: torch.Tensor, loss_sum: torch.Tensor, runtime: Runtime,
                         warm_idx: torch.Tensor, warm_u: torch.Tensor, static_idx: torch.Tensor,
                         static_u: torch.Tensor, notes: list[str]) -> torch.cuda.CUDAGraph | None:
    """Run the first steps eagerly on a side stream, then capture one step in a CUDA graph.

    If capture fails (a driver or library without support for some kernel), training goes on
    eagerly and ``notes`` says why: slower, same result.
    """
    eager = _make_step(model, opt, images, labels, loss_sum, runtime, in_graph=True)
    side = torch.cuda.Stream(device=runtime.device)
    side.wait_stream(torch.cuda.current_stream(runtime.device))
    with torch.cuda.stream(side):
        for i in range(warm_idx.shape[0]):
            opt.zero_grad(set_to_none=True)
            eager(warm_idx[i], warm_u[i])
    torch.cuda.current_stream(runtime.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    try:
        with torch.cuda.graph(graph):
            eager(static_idx, static_u)
    except RuntimeError as exc:
        torch.cuda.synchronize(runtime.device)
        notes.append(f"CUDA graph capture failed ({exc}); trained eagerly instead")
        return None
    return graph
