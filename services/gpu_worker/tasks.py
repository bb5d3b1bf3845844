"""Celery tasks for the ``gpu`` queue: thin wrappers over :mod:`services.gpu_worker.run`.

Messages carry the store's path, cohort names, a model id, patient ids and settings as JSON.
Both tasks are idempotent: a finished fine-tune is found by its model id, and an embedded
patient is skipped, so late acknowledgement (a task re-run after a lost worker) is safe.
torch is imported when a task runs, not when a ``cpu`` worker loads this module.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from celery import shared_task

from shared.config import Settings
from shared.store import Store, StoreWriteError


@shared_task(name="dtlr.finetune", autoretry_for=(StoreWriteError,), retry_backoff=2,
             retry_backoff_max=120, max_retries=5, acks_late=True, reject_on_worker_lost=True)
def finetune(store_root: str, train_cohort: str, settings: dict[str, Any],
             extra_cohorts: list[str]) -> str:
    """Fine-tune (or reuse) the CNN on a training cohort; returns the model id."""
    from services.gpu_worker import run

    return run.finetune(Store(store_root), train_cohort, Settings.model_validate(settings),
                        extra_cohorts)


@shared_task(name="dtlr.embed", autoretry_for=(StoreWriteError,), retry_backoff=2,
             retry_backoff_max=120, max_retries=5, acks_late=True, reject_on_worker_lost=True)
def embed(store_root: str, cohort: str, model_id: str, settings: dict[str, Any],
          patient_ids: list[str] | None, submission: str) -> list[dict[str, Any]]:
    """Embed a batch of a cohort's patients; each gets an ``embed`` status record."""
    from services.gpu_worker import run

    records = run.embed(Store(store_root), cohort, model_id, Settings.model_validate(settings),
                        patient_ids, submission)
    return [asdict(r) for r in records]
