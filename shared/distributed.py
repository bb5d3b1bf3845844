"""The coordinator's side of a distributed run: send tasks, follow them through the store.

Progress is read from the store's status records, not from a result backend: the store is the
truth on a shared file system, survives a broker restart, and is what ``dtlr status`` reads. A
broker that goes away is waited for; when it returns, every unfinished task is sent again
(tasks are idempotent, so a duplicate only rewrites identical files). If it stays away, the run
stops with a message saying how to resume.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from shared.store import StatusRecord, Store

POLL_SECONDS = 0.5
# How long the coordinator waits for a broker that went away before it stops (seconds).
OUTAGE_ENV = "DTLR_BROKER_OUTAGE_S"


class BrokerLostError(RuntimeError):
    """The broker stayed unreachable; the message says what finished and how to resume."""


@dataclass
class Job:
    """One task to send, and how to tell from the store that it finished.

    ``poll`` returns None while the task's results are not in the store, else the status
    records it produced (one per patient it covered).
    """

    task: str
    args: list[Any]
    queue: str
    poll: Callable[[], list[StatusRecord] | None]


def broker_identity(url: str) -> str | None:
    """The Redis server's run id (new after every restart), or None when it does not answer."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        return str(client.info("server")["run_id"])
    except redis.RedisError:
        return None


def _send(app: Celery, job: Job) -> None:
    app.send_task(job.task, args=job.args, queue=job.queue, retry=True,
                  retry_policy={"max_retries": 2, "interval_start": 0.5, "interval_step": 0.5})


def patient_finished(store: Store, cohort: str, patient_id: str, stage: str, submission: str,
                     already_done: Callable[[], bool]) -> list[StatusRecord] | None:
    """A patient's status once this submission wrote it, or once its results are complete.

    The second case covers a task that found its work done (a duplicate after a redelivery)
    and so wrote nothing new.
    """
    record = store.read_status(cohort, patient_id, stage)
    if record is not None and (record.submission == submission or already_done()):
        return [record]
    return None


def follow(app: Celery, jobs: list[Job], broker: str,
           outage_limit: float | None = None) -> Iterator[StatusRecord]:
    """Send ``jobs`` and yield their status records as their results land in the store."""
    if outage_limit is None:
        outage_limit = float(os.environ.get(OUTAGE_ENV, "120"))
    pending = dict(enumerate(jobs))
    try:
        for job in jobs:
            _send(app, job)
    except OperationalError as exc:
        raise BrokerLostError(f"cannot reach the broker at {broker} ({exc}); start Redis (or fix "
                         "--broker / DTLR_BROKER_URL) and re-submit") from exc
    identity = broker_identity(broker)
    down_since: float | None = None
    last_check = time.monotonic()
    while pending:
        for ident, job in list(pending.items()):
            records = job.poll()
            if records is not None:
                del pending[ident]
                yield from records
        if not pending:
            break
        time.sleep(POLL_SECONDS)
        if time.monotonic() - last_check < 2.0:
            continue
        last_check = time.monotonic()
        now = broker_identity(broker)
        if now is not None:
            if now != identity:
                # A restarted broker lost the queued and in-flight messages: send them again.
                for job in pending.values():
                    _send(app, job)
                identity = now
            down_since = None
        elif down_since is None:
            down_since = time.monotonic()
        elif time.monotonic() - down_since > outage_limit:
            done = len(jobs) - len(pending)
            raise BrokerLostError(
                f"lost the broker at {broker} for more than {outage_limit:.0f} s: {done} of "
                f"{len(jobs)} task(s) finished and are kept in the store; restart Redis and "
                "re-submit the same command to do only the rest")
