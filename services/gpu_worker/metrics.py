"""The fine-tuned CNN's own performance: accuracy, sensitivity, specificity and AUC.

The paper reports 0.725 / 0.627 / 0.824 / 0.793 (95% CI 0.7066-0.8786) on its test set. The
CNN's call is P(high grade) >= 0.5 (its sigmoid output); proportions carry Wilson intervals and
the AUC a DeLong interval, from the modeler's statistics layer.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from dtlr.shared.stats.delong import roc_auc_delong
from dtlr.shared.stats.metrics import binary_metrics

THRESHOLD = 0.5


def head_probabilities(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """P(high grade) from stored 2048-d features and the head's linear layer (dropout is off)."""
    logits = features.astype(np.float64) @ weight.reshape(-1).astype(np.float64) + float(bias[0])
    return 1.0 / (1.0 + np.exp(-logits))


def cnn_metrics(y: ArrayLike, prob: ArrayLike, threshold: float = THRESHOLD) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity (Wilson CIs) and AUC (DeLong CI) of the CNN's calls."""
    y_arr = np.asarray(y, dtype=np.float64)
    p_arr = np.asarray(prob, dtype=np.float64)
    out: dict[str, Any] = {"n": int(y_arr.size), "n_high_grade": int(y_arr.sum()),
                           "threshold": threshold}
    if y_arr.size == 0:
        return out
    for name, est in binary_metrics(y_arr, p_arr, threshold).items():
        if name in ("accuracy", "sensitivity", "specificity"):
            out[name] = {"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high}
    if 0 < y_arr.sum() < y_arr.size:
        roc = roc_auc_delong(y_arr, p_arr)
        out["auc"] = {"value": roc.auc, "ci_low": roc.ci_low, "ci_high": roc.ci_high}
    else:
        out["auc"] = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    return out


def _cell(m: dict[str, Any], name: str) -> str:
    est = m.get(name)
    if not est or est["value"] != est["value"]:  # missing or NaN
        return "-"
    return f"{est['value']:.3f} ({est['ci_low']:.3f}-{est['ci_high']:.3f})"


def metrics_html(metrics: dict[str, dict[str, Any]]) -> str:
    """An HTML table of the CNN's metrics per cohort, with the paper's test-set values."""
    head = ("<tr><th>Cohort</th><th>Role</th><th>n (high grade)</th><th>Accuracy</th>"
            "<th>Sensitivity</th><th>Specificity</th><th>AUC (95% CI)</th></tr>")
    rows = [f"<tr><td>{html.escape(c)}</td><td>{html.escape(m['role'])}</td>"
            f"<td>{m['n']} ({m['n_high_grade']})</td>"
            + "".join(f"<td>{_cell(m, k)}</td>" for k in ("accuracy", "sensitivity",
                                                           "specificity", "auc"))
            + "</tr>" for c, m in metrics.items()]
    rows.append("<tr><td>Li et al. 2025</td><td>test</td><td>102 (51)</td><td>0.725</td>"
                "<td>0.627</td><td>0.824</td><td>0.793 (0.707-0.879)</td></tr>")
    return (f"<table class=\"cnn-metrics\">{head}{''.join(rows)}</table>\n"
            f"<p>The CNN's own call: P(high grade) &ge; {THRESHOLD}; Wilson intervals for "
            "proportions, DeLong for the AUC.</p>\n")


def training_curve(epochs: list[dict[str, Any]], chosen: int) -> Figure:
    """Training loss, validation loss and validation AUC per epoch; the kept epoch marked."""
    x = [e["epoch"] for e in epochs]
    fig = Figure(figsize=(5.5, 3.0), dpi=100)
    ax = fig.subplots()
    ax.plot(x, [e["train_loss"] for e in epochs], "o-", label="training loss")
    ax.plot(x, [e["val_loss"] for e in epochs], "s-", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("binary cross-entropy")
    auc_ax = ax.twinx()
    auc_ax.plot(x, [e["val_auc"] for e in epochs], "^-", color="tab:green",
                label="validation AUC")
    auc_ax.set_ylim(0, 1)
    auc_ax.set_ylabel("AUC")
    ax.axvline(chosen, color="grey", linestyle="--", linewidth=1)
    lines = ax.get_legend_handles_labels()
    more = auc_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig
