"""Image loaders read torchvision's on-disk formats written here; augmentation on the device."""

import hashlib
from urllib.error import URLError

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets as tvd
import torchvision.datasets.mnist as tv_mnist
from idx_files import idx_bytes, write_idx

from clustr_lib import data


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar10_dir(tmp_path, fake_cifar10):
    return tmp_path, fake_cifar10(tmp_path, per_batch=4, test=6)


def test_cifar10_loader_reads_torchvision_pickles(cifar10_dir):
    root, rows = cifar10_dir
    d = data.load_images("cifar10", data_dir=root)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert 0 <= int(d.y_train.min()) and int(d.y_train.max()) < 10
    row = rows["test_batch"][2]  # CIFAR rows are R(1024) G(1024) B(1024), each row-major 32x32
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        assert int(d.x_test[2, c, h, w]) == int(row[c * 1024 + h * 32 + w])
    assert d.augment  # App. D: random crops on CIFAR


def test_svhn_loader_reads_torchvision_mat_files(tmp_path, monkeypatch, rng):
    split_list = {}
    arrays = {}
    for split, n in (("train", 7), ("test", 5)):
        X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)  # SVHN stores digit 0 as 10
        y[0] = 10
        name = f"{split}_32x32.mat"
        scipy.io.savemat(tmp_path / name, {"X": X, "y": y})
        arrays[split] = (X, y)
        split_list[split] = ["unused-url", name, md5(tmp_path / name)]
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    d = data.load_images("svhn", data_dir=tmp_path)
    X, y = arrays["test"]
    assert d.x_test.shape == (5, 3, 32, 32) and d.x_test.dtype == torch.uint8
    assert int(d.x_test[3, 2, 4, 9]) == int(X[4, 9, 2, 3])  # MATLAB order H, W, C, N
    assert d.y_test.tolist() == [int(v) % 10 for v in y[:, 0]]
    assert int(d.y_test[0]) == 0 and not d.augment  # App. D: no augmentation on SVHN


def test_missing_dataset_gives_a_clear_message(tmp_path, monkeypatch):
    def offline(self):
        raise URLError("no network")

    monkeypatch.setattr(tvd.CIFAR100, "download", offline)
    with pytest.raises(
        data.DatasetUnavailable, match="cifar100 is not in .* could not be downloaded"
    ):
        data.load_images("cifar100", data_dir=tmp_path)
    with pytest.raises(ValueError, match="image dataset"):
        data.load_images("mnist")


def test_digits32_is_a_fixed_stratified_split_of_real_digits():
    a, b = data.load_images("digits32"), data.load_images("digits32")
    assert a.x_train.shape == (1347, 3, 32, 32) and a.x_test.shape == (450, 3, 32, 32)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert torch.bincount(a.y_test).min() >= 40  # every digit in the test set
    assert torch.equal(a.x_train[:, 0], a.x_train[:, 2])  # grey: three equal channels
    sub = data.load_images("digits32", train_size=100, test_size=50, seed=1)
    assert len(sub.x_train) == 100 and len(sub.y_test) == 50


def test_random_crop_is_a_per_sample_window_of_the_padded_image(rng):
    x = torch.tensor(rng.integers(1, 256, size=(16, 3, 32, 32)), dtype=torch.uint8)
    x[8:] = x[0]  # identical images still get their own offsets
    out = data.random_crop(x, padding=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)))
    offsets = []
    for i in range(16):
        found = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if np.array_equal(padded[i, :, dy : dy + 32, dx : dx + 32], out[i].numpy())
        ]
        assert found, f"crop {i} is not a window of the padded image"
        offsets.append(found[0])
    assert len(set(offsets[8:])) > 1


def test_train_batch_is_float_in_unit_range():
    d = data.load_images("digits32", train_size=64, test_size=8)
    d.augment = True
    batch = d.train_batch(torch.arange(10))
    assert batch.dtype == torch.float32 and float(batch.min()) >= 0 and float(batch.max()) <= 1


# --- Horizontal flips (the official code's RandomHorizontalFlip on CIFAR; issue 9) --------


