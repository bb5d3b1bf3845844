"""Statistics for the modeler: DeLong ROC, decision curves, Hosmer-Lemeshow, threshold metrics.

Calibration intercept and slope live in :mod:`dtlr.shared.stats.calibration`, imported from there
(statsmodels' GLM, which the GPU worker, a user of this package, need not load)."""

from dtlr.shared.stats.dca import decision_curve, risk_from_score
from dtlr.shared.stats.delong import (
    DelongPlacements,
    DelongTest,
    RocAuc,
    delong_placements,
    delong_test,
    roc_auc_delong,
)
from dtlr.shared.stats.hosmer_lemeshow import HosmerLemeshow, hosmer_lemeshow
from dtlr.shared.stats.metrics import (
    Estimate,
    binary_metrics,
    predictive_values_at_prevalence,
    youden_threshold,
)

__all__ = [
    "DelongPlacements",
    "DelongTest",
    "Estimate",
    "HosmerLemeshow",
    "RocAuc",
    "binary_metrics",
    "decision_curve",
    "delong_placements",
    "delong_test",
    "hosmer_lemeshow",
    "predictive_values_at_prevalence",
    "risk_from_score",
    "roc_auc_delong",
    "youden_threshold",
]
