"""The report's figures (matplotlib, Agg): ROC, calibration, decision curves, LASSO, heatmaps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from scipy.stats import rankdata
from sklearn.pipeline import Pipeline

from dtlr.services.modeler.evaluate import CohortEvaluation

COLORS = {"clinical": "#1f77b4", "radiomics": "#2ca02c", "dtl": "#9467bd", "nomogram": "#d62728"}


def _panels(n: int, height: float = 4.0) -> tuple[Figure, list[plt.Axes]]:
    """One row of n square-ish panels."""
    fig, axes = plt.subplots(1, n, figsize=(4.4 * n, height), squeeze=False)
    return fig, list(axes[0])


def _title(ev: CohortEvaluation) -> str:
    """Panel title: the cohort's role, name and size."""
    return f"{'Training' if ev.role == 'train' else 'Test'} set ({ev.cohort}, n = {ev.y.size})"


def _undefined(ax: plt.Axes, ev: CohortEvaluation) -> bool:
    """Write why the panel is empty when the cohort cannot have this curve (one grade)."""
    if not ev.undefined:
        return False
    ax.text(0.5, 0.5, ev.undefined.split(":")[0] + ":\nundefined", ha="center", va="center",
            fontsize=9, wrap=True)
    ax.set(title=_title(ev), xticks=[], yticks=[])
    return True


def roc_figure(evaluations: list[CohortEvaluation], labels: dict[str, str]) -> Figure:
    """ROC curves of every model, one panel per cohort (paper Fig 5B)."""
    fig, axes = _panels(len(evaluations))
    for ax, ev in zip(axes, evaluations, strict=True):
        if _undefined(ax, ev):
            continue
        auc = ev.metrics[ev.metrics["metric"] == "auc"].set_index("model")["value"]
        for m, (fpr, tpr) in ev.roc.items():
            value = f"AUC {auc[m]:.3f}" if np.isfinite(auc[m]) else "AUC undefined"
            ax.plot(fpr, tpr, color=COLORS[m], lw=1.5, label=f"{labels[m]} ({value})")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set(xlabel="1 - specificity", ylabel="Sensitivity", title=_title(ev),
               xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def calibration_figure(evaluations: list[CohortEvaluation], labels: dict[str, str]) -> Figure:
    """Observed vs predicted risk per quantile bin, one panel per cohort (paper Fig 5C)."""
    fig, axes = _panels(len(evaluations))
    for ax, ev in zip(axes, evaluations, strict=True):
        if _undefined(ax, ev):
            continue
        for m, (pred, obs) in ev.calibration.items():
            ax.plot(pred, obs, marker="o", ms=3, color=COLORS[m], lw=1.2, label=labels[m])
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="Ideal")
        ax.set(xlabel="Predicted probability", ylabel="Observed fraction high grade",
               title=_title(ev), xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig


def dca_figure(evaluations: list[CohortEvaluation], labels: dict[str, str]) -> Figure:
    """Net benefit of each model, treat-all and treat-none, one panel per cohort (paper Fig 6)."""
    fig, axes = _panels(len(evaluations))
    for ax, ev in zip(axes, evaluations, strict=True):
        if _undefined(ax, ev):
            continue
        d = ev.dca
        for m in ev.probs.columns:
            ax.plot(d["threshold"], d[m], color=COLORS[m], lw=1.4, label=labels[m])
        ax.plot(d["threshold"], d["treat_all"], color="black", lw=0.9, ls=":", label="Treat all")
        ax.plot(d["threshold"], d["treat_none"], color="grey", lw=0.9, label="Treat none")
        top = float(np.nanmax(d[list(ev.probs.columns)].to_numpy()))
        ax.set(xlabel="Threshold probability", ylabel="Net benefit", title=_title(ev),
               xlim=(0, 1), ylim=(-0.05, max(top, d["treat_all"].max()) + 0.05))
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return fig


def lasso_figure(pipe: Pipeline, family_label: str) -> Figure:
    """CV error and coefficient paths against log(lambda), chosen lambda marked (paper Fig 2)."""
    lasso = pipe.named_steps["lasso"]
    # The LARS path ends at lambda = 0 (log undefined): plot the positive breakpoints.
    cv_keep = lasso.cv_alphas_ > 0
    mse = lasso.mse_path_[cv_keep].mean(axis=1)
    se = lasso.mse_path_[cv_keep].std(axis=1, ddof=1) / np.sqrt(lasso.mse_path_.shape[1])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.errorbar(np.log10(lasso.cv_alphas_[cv_keep]), mse, yerr=se, fmt="o", ms=2.5,
               color="#d62728", ecolor="#bbbbbb", elinewidth=0.8)
    keep = lasso.alphas_ > 0
    log_alpha = np.log10(lasso.alphas_[keep])
    # One LineCollection, not one Line2D per feature: paths of 2000 DTL features draw fast.
    paths = [np.column_stack([log_alpha, c[keep]]) for c in lasso.coef_path_ if np.any(c != 0)]
    b.add_collection(LineCollection(paths, linewidths=0.7, colors=plt.cm.tab10.colors))
    b.autoscale()
    for ax in (a, b):
        ax.axvline(np.log10(lasso.alpha_), ls="--", color="black", lw=0.8)
        ax.set_xlabel("log10(lambda)")
    a.set(ylabel="Mean squared error (CV)",
          title=f"{family_label}: {lasso.mse_path_.shape[1]}-fold CV, lambda = {lasso.alpha_:.4g}")
    b.set(ylabel="Coefficient", title=f"{family_label}: coefficient paths")
    fig.tight_layout()
    return fig


def correlation_figure(values: np.ndarray, names: list[str], family_label: str) -> Figure:
    """Spearman correlations among the selected features on the training cohort (paper Fig 3)."""
    k = len(names)
    rho = np.atleast_2d(np.corrcoef(rankdata(values, axis=0), rowvar=False))
    size = min(3.5 + 0.22 * k, 14)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(rho, cmap="RdBu_r", vmin=-1, vmax=1)
    short = [n if len(n) <= 40 else n[:18] + "…" + n[-20:] for n in names]
    fs = max(4, min(8, 220 // max(k, 1)))
    ax.set_xticks(range(k), short, rotation=90, fontsize=fs)
    ax.set_yticks(range(k), short, fontsize=fs)
    if k <= 16:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{rho[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="Spearman rho")
    ax.set_title(f"{family_label}: selected features ({k})")
    fig.tight_layout()
    return fig
