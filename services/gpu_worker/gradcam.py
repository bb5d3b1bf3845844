"""Grad-CAM of the fine-tuned CNN (pytorch-grad-cam) on max slices, as PNGs and report HTML.

The map is Grad-CAM (Selvaraju et al., ICCV 2017) of the high-grade logit at the last
bottleneck block of layer4, as in the paper's Fig. 4; it is upsampled to the max slice's own
shape, so it lines up with the slice and its ROI mask (channel 1).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch.nn.functional import interpolate

from dtlr.services.gpu_worker.data import WINDOW_PERCENTILES, normalise
from dtlr.services.gpu_worker.model import DTLNet
from dtlr.shared.store import Store


@dataclass
class GradcamCase:
    """One patient's Grad-CAM figure and what its caption says."""

    cohort: str
    patient_id: str
    label: int | None
    prob: float
    mass_inside: float
    png: Path


def gradcam_maps(net: DTLNet, images: torch.Tensor, shape: tuple[int, int],
                 classes: Sequence[int]) -> np.ndarray:
    """(N, 1, S, S) uint8 model inputs -> (N, *shape) Grad-CAM maps in [0, 1] (float32, fp32).

    ``classes``: per image, 1 for the evidence of high grade (the logit), 0 for low grade (its
    negative); the report uses the class the CNN predicts, as Grad-CAM does by default.
    """
    x = normalise(images, channels_last=False)
    with GradCAM(model=net, target_layers=[net.backbone.layer4[-1]]) as cam:
        maps = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(c) for c in classes])
    net.zero_grad(set_to_none=True)
    resized = interpolate(torch.from_numpy(maps)[:, None], size=shape, mode="bilinear",
                          align_corners=False)[:, 0]
    return resized.clamp(0, 1).numpy()


def cam_mass_inside(cam: np.ndarray, max_slice: np.ndarray) -> float:
    """Fraction of the map's mass inside the ROI (the max slice's channel 1); NaN if all zero."""
    if cam.shape != max_slice.shape[1:]:
        raise ValueError(f"Grad-CAM map {cam.shape} does not match the slice {max_slice.shape}")
    total = float(cam.sum())
    return float(cam[max_slice[1] > 0.5].sum()) / total if total > 0 else float("nan")


def overlay_png(max_slice: np.ndarray, cam: np.ndarray, title: str) -> bytes:
    """PNG: the slice with its ROI outline, and the same with the Grad-CAM map over it."""
    image = max_slice[0]
    lo, hi = np.percentile(image, WINDOW_PERCENTILES)
    fig = Figure(figsize=(5.2, 2.8), dpi=100)
    for i, ax in enumerate(fig.subplots(1, 2)):
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        if i == 1:
            ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.contour(max_slice[1], levels=[0.5], colors="white" if i else "red", linewidths=0.8)
        ax.set_axis_off()
        ax.set_title(("max slice + ROI", "Grad-CAM")[i], fontsize=8)
    fig.suptitle(title, fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def write_overlay(store: Store, path: Path, max_slice: np.ndarray, cam: np.ndarray,
                  title: str) -> Path:
    """Write :func:`overlay_png` to ``path`` atomically."""
    store.write_bytes(overlay_png(max_slice, cam, title), path)
    return path


def clearest_cases(patient_ids: Sequence[str], labels: Sequence[int | None],
                   probs: Sequence[float], n: int) -> list[str]:
    """The ``n`` high-grade patients the CNN is surest of, then the ``n`` surest low-grade ones."""
    rows = list(zip(patient_ids, labels, probs, strict=True))
    high = sorted((r for r in rows if r[1] == 1), key=lambda r: (-r[2], r[0]))[:n]
    low = sorted((r for r in rows if r[1] == 0), key=lambda r: (r[2], r[0]))[:n]
    return [r[0] for r in high + low]


def gradcam_html(cases: Sequence[GradcamCase]) -> str:
    """Report HTML: one <figure> per case with the PNG inlined (the report stays one file)."""
    grade = {1: "high grade", 0: "low grade", None: "grade unknown"}
    figures = []
    for c in cases:
        data = base64.b64encode(c.png.read_bytes()).decode()
        caption = (f"{c.cohort} / {c.patient_id}: {grade[c.label]}, P(high grade) = "
                   f"{c.prob:.2f}, Grad-CAM mass inside the ROI {c.mass_inside:.0%}")
        figures.append(f'<figure class="gradcam"><img src="data:image/png;base64,{data}" '
                       f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                       "</figcaption></figure>")
    return '<div class="gradcam-cases">\n' + "\n".join(figures) + "\n</div>"
