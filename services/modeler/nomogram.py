"""The nomogram as R's rms draws it: a points scale, one axis per predictor, total points, risk.

For predictor j with coefficient b_j and axis range [lo_j, hi_j], its contribution b_j x
spans R_j = |b_j| (hi_j - lo_j). The widest span gets 0-100 points; every predictor uses the
same points per unit of linear predictor, k = 100 / max_j R_j, so
``points_j(x) = k (b_j x - min(b_j lo_j, b_j hi_j))`` and the total points T map affinely to
the linear predictor: ``LP = b_0 + sum_j min(b_j lo_j, b_j hi_j) + T / k``.

Axis ranges (``axis``): "full" (default) is the training range, min to max, which is what
rms::nomogram() draws (it takes datadist's "Low"/"High" limits, value.chk(..., type.range =
"full"), rms/R/nomogram.s); "display" is datadist's q.display range (5th-95th percentile for
n < 200, about the 10th smallest to 10th largest value for n >= 200;
:mod:`dtlr.shared.stats.datadist`), which keeps one outlier from squeezing every other axis.
0/1 predictors keep 0 and 1 either way. A patient outside the drawn range still gets exact points
(below 0 or beyond the axis end): the linear predictor and the risk do not depend on ``axis``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import NDArray
from scipy.special import expit, logit

from dtlr.services.modeler.clinical import display_name, levels
from dtlr.services.modeler.models import DTLRModel
from dtlr.shared.manifest import NUMERIC

AxisRange = Literal["full", "display"]

SCORE_LABELS = {"rad_score": "Rad score", "dtl_score": "DTL score"}
# Risk ticks in labelling priority (the middle first), as rms chooses fun.at.
RISK_TICKS = (0.5, 0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.05, 0.95, 0.01, 0.99)


@dataclass(frozen=True)
class NomogramScale:
    """Coefficients, training ranges and the points scale of a fitted nomogram."""

    names: list[str]
    coef: NDArray[np.float64]
    intercept: float
    low: NDArray[np.float64]
    high: NDArray[np.float64]

    @property
    def floor(self) -> NDArray[np.float64]:
        """Each predictor's smallest contribution b_j x over its training range (0 points)."""
        return np.minimum(self.coef * self.low, self.coef * self.high)

    @property
    def points_per_lp(self) -> float:
        """k: points per unit of linear predictor (100 / the widest contribution span)."""
        span = np.abs(self.coef) * (self.high - self.low)
        return 100.0 / float(span.max()) if span.max() > 0 else 1.0

    @property
    def max_total(self) -> float:
        """Total points of a patient at the top of every predictor's range."""
        return float(np.sum(np.abs(self.coef) * (self.high - self.low)) * self.points_per_lp)

    def points(self, design: pd.DataFrame) -> pd.DataFrame:
        """Points per predictor per patient (columns in the nomogram's predictor order)."""
        x = design[self.names].to_numpy(np.float64)
        pts = (x * self.coef - self.floor) * self.points_per_lp
        return pd.DataFrame(pts, columns=self.names, index=design.index)

    def linear_predictor(self, total_points: NDArray[np.float64]) -> NDArray[np.float64]:
        """Total points -> log-odds (affine)."""
        return self.intercept + self.floor.sum() + np.asarray(total_points) / self.points_per_lp

    def total_points(self, linear_predictor: NDArray[np.float64]) -> NDArray[np.float64]:
        """Log-odds -> total points (inverse of :meth:`linear_predictor`)."""
        return (np.asarray(linear_predictor) - self.intercept - self.floor.sum()
                ) * self.points_per_lp


def nomogram_scale(model: DTLRModel, axis: AxisRange = "full") -> NomogramScale:
    """The points scale of a fitted model's nomogram, its axes over ``axis`` ranges."""
    if axis == "full":
        ranges = model.nomogram_ranges_
    elif axis == "display":
        ranges = getattr(model, "nomogram_display_ranges_", None)
        if ranges is None:
            raise ValueError("this model was saved before display ranges were stored; refit it "
                             "or draw its nomogram with axis='full'")
    else:
        raise ValueError(f"axis must be 'full' or 'display', not {axis!r}")
    return NomogramScale(
        names=list(model.nomogram_features_),
        coef=np.asarray(model.nomogram_coef_, dtype=np.float64),
        intercept=float(model.nomogram_intercept_),
        low=np.asarray(ranges)[:, 0].astype(np.float64),
        high=np.asarray(ranges)[:, 1].astype(np.float64),
    )


def patient_points(model: DTLRModel, X: pd.DataFrame, axis: AxisRange = "full") -> pd.DataFrame:
    """Per patient: points per predictor, total points, linear predictor and risk.

    Points are exact for values outside the drawn axes too (below 0 or above the axis end).
    """
    scale = nomogram_scale(model, axis)
    pts = scale.points(model.nomogram_design(X))
    pts.columns = [f"points_{c}" for c in pts.columns]
    total = pts.sum(axis=1).to_numpy()
    lp = scale.linear_predictor(total)
    return pts.assign(total_points=total, linear_predictor=lp, risk=expit(lp))


