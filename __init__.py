"""DTLR: the deep-transfer-learning radiomics nomogram of Li et al. (Sci Rep 2025) as software.

The Python API (what the ``dtlr`` commands do, as functions)::

    import dtlr

    store = dtlr.open_store("dtlr-data")
    dtlr.register_cohort(store, "hospitalA", "hospitalA/manifest.csv")
    dtlr.register_cohort(store, "hospitalB", "hospitalB/manifest.csv")
    run = dtlr.run(store, ["hospitalA", "hospitalB"], train="hospitalA")  # broker="redis://..."
    run.result.table3                     # Table 3: every metric with its 95% CI
    dtlr.query(store, "SELECT * FROM radiomics")           # pandas DataFrame
    con = dtlr.connect(store)             # read-only DuckDB connection on the views
    fitted = dtlr.fit(store, "hospitalA", ["hospitalB"])   # the modeler alone
    dtlr.predict(store, fitted.run_id, "new_patients")     # risk, class, nomogram points
    dtlr.extract_case("t1c.nii.gz", "mask.nii.gz")          # one case's pyradiomics features

Settings: ``dtlr.settings("settings.yaml")`` or ``dtlr.settings(cnn={"weights": "random"})``.
The functions are imported on first use, so ``import dtlr`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "open_store": "dtlr.services.coordinator.api",
    "settings": "dtlr.services.coordinator.api",
    "register_cohort": "dtlr.services.coordinator.api",
    "make_demo": "dtlr.services.coordinator.api",
    "run": "dtlr.services.coordinator.api",
    "Run": "dtlr.services.coordinator.api",
    "connect": "dtlr.services.coordinator.api",
    "query": "dtlr.services.coordinator.api",
    "fit": "dtlr.services.coordinator.api",
    "predict": "dtlr.services.coordinator.api",
    "extract_case": "dtlr.services.coordinator.api",
    "Settings": "dtlr.shared.config",
    "Store": "dtlr.shared.store",
    "InputError": "dtlr.shared.stage",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dtlr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
