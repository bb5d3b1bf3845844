"""A private cluster for tests and benchmarks: a redis-server on a free port, real workers.

Never Celery's eager mode: workers are `dtlr-worker` processes, each in its own process group
(so a test can SIGKILL one whole, as a node failure would), with the repository on their
PYTHONPATH so that ``--include tests.faults`` (or a benchmark's stage) can be loaded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from dtlr.shared import manifest
from dtlr.shared.store import Store

BIN = Path(sys.executable).parent  # the console scripts installed beside this interpreter
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_store(root: Path, manifests: dict[str, Path]) -> Store:
    """A store with these manifests registered (cohort -> manifest file)."""
    store = Store(root)
    for cohort, path in manifests.items():
        manifest.register(store, cohort, path)
    store.refresh_catalog()
    return store


class Redis:
    """A private redis-server that may be stopped and started again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (the test suite needs it)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Worker:
    """A `dtlr-worker` process serving ``store`` on ``queue``; its log is kept in memory."""

    def __init__(self, broker: str, store: Path, queue: str = "cpu", *extra: str,
                 env: dict[str, str] | None = None, data_roots: Sequence[Path] = ()) -> None:
        self.log: list[str] = []
        roots = [f"--data-root={p}" for p in data_roots]
        self.proc = subprocess.Popen(
            [str(BIN / "dtlr-worker"), "--queue", queue, "--broker", broker, "--store",
             str(store), "--loglevel", "info", *roots, *extra],
            env={**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
                filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
            start_new_session=True, encoding="utf-8")
        threading.Thread(target=self._read, daemon=True).start()
        self.node = f"{queue}-{self.proc.pid}@{socket.gethostname()}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(" ready." in line for line in self.log):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.node} exited:\n{''.join(self.log)}")
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.node} not ready:\n{''.join(self.log)}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes, as a node failure would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
