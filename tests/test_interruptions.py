"""Faults of the run itself: Ctrl-C, a full disk, a broker that refuses the password.

Through the real commands: each ends within seconds with one message naming what failed and
what to do, a documented exit code (130, 4, 3), no traceback, and nothing half-written in the
store; running the same command again does only what is missing.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dtlr.services.coordinator.demo import make_demo
from dtlr.shared.store import Store
from tests.cluster import BIN, Redis, free_port, new_store
from tests.snapshot import leftovers

COHORT = "demo-hospitalA"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_demo(tmp_path_factory.mktemp("demo"), n_train=12, n_test=4, n_reader2=2)


def command(store: Store, *extra: str) -> list[str]:
    return [str(BIN / "dtlr"), "submit", "--cohort", COHORT, "--store", str(store.root),
            *extra]


def extract_records(store: Store) -> dict[str, object]:
    return {r.patient_id: r for r in store.statuses(COHORT) if r.stage == "extract"}


def outputs_complete(store: Store) -> None:
    """Every feature file has its max slice and a done record under the same key."""
    done = {pid: r.key for pid, r in extract_records(store).items() if r.state == "done"}
    for reader in (1, 2):
        for pid, _, _ in Store.keyed_files(store.radiomics_dir(COHORT, reader), ".parquet"):
            assert pid in done, f"features of {pid} without a done record"
        for pid, _, _ in Store.keyed_files(store.maxslice_dir(COHORT, reader), ".npy"):
            assert pid in done, f"max slice of {pid} without a done record"


def test_ctrl_c_stops_a_local_run_within_seconds_and_the_same_command_resumes(
        demo: dict[str, Path], tmp_path: Path) -> None:
    store = new_store(tmp_path / "store", {COHORT: demo[COHORT]})
    proc = subprocess.Popen(command(store, "--jobs", "2"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            encoding="utf-8")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if sum(r.state == "done" for r in extract_records(store).values()) >= 2:
            break
        time.sleep(0.1)
    else:
        pytest.fail("no patient finished")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
    interrupted = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - interrupted < 10, err
    assert proc.returncode == 130, out + err
    assert "interrupted" in err and "run the same command again" in err
    assert "Traceback" not in err
    assert leftovers(store.root) == []
    outputs_complete(store)
    done_before = {pid for pid, r in extract_records(store).items() if r.state == "done"}
    assert 2 <= len(done_before) < 12  # the queued patients were cancelled
    mtimes = {p: p.stat().st_mtime_ns for p in (store.root / "features").rglob("*.*")}
    again = subprocess.run(command(store, "--jobs", "2"), capture_output=True, text=True,
                           timeout=600, encoding="utf-8")
    assert again.returncode == 0, again.stderr
    assert {r.state for r in extract_records(store).values()} == {"done"}
    for path, mtime in mtimes.items():  # finished patients were not extracted again
        assert path.stat().st_mtime_ns == mtime


def _limit_file_size() -> None:
    """A full disk for files over 200 KiB (max slices are 400 KiB, features 40 KiB)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (200 * 1024, 200 * 1024))


def test_a_full_disk_ends_with_one_message_and_no_orphan_files(demo: dict[str, Path],
                                                               tmp_path: Path) -> None:
    store = new_store(tmp_path / "store", {COHORT: demo[COHORT]})
    out = subprocess.run(command(store, "--jobs", "1"), capture_output=True, text=True,
                         timeout=300, preexec_fn=_limit_file_size, encoding="utf-8")
    assert out.returncode == 4, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert f"cannot write {store.root}" in out.stderr and "free space" in out.stderr
    assert leftovers(store.root) == []
    outputs_complete(store)  # the features written before the max slice failed are gone
    assert not list(store.radiomics_dir(COHORT, 1).glob("*.parquet"))
    again = subprocess.run(command(store, "--jobs", "2"), capture_output=True, text=True,
                           timeout=600, encoding="utf-8")
    assert again.returncode == 0, again.stderr
    assert {r.state for r in extract_records(store).values()} == {"done"}


@pytest.fixture
def locked_redis(tmp_path: Path) -> Redis:
    server = Redis(tmp_path)
    exe = shutil.which("redis-server")
    assert exe
    server.proc = subprocess.Popen(
        [exe, "--port", str(server.port), "--bind", "127.0.0.1", "--save", "",
         "--requirepass", "s3cret-pw"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    yield server
    server.stop()


@pytest.mark.parametrize("password", ["wrong-pw", None])
def test_a_broker_refusing_the_password_is_named_without_the_password(
        demo: dict[str, Path], tmp_path: Path, locked_redis: Redis, password: str | None) -> None:
    store = new_store(tmp_path / "store", {COHORT: demo[COHORT]})
    auth = f":{password}@" if password else ""
    url = f"redis://{auth}127.0.0.1:{locked_redis.port}/0"
    for cmd in (command(store, "--broker", url),
                [str(BIN / "dtlr"), "worker", "--queue", "cpu", "--broker", url, "--store",
                 str(store.root)]):
        t0 = time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, encoding="utf-8")
        assert out.returncode == 3, out.stdout + out.stderr
        assert time.monotonic() - t0 < 30
        text = out.stdout + out.stderr
        assert ("refused the password" if password else "needs a password") in text
        assert f"127.0.0.1:{locked_redis.port}" in text and "Traceback" not in text
        assert "wrong-pw" not in text
    assert extract_records(store) == {}


def test_an_unreachable_broker_for_a_worker_is_waited_for(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = subprocess.Popen([str(BIN / "dtlr"), "worker", "--queue", "cpu", "--broker", url,
                             "--store", str(tmp_path / "store")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            encoding="utf-8")
    time.sleep(8)
    assert proc.poll() is None  # a worker started before its broker waits for it
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert f"cannot reach the broker at {url}" in err and "waiting for it" in err
