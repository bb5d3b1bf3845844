"""The feature store: one folder of Parquet/NumPy/JSON files plus a DuckDB catalog of views.

Workers only ever write whole files (temp file, then atomic rename) under the store's folder;
only the coordinator and the modeler open ``catalog.duckdb`` for writing, and only to (re)define
views. Layout (DESIGN.md section 3)::

    cohorts/<cohort>/manifest.parquet
    features/radiomics/cohort=<c>/reader=<r>/<patient>.<key>.parquet
    features/maxslice/cohort=<c>/reader=<r>/<patient>.<key>.npy
    features/dtl/cohort=<c>/model=<m>/<patient>.<key>.parquet
    status/cohort=<c>/<patient>.<stage>.json        (per patient)
    status/cohort=<c>/_cohort.<stage>.<key>.json    (per cohort: fine-tunings, modeler runs)
    models/<model_id>/        runs/<run_id>/        catalog.duckdb

Every file is written by :meth:`Store.write_file` (temp file, then rename), the store's one
atomic writer; status records only through :meth:`Store.write_status`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dtlr.shared.hashing import content_key

KEY_LENGTH = 16
# Names that become folder and file names in the store: no separators, no leading dot.
PATIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
COHORT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
PATIENT_ID_RE = re.compile(PATIENT_ID_PATTERN)
COHORT_RE = re.compile(COHORT_PATTERN)
# Feature families and the columns that identify one row of their wide views.
FAMILIES = {"radiomics": ("cohort", "patient_id", "reader"),
            "dtl": ("cohort", "patient_id", "reader", "model_id")}
# Creation order: clinical and features_long read other views.
VIEW_ORDER = ("manifest", "radiomics", "dtl", "metrics", "status", "clinical", "features_long")


def feature_table(ids: Sequence[dict[str, Any]], names: Sequence[str],
                  values: np.ndarray) -> pa.Table:
    """The long layout of a feature file: one row per (entity, feature).

    ``ids[i]`` identifies entity i (cohort, patient_id, reader[, model_id]) and ``values[i]``
    holds its features. One-row files with thousands of columns are slow to read (every column
    carries metadata); a long file of two data columns reads in milliseconds, and the catalog
    pivots it back to one column per feature.
    """
    values = np.asarray(values, dtype=np.float64).reshape(len(ids), len(names))
    n = len(names)
    columns: dict[str, pa.Array] = {}
    for key in ids[0]:
        typ = pa.int32() if key == "reader" else pa.string()
        columns[key] = pa.array([row[key] for row in ids for _ in range(n)], typ)
    columns["feature"] = pa.array(list(names) * len(ids), pa.string())
    columns["value"] = pa.array(values.ravel(), pa.float64())
    return pa.table(columns)


def read_feature_files(paths: Sequence[Path]) -> pd.DataFrame:
    """Long feature files as one wide frame: identifying columns, then features in file order."""
    if not paths:
        return pd.DataFrame()
    listing = "[" + ", ".join("'" + p.as_posix().replace("'", "''") + "'" for p in paths) + "]"
    with duckdb.connect() as con:
        long = con.execute(f"SELECT * FROM read_parquet({listing}, hive_partitioning = false)"
                           ).df()
    ids = [c for c in long.columns if c not in ("feature", "value")]
    names = list(dict.fromkeys(long["feature"]))
    wide = long.pivot(index=ids, columns="feature", values="value")
    return wide.reindex(columns=names).reset_index().rename_axis(columns=None)
_KEY_RE = re.compile(rf"^[0-9a-f]{{{KEY_LENGTH}}}$")


TEMP_MARK = ".tmp-"  # temporary files: .<name>.tmp-<host>-<pid>-<random>
_HOST = socket.gethostname().replace("-", "_")


def _alive(pid: int) -> bool:
    """Whether a process of this host with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreError(RuntimeError):
    """A problem with the store itself (missing catalog, write attempted through dtlr-sql...)."""


class StoreWriteError(StoreError):
    """Writing into the store failed (full disk, shared file system hiccup): worth a retry."""


def default_root() -> Path:
    """The store folder: ``$DTLR_HOME`` or ``./dtlr-data``."""
    return Path(os.environ.get("DTLR_HOME", "dtlr-data")).resolve()


