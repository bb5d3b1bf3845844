"""The coordinator's side of a distributed run: send tasks, follow them through the store.

Progress is read from the store's status records, not from a result backend: the store is the
truth on a shared file system, survives a broker restart, and is what ``dtlr status`` reads. A
broker that goes away is waited for; when it returns, every unfinished task is sent again
(tasks are idempotent, so a duplicate only rewrites identical files). If it stays away, the run
stops with a message saying how to resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from shared.store import StatusRecord, Store

POLL_SECONDS = 0.5


class BrokerLostError(RuntimeError):
    """The broker stayed unreachable; the message says what finished and how to resume."""


@dataclass
class Job:
    """One task to send, and how to recognise its result in the store."""

    cohort: str
    patient_id: str
    stage: str
    task: str
    args: list[Any]
    queue: str
    is_done: Callable[[], bool]


def broker_alive(url: str) -> bool:
    """Whether the Redis broker answers a PING within a second."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _send(app: Celery, job: Job) -> None:
    app.send_task(job.task, args=job.args, queue=job.queue, retry=True,
                  retry_policy={"max_retries": 2, "interval_start": 0.5, "interval_step": 0.5})


def finished(store: Store, job: Job, submission: str) -> StatusRecord | None:
    """The job's status record once this submission (or an earlier one) completed it."""
    record = store.read_status(job.cohort, job.patient_id, job.stage)
    if record is not None and (record.submission == submission or job.is_done()):
        return record
    return None


def follow(app: Celery, store: Store, jobs: list[Job], submission: str, broker: str,
           outage_limit: float = 120.0) -> Iterator[StatusRecord]:
    """Send ``jobs`` and yield each one's status record as it lands in the store."""
    pending = {(j.cohort, j.patient_id, j.stage): j for j in jobs}
    try:
        for job in jobs:
            _send(app, job)
    except OperationalError as exc:
        raise BrokerLostError(f"cannot reach the broker at {broker} ({exc}); start Redis (or fix "
                         "--broker / DTLR_BROKER_URL) and re-submit") from exc
    down_since: float | None = None
    last_check = time.monotonic()
    while pending:
        for ident, job in list(pending.items()):
            record = finished(store, job, submission)
            if record is not None:
                del pending[ident]
                yield record
        if not pending:
            break
        time.sleep(POLL_SECONDS)
        if time.monotonic() - last_check < 2.0:
            continue
        last_check = time.monotonic()
        if broker_alive(broker):
            if down_since is not None:
                # Messages queued or in flight may have gone with the broker: send them again.
                for job in pending.values():
                    _send(app, job)
                down_since = None
        elif down_since is None:
            down_since = time.monotonic()
        elif time.monotonic() - down_since > outage_limit:
            done = len(jobs) - len(pending)
            raise BrokerLostError(
                f"lost the broker at {broker} for more than {outage_limit:.0f} s: {done} of "
                f"{len(jobs)} task(s) finished and are kept in the store; restart Redis and "
                "re-submit the same command to do only the rest")
