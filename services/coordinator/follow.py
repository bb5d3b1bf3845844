"""The coordinator's side of a distributed run: send tasks, follow them to their end.

Workers push an event when a task starts and when it ends (with its status records) onto the
submission's list in the broker (:class:`dtlr.shared.celery_app.EventBus`); the coordinator
pops them, so its work per poll grows with what happened, never with what is still pending.
The records are also in the store, which stays the truth (``dtlr status`` reads it).

Nothing is waited for without bound:

* a task that fails in any way ends with a "finished" event (the task wrapper records a failure
  for each of its units, or says why the message was refused);
* a worker that vanishes mid-task (SIGKILL, a lost node) stops answering Celery's inspection:
  after :data:`MISSED_SWEEPS` sweeps without it (about 15 s) its started tasks are sent
  again, which is safe because tasks are idempotent; a unit whose worker dies on every attempt
  is failed by the stage protocol after :data:`dtlr.shared.stage.MAX_ATTEMPTS` starts;
* a broker that restarts lost its queues: every unfinished task is sent again; one that stays
  away longer than ``$DTLR_BROKER_OUTAGE_S`` (120 s) stops the run with a message;
* a queue with pending tasks and no worker serving it for ``$DTLR_NO_WORKER_S`` (300 s) stops
  the run with the command that starts one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from dtlr.services.coordinator.dispatch import Job
from dtlr.shared.celery_app import EventBus, redact
from dtlr.shared.stage import failure_record
from dtlr.shared.store import StatusRecord, Store, StoreWriteError

logger = logging.getLogger("dtlr.coordinator")

POLL_SECONDS = 1.0  # longest wait for the next event
IDENTITY_SECONDS = 2.0  # how often the broker's run id is checked (restarts)
SWEEP_S = 5.0  # how often live workers are inspected
MISSED_SWEEPS = 3  # sweeps without a task's worker before the task is sent again (~15 s: a
# worker busy on a loaded node can miss one reply; a false alarm only costs a duplicate that
# finds its work done)
INSPECT_TIMEOUT_S = 2.0
OUTAGE_ENV = "DTLR_BROKER_OUTAGE_S"
NO_WORKER_ENV = "DTLR_NO_WORKER_S"


class BrokerLostError(RuntimeError):
    """The broker is unreachable (or stayed away); the message says what to do."""

    exit_code = 3  # shared.cli.EXIT_BROKER


class NoWorkerError(RuntimeError):
    """No worker serves a queue that has pending tasks; the message says how to start one."""

    exit_code = 3  # shared.cli.EXIT_BROKER


def broker_identity(url: str) -> str | None:
    """The Redis server's run id (new after every restart), or None when it does not answer."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        return str(client.info("server")["run_id"])
    except redis.RedisError:
        return None


def _describe(job: Job) -> str:
    """What a task is about, for worker logs and monitoring (Flower)."""
    units = job.units
    head = f"{units[0].cohort}/{units[0].patient_id}" if units else "-"
    return f"{{job: {job.id}, {head}{f' +{len(units) - 1}' if len(units) > 1 else ''}}}"


@dataclass
class _InFlight:
    node: str
    missed: int = 0


