"""The paper-sized cohort on one node: every stage end to end through Celery, timed.

One command on the node to measure (from the repository root; needs ``redis-server`` on the
PATH, a private one is started on a free port; no network needed)::

    python -m benchmarks.bench_cohort                    # 340 + 102 patients, paper geometry
    python -m benchmarks.bench_cohort --patients 10      # the CPU smoke run (CI): 10 + 4

It generates the synthetic cohort at the paper's size and acquisition geometry
(``make_demo(geometry="paper")``: ``paper-hospitalA``, 340 training patients, 20 of them with a
second reader's mask, and ``paper-hospitalB``, 102 test patients; 256 x 256 x 25 voxels at
0.94 or 0.70 mm x 5 mm, tumours at their recorded size), registers it in a fresh store, and
starts a private redis-server, one ``dtlr worker --queue cpu --concurrency 1`` per core and one
``dtlr worker --queue gpu --gpu i`` per GPU (without CUDA: one gpu-queue worker that runs the
CNN on the CPU, which the output says), all serving that store with ``--data-root`` for the
generated data. When every worker is ready the clock starts and the real command runs as a
subprocess::

    dtlr submit --cohort paper-hospitalA --cohort paper-hospitalB --train paper-hospitalA \\
        --broker URL --store STORE --weights random

(``--weights PATH`` instead of random initial weights: ImageNet's cannot be downloaded on an
offline node.) On a GPU node the CNN runs with the defaults (paper profile, 5 cross-fitted fold
CNNs + the CNN); on a CPU-only node ``--config`` gets a small CNN profile (32 x 32 inputs,
1 epoch, 2 folds) so the smoke run stays short. ``--patients N`` scales the cohort: N training
and max(4, N x 102 / 340) test patients, N at least 10 (the SVMs' Platt scaling is a 5-fold
stratified cross-validation of the training cohort: 5 patients of each grade).

Timed: the wall time from the submit's start to its exit; each stage (extract, finetune,
embed, model) as the submit's own summary table reports it, and from the store's status
records: tasks, their summed and median seconds, and when the stage's first task started and
its last ended relative to the submit's start (record file times: a record is written when its
task ends, and holds the task's seconds). Writes the section "Paper-sized cohort on one node"
of benchmarks/RESULTS.md (``--results FILE`` elsewhere, ``--no-write`` only prints). Target:
120 s end to end for the full cohort on a 16-core node with one H200. Exits non-zero, with the
submit's output, when the submit fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import _results
from dtlr.services.coordinator.demo import PAPER_COHORTS, make_demo
from dtlr.shared.stage import COHORT
from dtlr.shared.store import StatusRecord, Store
from tests.cluster import BIN, REPO, Redis, Worker, new_store

TITLE = "Paper-sized cohort on one node"
TRAIN, TEST = PAPER_COHORTS
PAPER_TRAIN, PAPER_TEST, PAPER_READER2 = 340, 102, 20
TARGET_S = 120.0  # end to end, full cohort, 16-core node with one H200
TARGET_CORES = 16
MIN_PATIENTS = 10  # modeler.platt_cv_folds (5) patients of each grade in the training cohort
STAGES = ("extract", "finetune", "embed", "model")
WHERE = {"extract": "cpu queue", "finetune": "gpu queue", "embed": "gpu queue",
         "model": "coordinator"}
# A CPU-only node: a small CNN so that the smoke run stays short (the GPU node: the defaults).
CPU_CNN = """\
cnn:
  profile: quick
  image_size: 32
  epochs: 1
  batch_size: 8
  crossfit_folds: 2
"""
SHOW_CPU_CNN = "quick profile, 32 x 32 inputs, 1 epoch, batch 8, 2 fold CNNs + the CNN"
# A worker's one line per task: "dtlr.extract A/A001: 1 done, 0 failed (13.6 s)".
TASK_LINE = re.compile(r"dtlr\.(\w+) .*: \d+ done, \d+ failed \(([\d.]+) s\)")


def sizes(patients: int | None) -> tuple[int, int, int]:
    """Training, test and second-reader patients: the paper's, or scaled to ``patients``."""
    if patients is None:
        return PAPER_TRAIN, PAPER_TEST, PAPER_READER2
    test = max(4, round(patients * PAPER_TEST / PAPER_TRAIN))
    reader2 = min(PAPER_READER2, max(2, round(patients * PAPER_READER2 / PAPER_TRAIN)))
    return patients, test, reader2


