import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

# Tests marked ``cuda`` run where CUDA exists and are skipped elsewhere. To check them on a
# machine without a GPU, CLUSTR_CUDA_TESTS_DEVICE=cpu runs them on that device instead
# (the ``cuda_device`` fixture); parts that only make sense on CUDA skip themselves there.
CUDA_TESTS_DEVICE = os.environ.get("CLUSTR_CUDA_TESTS_DEVICE")


def pytest_collection_modifyitems(config, items):
    if CUDA_TESTS_DEVICE or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs CUDA (CLUSTR_CUDA_TESTS_DEVICE=cpu runs them on the CPU instead)"
    )
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cuda_device():
    """The device the ``cuda`` tests run on: CUDA, or ``CLUSTR_CUDA_TESTS_DEVICE``."""
    return torch.device(CUDA_TESTS_DEVICE or "cuda")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def fake_cifar10(monkeypatch, rng):
    """``write(root, per_batch, test)``: see :func:`write_fake_cifar10`."""
    return lambda root, per_batch, test: write_fake_cifar10(root, monkeypatch, rng, per_batch, test)


def write_fake_cifar10(root, monkeypatch, rng, per_batch: int, test: int) -> dict:
    """CIFAR-10 in torchvision's on-disk format (five training pickles of ``per_batch`` rows,
    one test pickle of ``test``) under ``root/cifar-10-batches-py``, random pixels and labels;
    torchvision's md5 table is pointed at these files. Returns the rows of each file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        rows[name] = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows[name], "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)

    def md5(name):
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    # torchvision checks each file's md5 against the real archive's: point it at ours
    monkeypatch.setattr(
        tvd.CIFAR10,
        "train_list",
        [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)],
    )
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": md5("batches.meta")})
    return rows
