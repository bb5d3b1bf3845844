"""GPU worker benchmark: the paper's fine-tuning workload and the embedding of 442 slices.

One command on a CUDA machine (about a minute; no network needed, weights are random unless
``--weights PATH`` is given, which costs the same)::

    python -m benchmarks.bench_gpu        # from the repository root

It writes a synthetic store of 552 max slices (224x224) with the real Store API: with the
default 20% validation split of the training cohort, 442 slices are trained on (the paper's
442 images), batch 32, 30 epochs, paper profile (bf16 autocast, channels_last, CUDA graph).
Then, in a fresh Python process, it times ``finetune`` (reading the slices from the store
included) and ``embed`` of 442 patients (reading, forward, Parquet files and status records),
and separately the forward pass alone, and compares the features with the same checkpoint's on
the CPU (fp32 inference: stated tolerance 1e-4 of the vector's norm); ``--crossfit 5`` also
times the leakage-safe cross-fit (the CNN and 5 fold CNNs on a 340-patient training cohort).
Results are printed and written to
benchmarks/RESULTS.md under a heading naming the card (torch.cuda.get_device_name), with the
date. ``--tiny`` runs a small CPU version of the same path (used by the tests).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import _results
from dtlr.services.coordinator import pipeline
from dtlr.services.coordinator.dispatch import Dispatch
from dtlr.services.gpu_worker import run
from dtlr.services.gpu_worker.data import list_slices, load_images
from dtlr.services.gpu_worker.embed import embed_images, load_model, read_crossfit
from dtlr.services.gpu_worker.model import build_model
from dtlr.services.gpu_worker.profiles import resolve
from dtlr.services.gpu_worker.train import fit
from dtlr.shared.config import CNNSettings, Settings
from dtlr.shared.store import Store
from tests.synthetic import slices as synthetic

REPO = Path(__file__).resolve().parents[1]
COHORT = "bench"
CROSSFIT_COHORT = "bench-train"  # the paper's training cohort: 340 patients
PAPER = {"patients": 552, "size": 224, "embed": 442, "train": 340}  # 552 - 20 % = 442 trained
TINY = {"patients": 40, "size": 64, "embed": 32, "train": 24}
AGREEMENT_SLICES = 32


def settings_for(args: argparse.Namespace) -> Settings:
    """Paper profile on CUDA; the tiny CPU check uses 32x32 inputs, 2 epochs, one thread."""
    weights = args.weights or "random"
    if args.tiny:
        cnn = CNNSettings(weights=weights, profile="quick", device="cpu", image_size=32,
                          epochs=2, batch_size=8, threads=1)
    else:
        cnn = CNNSettings(weights=weights, profile="paper", device="cuda",
                          cuda_graph=not args.eager)
    return Settings(cnn=cnn, seed=args.seed)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """The measured run, in a fresh process: CUDA start-up, fine-tune, embed, forward alone."""
    t_main = time.perf_counter()
    store = Store(args.root)
    settings = settings_for(args)
    cuda = settings.cnn.device == "cuda"
    out: dict[str, Any] = {}
    t = time.perf_counter()
    if cuda:
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
    out["device_init_s"] = time.perf_counter() - t
    t = time.perf_counter()
    record = run.finetune(store, COHORT, settings)
    if record.state != "done":
        raise SystemExit(f"fine-tuning failed: {record.message}")
    model_id = record.key
    out["finetune_s"] = time.perf_counter() - t
    info = json.loads((store.model_dir(model_id) / "model.json").read_text(encoding="utf-8"))
    log = json.loads((store.model_dir(model_id) / "train_log.json").read_text(encoding="utf-8"))
    out.update(model_id=model_id, finetune_parts=info["seconds"], runtime=info["runtime"],
               trained_slices=len(info["training_slices"]["fit"]),
               validation_slices=len(info["training_slices"]["validation"]),
               epoch_s=[e["seconds"] for e in log["epochs"]], notes=log["notes"],
               chosen_epoch=log["chosen_epoch"])
    patients = sorted({r.patient_id for r in list_slices(store, COHORT)})[:args.embed]
    t = time.perf_counter()
    records = run.embed(store, COHORT, model_id, settings, patient_ids=patients)
    out["embed_s"] = time.perf_counter() - t
    out["embedded"] = sum(r.state == "done" for r in records)
    # The forward pass alone, on slices already on the device (second call: warm).
    runtime = resolve(settings.cnn)
    loaded = load_model(store, model_id, runtime)
    refs = list_slices(store, COHORT, patient_ids=patients)
    out["forward_slices"] = len(refs)
    t = time.perf_counter()
    images, _ = load_images(refs, loaded.image_size, runtime.device, runtime.threads)
    if cuda:
        torch.cuda.synchronize()
    out["embed_read_scale_s"] = time.perf_counter() - t
    forward = []
    for _ in range(3):
        t = time.perf_counter()
        embed_images(loaded.net, images, runtime)  # ends with the host copy: synchronised
        forward.append(time.perf_counter() - t)
    out["embed_forward_s"] = forward
    out["agreement"] = cpu_agreement(store, model_id, refs[:AGREEMENT_SLICES], images,
                                     loaded, runtime)
    if args.crossfit:
        out["crossfit"] = crossfit(store, settings, args.crossfit)
    out["main_s"] = time.perf_counter() - t_main
    if cuda:
        out["host_syncs_2_epochs"] = count_syncs(store, settings)
    return out


def cpu_agreement(store: Store, model_id: str, refs: list, device_images: torch.Tensor,
                  loaded: Any, runtime: Any) -> dict[str, float]:
    """The same checkpoint's features computed on the CPU: the largest difference relative to
    each feature vector's norm (the stated tolerance is 1e-4)."""
    here = embed_images(loaded.net, device_images[:len(refs)], runtime)
    cpu = resolve(CNNSettings(device="cpu", profile="paper", threads=torch.get_num_threads()))
    cpu_model = load_model(store, model_id, cpu)
    cpu_images, _ = load_images(refs, cpu_model.image_size, cpu.device)
    there = embed_images(cpu_model.net, cpu_images, cpu)
    rel = abs(here - there).max(axis=1) / np.linalg.norm(there, axis=1)
    return {"slices": len(refs), "max_relative": float(rel.max()),
            "median_relative": float(np.median(rel))}


