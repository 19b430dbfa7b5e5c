import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The four MNIST IDX files ship in ../shared beside the checkout (CI has it too).
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir():
    if not MNIST_DIR.is_dir():
        pytest.fail(f"MNIST IDX files expected at {MNIST_DIR} (../shared/data/mnist beside the repo)")
    return MNIST_DIR


@pytest.fixture(autouse=True)
def _offline_and_private_cache(tmp_path_factory, monkeypatch):
    # Tests never reach the Hub and never touch the user's cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LATENT_DIGITS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
