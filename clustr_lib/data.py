"""Datasets: the 2-D synthetic sets of Sec. 4.1 (Fig. 3); CIFAR-10/100 and SVHN through
``torchvision.datasets``, Fashion-MNIST at 32×32×3 (``fashion32``) and the CPU-scale stand-in
``digits32``, all held as uint8 tensors on the device with batched augmentation (Sec. 4.2,
App. D)."""

from __future__ import annotations

import gzip
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd
from sklearn.datasets import load_digits, make_circles, make_moons
from sklearn.model_selection import train_test_split

from .checks import check_choice, check_positive

SYNTHETIC_2D = ("moons", "circles")


def synthetic_2d(name: str, n_samples: int, noise: float = 0.1, seed: int = 0):
    """A 2-D binary set in the spirit of Fig. 3(a), (c): ``(x [N, 2] float32, y [N] int64)``.

    The paper's figures are not in the text we have; we use two classic sets whose
    classes are *not* linearly separable, so the network has to learn a feature map
    that gathers each class into one cluster (K = 1):

    * ``moons``: two interleaving half circles (``sklearn.datasets.make_moons``);
    * ``circles``: a disc inside a ring (``make_circles``, radius ratio 0.5), where one
      class surrounds the other.

    Coordinates are standardised to zero mean and unit variance per axis.
    """
    check_choice(name, "synthetic 2-D set", SYNTHETIC_2D)
    if int(n_samples) < 4:
        raise ValueError(f"n_samples must be >= 4, got {n_samples}")
    check_positive(noise, "noise", allow_zero=True)
    if name == "moons":
        x, y = make_moons(n_samples=int(n_samples), noise=noise, random_state=seed)
    else:
        x, y = make_circles(n_samples=int(n_samples), noise=noise, factor=0.5, random_state=seed)
    x = (x - x.mean(0)) / x.std(0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def train_test_2d(name: str, n_train: int, n_test: int, noise: float = 0.1, seed: int = 0):
    """Disjoint train and test draws of :func:`synthetic_2d`, standardised together."""
    if _as_size(n_train) is None or _as_size(n_test) is None or n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive integers, got {n_train}, {n_test}")
    x, y = synthetic_2d(name, n_train + n_test, noise, seed)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    x, y = x[order], y[order]
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


# ----------------------------------------------------------------------------------------
# Image datasets (Sec. 4.2, App. D), held as uint8 tensors on the training device.

IMAGE_DATASETS = ("cifar10", "cifar100", "svhn", "fashion32", "digits32")
# App. D: random 32x32 crops with padding 4 on CIFAR; no augmentation on SVHN. The paper
# mentions no flips, so none are used by default; the official code also flips CIFAR-10/100
# horizontally (``RandomHorizontalFlip`` in datasets/load_dataset.py; ``flip=True`` here).
# fashion32 (not in the paper) is augmented as CIFAR is: crops, flips only when asked.
# digits32 (our CPU stand-in) is not augmented: shifted digits are other digits' strokes at
# this size.
AUGMENT = {"cifar10": True, "cifar100": True, "svhn": False, "fashion32": True, "digits32": False}

# Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``)
# installs the four original IDX files here, gzip-recompressed: their bytes inflate to the
# originals, but the .gz files fail torchvision's md5 check, so we inflate them ourselves.
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DatasetUnavailable(RuntimeError):
    """The dataset is not on disk and could not be downloaded."""


def _as_size(value) -> int | None:
    """``value`` as an int if it is a whole number (not a bool), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        return None
    return as_int if as_int == value else None


def _check_size(value, name: str) -> int | None:
    """A subset size: ``None`` (everything) or a positive integer."""
    if value is None:
        return None
    size = _as_size(value)
    if size is None or size < 1:
        raise ValueError(f"{name} must be a positive integer (or None for all), got {value!r}")
    return size


def _checked_labels(x, y, what: str) -> torch.Tensor:
    """``y`` as int64 labels, one per input of ``x``, in ``[0, ∞)``; ``x`` not empty."""
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{what} labels must be integers in [0, num_classes), got {y.dtype}")
    y = y.to(torch.long)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(
            f"{len(x)} {what} {'images' if x.ndim == 4 else 'inputs'} but "
            f"{len(y) if y.ndim == 1 else tuple(y.shape)} labels"
        )
    if len(x) == 0:
        raise ValueError(f"the {what} set is empty")
    if int(y.min()) < 0:
        raise ValueError(f"{what} labels must be integers in [0, num_classes), got {int(y.min())}")
    return y


class ImageData:
    """Train and test images as ``uint8 [N, 3, 32, 32]`` tensors on ``device``.

    ``train_batch(indices)`` returns float images in ``[0, 1]``, randomly cropped (padding 4,
    per sample, batched on the device) when the dataset is augmented, then flipped
    horizontally with probability 1/2 per sample when ``flip`` is set (default off; the
    official code's CIFAR pipeline is crop, then flip); ``test_images()`` returns the test
    set as floats. Normalisation happens inside the models.
    """

    def __init__(
        self,
        name,
        x_train,
        y_train,
        x_test,
        y_test,
        device="cpu",
        augment=None,
        seed: int = 0,
        flip: bool = False,
    ):
        for x in (x_train, x_test):
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32):
                raise ValueError(
                    f"images must be uint8 [N, 3, 32, 32], got {x.dtype} {tuple(x.shape)}"
                )
        y_train = _checked_labels(x_train, y_train, "training")
        y_test = _checked_labels(x_test, y_test, "test")
        self.name = name
        self.device = torch.device(device)
        self.x_train, self.x_test = x_train.to(self.device), x_test.to(self.device)
        self.y_train, self.y_test = y_train.to(self.device), y_test.to(self.device)
        self.num_classes = int(max(self.y_train.max(), self.y_test.max())) + 1
        self.augment = AUGMENT.get(name, False) if augment is None else bool(augment)
        self.flip = bool(flip)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __repr__(self):
        return (
            f"ImageData({self.name}: {len(self.x_train)} train, {len(self.x_test)} test, "
            f"{self.num_classes} classes, augment={self.augment}, flip={self.flip}, "
            f"device={self.device})"
        )

    def channel_stats(self):
        """Per-channel mean and std of the training images in ``[0, 1]`` (App. D normalisation)."""
        x = self.x_train.float().div_(255)
        return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()

    def train_batch(self, indices, generator=None, flip: bool | None = None) -> torch.Tensor:
        """Float training images at ``indices`` (augmented with ``generator`` if given):
        cropped if the dataset is augmented, then flipped if ``flip`` (``None``: ``self.flip``)."""
        x = self.x_train[indices]
        generator = generator or self.generator
        if self.augment:
            x = random_crop(x, padding=4, generator=generator)
        if self.flip if flip is None else flip:
            x = random_flip(x, generator=generator)
        return x.float().div_(255)

    def train_images(self) -> torch.Tensor:
        """The whole training set as floats, un-augmented (for embedding passes)."""
        return self.x_train.float().div_(255)

    def test_images(self, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """The test images ``[start:stop]`` (default: all) as floats in ``[0, 1]``."""
        return self.x_test[start:stop].float().div_(255)


def random_crop(x: torch.Tensor, padding: int = 4, generator=None) -> torch.Tensor:
    """Random ``H × W`` crops of the zero-padded batch, one offset per sample, no loop."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # [n, h, 1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # [n, 1, w]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2, independently, no loop
    (torchvision's ``RandomHorizontalFlip(p=0.5)``, batched)."""
    mirror = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(mirror.view(-1, *(1,) * (x.ndim - 1)), x.flip(-1), x)


def _torchvision_split(name: str, root: Path, train: bool, download: bool = True):
    if name == "svhn":
        ds = tvd.SVHN(str(root), split="train" if train else "test", download=download)
        return torch.from_numpy(ds.data), torch.as_tensor(ds.labels) % 10
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    ds = cls(str(root), train=train, download=download)
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets)


def _gunzip(source: Path, target: Path) -> None:
    """Inflate ``source`` into ``target`` through a temporary file next to it, renamed when
    complete, so that an interrupted copy never leaves a truncated file behind (torchvision
    checks only that the raw files exist)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
    try:
        with gzip.open(source, "rb") as zipped, open(tmp, "xb") as out:
            shutil.copyfileobj(zipped, out, length=1 << 20)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _fashion_mnist_raw(root: Path) -> Path:
    """Make ``<root>/FashionMNIST/raw/`` hold the four IDX files where a copy is at hand.

    A missing file is inflated from a ``.gz`` already in that folder (however it was
    compressed: a copy of Debian's files carried there works too), else from Debian's folder
    :data:`FASHION_MNIST_DEBIAN`; what is still missing is left to torchvision's download.
    Nothing is ever written outside ``root``. Returns the raw folder.
    """
    raw = root / "FashionMNIST" / "raw"
    for name in FASHION_MNIST_FILES:
        if (raw / name).is_file():
            continue
        for source in (raw / f"{name}.gz", FASHION_MNIST_DEBIAN / f"{name}.gz"):
            if source.is_file():
                raw.mkdir(parents=True, exist_ok=True)
                _gunzip(source, raw / name)
                break
    return raw


def _fashion32_unavailable(root: Path, err: Exception) -> str:
    """What each of fashion32's three sources lacked, and how to provide one."""
    raw = root / "FashionMNIST" / "raw"
    missing = [n for n in FASHION_MNIST_FILES if not (raw / n).is_file()]
    local = f"{raw} lacks {', '.join(missing)} (and their .gz)" if missing else f"{raw} has them"
    debian = FASHION_MNIST_DEBIAN
    if not debian.is_dir():
        packaged = f"{debian} is absent (Debian's package dataset-fashion-mnist not installed)"
    else:
        absent = [f"{n}.gz" for n in FASHION_MNIST_FILES if not (debian / f"{n}.gz").is_file()]
        packaged = f"{debian} lacks {', '.join(absent)}" if absent else f"{debian} has them"
    return (
        f"fashion32 (Fashion-MNIST) is not available. Its four IDX files were looked for in "
        f"order in (1) the data folder ($CLUSTR_DATA or data_dir): {local}; (2) Debian's "
        f"folder: {packaged}; (3) torchvision's download into {root}: failed. Last error: "
        f"{err}. To fix: as root, apt-get install dataset-fashion-mnist; or copy the four "
        f"files (or their .gz) into {raw}; or point $CLUSTR_DATA at a folder whose "
        f"FashionMNIST/raw/ has them."
    )


def _fashion32(root: Path, train: bool, download: bool = True):
    """Fashion-MNIST through ``torchvision.datasets.FashionMNIST``: the 28×28 grey images
    zero-padded to 32×32 (2 pixels each side; the background is 0) and repeated to 3 channels,
    uint8 ``[N, 3, 32, 32]``; labels in the files' order."""
    try:
        _fashion_mnist_raw(root)
        ds = tvd.FashionMNIST(str(root), train=train, download=download)
    except (OSError, RuntimeError) as err:  # URLError, BadGzipFile, PermissionError: OSError
        raise DatasetUnavailable(_fashion32_unavailable(root, err)) from None
    x = torch.nn.functional.pad(ds.data, (2, 2, 2, 2))  # uint8 [N, 32, 32], zeros around
    return x[:, None].repeat(1, 3, 1, 1), torch.as_tensor(ds.targets, dtype=torch.long)


def _digits32(train: bool):
    """scikit-learn's 1,797 8×8 digits, upsampled to 32×32×3 (fixed stratified split)."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    idx_train, idx_test = train_test_split(
        np.arange(len(x)), test_size=0.25, random_state=0, stratify=digits.target
    )
    idx = idx_train if train else idx_test
    return x[idx], torch.as_tensor(digits.target[idx])


def default_data_dir() -> Path:
    """``$CLUSTR_DATA`` or ``~/.cache/clustr/data``."""
    return Path(os.environ.get("CLUSTR_DATA", Path.home() / ".cache" / "clustr" / "data"))


def load_images(
    name: str,
    data_dir=None,
    device="cpu",
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    flip: bool = False,
    download: bool = True,
) -> ImageData:
    """Load an image dataset (``cifar10``, ``cifar100``, ``svhn``, ``fashion32`` or ``digits32``).

    CIFAR and SVHN come through ``torchvision.datasets``, downloaded on first use into
    ``data_dir`` (default :func:`default_data_dir`). ``fashion32`` is Fashion-MNIST (60,000
    training and 10,000 test images, 10 classes) padded to 32×32×3; its files are read from
    ``data_dir``, else inflated there from Debian's package (:data:`FASHION_MNIST_DEBIAN`),
    else downloaded by torchvision. ``train_size``/``test_size`` take
    fixed random subsets (a seeded permutation) for small-scale runs. ``flip``: random
    horizontal flips of the training batches (see :class:`ImageData`). ``download=False``:
    never download; :class:`DatasetUnavailable` if the files are not there.
    """
    check_choice(name, "image dataset", IMAGE_DATASETS)
    train_size, test_size = (
        _check_size(train_size, "train_size"),
        _check_size(test_size, "test_size"),
    )
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    splits = []
    for train in (True, False):
        if name == "digits32":
            x, y = _digits32(train)
        elif name == "fashion32":
            x, y = _fashion32(root, train, download)
        else:
            try:
                x, y = _torchvision_split(name, root, train, download)
            except (OSError, RuntimeError) as err:  # URLError is an OSError
                raise DatasetUnavailable(
                    f"{name} is not in {root} and could not be downloaded ({err}). Download it on "
                    f"a machine with internet access into that folder, or point data_dir (or "
                    f"$CLUSTR_DATA) at a copy."
                ) from None
        size = train_size if train else test_size
        if size is not None and size < len(x):
            keep = torch.from_numpy(np.random.default_rng(seed).permutation(len(x))[:size])
            x, y = x[keep], y[keep]
        splits += [x, y]
    return ImageData(name, *splits, device=device, seed=seed, flip=flip)


class TensorData:
    """Float inputs already in memory (the 2-D sets), with :class:`ImageData`'s interface."""

    augment = False
    flip = False

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        y = _checked_labels(x, y, "training")
        finite = torch.isfinite(x)
        if not bool(finite.all()):  # NaN would train to NaN losses
            raise ValueError(
                f"inputs must be finite: {int((~finite).sum())} of {x.numel()} values are "
                f"NaN or infinite"
            )
        self.x_train, self.y_train = x, y.to(x.device)
        self.device = x.device
        self.num_classes = int(self.y_train.max()) + 1

    def train_batch(self, indices, generator=None, flip: bool | None = None) -> torch.Tensor:
        if flip:
            raise ValueError("horizontal flips need images; these inputs are vectors")
        return self.x_train[indices]

    def train_images(self) -> torch.Tensor:
        return self.x_train
