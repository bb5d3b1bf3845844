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
from collections.abc import Iterable, Sequence
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
from dtlr.services.gpu_worker.embed import crossfit_path, read_crossfit
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
from dtlr.services.gpu_worker.profiles import PAPER, Profile, Runtime, on_device, resolve
from dtlr.services.gpu_worker.train import fit
from dtlr.shared.config import Settings
from dtlr.shared.hashing import content_key, file_digest
from dtlr.shared.provenance import versions
from dtlr.shared.report import ReportSection
from dtlr.shared.stage import COHORT, InputError, StageRun, Unit
from dtlr.shared.store import StatusRecord, Store, read_feature_files

STAGE = "finetune"
# Bump when fine-tuning's code changes its result: every model id changes with it.
CODE_VERSION = "finetune-2"


class TrainingDataError(InputError):
    """Fine-tuning cannot run on these inputs (slices, labels or initial weights); the message
    says what to fix."""


@dataclass(frozen=True)
class TrainingPlan:
    """What a fine-tuning reads, and the model id it will have."""

    model_id: str
    runtime: Runtime
    fit: list[SliceRef]  # leakage-safe: training cohort (minus a fold) minus validation;
    #                      paper: every labelled slice of the training and extra cohorts
    val: list[SliceRef]  # validation split of the training cohort (empty for protocol paper)
    unlabelled: list[str]  # training-cohort patients left out: no grade/label
    weights: dict[str, str]
    fold: int | None = None  # cross-fitting: this CNN never saw the training patients of fold
    folds: int = 0


def crossfit_folds(settings: Settings) -> int:
    """How many cross-fitted CNNs give the training patients' DTL features (0: none).

    Protocol paper uses one CNN for every patient, as Li et al. did.
    """
    folds = settings.cnn.crossfit_folds
    return folds if settings.cnn.protocol == "leakage-safe" and folds >= 2 else 0


def fold_assignment(refs: Sequence[SliceRef], folds: int, seed: int) -> dict[str, int]:
    """Stratified, seeded assignment of the labelled training patients to ``folds`` folds."""
    out: dict[str, int] = {}
    for label in (0, 1):
        group = sorted(r.patient_id for r in refs if r.label == label)
        order = np.random.default_rng([seed, 3, label]).permutation(len(group))
        for rank, i in enumerate(order):
            out[group[i]] = rank % folds
    return out


def _profile_key(profile: Profile) -> dict[str, Any]:
    """The profile fields that change the trained weights (not the inference batch size)."""
    return {k: v for k, v in asdict(profile).items() if k not in ("name", "embed_batch_size")}


def _ids(refs: Sequence[SliceRef]) -> list[list[Any]]:
    return [[r.cohort, r.patient_id, r.key, r.label] for r in refs]


def plan_finetune(store: Store, train_cohort: str, settings: Settings,
                  extra_cohorts: Sequence[str] = (), fold: int | None = None) -> TrainingPlan:
    """The training and validation slices and the model id, without training anything.

    Protocol "leakage-safe": the training cohort's labelled slices (without the patients of
    ``fold`` for a cross-fitted CNN), of which a stratified split validates the epochs.
    Protocol "paper": every labelled slice of the training and extra cohorts, no validation
    split, the last epoch kept (Li et al. fine-tuned on all 442 images, 30 epochs).
    """
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
    folds = crossfit_folds(settings) if fold is not None else 0
    if fold is not None and not folds:
        raise ValueError(f"fold {fold} asked for, but cross-fitting is off (protocol "
                         f"{cnn.protocol}, cnn.crossfit_folds {cnn.crossfit_folds})")
    if cnn.protocol == "paper":
        fit_refs, val_refs = list(labelled), []
        for cohort in dict.fromkeys(extra_cohorts):
            if cohort != train_cohort:
                fit_refs += [r for r in list_slices(store, cohort) if r.label is not None]
    else:
        if fold is not None:
            assignment = fold_assignment(labelled, folds, settings.seed)
            labelled = [r for r in labelled if assignment[r.patient_id] != fold]
        fit_refs, val_refs = split_validation(labelled, cnn.val_fraction, settings.seed)
    try:
        weights = weights_identity(cnn.weights)
    except WeightsError as exc:
        raise TrainingDataError(str(exc)) from exc
    model_id = content_key(
        CODE_VERSION, _ids(fit_refs), _ids(val_refs), _profile_key(runtime.profile),
        cnn.model_dump(mode="json", include={"momentum", "weight_decay", "dropout", "protocol",
                                             "val_fraction"}),
        settings.seed, weights, runtime.device.type, runtime.precision, [fold, folds])
    return TrainingPlan(model_id, runtime, fit_refs, val_refs,
                        [r.patient_id for r in train_refs if r.label is None], weights,
                        fold, folds)


