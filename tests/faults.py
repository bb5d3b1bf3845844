"""Test-only faults inside real worker processes (``dtlr worker --include tests.faults``).

``$DTLR_TEST_FAULT`` chooses one: ``extract:<patient>`` raises inside that patient's
extraction, ``extract-die:<patient>`` kills the worker's pool process there (as the kernel's
out-of-memory killer would), ``finetune`` raises inside training, ``embed`` raises inside the
embedding of a batch. Nothing happens without the variable; the product never imports this.
"""

from __future__ import annotations

import os
import signal

FAULT, _, PATIENT = os.environ.get("DTLR_TEST_FAULT", "").partition(":")


class InjectedFaultError(RuntimeError):
    """The exception a fault raises."""


def _install() -> None:
    if FAULT in ("extract", "extract-die"):
        from dtlr.services.extractor import stage

        original = stage._run

        def run(store, plan, settings):  # type: ignore[no-untyped-def]
            if plan.patient_id == PATIENT:
                if FAULT == "extract-die":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise InjectedFaultError(f"injected fault in the extraction of {PATIENT}")
            return original(store, plan, settings)

        stage._run = run
    elif FAULT == "finetune":
        from dtlr.services.gpu_worker import run as gpu_run

        def fit(*_: object, **__: object) -> None:
            raise InjectedFaultError("injected fault inside training")

        gpu_run.fit = fit
    elif FAULT == "embed":
        from dtlr.services.gpu_worker import embed

        def embed_images(*_: object, **__: object) -> None:
            raise InjectedFaultError("injected fault inside the embedding")

        embed.embed_images = embed_images


_install()
