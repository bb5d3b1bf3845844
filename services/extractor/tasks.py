"""Celery task for the CPU queue: a thin wrapper over :func:`extract_patient`."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init

from services.extractor.stage import extract_patient
from shared.config import Settings, share_cores
from shared.store import Store, StoreWriteError


@shared_task(name="dtlr.extract", autoretry_for=(StoreWriteError,), retry_backoff=2,
             retry_backoff_max=120, max_retries=5, acks_late=True, reject_on_worker_lost=True)
def extract(store_root: str, row: dict[str, Any], settings: dict[str, Any],
            submission: str) -> dict[str, Any]:
    """Extract one patient into the store; bad input becomes a failed status, never a retry."""
    record = extract_patient(Store(store_root), row, Settings.model_validate(settings), submission)
    return asdict(record)


@worker_process_init.connect
def _share_cores(**_: Any) -> None:
    """Each pool process uses its share of the cores (set by dtlr-worker)."""
    threads = int(os.environ.get("DTLR_THREADS", "0"))
    if threads:
        share_cores(threads)
