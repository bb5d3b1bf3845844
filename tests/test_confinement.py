"""A worker does only what its store and data roots allow, whoever sends the message.

Any client of the broker can send a task message. A hostile or mistaken one (another store,
names with ``../``, files outside the data roots, a settings path whose contents would come
back in an error) is refused by the real worker before the file system is touched, logged,
and reported on the submission's event list; the store and every other folder stay as they
were, and no file's contents appear anywhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtlr.services.coordinator.demo import make_demo
from dtlr.services.coordinator.dispatch import coordinator_app
from dtlr.shared import manifest
from dtlr.shared.celery_app import EventBus
from dtlr.shared.config import Settings
from tests.cluster import Redis, Worker, new_store
from tests.snapshot import changed, snapshot

pytestmark = pytest.mark.redis
SECRET = "TOP-SECRET-LINE-12345"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("confine")
    manifests = make_demo(root / "demo", n_train=10, n_test=4, n_reader2=0)
    store = new_store(root / "store", {"demo-hospitalA": manifests["demo-hospitalA"]})
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.yaml").write_text(f"setting: {{binWidth: 25}}\n{SECRET}: [\n",
                                         encoding="utf-8")
    (root / "demo" / "link-out.nii.gz").symlink_to(outside / "secret.yaml")
    redis = Redis(root)
    redis.start()
    worker = Worker(redis.url, store.root, "cpu", "--concurrency", "1",
                    data_roots=[root / "demo"])
    worker.wait_ready()
    try:
        yield {"root": root, "store": store, "redis": redis, "worker": worker,
               "outside": outside, "app": coordinator_app(redis.url)}
    finally:
        worker.stop()
        redis.stop()


def message(store_root: Path, row: dict, changes: dict | None = None) -> dict:
    body = {"store_root": str(store_root), "submission": "hostile", "job": "",
            "settings": Settings().model_dump(mode="json"), "cohort": row["cohort"],
            "patient_id": row["patient_id"], "image": row["image"], "mask": row["mask"],
            "mask_reader2": None}
    body.update(changes or {})
    return body


def send_and_wait(cluster: dict, task: str, kwargs: dict) -> dict:
    """Send one message as any broker client could, return the worker's "finished" event."""
    bus = EventBus(cluster["redis"].url)
    bus.clear("hostile")
    kwargs = {**kwargs, "job": f"j{time.monotonic_ns()}"}
    cluster["app"].send_task(task, kwargs=kwargs, queue="cpu")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for event in bus.pop("hostile", 1.0):
            if event["kind"] == "finished" and event["job"] == kwargs["job"]:
                return event
    pytest.fail("the worker never answered")


def first_row(cluster: dict) -> dict:
    return json.loads(manifest.load(cluster["store"], "demo-hospitalA").to_json(
        orient="records"))[0]


@pytest.mark.parametrize("case", ["other-store", "traversal-patient", "traversal-cohort",
                                  "image-outside", "symlink-outside", "params-outside",
                                  "unknown-field"])
def test_hostile_messages_are_refused_before_any_file_is_touched(cluster: dict,
                                                                 case: str) -> None:
    store, outside, row = cluster["store"], cluster["outside"], first_row(cluster)
    other = cluster["root"] / "other-store"
    changes: dict[str, object] = {
        "other-store": {"store_root": str(other)},
        "traversal-patient": {"patient_id": "../../escape"},
        "traversal-cohort": {"cohort": "../x"},
        "image-outside": {"image": "/etc/passwd"},
        "symlink-outside": {"image": str(cluster["root"] / "demo" / "link-out.nii.gz")},
        "params-outside": {"settings": {"radiomics": {"params":
                                                      str(outside / "secret.yaml")}}},
        "unknown-field": {"command": "rm -rf /"},
    }[case]
    before, before_out = snapshot(store.root), snapshot(outside)
    lines_before = len(cluster["worker"].log)
    event = send_and_wait(cluster, "dtlr.extract", message(store.root, row, changes))
    assert event["records"] == [] and "refused before any work" in event["error"]
    assert SECRET not in event["error"]
    log = "".join(cluster["worker"].log[lines_before:])
    assert "refused before any work" in log and SECRET not in log
    assert changed(before, snapshot(store.root)) == set()
    assert changed(before_out, snapshot(outside)) == set()
    assert not other.exists() and not (store.root.parent / "escape").exists()


def test_a_message_within_the_roots_is_served(cluster: dict) -> None:
    store, row = cluster["store"], first_row(cluster)
    event = send_and_wait(cluster, "dtlr.extract", message(store.root, row))
    assert event["error"] == ""
    [record] = event["records"]
    assert record["state"] == "done" and record["patient_id"] == row["patient_id"]
    assert store.read_status("demo-hospitalA", row["patient_id"], "extract").state == "done"


def test_settings_naming_files_a_task_does_not_read_do_not_refuse_it(cluster: dict) -> None:
    """An extraction's settings may name CNN weights outside the roots: it never reads them."""
    store, row = cluster["store"], first_row(cluster)
    weights = cluster["outside"] / "resnet50.pth"
    weights.write_bytes(b"weights only a gpu-queue worker reads")
    settings = Settings.model_validate({"cnn": {"weights": str(weights)}}).model_dump(
        mode="json")
    event = send_and_wait(cluster, "dtlr.extract",
                          message(store.root, row, {"settings": settings}))
    assert event["error"] == "" and event["records"][0]["state"] == "done"


def test_each_message_names_the_files_its_task_reads() -> None:
    from dtlr.shared.messages import EmbedMessage, ExtractMessage, FinetuneMessage

    settings = Settings.model_validate({"cnn": {"weights": "/w/r50.pth"},
                                        "radiomics": {"params": "paper"}})
    extract = ExtractMessage(store_root="/s", settings=settings, cohort="c", patient_id="p",
                             image="/d/i.nii.gz", mask="/d/m.nii.gz")
    assert extract.files() == ["/d/i.nii.gz", "/d/m.nii.gz"]
    assert FinetuneMessage(store_root="/s", settings=settings, cohort="c").files() == [
        "/w/r50.pth"]
    assert EmbedMessage(store_root="/s", settings=settings, cohort="c", model_id="0" * 16,
                        patient_ids=["p"]).files() == []