def gpus() -> list[str]:
    """The CUDA devices' names, asked in a child process (CUDA is never started here)."""
    code = ("import json, torch; n = torch.cuda.device_count() if torch.cuda.is_available() "
            "else 0; print(json.dumps([torch.cuda.get_device_name(i) for i in range(n)]))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=180, check=True, encoding="utf-8")
        return list(json.loads(out.stdout.strip().splitlines()[-1]))
    except (subprocess.SubprocessError, ValueError, IndexError):
        return []


@dataclass
class StageTimes:
    """One stage, from the store's status records (times relative to the submit's start)."""

    done: int = 0
    failed: int = 0
    task_seconds: list[float] = field(default_factory=list)
    logged_seconds: float = 0.0  # the workers' log lines: the whole task, start-up included
    first_start: float = float("inf")
    last_end: float = float("-inf")


def stage_times(store: Store, t0: float) -> dict[str, StageTimes]:
    """Per stage: the records' counts and seconds; when its first task started and its last
    ended (a record file is written when its task ends: its time minus the task's seconds)."""
    out = {s: StageTimes() for s in STAGES}
    for path in sorted(store.root.glob("status/*/*.json")):
        record = StatusRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
        times = out.get(record.stage)
        if times is None:
            continue
        times.done += record.state == "done"
        times.failed += record.state == "failed"
        times.task_seconds.append(record.seconds)
        end = path.stat().st_mtime - t0
        times.first_start = min(times.first_start, end - record.seconds)
        times.last_end = max(times.last_end, end)
    return out


def logged_seconds(times: dict[str, StageTimes], workers: list[Worker]) -> None:
    """Add each stage's task seconds as the workers logged them (the whole task: a first task
    also imports its libraries, which the status record's seconds leave out)."""
    for w in workers:
        for line in w.log:
            match = TASK_LINE.search(line)
            if match and match[1] in times:
                times[match[1]].logged_seconds += float(match[2])


def submit_table(stderr: str) -> dict[str, dict[str, str]]:
    """The submit's per-stage summary table (rich's box characters), by stage."""
    rows = {}
    for line in stderr.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[0] in STAGES:
            rows[cells[0]] = dict(zip(("done", "skipped", "failed", "seconds"), cells[1:],
                                      strict=True))
    return rows


def check(store: Store, n_train: int, n_test: int) -> list[str]:
    """What is missing from the store: every patient extracted and embedded, one model run."""
    problems = []
    for cohort, n in ((TRAIN, n_train), (TEST, n_test)):
        records = store.statuses(cohort)
        for stage in ("extract", "embed"):
            done = {r.patient_id for r in records if r.stage == stage and r.state == "done"}
            if len(done) != n:
                problems.append(f"{cohort}: {len(done)} of {n} patients {stage}ed")
    models = [r for r in store.statuses(TRAIN) if r.stage == "model" and r.patient_id == COHORT]
    if [r.state for r in models] != ["done"]:
        problems.append(f"model runs: {[r.state for r in models]} (expected one, done)")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=None, metavar="N",
                        help="N training + max(4, N/3.3) test patients (default: the paper's "
                             "340 + 102); at least 10")
    parser.add_argument("--weights", default="random",
                        help="CNN start: 'random' (default) or a ResNet50 state-dict file")
    parser.add_argument("--config", type=Path, default=None,
                        help="settings file for the submit (default: none on a GPU node, a "
                             "small CNN profile on a CPU-only one)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the data and the store in this folder (default: a "
                             "temporary folder, removed)")
    parser.add_argument("--results", type=Path, default=_results.RESULTS,
                        help="the results file to write the section into")
    parser.add_argument("--no-write", action="store_true", help="print, do not write results")
    parser.add_argument("--timeout", type=float, default=3600, help="submit time limit (s)")
    args = parser.parse_args()
    if args.patients is not None and args.patients < MIN_PATIENTS:
        parser.error(f"--patients must be at least {MIN_PATIENTS} (the SVMs' 5-fold Platt "
                     "scaling needs 5 training patients of each grade)")
    n_train, n_test, n_reader2 = sizes(args.patients)
    cores = os.cpu_count() or 1
    names = gpus()
    work = args.work or Path(tempfile.mkdtemp(prefix="dtlr-bench-cohort-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(args, work, (n_train, n_test, n_reader2), cores, names)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, n: tuple[int, int, int], cores: int,
        names: list[str]) -> None:
    """Generate, start the cluster, submit, check the store, report."""
    n_train, n_test, n_reader2 = n
    data, store_root = work / "data", work / "store"
    if store_root.exists():
        shutil.rmtree(store_root)  # a fresh store: nothing to skip
    config = args.config
    if config is None and not names:
        config = work / "cpu-cnn.yaml"
        config.write_text(CPU_CNN, encoding="utf-8")
    print(f"{cores} cores, GPUs: {', '.join(names) or 'none (the CNN runs on the CPU)'}",
          flush=True)

    t = time.perf_counter()
    manifests = make_demo(data, n_train=n_train, n_test=n_test, n_reader2=n_reader2,
                          geometry="paper", jobs=cores)
    generate_s = time.perf_counter() - t
    print(f"generated {n_train} + {n_test} patients in {generate_s:.0f} s", flush=True)
    store = new_store(store_root, manifests)

    # Workers run this checkout's code: the caller's PYTHONPATH first, then the repository
    # (tests.cluster puts only the repository there).
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                        str(REPO)]))}
    # Workers accept a message only if every file it names (the settings' CNN weights too,
    # even in an extraction message) lies in a folder they may read.
    weights = Path(args.weights)
    roots = [data, *([weights.resolve().parent] if weights.is_file() else [])]
    redis = Redis(work)
    redis.start()
    workers: list[Worker] = []
    try:
        for _ in range(cores):
            workers.append(Worker(redis.url, store.root, "cpu", "--concurrency", "1",
                                  env=env, data_roots=roots))
        for i in range(len(names)):
            workers.append(Worker(redis.url, store.root, "gpu", "--gpu", str(i), env=env,
                                  data_roots=roots))
        if not names:
            workers.append(Worker(redis.url, store.root, "gpu", env=env, data_roots=roots))
        for w in workers:
            w.wait_ready(timeout=300)
        cmd = [str(BIN / "dtlr"), "submit", f"--cohort={TRAIN}", f"--cohort={TEST}",
               f"--train={TRAIN}", "--broker", redis.url, "--store", str(store.root),
               "--weights", str(weights.resolve()) if weights.is_file() else args.weights,
               *(["--config", str(config)] if config else [])]
        print("running", " ".join(cmd), flush=True)
        load_before = os.getloadavg()[0]
        start = time.time()
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  env={**os.environ, "COLUMNS": "200"}, encoding="utf-8")
        except subprocess.TimeoutExpired as exc:
            print(exc.stdout, exc.stderr, sep="\n", file=sys.stderr)
            sys.exit(f"dtlr submit did not end within {args.timeout:.0f} s")
        wall = time.perf_counter() - t0
    finally:
        for w in workers:
            w.stop()
        redis.stop()
    if done.returncode != 0:
        print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
        for w in workers:
            print(f"--- worker {w.node} (last lines)", *w.log[-15:], sep="\n", end="",
                  file=sys.stderr)
        sys.exit(f"dtlr submit exited {done.returncode} after {wall:.0f} s")
    problems = check(store, n_train, n_test)
    if problems:
        print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
        sys.exit("the store lacks: " + "; ".join(problems))
    times = stage_times(store, start)
    logged_seconds(times, workers)
    table = submit_table(done.stderr)
    body = report(args, cores, names, (n_train, n_test, n_reader2), generate_s, wall, times,
                  table, config, (load_before, os.getloadavg()[0]))
    print(body)
    if not args.no_write:
        _results.RESULTS = args.results
        _results.write_section(TITLE, body, device=f"{_results.machine()}, "
                                                   f"{', '.join(names) or 'no GPU'}")
        print(f"written to {args.results}")