def test_random_flip_mirrors_about_half_of_the_images(rng):
    x = torch.tensor(rng.integers(0, 256, size=(400, 3, 4, 5)), dtype=torch.uint8)
    out = data.random_flip(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    same = (out == x).flatten(1).all(1).numpy()
    mirrored = (out.numpy() == x.numpy()[..., ::-1]).reshape(400, -1).all(1)
    assert np.all(same | mirrored)  # each image is itself or its left-right mirror
    assert not np.any(same & mirrored)  # (random images are not symmetric)
    assert 160 < mirrored.sum() < 240  # p = 1/2 (±4 sd)
    np.testing.assert_array_equal(out.numpy()[mirrored][..., 0], x.numpy()[mirrored][..., -1])


def test_train_batch_flips_only_when_asked():
    d = data.load_images("digits32", train_size=64, test_size=8)
    assert d.flip is False
    idx = torch.arange(64)
    plain = d.x_train.float() / 255
    assert torch.equal(d.train_batch(idx, torch.Generator().manual_seed(0)), plain)
    flipped = d.train_batch(idx, torch.Generator().manual_seed(0), flip=True)
    is_mirror = (flipped == plain.flip(-1)).flatten(1).all(1)
    is_same = (flipped == plain).flatten(1).all(1)
    assert bool((is_mirror | is_same).all()) and 10 < int((is_mirror & ~is_same).sum()) < 54
    on = data.load_images("digits32", train_size=64, test_size=8, flip=True)
    assert on.flip is True
    assert torch.equal(on.train_batch(idx, torch.Generator().manual_seed(0)), flipped)
    assert torch.equal(on.train_batch(idx, torch.Generator().manual_seed(0), flip=False), plain)
    with pytest.raises(ValueError, match="images"):
        vectors = data.TensorData(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]))
        vectors.train_batch(idx[:2], flip=True)


# --- Bad sizes, counts and values refused up front (issue 13) ----------------------------


@pytest.mark.parametrize("sizes", [{"train_size": 0}, {"train_size": -5}, {"test_size": -1}])
def test_load_images_refuses_non_positive_sizes_before_loading(monkeypatch, sizes):
    def never(train):
        raise AssertionError("loaded the data before checking the sizes")

    monkeypatch.setattr(data, "_digits32", never)
    ((name, value),) = sizes.items()
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer.*got {value}"):
        data.load_images("digits32", **sizes)
    with pytest.raises(ValueError, match=r"train_size must be a positive integer.*got 2\.5"):
        data.load_images("digits32", train_size=2.5)


def test_image_data_checks_label_counts_and_refuses_empty_sets():
    x = torch.zeros(5, 3, 32, 32, dtype=torch.uint8)
    y = torch.arange(5)
    with pytest.raises(ValueError, match="5 training images but 4 labels"):
        data.ImageData("digits32", x, y[:4], x, y)
    with pytest.raises(ValueError, match="3 test images but 5 labels"):
        data.ImageData("digits32", x, y, x[:3], y)
    with pytest.raises(ValueError, match="training set is empty"):
        data.ImageData("digits32", x[:0], y[:0], x, y)
    with pytest.raises(ValueError, match="test set is empty"):
        data.ImageData("digits32", x, y, x[:0], y[:0])
    with pytest.raises(ValueError, match="labels must be integers in"):
        data.ImageData("digits32", x, y - 1, x, y)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_tensor_data_refuses_non_finite_inputs_and_empty_sets(bad):
    x, y = torch.rand(8, 2), torch.tensor([0, 1] * 4)
    x[3, 1] = bad
    with pytest.raises(ValueError, match=r"inputs must be finite: 1 of 16"):
        data.TensorData(x, y)
    with pytest.raises(ValueError, match="training set is empty"):
        data.TensorData(x[:0], y[:0])


@pytest.mark.parametrize("sizes", [(-10, 50), (40, 0), (0, 40)])
def test_train_test_2d_refuses_non_positive_sizes(sizes):
    """``x[:n_train]``, ``x[n_train:]`` with a negative ``n_train`` would overlap the sets."""
    with pytest.raises(ValueError, match="n_train and n_test must be positive"):
        data.train_test_2d("moons", *sizes)


# --- fashion32: Fashion-MNIST from IDX files written here (issue 14) ---------------------


