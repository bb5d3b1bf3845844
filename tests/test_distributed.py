"""Distributed runs with a real Redis server and real worker processes (never eager mode).

Each test starts its own redis-server on a free port, so stopping and restarting the broker
disturbs nothing else, and `dtlr-worker` processes exactly as a cluster would run them.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dtlr.services.coordinator.demo import make_demo
from dtlr.shared.store import Store, read_feature_files
from tests.cluster import BIN, Redis, Worker, new_store

pytestmark = pytest.mark.redis

N_TRAIN, N_TEST = 8, 4
COHORTS = ("demo-hospitalA", "demo-hospitalB")


@pytest.fixture(scope="module")
def demo_manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small demo (8 + 4 patients, 2 second-reader masks), generated once."""
    return make_demo(tmp_path_factory.mktemp("demo"), n_train=N_TRAIN, n_test=N_TEST,
                     n_reader2=2)


def submit(store: Store, broker: str | None, *extra: str,
           env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `dtlr-submit` for both demo hospitals (extraction only)."""
    cmd = [str(BIN / "dtlr-submit"), "--store", str(store.root),
           *(f"--cohort={c}" for c in COHORTS), "--jobs", "1", *extra]
    if broker:
        cmd += ["--broker", broker]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, encoding="utf-8")


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def done_patients(store: Store) -> set[tuple[str, str]]:
    return {(r.cohort, r.patient_id) for c in COHORTS for r in store.statuses(c)
            if r.stage == "extract" and r.state == "done"}


def files_per_patient(store: Store) -> pd.Series:
    """How many radiomics files each (cohort, reader, patient) has in the store."""
    rows = [(c, r, pid) for c in COHORTS for r in (1, 2)
            for pid, _, _ in Store.keyed_files(store.radiomics_dir(c, r), ".parquet")]
    return pd.Series(rows).value_counts()


def radiomics(store: Store) -> pd.DataFrame:
    files = sorted(p for c in COHORTS for r in (1, 2)
                   for _, _, p in Store.keyed_files(store.radiomics_dir(c, r), ".parquet"))
    return read_feature_files(files).sort_values(["cohort", "patient_id", "reader"],
                                                 ignore_index=True)


def maxslices(store: Store) -> dict[tuple[str, int, str], np.ndarray]:
    return {(c, r, pid): np.load(p) for c in COHORTS for r in (1, 2)
            for pid, _, p in Store.keyed_files(store.maxslice_dir(c, r), ".npy")}


def expected_rows() -> int:
    return N_TRAIN + N_TEST + 2


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def workers(redis_server: Redis, tmp_path: Path, demo_manifests: dict[str, Path]
            ) -> Iterator[list[Worker]]:
    """Two single-process CPU workers on the test's broker, with the default settings."""
    demo_root = next(iter(demo_manifests.values())).parents[1]
    started = [Worker(redis_server.url, tmp_path / "store", "cpu", "--concurrency", "1",
                      data_roots=[demo_root]) for _ in range(2)]
    for w in started:
        w.wait_ready()
    yield started
    for w in started:
        w.stop()


@pytest.fixture(scope="module")
def embedded(demo_manifests: dict[str, Path],
             tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The same cohorts extracted by the embedded default (no broker), for comparison."""
    store = new_store(tmp_path_factory.mktemp("embedded") / "store", demo_manifests)
    code, output = finish(submit(store, None))
    assert code == 0, output
    return store


def test_two_cpu_workers_give_the_embedded_features(
        embedded: Store, demo_manifests: dict[str, Path], redis_server: Redis,
        workers: list[Worker], tmp_path: Path) -> None:
    store = new_store(tmp_path / "store", demo_manifests)
    code, output = finish(submit(store, redis_server.url))
    assert code == 0, output
    assert len(done_patients(store)) == N_TRAIN + N_TEST
    local, remote = radiomics(embedded), radiomics(store)
    assert len(remote) == expected_rows()
    pd.testing.assert_frame_equal(local, remote, check_exact=True)
    a, b = maxslices(embedded), maxslices(store)
    assert a.keys() == b.keys() and len(a) == expected_rows()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # Both workers took part: the work really went through the queue.
    records = [r for c in COHORTS for r in store.statuses(c)]
    assert {r.worker for r in records} == {w.node for w in workers}
    # One log line per task (no pyradiomics or Celery per-task lines).
    lines = [line for w in workers for line in w.log if "dtlr.extract" in line]
    assert len(lines) == N_TRAIN + N_TEST
    assert not any("radiomics" in line and "INFO" in line for w in workers for line in w.log)


def test_worker_killed_mid_task_loses_nothing(
        demo_manifests: dict[str, Path], redis_server: Redis, workers: list[Worker],
        tmp_path: Path) -> None:
    store = new_store(tmp_path / "store", demo_manifests)
    proc = submit(store, redis_server.url)
    victim = workers[0]
    deadline = time.monotonic() + 120
    # Kill the worker while it runs a task (its "running" record is in the store), after it
    # finished one.
    while time.monotonic() < deadline:
        records = [r for c in COHORTS for r in store.statuses(c) if r.worker == victim.node]
        if any(r.state == "running" for r in records) and any(r.state == "done"
                                                             for r in records):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the worker never had a task in progress")
    victim.kill()
    killed = time.monotonic()
    code, output = finish(proc)
    # With the default visibility timeout (an hour) the coordinator noticed the lost worker
    # and sent its task again: the run ended about as fast as the survivor could work.
    assert time.monotonic() - killed < 90, output
    assert code == 0, output
    assert len(done_patients(store)) == N_TRAIN + N_TEST
    counts = files_per_patient(store)
    assert len(counts) == expected_rows() and set(counts) == {1}
    assert len(radiomics(store)) == expected_rows()


def test_redis_restart_during_a_run(demo_manifests: dict[str, Path], redis_server: Redis,
                                    workers: list[Worker], tmp_path: Path) -> None:
    store = new_store(tmp_path / "store", demo_manifests)
    proc = submit(store, redis_server.url)
    deadline = time.monotonic() + 120
    while len(done_patients(store)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    redis_server.stop()  # queued messages are lost with it (no persistence)
    time.sleep(4)
    redis_server.start()
    code, output = finish(proc)
    assert code == 0, output
    assert len(done_patients(store)) == N_TRAIN + N_TEST
    counts = files_per_patient(store)
    assert len(counts) == expected_rows() and set(counts) == {1}


def test_redis_gone_too_long_stops_clearly_and_resubmit_completes(
        demo_manifests: dict[str, Path], redis_server: Redis, workers: list[Worker],
        tmp_path: Path) -> None:
    store = new_store(tmp_path / "store", demo_manifests)
    proc = submit(store, redis_server.url, env={"DTLR_BROKER_OUTAGE_S": "4"})
    deadline = time.monotonic() + 120
    while len(done_patients(store)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    redis_server.stop()
    code, output = finish(proc)
    assert code == 3, output
    assert f"lost the broker at {redis_server.url}" in output
    assert "re-submit the same command to do only the rest" in output
    before = done_patients(store)
    assert 0 < len(before) < N_TRAIN + N_TEST
    redis_server.start()
    time.sleep(3)  # the workers reconnect
    code, output = finish(submit(store, redis_server.url))
    assert code == 0, output
    assert len(done_patients(store)) == N_TRAIN + N_TEST
    counts = files_per_patient(store)
    assert len(counts) == expected_rows() and set(counts) == {1}


def test_coordinator_killed_then_resubmit_does_only_missing_work(
        demo_manifests: dict[str, Path], redis_server: Redis, workers: list[Worker],
        tmp_path: Path) -> None:
    store = new_store(tmp_path / "store", demo_manifests)
    proc = submit(store, redis_server.url)
    deadline = time.monotonic() + 120
    while len(done_patients(store)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    first = done_patients(store)
    mtimes = {p: p.stat().st_mtime_ns for p in (store.root / "features").rglob("*.*")
              if p.is_file()}
    assert len(first) >= 3
    code, output = finish(submit(store, redis_server.url))
    assert code == 0, output
    assert len(done_patients(store)) == N_TRAIN + N_TEST
    # Patients finished before the kill were not extracted again: their files are untouched.
    for path, mtime in mtimes.items():
        assert path.stat().st_mtime_ns == mtime, path
    counts = files_per_patient(store)
    assert len(counts) == expected_rows() and set(counts) == {1}
    status = subprocess.run([str(BIN / "dtlr"), "status", "--store", str(store.root)],
                            capture_output=True, text=True, check=True, encoding="utf-8")
    rows = [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in status.stdout.splitlines() if "│ extract" in line]
    assert rows == [[COHORTS[0], str(N_TRAIN), "extract", str(N_TRAIN), "0", "0", "0"],
                    [COHORTS[1], str(N_TEST), "extract", str(N_TEST), "0", "0", "0"]]
