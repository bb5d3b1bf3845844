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
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtlr.services.gpu_worker.data import SliceRef, list_slices, load_images
from dtlr.services.gpu_worker.model import FEATURES, DTLNet, batched, load_checkpoint
from dtlr.services.gpu_worker.profiles import Runtime
from dtlr.shared import manifest
from dtlr.shared.hashing import content_key, file_digest
from dtlr.shared.provenance import versions
from dtlr.shared.stage import InputError, StageRun, Unit, failure_record, start_unit
from dtlr.shared.store import StatusRecord, Store, StoreWriteError, feature_table

STAGE = "embed"
# Bump when this stage's code changes its outputs: every cached embedding is then recomputed.
CODE_VERSION = "embed-2"
COLUMNS = tuple(f"dtl_{i:04d}" for i in range(FEATURES))


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
    return json.loads(path.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=8)  # a cross-fitted feature set uses its CNN and its fold CNNs
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


def crossfit_path(store: Store, model_id: str) -> Path:
    """models/<model_id>/crossfit.json: the fold CNNs behind a model's training features."""
    return store.model_dir(model_id) / "crossfit.json"


def read_crossfit(store: Store, model_id: str) -> dict[str, Any] | None:
    """The cross-fitting record of a CNN, or None when its training features are in-sample."""
    path = crossfit_path(store, model_id)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def computing_model(crossfit: dict[str, Any] | None, cohort: str, patient_id: str,
                    model_id: str) -> str:
    """Which CNN computes a patient's features of ``model_id``'s feature set.

    A training patient of a cross-fitted CNN is embedded by the fold CNN that never saw it;
    every other patient by the CNN itself.
    """
    if crossfit is not None and cohort == crossfit["train_cohort"]:
        fold = crossfit["assignment"].get(patient_id)
        if fold is not None:
            return str(crossfit["fold_models"][fold])
    return model_id


def embed_images(net: DTLNet, images: torch.Tensor, runtime: Runtime) -> np.ndarray:
    """(N, 1, S, S) uint8 slices -> (N, 2048) float32 features, batch by batch, reproducibly
    (fp32, deterministic kernels: see :func:`dtlr.services.gpu_worker.model.batched`)."""
    return batched(net.features, images, runtime, runtime.profile.embed_batch_size).cpu().numpy()


def embedding_key(loaded: LoadedModel, slices: dict[int, SliceRef], runtime: Runtime) -> str:
    """Content key of one patient's features: checkpoint bytes, slice keys, code.

    Features are computed in fp32 on every device, so they do not depend on where they were
    computed (beyond the tolerance tests/gpu_worker/test_device.py states): the key does not
    name the device, and a CPU worker reuses a GPU worker's features of the same checkpoint.
    """
    return content_key(CODE_VERSION, loaded.checkpoint_sha256,
                       sorted((r, s.key) for r, s in slices.items()))


def is_embedded(store: Store, cohort: str, model_id: str, patient_id: str) -> bool:
    """Whether the patient's features under ``model_id`` are in the store (status and file)."""
    status = store.read_status(cohort, patient_id, STAGE)
    return (status is not None and status.state == "done"
            and status.inputs.get("model_id") == model_id
            and store.dtl_path(cohort, model_id, patient_id, status.key).is_file())


@dataclass
class _Todo:
    """A patient to embed: its max slices, the key of its features, and its inputs."""

    patient_id: str
    slices: dict[int, SliceRef]
    key: str
    inputs: dict[str, str]

    @staticmethod
    def slice_keys(slices: dict[int, SliceRef]) -> dict[str, str]:
        return {f"maxslice_reader{r}": s.key for r, s in sorted(slices.items())}


