"""The ``gpu`` queue's tasks: thin wrappers over :mod:`dtlr.services.gpu_worker.run`.

Both are idempotent: a finished fine-tune is found by its model id, and an embedded patient is
skipped, so late acknowledgement (a task re-run after a lost worker) is safe. torch is imported
when a task runs, not when a ``cpu`` worker loads this module.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command

from dtlr.shared.celery_app import stage_task
from dtlr.shared.messages import TASKS, EmbedMessage, FinetuneMessage
from dtlr.shared.store import StatusRecord, Store


def finetune(message: FinetuneMessage) -> list[StatusRecord]:
    """Fine-tune (or reuse) the CNN on a training cohort; the record's key is the model id."""
    from dtlr.services.gpu_worker import run

    return [run.finetune(Store(message.store_root), message.cohort, message.settings,
                         message.extra_cohorts, message.submission, message.fold)]


def embed(message: EmbedMessage) -> list[StatusRecord]:
    """Embed a batch of a cohort's patients; each gets an ``embed`` status record."""
    from dtlr.services.gpu_worker import run

    return run.embed(Store(message.store_root), message.cohort, message.model_id,
                     message.settings, message.patient_ids, message.submission)


finetune_task = stage_task(TASKS["dtlr.finetune"])(finetune)
embed_task = stage_task(TASKS["dtlr.embed"])(embed)


@control_command(args=[("weights", str)], signature="<weights>")
def dtlr_check_weights(state: Any, weights: str = "imagenet") -> dict[str, Any]:
    """Remote control: can this worker load the initial weights? (the coordinator's preflight)"""
    from dtlr.services.gpu_worker.model import WeightsError, check_weights

    try:
        return {"ok": True, "weights": check_weights(weights)}
    except WeightsError as exc:
        return {"ok": False, "error": str(exc)}
