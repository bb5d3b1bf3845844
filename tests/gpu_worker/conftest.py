"""Small synthetic stores and CPU settings for the GPU worker's tests (random init, no network)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dtlr.services.gpu_worker import run
from dtlr.shared.config import CNNSettings, Settings
from dtlr.shared.store import Store
from tests.synthetic import slices as synthetic

SLICE = 48  # max-slice side written to the test stores
N_TRAIN, N_TEST, N_READER2 = 24, 12, 4


def _tiny_settings(**cnn: object) -> Settings:
    """Random-init ResNet50 on 32x32 inputs, 2 epochs of batch 8, on one CPU thread.

    One thread: these steps are tiny, and on a busy machine (CI) every parallel region of a
    two-thread step waits for the slower thread; one thread was 10-30x faster there.
    """
    base: dict[str, object] = {"weights": "random", "profile": "quick", "image_size": 32,
                               "epochs": 2, "batch_size": 8, "device": "cpu", "threads": 1}
    return Settings(cnn=CNNSettings.model_validate({**base, **cnn}))


def _make_store(root: Path, test_seed: int = 2) -> Store:
    """A store with a 'train' cohort (reader 2 for a few) and a 'test' cohort."""
    store = Store(root)
    synthetic.write_cohort(store, "train", N_TRAIN, seed=1, size=SLICE, n_reader2=N_READER2)
    synthetic.write_cohort(store, "test", N_TEST, seed=test_seed, size=SLICE)
    return store


@pytest.fixture(scope="session")
def tiny_settings() -> Callable[..., Settings]:
    """Factory: tiny CPU settings, keyword arguments override CNN settings."""
    return _tiny_settings


@pytest.fixture(scope="session")
def make_store() -> Callable[..., Store]:
    """Factory: a synthetic store at a folder (``test_seed`` varies the test cohort)."""
    return _make_store


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, str, Settings]:
    """A store with a tiny fine-tuned model, shared by the tests (which leave it as they found
    it, apart from embeddings and reports)."""
    store = _make_store(tmp_path_factory.mktemp("store"))
    settings = _tiny_settings()
    record = run.finetune(store, "train", settings, ["test"])
    assert record.state == "done", record.message
    return store, record.key, settings
