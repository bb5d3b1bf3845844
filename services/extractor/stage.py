"""The extraction stage for one patient: N4, pyradiomics for each reader, max slices.

A plain function so the embedded runner, a Celery worker and a test all do the same thing.
Idempotent: outputs are named by a content key, and a patient whose outputs exist is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from dtlr.services.extractor import features as rad
from dtlr.services.extractor.geometry import tolerance_of
from dtlr.services.extractor.io import read_image, read_mask_noted
from dtlr.services.extractor.maxslice import max_slice
from dtlr.services.extractor.preprocess import n4_correct, one_thread
from dtlr.shared.config import Settings
from dtlr.shared.hashing import content_key, file_digest
from dtlr.shared.provenance import code_versions, versions
from dtlr.shared.stage import InputError, StageRun, Unit
from dtlr.shared.store import StatusRecord, Store, feature_table

STAGE = "extract"
# Bump when this stage's code changes its outputs: every cached result is then recomputed.
# extract-2: masks go through the geometry policy (a crop is placed into the image grid, a
# mismatch is refused or resampled by DTLR, never by pyradiomics' correctMask).
# extract-4: masks from DICOM SEG, RTSTRUCT and Slicer .seg.nrrd; the key holds each reader's
# segment name and the patient's label value (mask_segment, mask_segment_reader2, mask_label).
CODE_VERSION = "extract-4"
SEGMENT_COLUMNS = {1: "mask_segment", 2: "mask_segment_reader2"}  # reader -> manifest column


@dataclass(frozen=True)
class PatientPlan:
    """What the extraction of one patient reads and writes."""

    cohort: str
    patient_id: str
    image: str
    masks: dict[int, str]  # reader -> mask path
    inputs: dict[str, str]  # file role -> SHA-256
    keys: dict[int, str]  # reader -> content key of that reader's outputs
    segments: dict[int, str | None] = field(default_factory=dict)  # reader -> segment name
    label: int | None = None  # the patient's label value (mask_label), else the parameter file's

    @property
    def key(self) -> str:
        return content_key(sorted(self.keys.items()))


def stage_parameters(settings: Settings) -> dict[str, Any]:
    """Everything in the settings that changes this stage's outputs (part of the key)."""
    params_path = settings.radiomics.params_path()
    return {
        # max_voxels only refuses inputs, it never changes an output
        "preprocess": settings.preprocess.model_dump(mode="json", exclude={"max_voxels"}),
        "radiomics_params": rad.load_params(params_path),
        "maxslice": settings.maxslice.model_dump(mode="json"),
        "code": CODE_VERSION,
        "versions": code_versions(STAGE),
    }


def _text(value: Any) -> str | None:
    """A manifest cell as text, None when empty."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def plan_patient(row: dict[str, Any], settings: Settings) -> PatientPlan:
    """Hash the patient's files and derive output keys; raises InputError for missing files.

    A reader's key covers the image's and its mask's bytes, the stage's parameters, the segment
    the manifest names for it and the patient's label value: another segment of the same file,
    or another label, is another result.
    """
    masks = {1: row["mask"]}
    if settings.radiomics.reader2 and row.get("mask_reader2"):
        masks[2] = row["mask_reader2"]
    segments = {r: _text(row.get(SEGMENT_COLUMNS[r])) for r in masks}
    raw_label = _text(row.get("mask_label"))
    try:
        label = None if raw_label is None else int(float(raw_label))
    except ValueError as exc:
        raise InputError(f"mask_label {raw_label!r} is not a label value; give a whole number "
                         ">= 1 in the manifest, then register it again") from exc
    inputs = {}
    files = [("image", row["image"])] + [(f"mask_reader{r}", p) for r, p in masks.items()]
    for role, path in files:
        if not Path(path).exists():
            raise InputError(f"{role} {path}: file not found; fix the path in the manifest or "
                             "restore the file, then re-submit")
        inputs[role] = file_digest(path)
    params = stage_parameters(settings)
    keys = {r: content_key(inputs["image"], inputs[f"mask_reader{r}"], params,
                           {"segment": segments[r], "label": label}) for r in masks}
    return PatientPlan(row["cohort"], row["patient_id"], row["image"], masks, inputs, keys,
                       segments, label)


def outputs(store: Store, plan: PatientPlan) -> list[Path]:
    """Every file this patient's extraction writes."""
    paths = []
    for reader, key in plan.keys.items():
        paths.append(store.radiomics_path(plan.cohort, reader, plan.patient_id, key))
        paths.append(store.maxslice_path(plan.cohort, reader, plan.patient_id, key))
    return paths


