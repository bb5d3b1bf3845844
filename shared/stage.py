"""The stage protocol: every unit of work of every stage ends in one status record.

A stage (extract, finetune, embed, model) does its work for a :class:`Unit` (one patient of a
cohort, or a whole cohort: ``patient_id == COHORT``) inside a :class:`StageRun`::

    with StageRun(store, Unit(cohort, patient_id, "extract"), submission) as run:
        plan = plan_patient(...)             # may raise InputError
        run.key, run.inputs = plan.key, plan.inputs
        if is_done(...):
            run.skip()                       # the record already in the store stands
        else:
            run.start()                      # writes a "running" record, counts attempts
            ...the work...

Whatever happens inside, the run leaves one record, written by the store's one status writer:
``done``; ``failed`` on bad input (:class:`InputError`: the message names the patient, the
file and the fix); ``failed`` unexpectedly (exception type, message, where it was raised, and
a note to report it); or ``failed`` because the unit was started :data:`MAX_ATTEMPTS` times and
its worker died each time. Only :class:`~dtlr.shared.store.StoreWriteError` (a full disk, a
lost share) propagates, because no record can be written then. Versions come from
:func:`dtlr.shared.provenance.versions`, so every record of a stage lists the same libraries.
"""

from __future__ import annotations

import contextvars
import socket
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from dtlr.shared.provenance import versions
from dtlr.shared.store import StatusRecord, Store, StoreWriteError

COHORT = "*"  # the patient_id of cohort-level records (fine-tuning, modeler runs)
MAX_ATTEMPTS = 3  # starts of one unit in one submission before its dying worker is blamed
REPORT_NOTE = ("this is a bug in DTLR or one of its libraries, not in your data: please report "
               "it with this message")

# The worker's name (a Celery node name) for the records written in this context; the host's
# name where none was set.
current_worker: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_worker", default=None)


def worker_name() -> str:
    """Who writes this context's records."""
    return current_worker.get() or socket.gethostname()


class InputError(ValueError):
    """Bad input for one unit of work: the message names the file and the fix; never retried."""


class WorkerLostError(RuntimeError):
    """A unit was started :data:`MAX_ATTEMPTS` times and its worker died every time."""

    def __init__(self, message: str, attempt: int) -> None:
        super().__init__(message)
        self.attempt = attempt


def now() -> str:
    """UTC time stamp of records."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Unit:
    """What one status record is about: a patient (or a whole cohort) in one stage.

    ``key`` names cohort-level records (the model id of a fine-tuning, the run id of a
    modeler run), since one cohort has many of them.
    """

    cohort: str
    patient_id: str
    stage: str
    key: str = ""

    @property
    def subject(self) -> str:
        """How messages name the unit: 'patient P01' or 'cohort hospitalA'."""
        if self.patient_id == COHORT:
            return f"cohort {self.cohort}"
        return f"patient {self.patient_id}"


def where(exc: BaseException) -> str:
    """'file.py:123 in function' of the innermost frame that raised ``exc``."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


def failure_record(unit: Unit, exc: BaseException, submission: str = "", *, key: str = "",
                   inputs: dict[str, str] | None = None, seconds: float = 0.0,
                   attempt: int = 0) -> StatusRecord:
    """The failed record of ``unit`` for ``exc``: bad input, a dying worker, or unexpected."""
    if isinstance(exc, InputError):
        failure, message, error_type, at = "input", f"{unit.subject}: {exc}", "", ""
    elif isinstance(exc, WorkerLostError):
        failure, message, error_type, at = "worker-lost", f"{unit.subject}: {exc}", "", ""
        attempt = exc.attempt
    else:
        error_type, at = type(exc).__name__, where(exc)
        failure = "unexpected"
        message = (f"{unit.subject}: unexpected {error_type} in stage {unit.stage}: {exc} "
                   f"(at {at}); {REPORT_NOTE}")
    return StatusRecord(
        cohort=unit.cohort, patient_id=unit.patient_id, stage=unit.stage, state="failed",
        message=message, seconds=round(seconds, 4), key=key or unit.key,
        versions=versions(unit.stage), inputs=inputs or {}, worker=worker_name(),
        finished_at=now(), submission=submission, attempt=attempt, failure=failure,
        error_type=error_type, where=at)


