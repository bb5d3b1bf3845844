"""DTL features: the fine-tuned network's 2048-d penultimate features, one Parquet per patient.

Each patient's file (features/dtl/cohort=<c>/model=<model_id>/<patient>.<key>.parquet) holds
the features of each reader (reader 2 where a second reader's mask exists, so the modeler's
ICC filter applies to DTL features) in the store's long layout (``shared.store.feature_table``:
cohort, patient_id, reader, model_id, feature, value); the catalog's ``dtl`` view pivots it to
one row per patient and reader with columns dtl_0000 ... dtl_2047. Features are computed in
float32 and stored as float64 (exactly). ``<key>`` hashes the checkpoint's bytes (SHA-256), the
patient's max-slice keys, the precision and this code's version: a patient already embedded
with the same checkpoint is skipped, and a retrained checkpoint re-embeds everyone.

Features are computed in batches in a fixed order (patients sorted, reader 1 then 2) under
deterministic kernels, so a checkpoint gives bit-identical features for the same patients and
batch size, and again after reloading it.
"""

from __future__ import annotations

import functools
import itertools
import json
import platform
import socket
import time
import traceback
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torchvision

import shared
from services.gpu_worker.data import SliceRef, list_slices, load_images
from services.gpu_worker.model import FEATURES, DTLNet, batched, load_checkpoint
from services.gpu_worker.profiles import Runtime, deterministic
from shared import manifest
from shared.hashing import content_key, file_digest
from shared.store import StatusRecord, Store, feature_table

STAGE = "embed"
# Bump when this stage's code changes its outputs: every cached embedding is then recomputed.
CODE_VERSION = "embed-1"
COLUMNS = tuple(f"dtl_{i:04d}" for i in range(FEATURES))


def versions() -> dict[str, str]:
    """Library versions that shape the features (stored with every result)."""
    return {"dtlr": shared.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "pyarrow": pa.__version__, "python": platform.python_version()}


@dataclass(frozen=True)
class LoadedModel:
    """A fine-tuned checkpoint ready for inference, with its provenance."""

    model_id: str
    net: DTLNet
    info: dict[str, Any]  # models/<model_id>/model.json
    checkpoint_sha256: str

    @property
    def image_size(self) -> int:
        return int(self.info["profile"]["image_size"])


class ModelNotFoundError(FileNotFoundError):
    """No finished fine-tuning under this model id."""


def read_model_info(store: Store, model_id: str) -> dict[str, Any]:
    """models/<model_id>/model.json (written last by fine-tuning, so it marks a finished model)."""
    path = store.model_dir(model_id) / "model.json"
    if not path.is_file():
        raise ModelNotFoundError(f"model {model_id!r} not found at {path.parent}: fine-tune "
                                 "first (dtlr-submit runs it), or check the model id")
    return json.loads(path.read_text())


@functools.lru_cache(maxsize=2)
def _load(checkpoint: str, mtime_ns: int, dropout: float, device: str,
          channels_last: bool) -> DTLNet:
    """The checkpoint on ``device``, kept for the next batch of this worker (mtime in the key)."""
    net = load_checkpoint(Path(checkpoint), dropout)
    fmt = torch.channels_last if channels_last else torch.preserve_format
    return net.to(torch.device(device), memory_format=fmt).eval()


def load_model(store: Store, model_id: str, runtime: Runtime) -> LoadedModel:
    """The fine-tuned network of ``model_id`` on the runtime's device, in eval mode."""
    info = read_model_info(store, model_id)
    path = store.model_dir(model_id) / "checkpoint.pt"
    net = _load(str(path), path.stat().st_mtime_ns, float(info["dropout"]), str(runtime.device),
                runtime.channels_last)
    return LoadedModel(model_id, net, info, info.get("checkpoint_sha256") or file_digest(path))


def embed_images(net: DTLNet, images: torch.Tensor, runtime: Runtime) -> np.ndarray:
    """(N, 1, S, S) uint8 slices -> (N, 2048) float32 features, batch by batch, reproducibly."""
    with deterministic(runtime.device):
        feats = batched(net.features, images, runtime, runtime.profile.embed_batch_size)
    return feats.cpu().numpy()


def embedding_key(loaded: LoadedModel, slices: dict[int, SliceRef], runtime: Runtime) -> str:
    """Content key of one patient's features: checkpoint bytes, slice keys, precision, code."""
    return content_key(CODE_VERSION, loaded.checkpoint_sha256,
                       sorted((r, s.key) for r, s in slices.items()), runtime.precision)


def is_embedded(store: Store, cohort: str, model_id: str, patient_id: str) -> bool:
    """Whether the patient's features under ``model_id`` are in the store (status and file)."""
    status = store.read_status(cohort, patient_id, STAGE)
    return (status is not None and status.state == "done"
            and status.inputs.get("model_id") == model_id
            and store.dtl_path(cohort, model_id, patient_id, status.key).is_file())