def predictor_label(name: str) -> str:
    """Axis label of a nomogram predictor."""
    return SCORE_LABELS.get(name, display_name(name))


def _value_ticks(name: str, low: float, high: float) -> tuple[list[float], list[str]]:
    """Tick values and labels of a predictor axis: level names for 0/1 columns."""
    if low == 0 and high == 1 and name not in SCORE_LABELS and name not in NUMERIC:
        return [0.0, 1.0], list(levels(name))
    ticks = [t for t in MaxNLocator(nbins=8).tick_values(low, high) if low - 1e-12 <= t <= high
             + 1e-12]
    return ticks, [f"{t:g}" for t in ticks]


def _label_width(text: str) -> float:
    """Approximate width of a 7-pt tick label in axis units (the x range is about 144 wide)."""
    return 0.95 * len(text) + 1.0


def _free(spans: list[tuple[float, float]], lo: float, hi: float) -> bool:
    """Whether [lo, hi] overlaps none of the labels already placed."""
    return all(hi <= a or lo >= b for a, b in spans)


def _axis(ax: plt.Axes, y: float, label: str, positions: list[float], labels: list[str],
          start: float, end: float, thin: bool = False) -> None:
    """One nomogram row: a line with ticks. Labels are placed in the given order (priority);
    one that would overlap is dropped (``thin``) or put below the line, so none overlap."""
    ax.plot([start, end], [y, y], color="black", lw=1)
    above: list[tuple[float, float]] = []
    below: list[tuple[float, float]] = []
    for x, text in zip(positions, labels, strict=True):
        lo, hi = x - _label_width(text) / 2, x + _label_width(text) / 2
        for spans, sign, va in ((above, 1, "bottom"), (below, -1, "top")):
            if (thin and spans is below) or not _free(spans, lo, hi):
                continue
            ax.plot([x, x], [y, y + 0.12 * sign], color="black", lw=1)
            ax.text(x, y + 0.18 * sign, text, ha="center", va=va, fontsize=7)
            spans.append((lo, hi))
            break
    ax.text(-4, y, label, ha="right", va="center", fontsize=9)


def draw_nomogram(model: DTLRModel, title: str = "", axis: AxisRange = "full") -> Figure:
    """rms-style nomogram figure of a fitted model (``axis``: see the module docstring)."""
    scale = nomogram_scale(model, axis)
    k, names = scale.points_per_lp, scale.names
    rows = len(names) + 4
    fig, ax = plt.subplots(figsize=(9, 0.7 * rows + 0.6))
    y = float(rows)
    _axis(ax, y, "Points", list(range(0, 101, 10)), [str(v) for v in range(0, 101, 10)], 0, 100)
    for j, name in enumerate(names):
        y -= 1
        values, labels = _value_ticks(name, scale.low[j], scale.high[j])
        pos = [(scale.coef[j] * v - scale.floor[j]) * k for v in values]
        ends = [(scale.coef[j] * v - scale.floor[j]) * k for v in (scale.low[j], scale.high[j])]
        _axis(ax, y, predictor_label(name), pos, labels, min(ends), max(ends))
    # Total points are drawn on the 0-100 width: x = T * 100 / axis_max.
    axis_max = float(MaxNLocator(nbins=10).tick_values(0, scale.max_total)[-1]) or 1.0
    to_x = 100.0 / axis_max
    y -= 1.3
    ticks = [t for t in MaxNLocator(nbins=10).tick_values(0, axis_max) if t <= axis_max]
    _axis(ax, y, "Total points", [t * to_x for t in ticks], [f"{t:g}" for t in ticks], 0, 100)
    lp_lo, lp_hi = scale.linear_predictor(np.array([0.0, scale.max_total]))
    y -= 1
    lp_ticks = [t for t in MaxNLocator(nbins=8).tick_values(lp_lo, lp_hi) if lp_lo <= t <= lp_hi]
    _axis(ax, y, "Linear predictor", [float(scale.total_points(t)) * to_x for t in lp_ticks],
          [f"{t:g}" for t in lp_ticks], 0, scale.max_total * to_x)
    risks = [p for p in RISK_TICKS if lp_lo <= logit(p) <= lp_hi]
    if risks:
        y -= 1
        pos = [float(scale.total_points(logit(p))) * to_x for p in risks]
        _axis(ax, y, "Risk of high grade", pos, [f"{p:g}" for p in risks], min(pos), max(pos),
              thin=True)
    ax.set_xlim(-40, 104)
    ax.set_ylim(y - 0.6, rows + 0.8)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig
