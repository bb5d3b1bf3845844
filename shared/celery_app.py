"""The Celery app factory and the task wrapper every stage's task goes through.

Messages are JSON keyword arguments (one schema per task: :mod:`dtlr.shared.messages`), tasks
are acknowledged late and prefetched one at a time, and every task is idempotent (its outputs
are named by content keys), which is what makes redelivery safe: a task whose worker died runs
again elsewhere and writes the same files.

:func:`stage_task` turns a plain stage function ``fn(message) -> [StatusRecord]`` into a Celery
task that validates its message with the task's schema before any work, serves only the store
its worker was started for, records a failure for every unit whatever goes wrong
(:func:`execute`), retries only store write errors, logs one line per task, and tells the
coordinator through the broker (:class:`EventBus`) when it started and when it ended, so that
following a run costs the coordinator nothing per pending task.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery, shared_task
from kombu import Queue
from pydantic import ValidationError

from dtlr.shared.messages import QUEUES, TASKS, TaskMessage, TaskSpec
from dtlr.shared.stage import current_worker, failure_record, record_failures
from dtlr.shared.store import StatusRecord, Store, StoreWriteError

BROKER_ENV = "DTLR_BROKER_URL"
# A task unacknowledged this long is handed to another worker by the broker itself. It must
# exceed the longest task (a CNN fine-tune on a slow GPU); a worker that vanishes sooner is
# noticed by the coordinator, which sends its task again (coordinator/follow.py).
VISIBILITY_TIMEOUT_ENV = "DTLR_VISIBILITY_TIMEOUT"
# The store a worker serves: messages naming another store are refused.
WORKER_STORE_ENV = "DTLR_WORKER_STORE"
# The folders (os.pathsep-separated) a worker may read images, masks, parameter files from.
WORKER_DATA_ROOTS_ENV = "DTLR_DATA_ROOTS"
STORE_RETRIES = 5
EVENTS_TTL_S = 7 * 24 * 3600

logger = logging.getLogger("dtlr.worker")


def broker_url(explicit: str | None = None) -> str | None:
    """The broker from ``--broker`` or ``$DTLR_BROKER_URL``; None means the embedded default."""
    return explicit or os.environ.get(BROKER_ENV) or None


def redact(url: str) -> str:
    """A broker URL fit for messages and logs: its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def broker_problem(url: str) -> str | None:
    """Why the broker cannot be used (unreachable, password refused or missing), or None."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except redis.AuthenticationError:
        if urlsplit(url).password is None:
            return (f"the broker at {redact(url)} needs a password: give it in the URL "
                    "(redis://:PASSWORD@host:6379/0, in --broker or DTLR_BROKER_URL)")
        return (f"the broker at {redact(url)} refused the password: put the right one in the "
                "URL (redis://:PASSWORD@host:6379/0, in --broker or DTLR_BROKER_URL)")
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "auth" in str(exc).lower():
            return (f"the broker at {redact(url)} needs a password: give it in the URL "
                    "(redis://:PASSWORD@host:6379/0, in --broker or DTLR_BROKER_URL)")
        return f"the broker at {redact(url)} answered with an error: {exc}"
    except (redis.RedisError, OSError, ValueError) as exc:
        return (f"cannot reach the broker at {redact(url)} ({type(exc).__name__}); start Redis "
                "(or fix --broker / DTLR_BROKER_URL), then run the same command again")
    return None


def make_app(broker: str, include: Sequence[str] = (),
             specs: Iterable[TaskSpec] = ()) -> Celery:
    """A Celery app on ``broker`` (a Redis URL) with the task modules the caller names.

    Routes come from :data:`dtlr.shared.messages.TASKS` (plus ``specs``, e.g. a test stage).
    """
    routes = {s.name: {"queue": s.queue} for s in [*TASKS.values(), *specs]}
    queues = dict.fromkeys([*QUEUES, *(s.queue for s in specs)])
    app = Celery("dtlr", broker=broker, include=list(include))
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the store is the truth; events say when a task ended
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=tuple(Queue(q) for q in queues),
        task_default_queue="cpu",
        task_routes=routes,
        task_soft_time_limit=3300,
        task_time_limit=3600,
        broker_transport_options={
            "visibility_timeout": int(os.environ.get(VISIBILITY_TIMEOUT_ENV, "3600")),
        },
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
    )
    return app


class EventBus:
    """Task lifecycle events of one submission, as a Redis list the coordinator pops.

    The list is durable (unlike pub/sub): events pushed before the coordinator listens wait
    for it. Each event is a small JSON object: ``job``, ``kind`` ("started" or "finished"),
    ``worker``, and for "finished" the status records (or an ``error`` when none could be).
    """

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)

    @staticmethod
    def key(submission: str) -> str:
        return f"dtlr:events:{submission}"

    def push(self, submission: str, event: dict[str, Any]) -> None:
        key = self.key(submission)
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(event, default=str))
        pipe.expire(key, EVENTS_TTL_S)
        pipe.execute()

    def pop(self, submission: str, timeout: float, batch: int = 1000) -> list[dict[str, Any]]:
        """Wait up to ``timeout`` seconds for events, then take what is there (at most batch)."""
        key = self.key(submission)
        first = self.client.blpop([key], timeout=timeout)
        if first is None:
            return []
        raw = [first[1], *(self.client.lpop(key, batch - 1) or [])]
        return [json.loads(r) for r in raw]

    def clear(self, submission: str) -> None:
        self.client.delete(self.key(submission))


_BUSES: dict[str, EventBus] = {}


def _bus(app: Celery) -> EventBus:
    url = str(app.conf.broker_url)
    if url not in _BUSES:
        _BUSES[url] = EventBus(url)
    return _BUSES[url]


def execute(message: TaskMessage,
            fn: Callable[[TaskMessage], list[StatusRecord]]) -> list[StatusRecord]:
    """Run a stage function; anything unexpected that escapes it fails each of its units.

    Used alike by the local pool and by :func:`stage_task`. Store write errors propagate.
    """
    try:
        return fn(message)
    except StoreWriteError:
        raise
    except Exception as exc:
        return record_failures(Store(message.store_root), message.units(), exc,
                               message.submission)


def data_roots() -> list[Path]:
    """The folders this worker may read inputs from: its store and ``--data-root`` folders."""
    roots = [p for p in os.environ.get(WORKER_DATA_ROOTS_ENV, "").split(os.pathsep) if p]
    served = os.environ.get(WORKER_STORE_ENV)
    return [Path(p).resolve() for p in ([served] if served else []) + roots]


def confine(message: TaskMessage) -> None:
    """Refuse a message for another store, or one naming a file outside the worker's roots.

    Names (cohort, patient, model) are already constrained by the schema; here every path
    the task would read is resolved (symlinks followed) and must lie under the store or a
    ``--data-root`` the worker was started with. Nothing is read or written before this.
    """
    served = os.environ.get(WORKER_STORE_ENV)
    if not served:
        return  # not a confined worker (the embedded default runs the user's own command)
    if Path(message.store_root).resolve() != Path(served).resolve():
        raise PermissionError(f"this worker serves the store {served}; the message names "
                              f"{message.store_root!r}: refused before touching any file")
    roots = data_roots()
    for path in message.files():
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(root) for root in roots):
            raise PermissionError(
                f"{path!r} is outside this worker's store and data roots "
                f"({', '.join(str(r) for r in roots)}): refused before reading it; start the "
                "worker with --data-root FOLDER for the folder that holds the cohort's files")


def _summary(records: Sequence[StatusRecord]) -> str:
    states = [r.state for r in records]
    failed = [r for r in records if r.state == "failed"]
    head = (f"{records[0].cohort}/{records[0].patient_id}" if len(records) == 1
            else f"{records[0].cohort} ({len(records)} patients)" if records else "-")
    text = f"{head}: {states.count('done')} done, {len(failed)} failed"
    if failed:
        text += f" ({failed[0].message[:300]})"
    return text


def stage_task(spec: TaskSpec) -> Callable[[Callable[..., list[StatusRecord]]], Any]:
    """Register ``fn(message) -> [StatusRecord]`` as the Celery task ``spec.name``."""

    def decorate(fn: Callable[..., list[StatusRecord]]) -> Any:
        @shared_task(name=spec.name, bind=True, acks_late=True, reject_on_worker_lost=True,
                     ignore_result=True, max_retries=STORE_RETRIES)
        def task(self: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter()
            submission = str(kwargs.get("submission", ""))[:64]
            job = str(kwargs.get("job", ""))[:64] or self.request.id
            worker = self.request.hostname or ""
            bus = _bus(self.app)
            current_worker.set(worker)
            bus.push(submission, {"job": job, "kind": "started", "worker": worker,
                                  "task": spec.name})
            error = ""
            records: list[StatusRecord] = []
            try:
                message = spec.message.model_validate(kwargs)
                confine(message)
            except (ValidationError, PermissionError) as exc:
                error = (f"{spec.name}: message refused before any work: "
                         f"{str(exc).splitlines()[0][:500]}")
                logger.error("%s (job %s)", error, job)
            else:
                try:
                    records = execute(message, fn)
                except StoreWriteError as exc:
                    if self.request.retries < STORE_RETRIES:
                        raise self.retry(exc=exc,
                                         countdown=min(120, 2 ** self.request.retries)) from exc
                    records = [_store_failure(u, exc, message) for u in message.units()]
            bus.push(submission, {"job": job, "kind": "finished", "worker": worker,
                                  "task": spec.name, "error": error,
                                  "records": [asdict(r) for r in records]})
            logger.info("%s %s (%.1f s)", spec.name, _summary(records) if records else error,
                        time.perf_counter() - t0)

        return task

    return decorate


def _store_failure(unit: Any, exc: StoreWriteError, message: TaskMessage) -> StatusRecord:
    """The record of a unit whose results could not be written (it cannot be stored either)."""
    record = failure_record(unit, exc, message.submission)
    record.failure = "store"
    record.message = (f"{unit.subject}: cannot write into the store at {message.store_root} "
                      f"({exc}); free space or fix the share, then re-submit")
    return record
