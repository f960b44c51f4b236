"""The 2-D study (Sec. 4.1, Fig. 2–3): train the 3-layer MLP with the Magnet loss, from
random initialisation or from a cross-entropy warm start (ClusTR), and certify it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .certify import (certified_accuracy, certified_radius, max_jacobian_norm,
                      minimal_adversarial_distance_2d, mlp_lipschitz_upper_bound,
                      nearest_cluster_predict)
from .checks import progress_enabled
from .data import TensorData
from .magnet import ClusterIndex
from .models import WithHead, mlp_2d
from .train import embed_all, train_cross_entropy, train_magnet


@dataclass
class Trained2D:
    """A trained 2-D feature map with its clusters and training wall time (seconds)."""

    embedder: torch.nn.Module
    index: ClusterIndex
    seconds: float
    warm_start: bool

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest-cluster class (the classifier Theorem 1 certifies)."""
        with torch.no_grad():
            return nearest_cluster_predict(self.embedder(x), self.index.centroids_,
                                           self.index.centroid_classes_)

    def accuracy(self, x, y) -> float:
        return float((self.predict(x) == y).float().mean())


def train_2d(x, y, *, warm_start: bool, seed: int, hidden: int = 20, embedding_dim: int = 20,
             ce_epochs: int = 60, ce_lr: float = 1e-2, ce_batch_size: int = 64,
             magnet_epochs: int = 100, magnet_lr: float = 1e-3, alpha: float = 1.0,
             clusters_per_class: int = 1, samples_per_cluster: int = 64,
             progress: bool = False) -> Trained2D:
    """Train the 2-D MLP: Magnet loss from random init, or ClusTR (warm start, then Magnet).

    The warm start is cross-entropy with Adam (lr ×0.1 halfway), then the head is
    dropped and the feature map fine-tuned with the Magnet loss; a batch holds one
    seed cluster and its nearest impostor clusters (M = 1 + (L − 1)·K, at most 12).
    """
    torch.manual_seed(seed)
    embedder = mlp_2d(hidden, embedding_dim, in_features=x.shape[1])
    data = TensorData(x, y)
    start = time.perf_counter()
    if warm_start:
        train_cross_entropy(WithHead(embedder, embedding_dim, int(y.max()) + 1), data,
                            epochs=ce_epochs, lr=ce_lr, batch_size=ce_batch_size,
                            milestones=(ce_epochs // 2,), seed=seed, progress=progress)
    num_classes = int(y.max()) + 1
    index, _ = train_magnet(embedder, data, epochs=magnet_epochs, lr=magnet_lr, alpha=alpha,
                            clusters_per_class=clusters_per_class,
                            clusters_per_batch=min(12, 1 + (num_classes - 1) * clusters_per_class),
                            samples_per_cluster=samples_per_cluster, seed=seed, progress=progress)
    return Trained2D(embedder.eval(), index, time.perf_counter() - start, warm_start)


def input_grid(x: torch.Tensor, margin: float, n: int = 300) -> tuple[torch.Tensor, tuple]:
    """``[n², 2]`` grid over the data's bounding box grown by ``margin``, and its extent."""
    lo = x.min(0).values - margin
    hi = x.max(0).values + margin
    xs = torch.linspace(float(lo[0]), float(hi[0]), n)
    ys = torch.linspace(float(lo[1]), float(hi[1]), n)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    return grid, (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))


def lipschitz_two_ways(model: Trained2D, x: torch.Tensor, margin: float, n: int = 300) -> dict:
    """The product-of-spectral-norms bound (global) and the largest Jacobian norm on a
    grid over the data region grown by ``margin`` (tight, valid inside that region)."""
    grid, _ = input_grid(x, margin, n)
    return {"product_bound": mlp_lipschitz_upper_bound(model.embedder),
            "grid_jacobian": max_jacobian_norm(model.embedder, grid)}


def radii_2d(model: Trained2D, x: torch.Tensor, lipschitz: float, reduction: str = "sound"):
    """Theorem 1 radii of the points ``x``."""
    return certified_radius(embed_all(model.embedder, x), model.index.centroids_,
                            model.index.centroid_classes_, lipschitz, reduction).float()


def exact_distances_2d(model: Trained2D, x: torch.Tensor, max_radius: float,
                       n_angles: int = 720, n_radii: int = 200) -> torch.Tensor:
    """Exact minimal ℓ2 distance to a change of the nearest-cluster prediction."""
    return minimal_adversarial_distance_2d(model.predict, x, max_radius=max_radius,
                                           n_angles=n_angles, n_radii=n_radii).float()


def robust_curve(exact: torch.Tensor, correct: torch.Tensor, thresholds) -> np.ndarray:
    """Exact robust accuracy at each radius: correct and minimal distance above ``r``."""
    return certified_accuracy(exact, correct, thresholds)


METHODS_2D = {False: "Magnet (random init)", True: "ClusTR (warm start)"}


def warm_start_study(train, test, *, seeds: int, thresholds, n_exact: int, exact_radius: float,
                     n_angles: int = 360, n_radii: int = 100, progress: bool | None = None,
                     **train_kwargs):
    """Sec. 4.1's comparison over ``seeds`` seeds: Magnet from random init vs ClusTR.

    For every seed and method: test accuracy, training wall time, the product-bound
    Lipschitz constant, the certified-accuracy curve (Theorem 1, sound reduction)
    and the exact robust-accuracy curve (2-D search on the first ``n_exact`` test
    points). Returns ``(rows, curves)``: a list of per-run dicts and
    ``{method: {"certified": [seeds, radii], "exact": [seeds, radii]}}``.
    """
    progress = progress_enabled() if progress is None else progress
    (x_train, y_train), (x_test, y_test) = train, test
    rows, curves = [], {m: {"certified": [], "exact": []} for m in METHODS_2D.values()}
    runs = [(seed, warm) for seed in range(seeds) for warm in (False, True)]
    for seed, warm in tqdm(runs, desc="2-D runs", disable=not progress):
        model = train_2d(x_train, y_train, warm_start=warm, seed=seed, **train_kwargs)
        lipschitz = mlp_lipschitz_upper_bound(model.embedder)
        radius = radii_2d(model, x_test, lipschitz)
        correct = model.predict(x_test) == y_test
        exact = exact_distances_2d(model, x_test[:n_exact], exact_radius, n_angles, n_radii)
        method = METHODS_2D[warm]
        curves[method]["certified"].append(certified_accuracy(radius, correct, thresholds))
        curves[method]["exact"].append(robust_curve(exact, correct[:n_exact], thresholds))
        rows.append({"method": method, "seed": seed, "test_accuracy": float(correct.float().mean()),
                     "train_seconds": model.seconds, "lipschitz_bound": lipschitz,
                     "median_certified_radius": float(radius.median()),
                     "median_exact_distance": float(exact.median())})
    return rows, {m: {k: np.stack(v) for k, v in c.items()} for m, c in curves.items()}