@dataclass
class StatusRecord:
    """What happened to one patient in one stage: kept as JSON so any tool can read it."""

    cohort: str
    patient_id: str
    stage: str
    state: str  # "done" | "failed"
    message: str = ""
    seconds: float = 0.0
    key: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    worker: str = ""
    finished_at: str = ""
    submission: str = ""  # the dtlr-submit run that asked for this work
    attempt: int = 0  # how many times this submission started the unit
    failure: str = ""  # why it failed: input | unexpected | worker-lost | store | cancelled
    error_type: str = ""  # exception type of an unexpected failure
    where: str = ""  # file:line where an unexpected failure was raised

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StatusRecord:
        """A record from its JSON form (fields unknown to this version are ignored)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def split_keyed_name(name: str, suffix: str) -> tuple[str, str] | None:
    """``'P01.<key>.parquet'`` -> ``('P01', key)``; None for names not written by the store."""
    if not name.endswith(suffix):
        return None
    stem = name[: -len(suffix)]
    patient, _, key = stem.rpartition(".")
    if not patient or not _KEY_RE.match(key):
        return None
    return patient, key


class Store:
    """Paths, atomic writers and the DuckDB catalog of one store folder."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).resolve() if root is not None else default_root()

    # ---- layout -------------------------------------------------------------------------
    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    def cohort_dir(self, cohort: str) -> Path:
        return self.root / "cohorts" / cohort

    def manifest_path(self, cohort: str) -> Path:
        return self.cohort_dir(cohort) / "manifest.parquet"

    def radiomics_dir(self, cohort: str, reader: int) -> Path:
        return self.root / "features" / "radiomics" / f"cohort={cohort}" / f"reader={reader}"

    def radiomics_path(self, cohort: str, reader: int, patient_id: str, key: str) -> Path:
        return self.radiomics_dir(cohort, reader) / f"{patient_id}.{key}.parquet"

    def maxslice_dir(self, cohort: str, reader: int) -> Path:
        return self.root / "features" / "maxslice" / f"cohort={cohort}" / f"reader={reader}"

    def maxslice_path(self, cohort: str, reader: int, patient_id: str, key: str) -> Path:
        return self.maxslice_dir(cohort, reader) / f"{patient_id}.{key}.npy"

    def dtl_dir(self, cohort: str, model_id: str) -> Path:
        return self.root / "features" / "dtl" / f"cohort={cohort}" / f"model={model_id}"

    def dtl_path(self, cohort: str, model_id: str, patient_id: str, key: str) -> Path:
        return self.dtl_dir(cohort, model_id) / f"{patient_id}.{key}.parquet"

    def status_dir(self, cohort: str) -> Path:
        return self.root / "status" / f"cohort={cohort}"

    def status_path(self, cohort: str, patient_id: str, stage: str, key: str = "") -> Path:
        """A patient's record of a stage, or (``patient_id`` "*") a cohort-level one by key."""
        if patient_id == "*":
            return self.status_dir(cohort) / f"_cohort.{stage}.{key or 'none'}.json"
        return self.status_dir(cohort) / f"{patient_id}.{stage}.json"

    def model_dir(self, model_id: str) -> Path:
        return self.root / "models" / model_id

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    # ---- cohorts ------------------------------------------------------------------------
    def cohorts(self) -> list[str]:
        """Names of the registered cohorts."""
        base = self.root / "cohorts"
        if not base.is_dir():
            return []
        return sorted(p.parent.name for p in base.glob("*/manifest.parquet"))

    def has_cohort(self, cohort: str) -> bool:
        return self.manifest_path(cohort).is_file()

    # ---- keyed files --------------------------------------------------------------------
    @staticmethod
    def keyed_files(directory: Path, suffix: str) -> Iterator[tuple[str, str, Path]]:
        """(patient_id, key, path) for every store-written file in a folder."""
        if not directory.is_dir():
            return
        for p in directory.iterdir():
            parsed = split_keyed_name(p.name, suffix)
            if parsed:
                yield parsed[0], parsed[1], p

    @staticmethod
    def _drop_superseded(path: Path, suffix: str) -> None:
        """Remove the same patient's files under other keys, so a view has one row per patient."""
        parsed = split_keyed_name(path.name, suffix)
        if parsed is None:
            return
        patient, key = parsed
        for other_patient, other_key, other in Store.keyed_files(path.parent, suffix):
            if other_patient == patient and other_key != key:
                other.unlink(missing_ok=True)

    @staticmethod
    def write_file(path: Path, write: Callable[[Path], object]) -> None:
        """The store's one atomic writer: ``write(tmp)``, then rename onto ``path``.

        Readers never see half a file, and a failed write leaves nothing behind.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        tag = f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        tmp = path.with_name(f".{path.name}{TEMP_MARK}{tag}")
        try:
            write(tmp)
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreWriteError(f"cannot write {path}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files whose writer (a process of this host) no longer exists.

        A process killed mid-write (an interrupted pool, a SIGKILLed worker) leaves its
        temporary file; live writers' files and other hosts' are never touched.
        """
        removed = 0
        for tmp in self.root.rglob(f".*{TEMP_MARK}*"):
            writer = tmp.name.rpartition(TEMP_MARK)[2].rpartition("-")[0]
            host, _, pid = writer.rpartition("-")
            if host != _HOST or not pid.isdigit() or _alive(int(pid)):
                continue
            tmp.unlink(missing_ok=True)
            removed += 1
        return removed

    def write_bytes(self, data: bytes, path: Path) -> None:
        """Write bytes atomically."""
        self.write_file(path, lambda tmp: tmp.write_bytes(data))

    def write_text(self, text: str, path: Path) -> None:
        """Write UTF-8 text atomically."""
        self.write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def write_table(self, table: pa.Table, path: Path, metadata: dict[str, Any]) -> None:
        """Write one Parquet file atomically with provenance in its key-value metadata."""
        meta = dict(table.schema.metadata or {})
        meta[b"dtlr"] = json.dumps(metadata, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(meta)
        self.write_file(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        self._drop_superseded(path, ".parquet")

    def write_array(self, array: np.ndarray, path: Path) -> None:
        """Write one .npy atomically."""

        def write(tmp: Path) -> None:
            with tmp.open("wb") as fh:
                np.save(fh, array, allow_pickle=False)

        self.write_file(path, write)
        self._drop_superseded(path, ".npy")

    @staticmethod
    def read_metadata(path: Path) -> dict[str, Any]:
        """The provenance dictionary written by :meth:`write_table`."""
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta.get(b"dtlr", b"{}"))

    def write_json(self, obj: Any, path: Path) -> None:
        """Write a JSON document atomically."""
        self.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str), path)

    # ---- status -------------------------------------------------------------------------
    def write_status(self, record: StatusRecord) -> None:
        """The one status writer: a record replaces the unit's previous one atomically."""
        path = self.status_path(record.cohort, record.patient_id, record.stage, record.key)
        self.write_json(asdict(record), path)

    def read_status(self, cohort: str, patient_id: str, stage: str,
                    key: str = "") -> StatusRecord | None:
        """A unit's record, or None when it has none (or it cannot be parsed)."""
        path = self.status_path(cohort, patient_id, stage, key)
        try:
            return StatusRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def statuses(self, cohort: str) -> list[StatusRecord]:
        """Every status record of a cohort."""
        d = self.status_dir(cohort)
        if not d.is_dir():
            return []
        out = []
        for p in sorted(d.glob("*.json")):
            try:
                out.append(StatusRecord.from_json(json.loads(p.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError):
                continue
        return out

    # ---- catalog ------------------------------------------------------------------------
    def _feature_names(self, glob: str) -> list[str]:
        """Every feature name in a family's files, in the order the files list them."""
        with duckdb.connect() as con:
            rows = con.execute(
                f"SELECT feature FROM read_parquet('{self.root.as_posix()}/{glob}', "
                "hive_partitioning = false, file_row_number = true) "
                "GROUP BY feature ORDER BY min(file_row_number), feature").fetchall()
        return [r[0] for r in rows]

    def _view_sql(self) -> dict[str, str]:
        """The catalog's view definitions; families without files get typed empty views."""
        r = self.root.as_posix()
        ids = "NULL::VARCHAR AS cohort, NULL::VARCHAR AS patient_id, NULL::INTEGER AS reader"

        def files(glob: str, empty: str) -> str:
            if any(self.root.glob(glob)):
                # The files carry their identifying columns; folder names are not columns.
                return (f"SELECT * FROM read_parquet('{r}/{glob}', union_by_name = true, "
                        "hive_partitioning = false)")
            return f"SELECT {empty} WHERE false"

        views: dict[str, str] = {}
        long_parts = []
        for family, keys in FAMILIES.items():
            glob = f"features/{family}/*/*/*.parquet"
            id_cols = ", ".join(keys)
            if not any(self.root.glob(glob)):
                views[family] = f"SELECT {ids}{', NULL::VARCHAR AS model_id' * (family == 'dtl')}"\
                                " WHERE false"
                continue
            source = f"read_parquet('{r}/{glob}', hive_partitioning = false)"
            names = ", ".join("'" + n.replace("'", "''") + "'" for n in self._feature_names(glob))
            # Files are long (one row per feature: fast to write and read); the view is wide.
            views[family] = (f"PIVOT (SELECT {id_cols}, feature, value FROM {source}) "
                             f"ON feature IN ({names}) USING first(value) GROUP BY {id_cols}")
            long_parts.append(f"SELECT cohort, patient_id, '{family}' AS family, feature, value "
                              f"FROM {source} WHERE reader = 1")
        views["features_long"] = " UNION ALL ".join(long_parts) or (
            "SELECT NULL::VARCHAR AS cohort, NULL::VARCHAR AS patient_id, NULL::VARCHAR AS family, "
            "NULL::VARCHAR AS feature, NULL::DOUBLE AS value WHERE false")
        views["manifest"] = files(
            "cohorts/*/manifest.parquet",
            "NULL::VARCHAR AS cohort, NULL::VARCHAR AS patient_id, NULL::INTEGER AS label")
        views["metrics"] = files(
            "runs/*/metrics.parquet",
            "NULL::VARCHAR AS run_id, NULL::VARCHAR AS model, NULL::VARCHAR AS cohort, "
            "NULL::VARCHAR AS metric, NULL::DOUBLE AS value")
        views["clinical"] = (
            "SELECT * EXCLUDE (image, mask, mask_reader2) FROM manifest"
            if any(self.root.glob("cohorts/*/manifest.parquet")) else views["manifest"])
        if any(self.root.glob("status/*/*.json")):
            views["status"] = (
                "SELECT cohort, patient_id, stage, state, message, seconds, key, finished_at, "
                "worker, submission, attempt, failure, error_type, \"where\", versions, inputs "
                f"FROM read_json('{r}/status/*/*.json', "
                "union_by_name = true, format = 'auto')")
        else:
            views["status"] = (
                "SELECT NULL::VARCHAR AS cohort, NULL::VARCHAR AS patient_id, "
                "NULL::VARCHAR AS stage, NULL::VARCHAR AS state, NULL::VARCHAR AS message "
                "WHERE false")
        return views

    def _view_keys(self) -> dict[str, str]:
        """The live catalog's views and their definitions' keys (empty when there is none)."""
        if not self.catalog_path.is_file():
            return {}
        try:
            with duckdb.connect(str(self.catalog_path), read_only=True) as con:
                return dict(con.execute(
                    "SELECT view_name, comment FROM duckdb_views() WHERE NOT internal").fetchall())
        except duckdb.Error:
            return {}  # unreadable (an older format, a damaged file): rebuilt whole below

    def refresh_catalog(self) -> bool:
        """(Re)define the views that changed; returns whether the catalog file was replaced.

        The catalog is never changed in place: a copy is updated and renamed over it (the
        store's atomic writer), so a reader (``dtlr sql``, pandas, the duckdb CLI) sees the old
        views or the new ones, never none, and never holds a lock a writer needs. Creating a
        view over many wide Parquet files reads every file's schema, so views whose definition
        is unchanged are kept (each view's comment holds its definition's key).
        """
        wanted = self._view_sql()
        keys = {name: content_key(sql) for name, sql in wanted.items()}
        have = self._view_keys()
        stale = [name for name in VIEW_ORDER if have.get(name) != keys[name]]
        if not stale:
            return False

        def build(tmp: Path) -> None:
            if have:
                shutil.copyfile(self.catalog_path, tmp)
            with duckdb.connect(str(tmp)) as con:
                for name in (stale if have else VIEW_ORDER):
                    con.execute(f"CREATE OR REPLACE VIEW {name} AS {wanted[name]}")
                    con.execute(f"COMMENT ON VIEW {name} IS '{keys[name]}'")
                con.execute("CHECKPOINT")
            Path(f"{tmp}.wal").unlink(missing_ok=True)

        self.write_file(self.catalog_path, build)
        return True

    def connect(self, read_only: bool = True) -> duckdb.DuckDBPyConnection:
        """A read-only DuckDB connection on the catalog (refreshed first unless ``read_only``).

        The catalog is only ever replaced, never written through a connection, so even
        ``read_only=False`` returns a read-only connection on the fresh catalog.
        """
        if not read_only:
            self.refresh_catalog()
        if not self.catalog_path.is_file():
            raise StoreError(
                f"no catalog at {self.catalog_path}: run `dtlr submit` or `dtlr cohort add` first, "
                "or point DTLR_HOME at an existing store"
            )
        try:
            return duckdb.connect(str(self.catalog_path), read_only=True)
        except duckdb.Error as exc:
            raise StoreError(f"cannot open the catalog {self.catalog_path}: {exc}") from exc

    def sandboxed(self) -> duckdb.DuckDBPyConnection:
        """A connection that can read the store's files and nothing else (for user queries).

        External access is off except the store's folder (no other file, no URL, no
        /proc/self/environ), no extension is installed or loaded, and the configuration is
        locked, so a query cannot switch any of this back on.
        """
        if not self.catalog_path.is_file():
            raise StoreError(
                f"no catalog at {self.catalog_path}: run `dtlr submit` or `dtlr cohort add` first, "
                "or point DTLR_HOME at an existing store")
        config = {"autoload_known_extensions": False, "autoinstall_known_extensions": False,
                  "allow_community_extensions": False}
        try:
            con = duckdb.connect(str(self.catalog_path), read_only=True, config=config)
        except duckdb.Error as exc:
            raise StoreError(f"cannot open the catalog {self.catalog_path}: {exc}") from exc
        root = self.root.resolve().as_posix().replace("'", "''")
        con.execute(f"SET allowed_directories = ['{root}/']")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con