def report(args: argparse.Namespace, cores: int, names: list[str], n: tuple[int, int, int],
           generate_s: float, wall: float, times: dict[str, StageTimes],
           table: dict[str, dict[str, str]], config: Path | None,
           load: tuple[float, float]) -> str:
    """The RESULTS.md section."""
    n_train, n_test, n_reader2 = n
    full = args.patients is None or (n_train, n_test) == (PAPER_TRAIN, PAPER_TEST)
    h200 = any("H200" in g for g in names)
    gpu_text = (f"{len(names)} GPU{'s' * (len(names) > 1)} ({', '.join(names)}): one "
                f"`dtlr worker --queue gpu --gpu i` per GPU" if names else
                "no GPU: one `dtlr worker --queue gpu` that runs the CNN **on the CPU**")
    if config is None:
        cnn = "the defaults (paper profile: 224 x 224, 30 epochs, batch 32; 5 fold CNNs + " \
              "the CNN, leakage-safe)"
    elif args.config is None:
        cnn = f"a small CPU profile ({SHOW_CPU_CNN}), given with `--config`"
    else:
        cnn = f"the settings file `{args.config}`"
    rows = []
    stage_sum = 0.0
    for stage in STAGES:
        t, s = times[stage], table.get(stage, {})
        seconds = float(s.get("seconds", "nan"))
        stage_sum += seconds
        median = statistics.median(t.task_seconds) if t.task_seconds else float("nan")
        span = (f"{t.first_start:.1f} - {t.last_end:.1f}" if t.task_seconds else "-")
        logged = f"{t.logged_seconds:.1f}" if WHERE[stage] != "coordinator" else "-"
        rows.append(f"| {stage} | {WHERE[stage]} | {t.done} | {t.failed} | {seconds:.1f} | "
                    f"{span} | {sum(t.task_seconds):.1f} | {logged} | {median:.2f} |")
    rows_text = "\n".join(rows)
    on_target_node = cores >= TARGET_CORES and h200
    if full and on_target_node:
        verdict = ("**meets the target**" if wall <= TARGET_S else "**misses the target**")
        target = (f"Target: {TARGET_S:.0f} s end to end on a {TARGET_CORES}-core node with "
                  f"one H200: {verdict} ({wall:.0f} s).")
    else:
        why = []
        if not full:
            why.append(f"a {n_train} + {n_test}-patient cohort, not the paper's "
                       f"{PAPER_TRAIN} + {PAPER_TEST}")
        if not on_target_node:
            why.append(f"{cores} cores and {', '.join(names) or 'no GPU'}, not "
                       f"{TARGET_CORES} cores and an H200")
        target = (f"Target ({TARGET_S:.0f} s end to end for the full cohort on a "
                  f"{TARGET_CORES}-core node with one H200): **does not apply** to this run "
                  f"({'; '.join(why)}).")
    shown = "python -m benchmarks.bench_cohort" + (
        f" --patients {args.patients}" if args.patients is not None else "") + (
        f" --weights {args.weights}" if args.weights != "random" else "")
    banner = "" if full and on_target_node else (
        f"**{'Smoke run' if not full else 'Full cohort'} on {cores} cores, "
        f"{'no GPU' if not names else ', '.join(names)}: not the target measurement.**\n\n")
    return f"""
{banner}`{shown}`. Cohort (`make_demo(geometry="paper")`): {TRAIN} {n_train} training patients
({n_reader2} with a second reader's mask) + {TEST} {n_test} test patients, 256 x 256 x 25
voxels at 0.94 mm (A) and 0.70 mm (B) in-plane x 5 mm slices, tumours at their recorded
size; generated in {generate_s:.0f} s (not timed below). Node: {cores} cores, {gpu_text};
{cores} `dtlr worker --queue cpu --concurrency 1`; a private redis-server; workers ready
before the clock starts. CNN: {cnn}; initial weights `{args.weights}`.

`dtlr submit --cohort {TRAIN} --cohort {TEST} --train {TRAIN} --broker URL --store STORE
--weights {args.weights}{' --config FILE' if config else ''}`:

**End to end: {wall:.1f} s** (the submit's start to its exit).

| stage | runs on | done | failed | seconds (submit's table) | first start - last end \
(s after start) | task seconds, sum (records) | (worker logs) | median per task |
|---|---|---|---|---|---|---|---|---|
{rows_text}
| **total** | | | | {stage_sum:.1f} (stages) | | | | |
| **end to end** | | | | **{wall:.1f}** | | | | |

The end to end time beyond the stages' ({wall - stage_sum:.1f} s) is the submit's start-up,
its preflight checks (broker, workers, parameter file, weights on the GPU worker) and catalog
refreshes; between stages the coordinator plans the next one and refreshes the catalog, and a
worker's first task of a stage imports its libraries (torch on the GPU worker: the worker logs'
task seconds include it, the records' do not). Load average (1 min) before / after the submit:
{load[0]:.1f} / {load[1]:.1f}.

{target}

On a GPU node (e.g. 16 cores + one H200), from the repository root, with `redis-server` on the
PATH: `python -m benchmarks.bench_cohort` (add `--weights /path/resnet50.pth` for ImageNet
initial weights; the cost is the same).
"""


if __name__ == "__main__":
    main()
