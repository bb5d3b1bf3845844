"""``dtlr-worker``: a Celery worker for the ``cpu`` queue or one GPU of the ``gpu`` queue."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import click

from shared.celery_app import broker_url, make_app

THREADS_ENV = "DTLR_THREADS"


def visible_gpus() -> int:
    """How many CUDA devices this process can see (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_gpu_fleet(count: int, broker: str, loglevel: str) -> None:
    """One worker process per GPU, each pinned to its device; stops them all on Ctrl-C."""
    procs = [subprocess.Popen([sys.executable, "-m", "shared.cli.worker", "--queue", "gpu",
                               "--gpu", str(i), "--broker", broker, "--loglevel", loglevel])
             for i in range(count)]

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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--queue", type=click.Choice(["cpu", "gpu"]), required=True,
              help="cpu: extraction; gpu: CNN fine-tuning and embedding.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Parallel tasks (cpu queue; default: number of cores).")
@click.option("--gpu", type=click.IntRange(min=0), default=None,
              help="Pin this gpu-queue worker to CUDA device N.")
@click.option("--gpus", type=click.Choice(["all"]), default=None,
              help="Start one gpu-queue worker per visible GPU.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads per task (default: cores / concurrency). Give 1 when several "
                   "workers share a machine, so they do not fight over its cores.")
@click.option("--broker", default=None, help="Broker URL (or set DTLR_BROKER_URL).")
@click.option("--loglevel", default="info", show_default=True)
def worker(queue: str, concurrency: int | None, gpu: int | None, gpus: str | None,
           threads: int | None, broker: str | None, loglevel: str) -> None:
    """Serve the DTLR task queue QUEUE.

    \b
    dtlr-worker --queue cpu --concurrency 8
    dtlr-worker --queue gpu --gpu 0          # one process per GPU
    dtlr-worker --queue gpu --gpus all       # one per visible GPU
    On a machine without CUDA, a gpu-queue worker runs the CNN on the CPU (quick profile).
    """
    url = broker_url(broker)
    if url is None:
        raise click.UsageError("no broker: give --broker redis://HOST:6379/0 or set "
                               "DTLR_BROKER_URL")
    if queue == "cpu" and (gpu is not None or gpus):
        raise click.UsageError("--gpu/--gpus apply to --queue gpu only")
    if gpus == "all":
        count = visible_gpus()
        if count > 1:
            run_gpu_fleet(count, url, loglevel)
            return
        gpu = 0 if count == 1 else None
    cores = os.cpu_count() or 1
    if queue == "gpu":
        if gpu is not None:
            # Before torch is imported anywhere in this process: the worker sees one device.
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        concurrency = 1
    concurrency = concurrency or cores
    os.environ[THREADS_ENV] = str(threads or max(1, cores // concurrency))
    name = f"{queue}{'' if gpu is None else gpu}@{socket.gethostname()}"
    app = make_app(url)
    app.worker_main(argv=["worker", "--queues", queue, "--concurrency", str(concurrency),
                          "--hostname", name, "--loglevel", loglevel,
                          "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle"])


if __name__ == "__main__":
    worker()