def is_done(store: Store, plan: PatientPlan) -> bool:
    """True when every output exists and the status record says done under the same key."""
    status = store.read_status(plan.cohort, plan.patient_id, STAGE)
    return (status is not None and status.state == "done" and status.key == plan.key
            and all(p.is_file() for p in outputs(store, plan)))


def extract_patient(store: Store, row: dict[str, Any], settings: Settings,
                    submission: str = "") -> StatusRecord:
    """Run (or skip) one patient's extraction; its status record says what happened.

    The work runs on one thread (SimpleITK, BLAS): N4 and a few reductions depend on the thread
    count in their last digits, and one thread gives the same features on every deployment;
    parallelism comes from patients side by side (``--jobs``, worker ``--concurrency``).
    Bad input and unexpected errors become a failed record (the stage protocol,
    :class:`~dtlr.shared.stage.StageRun`); only a failure to write into the store propagates
    (StoreWriteError), so a queue can retry.
    """
    with StageRun(store, Unit(row["cohort"], row["patient_id"], STAGE), submission) as run:
        plan = plan_patient(row, settings)
        run.key, run.inputs = plan.key, plan.inputs
        if is_done(store, plan):
            run.skip()
        else:
            run.start()
            with one_thread(), threadpool_limits(limits=1):
                run.message = "; ".join(_run(store, plan, settings))
    assert run.record is not None
    return run.record


def _run(store: Store, plan: PatientPlan, settings: Settings) -> list[str]:
    """The work itself: read and check, correct, then features and max slice per reader.

    Returns notes for the done record: what the mask geometry policy did for each reader.
    """
    extractor = rad.make_extractor(settings.radiomics.params_path())
    label = rad.mask_label(extractor) if plan.label is None else plan.label
    pre = settings.preprocess
    try:
        image = read_image(plan.image, pre.max_voxels)
    except InputError as exc:
        raise InputError(f"image {exc}") from exc
    if image.GetDimension() != 3:
        raise InputError(f"image {plan.image} is {image.GetDimension()}-D; DTLR needs 3-D volumes")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"image {plan.image} has several components per voxel; give one "
                         "grey-level MR volume")
    masks, notes = {}, []
    for reader, mask_path in plan.masks.items():
        try:
            masks[reader], note = read_mask_noted(
                mask_path, image, label, policy=pre.mask_geometry,
                tolerance=tolerance_of(extractor.settings), max_voxels=pre.max_voxels,
                segment=plan.segments.get(reader), image_path=plan.image,
                segment_column=f"the manifest's {SEGMENT_COLUMNS[reader]}")
        except InputError as exc:
            raise InputError(f"reader {reader} mask {exc}") from exc
        if note:
            notes.append(f"reader {reader} mask {note}")
    if pre.n4:
        try:
            image, _ = n4_correct(image, pre)
        except InputError as exc:
            raise InputError(f"image {plan.image}: {exc}") from exc
    results = []
    for reader, mask_path in plan.masks.items():
        mask = masks[reader]
        try:
            values, diagnostics = rad.extract(extractor, image, mask, label)
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"reader {reader}'s mask {mask_path}: pyradiomics cannot use it "
                             f"({exc}); check that the mask covers the tumour and matches the "
                             "image's geometry") from exc
        # On the image's acquired grid, not pyradiomics' resampled one (see maxslice.py).
        ms = max_slice(image, mask, settings.maxslice.size, settings.maxslice.margin_mm,
                       label=label)
        key = plan.keys[reader]
        meta = {
            "key": key, "inputs": plan.inputs, "versions": versions(STAGE),
            "params": str(settings.radiomics.params_path()),
            "mask_segment": plan.segments.get(reader), "label": label,
            "max_slice_index": ms.slice_index, "max_slice_grid": "acquired",
            "max_slice_axis": ms.axial_axis, "max_slice_position_mm": ms.position_mm,
            "diagnostics": {k: str(v) for k, v in diagnostics.items()
                            if "Hash" in k or "Mask-" in k or "Image-original" in k},
        }
        table = feature_table([{"cohort": plan.cohort, "patient_id": plan.patient_id,
                                "reader": reader}], list(values), [list(values.values())])
        results.append((reader, table, meta, ms.array))
    _write(store, plan, results)
    return notes


def _write(store: Store, plan: PatientPlan,
           results: list[tuple[int, pa.Table, dict[str, Any], np.ndarray]]) -> None:
    """Write every reader's features and max slice, or none: a failed write (a full disk)
    removes what this patient's run had written, so no file is left without its status."""
    written: list[Path] = []
    try:
        for reader, table, meta, array in results:
            key = plan.keys[reader]
            path = store.radiomics_path(plan.cohort, reader, plan.patient_id, key)
            store.write_table(table, path, meta)
            written.append(path)
            path = store.maxslice_path(plan.cohort, reader, plan.patient_id, key)
            store.write_array(array, path)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