def crossfit(store: Store, settings: Settings, folds: int) -> dict[str, Any]:
    """The leakage-safe cross-fit on the paper's training cohort: the CNN and its fold CNNs,
    one after the other on this device (a node with several GPUs trains them at once)."""
    cf = settings.model_copy(update={"cnn": settings.cnn.model_copy(
        update={"crossfit_folds": folds})})
    t = time.perf_counter()
    model_id, summary = pipeline.run_finetune(store, CROSSFIT_COHORT, [CROSSFIT_COHORT], cf,
                                              "bench", Dispatch())
    seconds = time.perf_counter() - t
    if model_id is None:
        raise SystemExit(f"cross-fit failed: {[r.message for r in summary.failed]}")
    ids = [model_id, *read_crossfit(store, model_id)["fold_models"]]
    infos = [json.loads((store.model_dir(m) / "model.json").read_text(encoding="utf-8"))
             for m in ids]
    return {"seconds": seconds, "cnns": len(ids),
            "trained_images": sum(i["n_trained"] * i["profile"]["epochs"] for i in infos),
            "per_cnn_s": [i["seconds"]["total"] for i in infos]}


def count_syncs(store: Store, settings: Settings) -> int:
    """Host synchronisations of a 2-epoch fit (torch.cuda sync debug mode), after the timings."""
    cnn = settings.cnn.model_copy(update={"epochs": 2})
    plan = run.plan_finetune(store, COHORT, settings.model_copy(update={"cnn": cnn}))
    device = plan.runtime.device
    size = plan.runtime.profile.image_size
    fit_x, _ = load_images(plan.fit, size, device)
    val_x, _ = load_images(plan.val, size, device)
    fit_y = torch.tensor([float(r.label or 0) for r in plan.fit], device=device)
    val_y = torch.tensor([float(r.label or 0) for r in plan.val], device=device)
    model = build_model(cnn.weights, cnn.dropout, settings.seed).to(
        device, memory_format=torch.channels_last)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fit(model, fit_x, fit_y, val_x, val_y, plan.runtime, cnn, settings.seed)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def report(res: dict[str, Any], args: argparse.Namespace, wall: float) -> str:
    """The RESULTS.md section body."""
    parts, epochs, rt = res["finetune_parts"], res["epoch_s"], res["runtime"]
    n_img = res["trained_slices"] * len(epochs)
    mode = "CUDA graph" if rt["cuda_graph"] and not res["notes"] else "eager"
    fwd = res["embed_forward_s"]
    size = rt["profile"]["image_size"]
    command = "python -m benchmarks.bench_gpu" + " --tiny" * args.tiny + " --eager" * args.eager
    lines = [
        f"Command: `{command}`. Synthetic store of "
        f"{res['trained_slices'] + res['validation_slices']} max slices: "
        f"{res['trained_slices']} trained, {res['validation_slices']} for validation (training "
        f"cohort only); batch {rt['profile']['batch_size']}, {len(epochs)} epochs, {size}x{size}, "
        f"{rt['precision']}, channels_last {rt['channels_last']}, {mode}; weights "
        f"{args.weights or 'random'} (the same cost as ImageNet weights).",
        "",
        "| step, in a fresh process | seconds |",
        "|---|---|",
        f"| Python start + imports (torch, DTLR) | {wall - res['main_s']:.2f} |",
        f"| CUDA context | {res['device_init_s']:.2f} |",
        f"| **fine-tune, total**: read the slices from the store, build, train, validate, save "
        f"| **{res['finetune_s']:.2f}** |",
        f"| - read + scale the slices onto the device | {parts['load_slices']:.2f} |",
        f"| - build the model | {parts['build_model']:.2f} |",
        f"| - {len(epochs)} epochs with validation ({n_img / parts['epochs']:.0f} trained "
        f"images/s) | {parts['epochs']:.2f} |",
        f"| - first epoch (warm-up{', capture' if mode != 'eager' else ''}) / median epoch "
        f"| {epochs[0]:.2f} / {statistics.median(epochs):.3f} |",
        f"| - save checkpoint and log | {parts['save']:.2f} |",
        f"| **embed {res['embedded']} patients**, end to end: read, scale, forward, one Parquet "
        f"file and status record each | **{res['embed_s']:.2f}** |",
        f"| - forward pass alone, {res['forward_slices']} slices on the device (first / best "
        f"of 3) | {fwd[0]:.3f} / {min(fwd):.3f} |",
        f"| - read + scale the slices onto the device | {res['embed_read_scale_s']:.2f} |",
        f"| whole process | {wall:.2f} |",
        "",
        f"Chosen epoch: {res['chosen_epoch']}.",
    ]
    if "host_syncs_2_epochs" in res:
        lines += ["", f"Host synchronisations in a separate 2-epoch fit (torch.cuda sync debug "
                  f"mode): {res['host_syncs_2_epochs']}; by design a few at start-up (the "
                  "validation labels, normalisation constants) and one per epoch (validation "
                  "logits and the epoch's loss in one transfer), none per training step."]
    agree = res["agreement"]
    lines += ["", f"Features of the same checkpoint computed here and on the CPU "
              f"({agree['slices']} slices, fp32 inference on both): largest difference "
              f"{agree['max_relative']:.2e} of the feature vector's norm (median "
              f"{agree['median_relative']:.2e}); stated tolerance 1e-4."]
    if "crossfit" in res:
        cf = res["crossfit"]
        lines += ["", f"Cross-fit (`--crossfit {cf['cnns'] - 1}`): the CNN and its "
                  f"{cf['cnns'] - 1} fold CNNs on a {TINY['train'] if args.tiny else 340}-"
                  f"patient training cohort, one after the other on this device: "
                  f"**{cf['seconds']:.1f} s** for {cf['trained_images']} trained images "
                  f"({cf['trained_images'] / n_img:.2f}x the single fine-tune above); per CNN "
                  + ", ".join(f"{x:.1f}" for x in cf["per_cnn_s"]) + " s. With one GPU worker "
                  "per GPU the fold CNNs train at once."]
    if res["notes"]:
        lines += ["", "Notes: " + "; ".join(res["notes"])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small CPU run (tests)")
    parser.add_argument("--eager", action="store_true", help="no CUDA graph capture")
    parser.add_argument("--weights", default=None, help="ResNet50 state dict (default random)")
    parser.add_argument("--root", type=Path, default=None, help="store folder (default: temp)")
    parser.add_argument("--results", type=Path, default=_results.RESULTS)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--crossfit", type=int, default=0, metavar="K",
                        help="also time the leakage-safe cross-fit: the CNN + K fold CNNs on "
                             "the paper's 340-patient training cohort")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--embed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run on a GPU machine, or pass --tiny for the CPU check")
    shape = TINY if args.tiny else PAPER
    with tempfile.TemporaryDirectory(prefix="dtlr-bench-") as tmp:
        root = args.root or Path(tmp)
        store = Store(root)
        if not store.has_cohort(COHORT):
            print(f"writing {shape['patients']} synthetic max slices to {root} ...", flush=True)
            synthetic.write_cohort(store, COHORT, shape["patients"], seed=1, size=shape["size"])
        if args.crossfit and not store.has_cohort(CROSSFIT_COHORT):
            synthetic.write_cohort(store, CROSSFIT_COHORT, shape["train"], seed=2,
                                   size=shape["size"])
        cmd = [sys.executable, "-m", "benchmarks.bench_gpu", "--child", "--root", str(root),
               "--seed", str(args.seed), "--embed", str(shape["embed"])]
        cmd += ["--tiny"] * args.tiny + ["--eager"] * args.eager
        cmd += ["--crossfit", str(args.crossfit)] if args.crossfit else []
        cmd += ["--weights", args.weights] if args.weights else []
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO,
                              encoding="utf-8")
        wall = time.perf_counter() - t
        if done.returncode:
            sys.exit(f"benchmark process failed:\n{done.stderr[-4000:]}")
        res = json.loads(done.stdout.strip().splitlines()[-1])
    device = res["runtime"]["device_name"]
    card = "CPU (tiny check)" if args.tiny else device
    body = report(res, args, wall)
    print(body)
    _results.RESULTS = args.results
    variant = " (eager)" if args.eager else ""
    _results.write_section(f"GPU worker: fine-tune and embed, {card}{variant}", body,
                           device=f"{device}; {_results.machine()}")
    print(f"\nwritten to {args.results}")


if __name__ == "__main__":
    main()
