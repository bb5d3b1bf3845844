"""The Celery app: JSON messages, late acks, prefetch 1, queues ``cpu`` and ``gpu``.

Tasks are thin wrappers over the plain stage functions (services/*/tasks.py). A task carries
store paths, patient rows and settings as JSON, never arrays. Every task is idempotent (its
outputs are named by content keys), which is what makes late acknowledgement safe: a task whose
worker died runs again elsewhere and writes the same files.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

BROKER_ENV = "DTLR_BROKER_URL"
# A task unacknowledged this long (its worker vanished) is handed to another worker. Must exceed
# the longest task: a CNN fine-tune on a slow GPU.
VISIBILITY_TIMEOUT_ENV = "DTLR_VISIBILITY_TIMEOUT"
TASK_MODULES = ("services.extractor.tasks", "services.gpu_worker.tasks")


def broker_url(explicit: str | None = None) -> str | None:
    """The broker from ``--broker`` or ``$DTLR_BROKER_URL``; None means the embedded default."""
    return explicit or os.environ.get(BROKER_ENV) or None


def make_app(broker: str) -> Celery:
    """A Celery app on ``broker`` (Redis URL), used by workers and the coordinator alike."""
    app = Celery("dtlr", broker=broker, backend=broker, include=list(TASK_MODULES))
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=(Queue("cpu"), Queue("gpu")),
        task_default_queue="cpu",
        task_routes={"dtlr.extract": {"queue": "cpu"}, "dtlr.finetune": {"queue": "gpu"},
                     "dtlr.embed": {"queue": "gpu"}},
        task_soft_time_limit=3300,
        task_time_limit=3600,
        result_expires=7 * 24 * 3600,
        broker_transport_options={
            "visibility_timeout": int(os.environ.get(VISIBILITY_TIMEOUT_ENV, "3600")),
        },
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
    )
    return app