def _record(cohort: str, patient_id: str, state: str, message: str, seconds: float, key: str,
            inputs: dict[str, str], submission: str) -> StatusRecord:
    return StatusRecord(
        cohort=cohort, patient_id=patient_id, stage=STAGE, state=state, message=message,
        seconds=round(seconds, 4), key=key, versions=versions(), inputs=inputs,
        worker=socket.gethostname(), finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        submission=submission)


@dataclass
class _Todo:
    patient_id: str
    slices: dict[int, SliceRef]
    key: str

    @property
    def inputs(self) -> dict[str, str]:
        return {f"maxslice_reader{r}": s.key for r, s in sorted(self.slices.items())}


def embed_cohort(store: Store, cohort: str, loaded: LoadedModel, runtime: Runtime,
                 patient_ids: Iterable[str] | None = None,
                 submission: str = "") -> list[StatusRecord]:
    """Embed (or skip) the cohort's patients, write their files and status records.

    A patient without a usable reader-1 max slice gets a failed status saying why; the others
    are embedded. Only a failure to write into the store propagates (StoreWriteError).
    """
    known = set(manifest.load(store, cohort)["patient_id"])
    wanted = sorted(known if patient_ids is None else set(patient_ids))
    by_patient: dict[str, dict[int, SliceRef]] = {}
    for ref in list_slices(store, cohort, readers=(1, 2), patient_ids=wanted):
        by_patient.setdefault(ref.patient_id, {})[ref.reader] = ref
    records: list[StatusRecord] = []
    todo: list[_Todo] = []
    model_inputs = {"model_id": loaded.model_id, "checkpoint_sha256": loaded.checkpoint_sha256}
    for pid in wanted:
        slices = by_patient.get(pid, {})
        if pid not in known or 1 not in slices:
            why = (f"patient {pid} is not in cohort {cohort}'s manifest" if pid not in known
                   else f"patient {pid}: no max slice in the store; its extraction failed or "
                        "has not run (see `dtlr status`); fix that and re-submit")
            records.append(_record(cohort, pid, "failed", why, 0.0, "", model_inputs,
                                   submission))
            continue
        key = embedding_key(loaded, slices, runtime)
        status = store.read_status(cohort, pid, STAGE)
        if (status is not None and status.state == "done" and status.key == key
                and store.dtl_path(cohort, loaded.model_id, pid, key).is_file()):
            records.append(status)
            continue
        todo.append(_Todo(pid, slices, key))
    for record in records:
        if record.state == "failed":
            store.write_status(record)
    if todo:
        records += _embed(store, cohort, loaded, runtime, todo, model_inputs, submission)
    return records


def _embed(store: Store, cohort: str, loaded: LoadedModel, runtime: Runtime,
           todo: list[_Todo], model_inputs: dict[str, str],
           submission: str) -> list[StatusRecord]:
    """Compute and write the features of the patients in ``todo``."""
    t0 = time.perf_counter()
    refs = [t.slices[r] for t in todo for r in sorted(t.slices)]
    try:
        images, problems = load_images(refs, loaded.image_size, runtime.device, runtime.threads)
        feats = embed_images(loaded.net, images, runtime)
    except Exception as exc:  # a crash of the batch fails its patients, not the cohort
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = (f"unexpected {type(exc).__name__}: {exc} (at {Path(where.filename).name}:"
                   f"{where.lineno}); please report it with this message")
        records = [_record(cohort, t.patient_id, "failed", f"patient {t.patient_id}: {message}",
                           0.0, t.key, {**model_inputs, **t.inputs}, submission) for t in todo]
        for record in records:
            store.write_status(record)
        return records
    share = (time.perf_counter() - t0) / len(todo)
    meta_common = {"model_id": loaded.model_id, "checkpoint_sha256": loaded.checkpoint_sha256,
                   "image_size": loaded.image_size, "code": CODE_VERSION,
                   "versions": versions(), "runtime": runtime.describe()}
    ends = list(itertools.accumulate(len(t.slices) for t in todo))
    rows = [(t, end - len(t.slices), end) for t, end in zip(todo, ends, strict=True)]

    def write(item: tuple[_Todo, int, int]) -> StatusRecord:
        t, lo, hi = item
        t1 = time.perf_counter()
        inputs = {**model_inputs, **t.inputs}
        bad = [p for p in problems[lo:hi] if p]
        if bad:
            record = _record(cohort, t.patient_id, "failed",
                             f"patient {t.patient_id}: {'; '.join(bad)}", share, t.key, inputs,
                             submission)
        else:
            ids = [{"cohort": cohort, "patient_id": t.patient_id, "reader": r,
                    "model_id": loaded.model_id} for r in sorted(t.slices)]
            table = feature_table(ids, COLUMNS, feats[lo:hi])
            store.write_table(table, store.dtl_path(cohort, loaded.model_id, t.patient_id, t.key),
                              {**meta_common, "key": t.key, "maxslice_keys": t.inputs})
            record = _record(cohort, t.patient_id, "done", "",
                             share + time.perf_counter() - t1, t.key, inputs, submission)
        store.write_status(record)
        return record

    with ThreadPoolExecutor(max(1, runtime.threads)) as pool:
        return list(pool.map(write, rows))
