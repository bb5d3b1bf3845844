"""Where stage work runs: in this process or a local pool (the embedded default), or on Celery.

Either way a stage builds the same :class:`Job` (task spec + validated message + the plain
function that does the work); locally the function runs through the same guard a worker uses
(:func:`dtlr.shared.celery_app.execute`), remotely the message is sent and followed through the
workers' events (:mod:`dtlr.services.coordinator.follow`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from celery import Celery

from dtlr.shared.celery_app import execute, make_app
from dtlr.shared.config import share_cores
from dtlr.shared.messages import TaskMessage, TaskSpec
from dtlr.shared.stage import Unit
from dtlr.shared.store import StatusRecord, Store

# The task modules a worker loads: the coordinator is the one place that names the services.
TASK_MODULES = ("dtlr.services.extractor.tasks", "dtlr.services.gpu_worker.tasks")


def coordinator_app(broker: str, extra_modules: Sequence[str] = ()) -> Celery:
    """The Celery app of coordinators and workers: DTLR's task modules (+ extra ones)."""
    return make_app(broker, include=[*TASK_MODULES, *extra_modules])


def new_job_id() -> str:
    """The coordinator's id of one piece of work (kept when a task is sent again)."""
    return uuid.uuid4().hex


@dataclass
class Job:
    """One task: what to run, its validated message, and the units it will record.

    ``local`` is the plain stage function a worker's task wraps; ``units`` are the records the
    coordinator expects (with the keys it planned), used when a task ends without any.
    """

    spec: TaskSpec
    message: TaskMessage
    local: Callable[[TaskMessage], list[StatusRecord]]
    units: list[Unit] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.message.job:
            self.message = self.message.model_copy(update={"job": new_job_id()})
        if not self.units:
            self.units = self.message.units()

    @property
    def id(self) -> str:
        return self.message.job


def _init_worker(threads: int) -> None:
    """Pool process start-up: share the cores, and leave Ctrl-C to the coordinator (which
    stops the pool at once instead of letting each process finish a queued patient)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    share_cores(threads)


def _run_local(job: Job) -> list[StatusRecord]:
    return execute(job.message, job.local)


class Dispatch:
    """Run jobs here (``app`` None: the embedded default) or on Celery workers via ``broker``."""

    def __init__(self, app: Celery | None = None, broker: str | None = None,
                 jobs: int = 1) -> None:
        self.app = app
        self.broker = broker
        self.jobs = jobs

    @property
    def distributed(self) -> bool:
        return self.app is not None

    def run(self, jobs: list[Job], parallel: bool = False) -> Iterator[StatusRecord]:
        """Each job's status records as jobs finish (``parallel``: in a local process pool)."""
        if self.app is not None:
            from dtlr.services.coordinator.follow import Follower

            assert self.broker is not None
            yield from Follower(self.app, self.broker).run(jobs)
        elif not parallel or self.jobs == 1 or len(jobs) < 2:
            for job in jobs:
                yield from _run_local(job)
        else:
            yield from self._pool(jobs)

    def _pool(self, jobs: list[Job]) -> Iterator[StatusRecord]:
        """A process pool sharing the cores. Ctrl-C (or a failure to write the store) stops it
        at once: running patients are killed, queued ones never start, and the temporary files
        of the killed processes are removed, so nothing half-written is left."""
        workers = min(self.jobs, len(jobs))
        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker,
                                                        initargs=(threads,))
        finished = False
        try:
            for records in pool.imap_unordered(_run_local, jobs, chunksize=1):
                yield from records
            finished = True
        finally:
            if finished:
                pool.close()
            else:
                pool.terminate()
            pool.join()
            if not finished:
                Store(jobs[0].message.store_root).remove_stale_temp_files()
