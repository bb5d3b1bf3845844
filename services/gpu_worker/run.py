"""The GPU worker's entry points for the coordinator: fine-tune, embed, and the CNN's report.

``finetune`` trains ResNet50 on the training cohort's reader-1 max slices (plus, with protocol
"paper", the extra cohorts' slices, as the paper did) and returns a model id: the content key
of the training slices' keys and labels, the validation split, the CNN settings, the seed, the
initial weights' identity and the precision. The same inputs give the same id, and a finished
models/<model_id>/ is reused without training. The epoch kept is chosen on a validation split
of the training cohort, never on another cohort.

models/<model_id>/ holds checkpoint.pt (a plain state dict, ``torch.load(weights_only=True)``),
train_log.json (per-epoch loss, validation loss and AUC, the chosen epoch, seconds) and
model.json (provenance; written last, so its presence marks a finished model).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from dtlr.services.gpu_worker import embed as embed_stage
from dtlr.services.gpu_worker.data import (
    SliceRef,
    cohort_labels,
    list_slices,
    load_images,
    read_slices,
    split_validation,
)
from dtlr.services.gpu_worker.gradcam import (
    GradcamCase,
    cam_mass_inside,
    clearest_cases,
    gradcam_html,
    gradcam_maps,
    write_overlay,
)
from dtlr.services.gpu_worker.metrics import (
    THRESHOLD,
    cnn_metrics,
    head_probabilities,
    metrics_html,
    training_curve,
)
from dtlr.services.gpu_worker.model import (
    WeightsError,
    build_model,
    save_checkpoint,
    weights_identity,
)
from dtlr.services.gpu_worker.profiles import PAPER, Profile, Runtime, resolve
from dtlr.services.gpu_worker.train import fit
from dtlr.shared.config import Settings
from dtlr.shared.hashing import content_key, file_digest
from dtlr.shared.provenance import versions
from dtlr.shared.report import ReportSection
from dtlr.shared.stage import COHORT, InputError, StageRun, Unit
from dtlr.shared.store import StatusRecord, Store, read_feature_files

STAGE = "finetune"
# Bump when fine-tuning's code changes its result: every model id changes with it.
CODE_VERSION = "finetune-1"


class TrainingDataError(InputError):
    """Fine-tuning cannot run on these inputs (slices, labels or initial weights); the message
    says what to fix."""


@dataclass(frozen=True)
class TrainingPlan:
    """What a fine-tuning reads, and the model id it will have."""

    model_id: str
    runtime: Runtime
    fit: list[SliceRef]  # training cohort minus validation, plus extra cohorts (protocol paper)
    val: list[SliceRef]  # validation split of the training cohort
    unlabelled: list[str]  # training-cohort patients left out: no grade/label
    weights: dict[str, str]


def _profile_key(profile: Profile) -> dict[str, Any]:
    """The profile fields that change the trained weights (not the inference batch size)."""
    return {k: v for k, v in asdict(profile).items() if k not in ("name", "embed_batch_size")}


def _ids(refs: Sequence[SliceRef]) -> list[list[Any]]:
    return [[r.cohort, r.patient_id, r.key, r.label] for r in refs]


def plan_finetune(store: Store, train_cohort: str, settings: Settings,
                  extra_cohorts: Sequence[str] = ()) -> TrainingPlan:
    """The training and validation slices and the model id, without training anything."""
    cnn = settings.cnn
    runtime = resolve(cnn)
    train_refs = list_slices(store, train_cohort)
    labelled = [r for r in train_refs if r.label is not None]
    counts = [sum(r.label == k for r in labelled) for k in (0, 1)]
    if min(counts) < 2:
        raise TrainingDataError(
            f"training cohort {train_cohort!r} has {counts[1]} high-grade and {counts[0]} "
            "low-grade patients with a max slice; fine-tuning needs at least 2 of each (give "
            "'grade' or 'label' in the manifest and check the extraction status)")
    fit_refs, val_refs = split_validation(labelled, cnn.val_fraction, settings.seed)
    if cnn.protocol == "paper":
        for cohort in dict.fromkeys(extra_cohorts):
            if cohort != train_cohort:
                fit_refs += [r for r in list_slices(store, cohort) if r.label is not None]
    try:
        weights = weights_identity(cnn.weights)
    except WeightsError as exc:
        raise TrainingDataError(str(exc)) from exc
    model_id = content_key(
        CODE_VERSION, _ids(fit_refs), _ids(val_refs), _profile_key(runtime.profile),
        cnn.model_dump(mode="json", include={"momentum", "weight_decay", "dropout", "protocol",
                                             "val_fraction"}),
        settings.seed, weights, runtime.precision)
    return TrainingPlan(model_id, runtime, fit_refs, val_refs,
                        [r.patient_id for r in train_refs if r.label is None], weights)


def is_trained(store: Store, model_id: str) -> bool:
    """Whether models/<model_id>/ holds a finished fine-tuning."""
    d = store.model_dir(model_id)
    return (d / "model.json").is_file() and (d / "checkpoint.pt").is_file()


def _labels(refs: Sequence[SliceRef], device: torch.device) -> torch.Tensor:
    return torch.tensor([float(r.label or 0) for r in refs], device=device)


def _notes(info: dict[str, Any]) -> list[str]:
    """The sentences a report must show about how this CNN was trained."""
    notes = []
    if info["protocol"] == "paper" and info["extra_cohorts"]:
        notes.append(f"Protocol 'paper': the CNN was fine-tuned on the max slices of "
                     f"{info['train_cohort']} and {', '.join(info['extra_cohorts'])} together, "
                     "as Li et al. did; metrics and DTL features of those cohorts are therefore "
                     "not independent of the CNN's training.")
    else:
        notes.append("Protocol 'leakage-safe': the CNN was fine-tuned on the training cohort "
                     f"({info['train_cohort']}) only; other cohorts were only scored.")
    if info["weights"]["source"] == "random":
        notes.append("The CNN started from RANDOM weights (cnn.weights = random), not ImageNet: "
                     "this is not the paper's transfer learning.")
    prof = info["profile"]
    if _profile_key(Profile(**prof)) != _profile_key(PAPER):
        notes.append(f"Profile '{info['profile_name']}': {prof['image_size']}x"
                     f"{prof['image_size']} input, {prof['epochs']} epochs, batch "
                     f"{prof['batch_size']}, lr {prof['lr']}; the paper: 224x224, 30 epochs, "
                     "batch 32, lr 0.01.")
    return notes


def finetune(store: Store, train_cohort: str, settings: Settings,
             extra_cohorts: Sequence[str] = (), submission: str = "") -> StatusRecord:
    """Fine-tune ResNet50 (or reuse a finished identical run); the record's key is the model id.

    The cohort-level ``finetune`` record (stage protocol) says done, or why it failed: bad
    training data or initial weights (the fix), or an unexpected error.
    """
    with StageRun(store, Unit(train_cohort, COHORT, STAGE), submission) as run:
        plan = plan_finetune(store, train_cohort, settings, extra_cohorts)
        run.key = plan.model_id
        run.inputs = {"weights": plan.weights.get("sha256") or plan.weights["source"],
                      "fit_slices": content_key(_ids(plan.fit)),
                      "validation_slices": content_key(_ids(plan.val))}
        if is_trained(store, plan.model_id):
            run.skip()
        else:
            run.start()
            _train(store, plan, train_cohort, settings)
    assert run.record is not None
    return run.record


def _train(store: Store, plan: TrainingPlan, train_cohort: str, settings: Settings) -> None:
    """The fine-tuning itself; models/<model_id>/model.json is written last."""
    t0 = time.perf_counter()
    runtime, cnn, prof = plan.runtime, settings.cnn, plan.runtime.profile
    fit_x, fit_problems = load_images(plan.fit, prof.image_size, runtime.device, runtime.threads)
    val_x, val_problems = load_images(plan.val, prof.image_size, runtime.device, runtime.threads)
    problems = [p for p in fit_problems + val_problems if p]
    if problems:
        raise TrainingDataError("cannot fine-tune: " + "; ".join(problems))
    t_loaded = time.perf_counter()
    try:
        model = build_model(cnn.weights, cnn.dropout, settings.seed)
    except WeightsError as exc:
        raise TrainingDataError(str(exc)) from exc
    t_built = time.perf_counter()
    result = fit(model, fit_x, _labels(plan.fit, runtime.device), val_x,
                 _labels(plan.val, runtime.device), runtime, cnn, settings.seed)
    t_fit = time.perf_counter()
    directory = store.model_dir(plan.model_id)
    save_checkpoint(store, model, directory / "checkpoint.pt")
    store.write_json({**result.to_json(), "model_id": plan.model_id},
                     directory / "train_log.json")
    t_saved = time.perf_counter()
    seconds = {"load_slices": t_loaded - t0, "build_model": t_built - t_loaded,
               **result.seconds, "fit": t_fit - t_built, "save": t_saved - t_fit,
               "total": t_saved - t0}
    extra_used = sorted({r.cohort for r in plan.fit} - {train_cohort})
    info = {
        "model_id": plan.model_id, "code": CODE_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "train_cohort": train_cohort, "extra_cohorts": extra_used,
        "protocol": cnn.protocol, "seed": settings.seed, "weights": plan.weights,
        "dropout": cnn.dropout, "profile_name": prof.name, "profile": asdict(prof),
        "settings": cnn.model_dump(mode="json"), "runtime": runtime.describe(),
        "versions": versions(STAGE),
        "checkpoint_sha256": file_digest(directory / "checkpoint.pt"),
        "chosen_epoch": result.chosen_epoch,
        "val_auc": result.log[result.chosen_epoch - 1].val_auc,
        "training_slices": {"fit": _ids(plan.fit), "validation": _ids(plan.val),
                            "unlabelled_left_out": plan.unlabelled},
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
    }
    info["notes"] = _notes(info) + result.notes
    store.write_json(info, directory / "model.json")


def embed(store: Store, cohort: str, model_id: str, settings: Settings,
          patient_ids: Sequence[str] | None = None, submission: str = "") -> list[StatusRecord]:
    """Write the 2048-d DTL features of a cohort's patients (or of ``patient_ids``) to the store.

    Batched on the device; patients already embedded with this checkpoint are skipped. Each
    patient gets an "embed" status record; the coordinator refreshes the catalog afterwards.
    """
    runtime = resolve(settings.cnn)
    loaded = embed_stage.load_model(store, model_id, runtime)
    return embed_stage.embed_cohort(store, cohort, loaded, runtime, patient_ids, submission)


def _stored_features(store: Store, cohort: str, model_id: str) -> tuple[list[str], np.ndarray]:
    """Reader-1 DTL features of a cohort under ``model_id``: patient ids and (N, 2048)."""
    files = sorted(p for _, _, p in store.keyed_files(store.dtl_dir(cohort, model_id),
                                                       ".parquet"))
    wide = read_feature_files(files)
    if wide.empty:
        return [], np.zeros((0, len(embed_stage.COLUMNS)), np.float32)
    wide = wide[wide["reader"] == 1].sort_values("patient_id")
    return (wide["patient_id"].astype(str).tolist(),
            wide[list(embed_stage.COLUMNS)].to_numpy(np.float32))


def cnn_report(store: Store, model_id: str, cohorts: Sequence[str],
               settings: Settings | None = None) -> dict[str, Any]:
    """The CNN's metrics per cohort, its training log and Grad-CAM figures (HTML) for a report.

    Probabilities come from the stored reader-1 features and the checkpoint's head, so embed
    the cohorts first. Grad-CAM covers ``cnn.gradcam_cases`` surest high- and low-grade
    patients per cohort; PNGs go to models/<model_id>/gradcam/.
    """
    settings = settings or Settings()
    runtime = resolve(settings.cnn)
    loaded = embed_stage.load_model(store, model_id, runtime)
    info = loaded.info
    log = json.loads((store.model_dir(model_id) / "train_log.json").read_text())
    head = {k: v.numpy() for k, v in torch.load(store.model_dir(model_id) / "checkpoint.pt",
                                                 map_location="cpu", weights_only=True).items()
            if k.startswith("head.")}
    metrics: dict[str, Any] = {}
    cases: list[GradcamCase] = []
    for cohort in cohorts:
        ids, feats = _stored_features(store, cohort, model_id)
        labels_by_id = cohort_labels(store, cohort)
        probs = head_probabilities(feats, head["head.1.weight"], head["head.1.bias"])
        labels = [labels_by_id[p] for p in ids]
        known = [i for i, lab in enumerate(labels) if lab is not None]
        metrics[cohort] = cnn_metrics([labels[i] for i in known], probs[known], THRESHOLD)
        metrics[cohort]["role"] = ("training" if cohort == info["train_cohort"] else
                                   "fine-tuning (protocol paper)"
                                   if cohort in info["extra_cohorts"] else "test")
        chosen = clearest_cases(ids, labels, list(probs), settings.cnn.gradcam_cases)
        cases += _gradcam_cases(store, cohort, loaded, chosen,
                                {p: (lab, float(pr)) for p, lab, pr in zip(ids, labels, probs,
                                                                           strict=True)})
    notes = info["notes"]
    return {"model_id": model_id, "notes": notes, "protocol": info["protocol"],
            "weights": info["weights"], "profile": info["profile_name"],
            "chosen_epoch": log["chosen_epoch"], "val_auc": info["val_auc"],
            "train_log": log["epochs"], "metrics": metrics,
            "gradcam": [{**asdict(c), "png": str(c.png)} for c in cases],
            "html": "".join(f"<p>{html.escape(n)}</p>\n" for n in notes)
            + metrics_html(metrics) + gradcam_html(cases)}


def cnn_report_section(store: Store, model_id: str, cohorts: Sequence[str],
                       settings: Settings | None = None) -> ReportSection:
    """The modeler report's CNN section: notes, metrics, training curve, Grad-CAM overlays."""
    rep = cnn_report(store, model_id, cohorts, settings)
    curve = training_curve(rep["train_log"], rep["chosen_epoch"])
    caption = (f"Fine-tuning of model {model_id}: training loss, and loss and AUC on the "
               f"validation split of the training cohort; epoch {rep['chosen_epoch']} was kept "
               "(highest validation AUC).")
    return ReportSection(title=f"Fine-tuned ResNet50 (model {model_id})", html=rep["html"],
                         figures=[(curve, caption)])


def _gradcam_cases(store: Store, cohort: str, loaded: embed_stage.LoadedModel,
                   patient_ids: Sequence[str],
                   known: dict[str, tuple[int | None, float]]) -> list[GradcamCase]:
    """Grad-CAM overlays of ``patient_ids``' reader-1 max slices."""
    refs = list_slices(store, cohort, readers=(1,), patient_ids=patient_ids)
    if not refs:
        return []
    raw, _ = read_slices(refs)
    images, _ = load_images(refs, loaded.image_size, next(loaded.net.parameters()).device)
    classes = [int(known[r.patient_id][1] >= THRESHOLD) for r in refs]
    maps = gradcam_maps(loaded.net, images, raw.shape[-2:], classes)
    out = []
    for ref, arr, cam in zip(refs, raw, maps, strict=True):
        label, prob = known[ref.patient_id]
        inside = cam_mass_inside(cam, arr)
        png = store.model_dir(loaded.model_id) / "gradcam" / f"cohort={cohort}" / \
            f"{ref.patient_id}.png"
        write_overlay(store, png, arr, cam,
                      f"{cohort} / {ref.patient_id}  P(high grade) {prob:.2f}")
        out.append(GradcamCase(cohort, ref.patient_id, label, prob, inside, png))
    return out