def write_crossfit(store: Store, model_id: str, train_cohort: str, settings: Settings,
                   fold_models: Sequence[str]) -> dict[str, Any]:
    """Record which fold CNN embeds which training patient for the CNN ``model_id``."""
    labelled = [r for r in list_slices(store, train_cohort) if r.label is not None]
    folds = len(fold_models)
    record = {"model_id": model_id, "train_cohort": train_cohort, "folds": folds,
              "seed": settings.seed, "fold_models": list(fold_models),
              "assignment": fold_assignment(labelled, folds, settings.seed)}
    if read_crossfit(store, model_id) != record:  # an identical re-run rewrites nothing
        store.write_json(record, crossfit_path(store, model_id))
    return record



def is_trained(store: Store, model_id: str) -> bool:
    """Whether models/<model_id>/ holds a finished fine-tuning."""
    d = store.model_dir(model_id)
    return (d / "model.json").is_file() and (d / "checkpoint.pt").is_file()


def _labels(refs: Sequence[SliceRef], device: torch.device) -> torch.Tensor:
    return torch.tensor([float(r.label or 0) for r in refs], device=device)


def _notes(info: dict[str, Any]) -> list[str]:
    """The sentences a report must show about how this CNN was trained."""
    notes = []
    trained = info.get("n_trained", len(info["training_slices"]["fit"]))
    if info["protocol"] == "paper":
        together = " and ".join([info["train_cohort"], *info["extra_cohorts"]])
        notes.append(f"Protocol 'paper': the CNN was fine-tuned on all {trained} labelled max "
                     f"slices of {together}, without a validation split (the last epoch was "
                     "kept), as Li et al. did; metrics and DTL features of those cohorts are "
                     "therefore not independent of the CNN's training.")
    else:
        notes.append(f"Protocol 'leakage-safe': the CNN was fine-tuned on {trained} max slices "
                     f"of the training cohort ({info['train_cohort']}) only, the epoch chosen "
                     f"on {info.get('n_validation', 0)} held-out training slices; other cohorts "
                     "were only scored.")
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
             extra_cohorts: Sequence[str] = (), submission: str = "",
             fold: int | None = None) -> StatusRecord:
    """Fine-tune ResNet50 (or reuse a finished identical run); the record's key is the model id.

    ``fold``: the cross-fitted CNN that leaves out that fold of the training cohort (its
    record's ``inputs["fold"]`` says which).

    The cohort-level ``finetune`` record (stage protocol) says done, or why it failed: bad
    training data or initial weights (the fix), or an unexpected error.
    """
    with StageRun(store, Unit(train_cohort, COHORT, STAGE), submission) as run:
        plan = plan_finetune(store, train_cohort, settings, extra_cohorts, fold)
        run.key = plan.model_id
        run.inputs = {"weights": plan.weights.get("sha256") or plan.weights["source"],
                      "fit_slices": content_key(_ids(plan.fit)),
                      "validation_slices": content_key(_ids(plan.val)),
                      "fold": "" if fold is None else str(fold)}
        if is_trained(store, plan.model_id):
            run.skip()
        else:
            run.start()
            with on_device(plan.runtime.device):
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
        "protocol": cnn.protocol, "fold": plan.fold, "folds": plan.folds,
        "validation": bool(plan.val), "seed": settings.seed, "weights": plan.weights,
        "dropout": cnn.dropout, "profile_name": prof.name, "profile": asdict(prof),
        "settings": cnn.model_dump(mode="json"), "runtime": runtime.describe(),
        "versions": versions(STAGE),
        "checkpoint_sha256": file_digest(directory / "checkpoint.pt"),
        "chosen_epoch": result.chosen_epoch,
        "val_auc": result.log[result.chosen_epoch - 1].val_auc,
        "n_trained": len(plan.fit), "n_validation": len(plan.val),
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
    with on_device(runtime.device):
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


