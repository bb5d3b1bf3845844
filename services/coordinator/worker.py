"""``dtlr worker``: a Celery worker for the ``cpu`` queue or one GPU of the ``gpu`` queue.

A worker serves one store (``--store`` / ``$DTLR_HOME``) and reads inputs only from it and the
``--data-root`` folders it was started with: a message naming another store or any file
elsewhere is refused (and logged) before the file system is touched.
Each task runs single-threaded by default (``--threads``), so any mix of workers on one node
uses at most one core per task and never oversubscribes it (benchmarks/RESULTS.md, "Workers
sharing a node"); ``--concurrency`` (default: the number of cores) gives the parallelism. The
log has one line per task (pyradiomics' and Celery's per-task INFO lines are silenced).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import click
from celery.signals import after_setup_logger, worker_process_init

from dtlr.services.coordinator.dispatch import coordinator_app
from dtlr.shared.celery_app import (
    WORKER_DATA_ROOTS_ENV,
    WORKER_STORE_ENV,
    broker_problem,
    broker_url,
)
from dtlr.shared.cli import store_option
from dtlr.shared.config import share_cores
from dtlr.shared.store import Store

THREADS_ENV = "DTLR_THREADS"


class BrokerRefusedError(RuntimeError):
    """The broker refused this worker's password (or needs one)."""

    exit_code = 3  # shared.cli.EXIT_BROKER
# Celery's own per-task lines ("received", "succeeded"): the task wrapper logs one line instead.
QUIET_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "radiomics", "pykwalify")


def visible_gpus() -> int:
    """How many CUDA devices there are, counted in a child process.

    Asking torch here would initialise CUDA in the process that Celery then forks, and CUDA
    cannot be used in a forked child: the GPU worker would silently run on the CPU.
    """
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, check=True, encoding="utf-8")
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return 0


def run_gpu_fleet(count: int, argv: list[str]) -> None:
    """One worker process per GPU, each pinned to its device; stops them all on Ctrl-C."""
    procs = [subprocess.Popen([sys.executable, "-m", "dtlr.services.coordinator.worker",
                               *argv, "--gpu", str(i)]) for i in range(count)]

    def stop(*_: object) -> None:
        for p in procs:
            p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        stop()
        codes = [p.wait() for p in procs]
    sys.exit(max(codes, default=0))


@worker_process_init.connect
def _share_cores(**_: object) -> None:
    """Each pool process uses its share of the cores (set by dtlr worker)."""
    threads = int(os.environ.get(THREADS_ENV, "0"))
    if threads:
        share_cores(threads)


@after_setup_logger.connect
def _quiet(**_: object) -> None:
    """One log line per task: the wrapper's. Libraries' per-task INFO lines are dropped."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("dtlr").setLevel(logging.INFO)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--queue", type=click.Choice(["cpu", "gpu"]), required=True,
              help="cpu: extraction; gpu: CNN fine-tuning and embedding.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Parallel tasks (cpu queue; default: number of cores).")
@click.option("--gpu", type=click.IntRange(min=0), default=None,
              help="Pin this gpu-queue worker to CUDA device N.")
@click.option("--gpus", type=click.Choice(["all"]), default=None,
              help="Start one gpu-queue worker per GPU.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads per task (default 1, so workers sharing a node never fight over "
                   "its cores).")
@click.option("--data-root", "data_roots", multiple=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A folder this worker may read images, masks and parameter files from "
                   "(repeatable; also $DTLR_DATA_ROOTS). Messages naming any other file are "
                   "refused.")
@click.option("--include", "modules", multiple=True, metavar="MODULE",
              help="Load another task module as well (plugins, the test suite's stages).")
@click.option("--broker", default=None, help="Broker URL (or set DTLR_BROKER_URL).")
@click.option("--loglevel", default="info", show_default=True)
@store_option
def worker(queue: str, concurrency: int | None, gpu: int | None, gpus: str | None,
           threads: int | None, data_roots: tuple[Path, ...], modules: tuple[str, ...],
           broker: str | None, loglevel: str, store: Store) -> None:
    """Serve the DTLR task queue QUEUE for one store.

    \b
    dtlr worker --queue cpu --concurrency 8
    dtlr worker --queue gpu --gpu 0          # one process per GPU
    dtlr worker --queue gpu --gpus all       # one per GPU
    On a machine without CUDA, a gpu-queue worker runs the CNN on the CPU (quick profile).
    """
    url = broker_url(broker)
    if url is None:
        raise click.UsageError("no broker: give --broker redis://HOST:6379/0 or set "
                               "DTLR_BROKER_URL")
    if queue == "cpu" and (gpu is not None or gpus):
        raise click.UsageError("--gpu/--gpus apply to --queue gpu only")
    problem = broker_problem(url)
    if problem and "password" in problem:
        raise BrokerRefusedError(problem)  # waiting would not help
    if problem:
        click.echo(f"{problem}; waiting for it (Ctrl-C to stop)", err=True)
    if gpus == "all":
        count = visible_gpus()
        if count > 1:
            argv = ["--queue", "gpu", "--broker", url, "--loglevel", loglevel,
                    "--store", str(store.root), *[f"--include={m}" for m in modules],
                    *[f"--data-root={p}" for p in data_roots]]
            if threads:
                argv.append(f"--threads={threads}")
            run_gpu_fleet(count, argv)
            return
        gpu = 0 if count == 1 else None
    cores = os.cpu_count() or 1
    if queue == "gpu":
        if gpu is not None:
            # Before torch is imported anywhere in this process: the worker sees one device,
            # and a task that would fall back to the CPU fails loudly (profiles.DeviceError).
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
            os.environ["DTLR_WORKER_DEVICE"] = f"GPU {gpu}"
        concurrency = 1
    concurrency = concurrency or cores
    os.environ[THREADS_ENV] = str(threads or 1)
    os.environ[WORKER_STORE_ENV] = str(Path(store.root).resolve())
    roots = [str(p.resolve()) for p in data_roots]
    inherited = os.environ.get(WORKER_DATA_ROOTS_ENV, "")
    os.environ[WORKER_DATA_ROOTS_ENV] = os.pathsep.join([*roots, *filter(None, [inherited])])
    store.remove_stale_temp_files()  # left by this host's workers that were killed mid-write
    name = f"{queue}{'' if gpu is None else gpu}-{os.getpid()}@{socket.gethostname()}"
    app = coordinator_app(url, modules)
    app.worker_main(argv=["worker", "--queues", queue, "--concurrency", str(concurrency),
                          "--hostname", name, "--loglevel", loglevel,
                          "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle"])


if __name__ == "__main__":
    from dtlr.shared.cli import run_command

    run_command(worker, "dtlr worker")