def record_failures(store: Store, units: Iterable[Unit], exc: BaseException,
                    submission: str = "") -> list[StatusRecord]:
    """Write a failed record for each unit (a batch that failed as a whole)."""
    records = [failure_record(u, exc, submission) for u in units]
    for record in records:
        store.write_status(record)
    return records


def start_unit(store: Store, unit: Unit, submission: str, key: str = "",
               inputs: dict[str, str] | None = None) -> int:
    """Write the unit's "running" record and return which attempt this is.

    An attempt counts when the unit's last record is a "running" one of the same submission:
    its worker died before finishing. After :data:`MAX_ATTEMPTS` the unit is refused
    (:class:`WorkerLostError`), so a task that kills its worker (out of memory) is not
    redelivered forever.
    """
    previous = store.read_status(unit.cohort, unit.patient_id, unit.stage, key or unit.key)
    same_run = (previous is not None and previous.state == "running" and bool(submission)
                and previous.submission == submission)
    attempt = previous.attempt + 1 if same_run and previous is not None else 1
    if attempt > MAX_ATTEMPTS:
        raise WorkerLostError(
            f"started {MAX_ATTEMPTS} times and its worker process died each time (killed, or "
            "out of memory: see `dmesg` on the worker's machine); the rest of the cohort is "
            "unaffected. Check the input's size, or give the worker more memory, then "
            "re-submit", attempt)
    store.write_status(StatusRecord(
        cohort=unit.cohort, patient_id=unit.patient_id, stage=unit.stage, state="running",
        key=key or unit.key, versions=versions(unit.stage), inputs=inputs or {},
        worker=worker_name(), submission=submission, attempt=attempt))
    return attempt


@dataclass
class StageRun:
    """Context manager running one unit of a stage; ``record`` holds its outcome afterwards."""

    store: Store
    unit: Unit
    submission: str = ""
    key: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    message: str = ""  # a note on a done record (e.g. what was reused)
    record: StatusRecord | None = None
    attempt: int = 0
    extra_seconds: float = 0.0  # work done for this unit before the run (its share of a batch)
    _t0: float = 0.0
    _skipped: bool = False

    def __enter__(self) -> StageRun:
        self._t0 = time.perf_counter()
        return self

    def skip(self, record: StatusRecord | None = None) -> None:
        """The unit's results are already in the store: keep (and return) its record."""
        self._skipped = True
        self.record = record or self.store.read_status(self.unit.cohort, self.unit.patient_id,
                                                       self.unit.stage, self.key or self.unit.key)

    def start(self) -> None:
        """Mark the unit running; refuse it when earlier attempts of this submission died."""
        self.attempt = start_unit(self.store, self.unit, self.submission, self.key, self.inputs)

    def _seconds(self) -> float:
        return time.perf_counter() - self._t0 + self.extra_seconds

    def _done(self) -> StatusRecord:
        return StatusRecord(
            cohort=self.unit.cohort, patient_id=self.unit.patient_id, stage=self.unit.stage,
            state="done", message=self.message, key=self.key or self.unit.key,
            seconds=round(self._seconds(), 4), versions=versions(self.unit.stage),
            inputs=self.inputs, worker=worker_name(), finished_at=now(),
            submission=self.submission, attempt=self.attempt)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None:
            if self._skipped and self.record is not None:
                return False
            self.record = self._done()
        elif isinstance(exc, StoreWriteError) or not isinstance(exc, Exception):
            return False  # nothing can be recorded (full disk), or Ctrl-C / shutdown
        else:
            self.record = failure_record(self.unit, exc, self.submission, key=self.key,
                                         inputs=self.inputs, attempt=self.attempt,
                                         seconds=self._seconds())
        self.store.write_status(self.record)
        return True
