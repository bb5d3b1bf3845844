"""Unexpected failures inside real worker processes end the run, never hang it.

For each task type (extract, finetune, embed) a fault is injected inside the task on a real
Celery worker (``--include tests.faults``, see tests/faults.py) and `dtlr-submit --broker`
must end within seconds with a failed status naming the exception and where it was raised,
a non-zero exit, and every other patient complete. A pool process that dies on every attempt
(the kernel's out-of-memory killer) is failed after its retries instead of looping forever.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtlr.services.coordinator.demo import make_demo
from dtlr.shared.stage import COHORT, MAX_ATTEMPTS
from dtlr.shared.store import Store
from tests.cluster import BIN, Redis, Worker, new_store

pytestmark = pytest.mark.redis

N_TRAIN, N_TEST = 8, 4
COHORTS = ("demo-hospitalA", "demo-hospitalB")
TINY_CNN = """\
cnn:
  weights: random
  profile: quick
  image_size: 32
  epochs: 1
  batch_size: 8
  device: cpu
  threads: 1
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_demo(tmp_path_factory.mktemp("demo"), n_train=N_TRAIN, n_test=N_TEST,
                     n_reader2=2)


@pytest.fixture(scope="module")
def extracted(demo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Both demo hospitals extracted on the embedded default (copied by each CNN test)."""
    store = new_store(tmp_path_factory.mktemp("extracted") / "store", demo)
    code, output = run_submit(store, None)
    assert code == 0, output
    return store


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path)
    server.start()
    yield server
    server.stop()


def start(redis_server: Redis, store: Store, queue: str, demo: dict[str, Path],
          fault: str = "") -> Worker:
    """A worker of ``queue`` allowed to read the demo's files, with a fault if given."""
    worker = Worker(redis_server.url, store.root, queue, "--concurrency", "1",
                    "--include", "tests.faults", env={"DTLR_TEST_FAULT": fault},
                    data_roots=[next(iter(demo.values())).parents[1]])
    worker.wait_ready()
    return worker


def run_submit(store: Store, broker: str | None, *extra: str,
               timeout: float = 300) -> tuple[int, str]:
    cmd = [str(BIN / "dtlr-submit"), "--store", str(store.root),
           *(f"--cohort={c}" for c in COHORTS), "--jobs", "1", *extra]
    if broker:
        cmd += ["--broker", broker]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "COLUMNS": "200"}, encoding="utf-8")
    return out.returncode, out.stdout + out.stderr


def copy_store(store: Store, root: Path) -> Store:
    shutil.copytree(store.root, root)
    return Store(root)


def extract_records(store: Store) -> dict[str, object]:
    return {r.patient_id: r for c in COHORTS for r in store.statuses(c) if r.stage == "extract"}


def test_exception_inside_extraction(demo: dict[str, Path], redis_server: Redis,
                                     tmp_path: Path) -> None:
    store = new_store(tmp_path / "store", demo)
    victim = "A003"
    worker = start(redis_server, store, "cpu", demo, f"extract:{victim}")
    try:
        code, output = run_submit(store, redis_server.url, timeout=180)
    finally:
        worker.stop()
    assert code == 1, output
    records = extract_records(store)
    assert len(records) == N_TRAIN + N_TEST
    bad = records.pop(victim)
    assert bad.state == "failed" and bad.failure == "unexpected"
    assert bad.error_type == "InjectedFaultError" and bad.where.startswith("faults.py:")
    assert f"patient {victim}: unexpected InjectedFaultError" in bad.message
    assert "please report it" in bad.message and bad.worker == worker.node
    assert {r.state for r in records.values()} == {"done"}
    assert f"{COHORTS[0]}/{victim}" in output and "InjectedFaultError" in output


def test_pool_process_killed_on_every_attempt(demo: dict[str, Path], redis_server: Redis,
                                              tmp_path: Path) -> None:
    store = new_store(tmp_path / "store", demo)
    victim = "B002"
    worker = start(redis_server, store, "cpu", demo, f"extract-die:{victim}")
    try:
        code, output = run_submit(store, redis_server.url, timeout=240)
    finally:
        worker.stop()
    assert code == 1, output
    records = extract_records(store)
    bad = records.pop(victim)
    assert bad.state == "failed" and bad.failure == "worker-lost"
    assert bad.attempt == MAX_ATTEMPTS + 1
    assert f"started {MAX_ATTEMPTS} times and its worker process died each time" in bad.message
    assert {r.state for r in records.values()} == {"done"} and len(records) == N_TRAIN + N_TEST - 1


@pytest.mark.parametrize("fault", ["finetune", "embed"])
def test_exception_inside_a_gpu_task(fault: str, demo: dict[str, Path], extracted: Store,
                                     redis_server: Redis, tmp_path: Path) -> None:
    store = copy_store(extracted, tmp_path / "store")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CNN, encoding="utf-8")
    workers = [start(redis_server, store, "cpu", demo),
               start(redis_server, store, "gpu", demo, fault)]
    t0 = time.monotonic()
    try:
        code, output = run_submit(store, redis_server.url, "--train", COHORTS[0], "--config",
                                  str(config), timeout=300)
    finally:
        for w in workers:
            w.stop()
    assert code == 1, output
    assert time.monotonic() - t0 < 240, output
    tuned = [r for r in store.statuses(COHORTS[0]) if r.stage == "finetune"]
    # The CNN fine-tuned on the whole cohort and the 5 cross-fitted ones, each its own task.
    assert len(tuned) == 1 + 5 and {r.patient_id for r in tuned} == {COHORT}
    embedded = [r for c in COHORTS for r in store.statuses(c) if r.stage == "embed"]
    if fault == "finetune":
        assert {(r.state, r.error_type) for r in tuned} == {("failed", "InjectedFaultError")}
        assert all("cohort demo-hospitalA: unexpected InjectedFaultError in stage finetune" in
                   r.message for r in tuned)
        assert embedded == []
        assert "the models run without DTL features" in output
    else:
        assert {r.state for r in tuned} == {"done"}
        assert len(embedded) == N_TRAIN + N_TEST
        assert {(r.state, r.error_type) for r in embedded} == {("failed", "InjectedFaultError")}
    assert "InjectedFaultError" in output
    modelled = [r for r in store.statuses(COHORTS[0]) if r.stage == "model"]
    assert len(modelled) == 1 and modelled[0].state in ("done", "failed")
