"""What a run needs that is not per patient, checked once before the first patient starts.

The settings are validated when they are loaded; here the pyradiomics parameter file is
validated against pyradiomics' schema, the store must take a file, the broker must answer, and
(when the CNN will be fine-tuned) the initial weights must load: on this machine for the
embedded default, on the GPU-queue workers (asked through Celery's remote control) for a
distributed run. Every problem found is reported at once, each with its fix.
"""

from __future__ import annotations

import uuid

from celery import Celery

from dtlr.shared.celery_app import broker_problem
from dtlr.shared.cli import EXIT_BROKER, EXIT_REFUSED
from dtlr.shared.config import Settings
from dtlr.shared.stage import InputError
from dtlr.shared.store import Store, StoreWriteError

WEIGHTS_COMMAND = "dtlr_check_weights"


class PreflightError(RuntimeError):
    """The run cannot start; the message lists every reason with its fix."""

    exit_code = EXIT_REFUSED  # EXIT_BROKER when the broker is the problem


def _store(store: Store) -> str | None:
    probe = store.root / f".write-test-{uuid.uuid4().hex}"
    try:
        store.write_text("ok", probe)
        probe.unlink()
    except (StoreWriteError, OSError) as exc:
        return (f"the store at {store.root} cannot be written ({exc}); free some space, fix its "
                "permissions, or give another folder with --store / DTLR_HOME")
    return None


def _params(settings: Settings) -> str | None:
    from dtlr.services.extractor.features import check_params

    try:
        check_params(settings.radiomics.params_path())
    except (InputError, FileNotFoundError) as exc:
        return str(exc)
    return None


def _local_weights(settings: Settings) -> str | None:
    from dtlr.services.gpu_worker.model import WeightsError, check_weights

    try:
        check_weights(settings.cnn.weights)
    except WeightsError as exc:
        return f"{exc} (offline: `make demo WEIGHTS=random`, or --weights PATH)"
    return None


def _remote_weights(app: Celery, settings: Settings) -> str | None:
    """Ask each GPU-queue worker whether it can load the weights (None: fine or none there)."""
    queues = app.control.inspect(timeout=2.0).active_queues() or {}
    gpu_nodes = [n for n, qs in queues.items() if any(q["name"] == "gpu" for q in qs)]
    if not gpu_nodes:
        return None  # the follower reports an unserved queue; the worker checks when it starts
    replies = app.control.broadcast(WEIGHTS_COMMAND, arguments={"weights": settings.cnn.weights},
                                    destination=gpu_nodes, reply=True, timeout=60.0,
                                    limit=len(gpu_nodes))
    problems = [f"GPU worker {node}: {answer['error']}" for reply in replies or []
                for node, answer in reply.items() if not answer.get("ok")]
    return "; ".join(problems) or None


def preflight(store: Store, settings: Settings, *, cnn: bool, app: Celery | None = None,
              broker: str | None = None) -> None:
    """Raise :class:`PreflightError` listing everything that would stop the run."""
    problems = [_store(store), _params(settings)]
    broker_down = broker_problem(broker) if broker is not None else None
    if broker_down:
        problems.append(broker_down)
    elif cnn:
        problems.append(_local_weights(settings) if app is None
                        else _remote_weights(app, settings))
    found = [p for p in problems if p]
    if found:
        error = PreflightError("the run cannot start:\n" + "\n".join(f"  - {p}" for p in found))
        error.exit_code = EXIT_BROKER if broker_down else EXIT_REFUSED
        raise error
