"""Statistics for the modeler: DeLong ROC, decision curves, Hosmer-Lemeshow, calibration,
threshold metrics."""

from dtlr.shared.stats.calibration import Calibration, calibration_intercept_slope
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
    "Calibration",
    "DelongPlacements",
    "DelongTest",
    "Estimate",
    "HosmerLemeshow",
    "RocAuc",
    "binary_metrics",
    "calibration_intercept_slope",
    "decision_curve",
    "delong_placements",
    "delong_test",
    "hosmer_lemeshow",
    "predictive_values_at_prevalence",
    "risk_from_score",
    "roc_auc_delong",
    "youden_threshold",
]
