"""The extraction task of the ``cpu`` queue: a thin wrapper over :func:`extract_patient`."""

from __future__ import annotations

from dtlr.services.extractor.stage import extract_patient
from dtlr.shared.celery_app import stage_task
from dtlr.shared.messages import TASKS, ExtractMessage
from dtlr.shared.store import StatusRecord, Store


def extract(message: ExtractMessage) -> list[StatusRecord]:
    """Extract one patient into the store; bad input becomes a failed status, never a retry."""
    return [extract_patient(Store(message.store_root), message.row(), message.settings,
                            message.submission)]


extract_task = stage_task(TASKS["dtlr.extract"])(extract)