class Follower:
    """Send jobs to Celery workers and yield their status records as they end."""

    def __init__(self, app: Celery, broker: str, outage_limit: float | None = None,
                 no_worker_limit: float | None = None) -> None:
        self.app = app
        self.broker = broker
        self.outage_limit = (float(os.environ.get(OUTAGE_ENV, "120")) if outage_limit is None
                             else outage_limit)
        self.no_worker_limit = (float(os.environ.get(NO_WORKER_ENV, "300"))
                                if no_worker_limit is None else no_worker_limit)
        self.bus = EventBus(broker)
        self.resent = 0  # tasks sent again (vanished workers, broker restarts)

    def _send(self, jobs: list[Job]) -> None:
        try:
            with self.app.producer_or_acquire() as producer:
                for job in jobs:
                    # A short kwargsrepr: Celery would otherwise format the whole message
                    # (settings included) for its logs, most of the coordinator's CPU per task.
                    self.app.send_task(job.spec.name, kwargs=job.message.model_dump(mode="json"),
                                       kwargsrepr=_describe(job), argsrepr="()",
                                       queue=job.spec.queue, producer=producer, retry=True,
                                       retry_policy={"max_retries": 2, "interval_start": 0.5,
                                                     "interval_step": 0.5})
        except (OperationalError, redis.RedisError, OSError) as exc:
            raise BrokerLostError(
                f"cannot reach the broker at {redact(self.broker)} ({exc}); start Redis (or fix "
                "--broker / DTLR_BROKER_URL), then re-submit the same command") from exc

    def run(self, jobs: list[Job]) -> Iterator[StatusRecord]:
        """Send ``jobs`` and yield their status records as the workers report them."""
        if not jobs:
            return
        submission = jobs[0].message.submission
        pending = {job.id: job for job in jobs}
        per_queue = Counter(job.spec.queue for job in jobs)
        in_flight: dict[str, _InFlight] = {}
        nodes: set[str] = set()
        identity = broker_identity(self.broker)
        if identity is None:
            raise BrokerLostError(
                f"cannot reach the broker at {redact(self.broker)}; start Redis (or fix --broker / "
                "DTLR_BROKER_URL), then re-submit the same command")
        self._send(jobs)
        now = time.monotonic()
        next_identity, next_sweep = now + IDENTITY_SECONDS, now + SWEEP_S
        down_since: float | None = None
        idle_queues: dict[str, float] = {}
        while pending:
            try:
                events = self.bus.pop(submission, POLL_SECONDS) if down_since is None else []
            except redis.RedisError:
                events = []
                down_since = down_since or time.monotonic()
            for event in events:
                job = pending.get(event.get("job", ""))
                if job is None:
                    continue  # a duplicate of finished work
                if event["kind"] == "started":
                    in_flight[job.id] = _InFlight(event.get("worker", ""))
                    nodes.add(event.get("worker", ""))
                    continue
                if event["kind"] != "finished":
                    continue
                del pending[job.id]
                in_flight.pop(job.id, None)
                per_queue[job.spec.queue] -= 1
                yield from self._records(job, event)
            if not pending:
                break
            now = time.monotonic()
            if down_since is not None:
                time.sleep(POLL_SECONDS)
            if now >= next_identity or down_since is not None:
                next_identity = now + IDENTITY_SECONDS
                current = broker_identity(self.broker)
                if current is None:
                    down_since = down_since or now
                    if now - down_since > self.outage_limit:
                        done = len(jobs) - len(pending)
                        raise BrokerLostError(
                            f"lost the broker at {redact(self.broker)} for more than "
                            f"{self.outage_limit:.0f} s: {done} of {len(jobs)} task(s) finished "
                            "and are kept in the store; restart Redis and re-submit the same "
                            "command to do only the rest")
                    continue
                down_since = None
                if current != identity:
                    # A restarted broker lost the queued and in-flight messages: send them again.
                    identity = current
                    in_flight.clear()
                    self.resent += len(pending)
                    self._send(list(pending.values()))
            if now >= next_sweep:
                self._sweep(pending, in_flight, nodes, per_queue, idle_queues)
                next_sweep = time.monotonic() + SWEEP_S

    def _records(self, job: Job, event: dict) -> list[StatusRecord]:
        """The records of a finished job; a refused message fails each of its units here."""
        records = [StatusRecord.from_json(r) for r in event.get("records", [])]
        if records:
            return records
        store = Store(job.message.store_root)
        error = RuntimeError(event.get("error") or "the task ended without a record")
        out = []
        for unit in job.units:
            record = failure_record(unit, error, job.message.submission)
            record.message = f"{unit.subject}: {event.get('error') or 'no record'}"
            record.failure = "refused"
            with contextlib.suppress(StoreWriteError):  # reported to the user all the same
                store.write_status(record)
            out.append(record)
        return out

    def _sweep(self, pending: dict[str, Job], in_flight: dict[str, _InFlight], nodes: set[str],
               per_queue: Counter[str], idle_queues: dict[str, float]) -> None:
        """Send again the tasks of workers that stopped answering; notice unserved queues."""
        try:
            replies = self.app.control.inspect(timeout=INSPECT_TIMEOUT_S, limit=len(nodes) or None
                                               ).active_queues() or {}
        except (OperationalError, redis.RedisError, OSError):
            return  # the broker check handles an outage
        live = set(replies)
        nodes |= live
        lost = []
        for job_id, flight in in_flight.items():
            if flight.node in live:
                flight.missed = 0
                continue
            flight.missed += 1
            if flight.missed >= MISSED_SWEEPS:
                lost.append(job_id)
        for job_id in lost:
            node = in_flight.pop(job_id).node
            nodes.discard(node)
            logger.warning("worker %s stopped answering: sending its task %s again", node,
                           job_id)
        if lost:
            self.resent += len(lost)
            self._send([pending[j] for j in lost])
        serving = {q["name"] for queues in replies.values() for q in queues}
        now = time.monotonic()
        for queue, count in per_queue.items():
            if count <= 0 or queue in serving:
                idle_queues.pop(queue, None)
                continue
            since = idle_queues.setdefault(queue, now)
            if now - since > self.no_worker_limit:
                raise NoWorkerError(
                    f"no worker has served the queue {queue!r} for {now - since:.0f} s and "
                    f"{count} task(s) wait in it: start one with `dtlr worker --queue {queue} "
                    f"--broker {redact(self.broker)}` (finished work is kept; re-submitting the "
                    "same command does only the rest)")