def embed_cohort(store: Store, cohort: str, loaded: LoadedModel, runtime: Runtime,
                 patient_ids: Iterable[str] | None = None,
                 submission: str = "") -> list[StatusRecord]:
    """Embed (or skip) the cohort's patients, write their files and status records.

    Features belong to ``loaded``'s feature set (features/dtl/cohort=<c>/model=<its id>/); a
    training patient of a cross-fitted CNN is computed by its fold CNN (:func:`computing_model`).
    A patient without a usable reader-1 max slice gets a failed status saying why; the others
    are embedded. Only a failure to write into the store propagates (StoreWriteError).
    """
    known = set(manifest.load(store, cohort)["patient_id"])
    wanted = sorted(known if patient_ids is None else set(patient_ids))
    by_patient: dict[str, dict[int, SliceRef]] = {}
    for ref in list_slices(store, cohort, readers=(1, 2), patient_ids=wanted):
        by_patient.setdefault(ref.patient_id, {})[ref.reader] = ref
    records: list[StatusRecord] = []
    crossfit = read_crossfit(store, loaded.model_id)
    models = {loaded.model_id: loaded}
    todo: dict[str, list[_Todo]] = {}
    for pid in wanted:
        slices = by_patient.get(pid, {})
        if pid not in known or 1 not in slices:
            why = (f"not in cohort {cohort}'s manifest; register it with `dtlr cohort add`"
                   if pid not in known else
                   "no max slice in the store; its extraction failed or has not run (see "
                   "`dtlr status`); fix that and re-submit")
            record = failure_record(Unit(cohort, pid, STAGE), InputError(why), submission,
                                    inputs={"model_id": loaded.model_id})
            store.write_status(record)
            records.append(record)
            continue
        computing = computing_model(crossfit, cohort, pid, loaded.model_id)
        if computing not in models:
            models[computing] = load_model(store, computing, runtime)
        model = models[computing]
        key = embedding_key(model, slices, runtime)
        status = store.read_status(cohort, pid, STAGE)
        if (status is not None and status.state == "done" and status.key == key
                and store.dtl_path(cohort, loaded.model_id, pid, key).is_file()):
            records.append(status)
            continue
        inputs = {"model_id": loaded.model_id, "computed_by": computing,
                  "checkpoint_sha256": model.checkpoint_sha256, **_Todo.slice_keys(slices)}
        todo.setdefault(computing, []).append(_Todo(pid, slices, key, inputs))
    for computing, items in todo.items():
        records += _embed(store, cohort, loaded.model_id, models[computing], runtime, items,
                          submission)
    return records


def _embed(store: Store, cohort: str, feature_set: str, loaded: LoadedModel, runtime: Runtime,
           todo: list[_Todo], submission: str) -> list[StatusRecord]:
    """Compute the features of the patients in ``todo`` with ``loaded`` (one batch) and write
    them into the feature set ``feature_set`` (a model id)."""
    t0 = time.perf_counter()
    units = [Unit(cohort, t.patient_id, STAGE) for t in todo]
    attempts = [0] * len(todo)
    refs = [t.slices[r] for t in todo for r in sorted(t.slices)]
    try:
        attempts = [start_unit(store, u, submission, t.key, t.inputs)
                    for u, t in zip(units, todo, strict=True)]
        images, problems = load_images(refs, loaded.image_size, runtime.device, runtime.threads)
        feats = embed_images(loaded.net, images, runtime)
    except StoreWriteError:
        raise
    except Exception as exc:  # a crash of the batch fails its patients, not the cohort
        failed = [failure_record(u, exc, submission, key=t.key, inputs=t.inputs, attempt=a)
                  for u, t, a in zip(units, todo, attempts, strict=True)]
        for record in failed:
            store.write_status(record)
        return failed
    share = (time.perf_counter() - t0) / len(todo)
    meta_common = {"model_id": feature_set, "computed_by": loaded.model_id,
                   "checkpoint_sha256": loaded.checkpoint_sha256,
                   "image_size": loaded.image_size, "code": CODE_VERSION,
                   "versions": versions(STAGE), "runtime": runtime.describe()}
    ends = list(itertools.accumulate(len(t.slices) for t in todo))
    rows = [(u, t, a, end - len(t.slices), end)
            for u, t, a, end in zip(units, todo, attempts, ends, strict=True)]

    def write(item: tuple[Unit, _Todo, int, int, int]) -> StatusRecord:
        unit, t, attempt, lo, hi = item
        with StageRun(store, unit, submission, key=t.key, inputs=t.inputs, attempt=attempt,
                      extra_seconds=share) as run:
            bad = [p for p in problems[lo:hi] if p]
            if bad:
                raise InputError("; ".join(bad))
            ids = [{"cohort": cohort, "patient_id": t.patient_id, "reader": r,
                    "model_id": feature_set} for r in sorted(t.slices)]
            table = feature_table(ids, COLUMNS, feats[lo:hi])
            store.write_table(table, store.dtl_path(cohort, feature_set, t.patient_id, t.key),
                              {**meta_common, "key": t.key, "maxslice_keys": t.inputs})
        assert run.record is not None
        return run.record

    with ThreadPoolExecutor(max(1, runtime.threads)) as pool:
        return list(pool.map(write, rows))
