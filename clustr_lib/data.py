"""Datasets. The 2-D synthetic sets of Sec. 4.1 (Fig. 3) live here; image datasets join
them in the image chapters."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import make_circles, make_moons

from ._checks import check_choice, check_positive

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
    x, y = synthetic_2d(name, n_train + n_test, noise, seed)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    x, y = x[order], y[order]
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])
