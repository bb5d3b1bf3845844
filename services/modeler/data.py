"""Load one cohort from the store as the modeler's input, through DuckDB.

Clinical data come from the catalog's ``clinical`` view; feature families are read from exactly
the cohort's own files (``Store.radiomics_dir`` / ``Store.dtl_dir``), so a run never scans
other cohorts. Patients without features are left out and listed, never silently dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from dtlr.shared.hashing import content_key
from dtlr.shared.manifest import encode_clinical, no_labels_message
from dtlr.shared.stage import InputError
from dtlr.shared.store import Store, read_feature_files

_ID_COLUMNS = {"cohort", "patient_id", "reader", "model_id"}


@dataclass
class CohortData:
    """A cohort ready for the models: inputs, labels, second-reader tables, provenance."""

    cohort: str
    X: pd.DataFrame  # index patient_id; columns clinical:*, radiomics:*, dtl:*
    y: NDArray[np.int64] | None  # None when any included patient has no label
    clinical: pd.DataFrame  # encoded clinical columns (Table 1)
    reader2: dict[str, pd.DataFrame] = field(default_factory=dict)
    dtl_model_id: str | None = None
    excluded: list[str] = field(default_factory=list)
    input_keys: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of patients with features."""
        return len(self.X)


def read_features(store: Store, family: str, cohort: str, readers: Sequence[int],
                  model_id: str | None = None) -> pd.DataFrame:
    """Rows of one family for a cohort's readers: index patient_id, a reader column, features."""
    if family == "radiomics":
        dirs = [store.radiomics_dir(cohort, r) for r in readers]
    elif family == "dtl" and model_id is not None:
        dirs = [store.dtl_dir(cohort, model_id)]
    else:
        raise ValueError(f"unknown feature family {family!r} (or DTL without a model id)")
    files = sorted(p for d in dirs for _, _, p in Store.keyed_files(d, ".parquet"))
    df = read_feature_files(files)
    if df.empty:
        return pd.DataFrame(columns=["reader"], index=pd.Index([], name="patient_id"))
    df = df[df["reader"].isin(readers)].sort_values(["reader", "patient_id"])
    cols = [c for c in df.columns if c not in _ID_COLUMNS]
    out = df[cols].astype(np.float64)
    out.insert(0, "reader", df["reader"].astype(np.int64).to_numpy())
    out.index = pd.Index(df["patient_id"].astype(str), name="patient_id")
    return out


def _reader_rows(table: pd.DataFrame, reader: int) -> pd.DataFrame:
    """One reader's rows without the reader column, sorted by patient."""
    return table[table["reader"] == reader].drop(columns="reader").sort_index()


def _digest(frame: pd.DataFrame) -> str:
    """Content key of a table's patients, columns and values (the run's input provenance)."""
    h = hashlib.sha256(np.ascontiguousarray(frame.to_numpy(np.float64)).tobytes()).hexdigest()
    return content_key(list(frame.index), list(frame.columns), h)


def dtl_model_ids(store: Store, cohort: str) -> list[str]:
    """CNN model ids with DTL feature files for this cohort (from the store's folder layout)."""
    base = store.dtl_dir(cohort, "_").parent
    if not base.is_dir():
        return []
    return sorted(d.name.removeprefix("model=") for d in base.iterdir()
                  if d.name.startswith("model=") and any(Store.keyed_files(d, ".parquet")))


def resolve_dtl_model(store: Store, cohort: str, requested: str | None) -> str | None:
    """The CNN whose DTL features to use: the requested one, the only one, or none."""
    ids = dtl_model_ids(store, cohort)
    if requested is not None:
        if requested not in ids:
            raise InputError(f"no DTL features of model {requested!r} for cohort {cohort!r} "
                             f"(available: {', '.join(ids) or 'none'})")
        return requested
    if len(ids) > 1:
        raise InputError(f"cohort {cohort!r} has DTL features from several CNN models "
                         f"({', '.join(ids)}); pass the one to use (--dtl-model)")
    return ids[0] if ids else None


def load_cohort(store: Store, cohort: str, dtl_model_id: str | None = None,
                with_reader2: bool = False, require_labels: bool = True) -> CohortData:
    """Clinical + radiomics (+ DTL of ``dtl_model_id``) for the cohort's patients with features."""
    with store.connect(read_only=True) as con:
        manifest = con.execute("SELECT * FROM clinical WHERE cohort = ? ORDER BY patient_id",
                               [cohort]).df()
    if manifest.empty:
        known = ", ".join(store.cohorts()) or "none yet"
        raise InputError(f"cohort {cohort!r} is not registered (registered: {known})")
    if require_labels and manifest["label"].isna().all():
        raise InputError(no_labels_message(cohort))
    manifest = manifest.set_index(manifest["patient_id"].astype(str))
    readers = (1, 2) if with_reader2 else (1,)
    tables = {"radiomics": read_features(store, "radiomics", cohort, readers)}
    if dtl_model_id is not None:
        tables["dtl"] = read_features(store, "dtl", cohort, readers, dtl_model_id)
    families = {f: _reader_rows(t, 1) for f, t in tables.items()}
    reader2 = {f: _reader_rows(t, 2) for f, t in tables.items()} if with_reader2 else {}
    excluded = []
    patients = manifest.index
    for family, table in families.items():
        missing = patients.difference(table.index)
        if len(missing):
            excluded.append(f"{len(missing)} patient(s) without {family} features left out: "
                            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        patients = patients.intersection(table.index, sort=False)
    if len(patients) == 0:
        raise InputError(f"cohort {cohort!r}: no patient has features yet; run the extraction "
                         "stage first (dtlr-submit)")
    clinical = encode_clinical(manifest.loc[patients])
    parts = [clinical.add_prefix("clinical:")]
    parts += [t.loc[patients].add_prefix(f"{f}:") for f, t in families.items()]
    X = pd.concat(parts, axis=1)
    X.index.name = "patient_id"
    labels = manifest.loc[patients, "label"]
    unlabelled = labels.isna()
    if require_labels and unlabelled.any():
        raise InputError(f"cohort {cohort!r}: {int(unlabelled.sum())} patient(s) without a "
                         f"label or grade (e.g. {', '.join(labels.index[unlabelled][:5])}); "
                         "training and testing need labels, prediction does not: give their "
                         "grade or label in the manifest and register it again (`dtlr cohort add "
                         f"{cohort} MANIFEST`), or leave those patients out of it")
    y = None if unlabelled.any() else labels.to_numpy(np.int64)
    keys = {"clinical": _digest(clinical.assign(label=labels.astype("float64")))}
    keys.update({f: _digest(t.loc[patients]) for f, t in families.items()})
    keys.update({f"{f}_reader2": _digest(t) for f, t in reader2.items()})
    return CohortData(cohort=cohort, X=X, y=y, clinical=clinical, reader2=reader2,
                      dtl_model_id=dtl_model_id, excluded=excluded, input_keys=keys)