def fashion_arrays(rng, label_offset=0):
    """Four small Fashion-MNIST-like arrays; image 1 of the training set made by hand."""
    arrays = {}
    for split, n in (("train", 6), ("t10k", 4)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{split}-images-idx3-ubyte"] = images
        arrays[f"{split}-labels-idx1-ubyte"] = (np.arange(n) * 3 + label_offset) % 10
    hand = np.zeros((28, 28), dtype=np.uint8)
    hand[0, 0], hand[0, 27], hand[27, 0], hand[5, 9] = 255, 1, 2, 77
    arrays["train-images-idx3-ubyte"][1] = hand
    return arrays


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network for torchvision's download, and no Debian folder unless a test makes one."""

    def no_network(url, *args, **kwargs):
        raise URLError(f"no network for {url}")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", no_network)
    monkeypatch.setattr(data, "FASHION_MNIST_DEBIAN", tmp_path / "no-debian")
    monkeypatch.delenv("CLUSTR_DATA", raising=False)


def test_fashion32_pads_to_32x32_three_channels_and_keeps_the_label_order(tmp_path, rng, offline):
    arrays = fashion_arrays(rng)
    write_idx(tmp_path / "FashionMNIST" / "raw", arrays, gz=False)
    d = data.load_images("fashion32", data_dir=tmp_path)
    assert d.x_train.shape == (6, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    hand = d.x_train[1]
    assert torch.equal(hand[0], hand[1]) and torch.equal(hand[0], hand[2])  # grey, 3 channels
    assert int(hand[0, 2, 2]) == 255 and int(hand[0, 2, 29]) == 1 and int(hand[0, 29, 2]) == 2
    assert int(hand[0, 7, 11]) == 77 and int(hand.sum()) == 3 * (255 + 1 + 2 + 77)
    for x, name in ((d.x_train, "train"), (d.x_test, "t10k")):
        np.testing.assert_array_equal(
            x[:, 1, 2:30, 2:30].numpy(), arrays[f"{name}-images-idx3-ubyte"]
        )
        border = x.clone()
        border[:, :, 2:30, 2:30] = 0
        assert int(border.max()) == 0  # zero padding, 2 pixels each side
    assert d.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert d.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert d.augment and not d.flip  # crops as on CIFAR; flips only when asked
    assert data.load_images("fashion32", data_dir=tmp_path, flip=True).flip


def test_fashion32_inflates_debian_folder_into_the_data_dir(tmp_path, rng, offline, monkeypatch):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    arrays = fashion_arrays(rng)
    write_idx(debian, arrays)
    monkeypatch.setattr(data, "FASHION_MNIST_DEBIAN", debian)
    before = sorted(p.name for p in debian.iterdir())
    d = data.load_images("fashion32", data_dir=tmp_path / "data")
    assert d.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    np.testing.assert_array_equal(
        d.x_train[:, 0, 2:30, 2:30].numpy(), arrays["train-images-idx3-ubyte"]
    )
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(data.FASHION_MNIST_FILES)  # no .part
    assert (raw / "t10k-images-idx3-ubyte").read_bytes() == idx_bytes(
        arrays["t10k-images-idx3-ubyte"]
    )
    assert sorted(p.name for p in debian.iterdir()) == before  # nothing written there


def test_fashion32_reads_clustr_data_before_debian(tmp_path, rng, offline, monkeypatch):
    ours, debians = fashion_arrays(rng), fashion_arrays(rng, label_offset=1)
    write_idx(tmp_path / "env" / "FashionMNIST" / "raw", ours)  # a carried copy of the .gz
    write_idx(tmp_path / "debian", debians)
    monkeypatch.setattr(data, "FASHION_MNIST_DEBIAN", tmp_path / "debian")
    monkeypatch.setenv("CLUSTR_DATA", str(tmp_path / "env"))
    d = data.load_images("fashion32")
    assert d.y_train.tolist() == ours["train-labels-idx1-ubyte"].tolist()
    assert d.y_train.tolist() != debians["train-labels-idx1-ubyte"].tolist()


def test_fashion32_subsets_are_seeded_rows_of_the_full_set(tmp_path, rng, offline):
    write_idx(tmp_path / "FashionMNIST" / "raw", fashion_arrays(rng))
    full = data.load_images("fashion32", data_dir=tmp_path)
    sub = data.load_images("fashion32", data_dir=tmp_path, train_size=4, test_size=3, seed=2)
    again = data.load_images("fashion32", data_dir=tmp_path, train_size=4, test_size=3, seed=2)
    assert len(sub.x_train) == 4 and len(sub.y_test) == 3
    assert torch.equal(sub.x_train, again.x_train) and torch.equal(sub.y_test, again.y_test)
    for x, y in zip(sub.x_train, sub.y_train):
        (i,) = [i for i in range(len(full.x_train)) if torch.equal(full.x_train[i], x)]
        assert int(full.y_train[i]) == int(y)


def test_fashion32_unavailable_names_all_three_sources(tmp_path, rng, offline, monkeypatch):
    with pytest.raises(data.DatasetUnavailable) as err:
        data.load_images("fashion32", data_dir=tmp_path / "empty")
    message = str(err.value)
    for part in (
        "$CLUSTR_DATA or data_dir",
        str(tmp_path / "empty" / "FashionMNIST" / "raw"),
        "lacks train-images-idx3-ubyte",
        f"{tmp_path / 'no-debian'} is absent",
        "apt-get install dataset-fashion-mnist",
        "torchvision's download",
        "no network",
    ):
        assert part in message
    partial = fashion_arrays(rng)
    del partial["t10k-labels-idx1-ubyte"]
    write_idx(tmp_path / "debian", partial)
    monkeypatch.setattr(data, "FASHION_MNIST_DEBIAN", tmp_path / "debian")
    with pytest.raises(data.DatasetUnavailable, match=r"debian lacks t10k-labels-idx1-ubyte\.gz"):
        data.load_images("fashion32", data_dir=tmp_path / "empty")