def _heads(store: Store, model_ids: Iterable[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The linear head (weight, bias) of each checkpoint."""
    out = {}
    for mid in model_ids:
        state = torch.load(store.model_dir(mid) / "checkpoint.pt", map_location="cpu",
                           weights_only=True)
        out[mid] = (state["head.1.weight"].numpy(), state["head.1.bias"].numpy())
    return out


def cnn_report(store: Store, model_id: str, cohorts: Sequence[str],
               settings: Settings | None = None) -> dict[str, Any]:
    """The CNN's metrics per cohort, its training log and Grad-CAM figures (HTML) for a report.

    Probabilities come from the stored reader-1 features and the head of the CNN that computed
    them (a cross-fitted training patient's fold CNN, so training metrics are out-of-fold), so
    embed the cohorts first. Grad-CAM covers ``cnn.gradcam_cases`` surest high- and low-grade
    patients per cohort, with the same CNN; PNGs go to models/<model_id>/gradcam/.
    """
    settings = settings or Settings()
    runtime = resolve(settings.cnn)
    loaded = embed_stage.load_model(store, model_id, runtime)
    info = loaded.info
    crossfit = read_crossfit(store, model_id)
    log = json.loads((store.model_dir(model_id) / "train_log.json").read_text(encoding="utf-8"))
    heads = _heads(store, {model_id, *(crossfit["fold_models"] if crossfit else [])})
    metrics: dict[str, Any] = {}
    cases: list[GradcamCase] = []
    for cohort in cohorts:
        ids, feats = _stored_features(store, cohort, model_id)
        labels_by_id = cohort_labels(store, cohort)
        computing = [embed_stage.computing_model(crossfit, cohort, p, model_id) for p in ids]
        probs = np.array([head_probabilities(f[None], *heads[m])[0]
                          for f, m in zip(feats, computing, strict=True)])
        labels = [labels_by_id[p] for p in ids]
        known = [i for i, lab in enumerate(labels) if lab is not None]
        metrics[cohort] = cnn_metrics([labels[i] for i in known], probs[known], THRESHOLD)
        role = ("fine-tuning (protocol paper)" if cohort in info["extra_cohorts"] else "test")
        if cohort == info["train_cohort"]:
            role = (f"training, out-of-fold ({crossfit['folds']} cross-fitted CNNs)"
                    if crossfit else "training (in-sample)")
        metrics[cohort]["role"] = role
        chosen = clearest_cases(ids, labels, list(probs), settings.cnn.gradcam_cases)
        by_id = dict(zip(ids, computing, strict=True))
        cases += _gradcam_cases(store, cohort, runtime, chosen, by_id,
                                {p: (lab, float(pr)) for p, lab, pr in zip(ids, labels, probs,
                                                                           strict=True)},
                                model_id)
    notes = list(info["notes"])
    if crossfit:
        notes.append(f"The training cohort's DTL features are cross-fitted: each training "
                     f"patient was embedded by one of {crossfit['folds']} CNNs fine-tuned "
                     "without that patient's fold, so the DTL LASSO, the DTL SVM and the "
                     "nomogram's DTL weight are fitted on features of patients the CNN did not "
                     f"see; test cohorts were embedded by this CNN ({model_id}), fine-tuned on "
                     "the whole training cohort.")
    return {"model_id": model_id, "notes": notes, "protocol": info["protocol"],
            "weights": info["weights"], "profile": info["profile_name"],
            "chosen_epoch": log["chosen_epoch"], "val_auc": info["val_auc"],
            "train_log": log["epochs"], "metrics": metrics, "crossfit": crossfit,
            "gradcam": [{**asdict(c), "png": str(c.png)} for c in cases],
            "html": "".join(f"<p>{html.escape(n)}</p>\n" for n in notes)
            + metrics_html(metrics) + gradcam_html(cases)}


def cnn_report_section(store: Store, model_id: str, cohorts: Sequence[str],
                       settings: Settings | None = None) -> ReportSection:
    """The modeler report's CNN section: notes, metrics, training curve, Grad-CAM overlays."""
    runtime = resolve((settings or Settings()).cnn)
    with on_device(runtime.device):
        rep = cnn_report(store, model_id, cohorts, settings)
    curve = training_curve(rep["train_log"], rep["chosen_epoch"])
    caption = (f"Fine-tuning of model {model_id}: training loss, and loss and AUC on the "
               f"validation split of the training cohort; epoch {rep['chosen_epoch']} was kept "
               "(highest validation AUC).")
    return ReportSection(title=f"Fine-tuned ResNet50 (model {model_id})", html=rep["html"],
                         figures=[(curve, caption)])


def _gradcam_cases(store: Store, cohort: str, runtime: Runtime, patient_ids: Sequence[str],
                   computing: dict[str, str], known: dict[str, tuple[int | None, float]],
                   feature_set: str) -> list[GradcamCase]:
    """Grad-CAM overlays of ``patient_ids``' reader-1 max slices, each by the CNN that
    computed the patient's features."""
    refs = list_slices(store, cohort, readers=(1,), patient_ids=patient_ids)
    out = []
    for mid in sorted({computing[r.patient_id] for r in refs}):
        group = [r for r in refs if computing[r.patient_id] == mid]
        loaded = embed_stage.load_model(store, mid, runtime)
        raw, _ = read_slices(group)
        images, _ = load_images(group, loaded.image_size, next(loaded.net.parameters()).device)
        classes = [int(known[r.patient_id][1] >= THRESHOLD) for r in group]
        maps = gradcam_maps(loaded.net, images, raw.shape[-2:], classes)
        for ref, arr, cam in zip(group, raw, maps, strict=True):
            label, prob = known[ref.patient_id]
            inside = cam_mass_inside(cam, arr)
            png = store.model_dir(feature_set) / "gradcam" / f"cohort={cohort}" / \
                f"{ref.patient_id}.png"
            write_overlay(store, png, arr, cam,
                          f"{cohort} / {ref.patient_id}  P(high grade) {prob:.2f}")
            out.append(GradcamCase(cohort, ref.patient_id, label, prob, inside, png))
    return sorted(out, key=lambda c: patient_ids.index(c.patient_id))
