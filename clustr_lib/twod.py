"""The 2-D study (Sec. 4.1, Fig. 2–3): train the 3-layer MLP with the Magnet loss, from
random initialisation or from a cross-entropy warm start (ClusTR), and certify it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .certify import (
    certified_accuracy,
    certified_radius,
    lipschitz_upper_bound,
    max_jacobian_norm,
    minimal_adversarial_distance_2d,
    nearest_cluster_predict,
)
from .checks import progress_enabled
from .data import TensorData, train_test_2d
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
            return nearest_cluster_predict(
                self.embedder(x), self.index.centroids_, self.index.centroid_classes_
            )

    def accuracy(self, x, y) -> float:
        return float((self.predict(x) == y).float().mean())


def train_2d(
    x,
    y,
    *,
    warm_start: bool,
    seed: int,
    hidden: int = 20,
    embedding_dim: int = 20,
    ce_epochs: int = 60,
    ce_lr: float = 1e-2,
    ce_batch_size: int = 64,
    magnet_epochs: int = 100,
    magnet_lr: float = 1e-3,
    alpha: float = 1.0,
    clusters_per_class: int = 1,
    samples_per_cluster: int = 64,
    progress: bool = False,
) -> Trained2D:
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
        train_cross_entropy(
            WithHead(embedder, embedding_dim, int(y.max()) + 1),
            data,
            epochs=ce_epochs,
            lr=ce_lr,
            batch_size=ce_batch_size,
            milestones=(ce_epochs // 2,),
            seed=seed,
            progress=progress,
        )
    num_classes = int(y.max()) + 1
    index, _ = train_magnet(
        embedder,
        data,
        epochs=magnet_epochs,
        lr=magnet_lr,
        alpha=alpha,
        clusters_per_class=clusters_per_class,
        clusters_per_batch=min(12, 1 + (num_classes - 1) * clusters_per_class),
        samples_per_cluster=samples_per_cluster,
        seed=seed,
        progress=progress,
    )
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
    return {
        "product_bound": lipschitz_upper_bound(model.embedder),
        "grid_jacobian": max_jacobian_norm(model.embedder, grid),
    }


def radii_2d(model: Trained2D, x: torch.Tensor, lipschitz: float, reduction: str = "sound"):
    """Theorem 1 radii of the points ``x``."""
    return certified_radius(
        embed_all(model.embedder, x),
        model.index.centroids_,
        model.index.centroid_classes_,
        lipschitz,
        reduction,
    ).float()


def exact_distances_2d(
    model: Trained2D, x: torch.Tensor, max_radius: float, n_angles: int = 720, n_radii: int = 200
) -> torch.Tensor:
    """Exact minimal ℓ2 distance to a change of the nearest-cluster prediction."""
    return minimal_adversarial_distance_2d(
        model.predict, x, max_radius=max_radius, n_angles=n_angles, n_radii=n_radii
    ).float()


METHODS_2D = {False: "Magnet (random init)", True: "ClusTR (warm start)"}


def warm_start_study(
    train,
    test,
    *,
    seeds: int,
    thresholds,
    n_exact: int,
    exact_radius: float,
    n_angles: int = 360,
    n_radii: int = 100,
    progress: bool | None = None,
    **train_kwargs,
):
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
        lipschitz = lipschitz_upper_bound(model.embedder)
        radius = radii_2d(model, x_test, lipschitz)
        correct = model.predict(x_test) == y_test
        exact = exact_distances_2d(model, x_test[:n_exact], exact_radius, n_angles, n_radii)
        method = METHODS_2D[warm]
        curves[method]["certified"].append(certified_accuracy(radius, correct, thresholds))
        curves[method]["exact"].append(certified_accuracy(exact, correct[:n_exact], thresholds))
        rows.append(
            {
                "method": method,
                "seed": seed,
                "test_accuracy": float(correct.float().mean()),
                "train_seconds": model.seconds,
                "lipschitz_bound": lipschitz,
                "median_certified_radius": float(radius.median()),
                "median_exact_distance": float(exact.median()),
            }
        )
    return rows, {m: {k: np.stack(v) for k, v in c.items()} for m, c in curves.items()}


# ---------------------------------------------------------------------------------------
# Chapter 1 (Theorem 1, Fig. 2, App. A.1 and C) and chapter 2 (Sec. 4.1, Fig. 3): the
# chapters' studies, their measurements (``measurements["2d"]``, judged by claims C1–C6 of
# :data:`clustr_lib.paper.CLAIMS`) and their tables. Percentages are 0–100.

SOUND_TOLERANCE = 1e-4  # relative slack of the exact search when comparing it with a radius
ESTIMATE_NAMES = {
    "product_bound": "product of spectral norms",
    "grid_jacobian": "largest Jacobian norm on a grid",
}


def share_overstated(exact, radius, tolerance: float = SOUND_TOLERANCE) -> float:
    """% of points whose exact distance is below ``radius·(1 − tolerance)``: where a radius
    claims more than is true (chapter 1, App. A.1). A point with no boundary found
    (``inf``) is never overstated."""
    return 100 * float(
        (torch.as_tensor(exact) < torch.as_tensor(radius) * (1 - tolerance)).float().mean()
    )


def soundness(exact, radius, tolerance: float = SOUND_TOLERANCE) -> tuple[float, float]:
    """Chapter 1's check of Theorem 1 on the points whose boundary the search found (finite
    ``exact``): the % with exact distance ≥ ``radius·(1 − tolerance)`` (sound) and the median
    of ``radius / exact`` (tightness, App. C: 1 is tight)."""
    exact, radius = torch.as_tensor(exact), torch.as_tensor(radius)
    found = torch.isfinite(exact)
    sound = float((exact[found] >= radius[found] * (1 - tolerance)).float().mean())
    return 100 * sound, float((radius[found] / exact[found]).median())


@dataclass
class CertificateStudy:
    """Chapter 1's study: a ClusTR model with its radii (Theorem 1) under two Lipschitz
    estimates, the exact distances of the first ``len(exact)`` test points and the
    ``measurements`` the chapter records (see :func:`certificate_study`)."""

    model: Trained2D
    x_test: torch.Tensor
    y_test: torch.Tensor
    lipschitz: dict  # estimate → L
    radius: dict  # estimate → radii of every test point
    exact: torch.Tensor  # exact distance of each searched point (inf: no boundary found)
    measurements: dict

    @property
    def extent(self) -> tuple:
        """The plotted input region: the test points' box grown by 0.5."""
        return input_grid(self.x_test, margin=0.5)[1]

    def label(self, name: str) -> str:
        return f"L = {self.lipschitz[name]:.1f} ({name.replace('_', ' ')})"

    def balls(self, n: int) -> dict:
        """``{label: radii}`` of the first ``n`` test points (Fig. 2's certified balls)."""
        return {self.label(k): r[:n] for k, r in self.radius.items()}

    def searched(self) -> tuple[torch.Tensor, dict]:
        """The exact distances the search found and ``{label: radii}`` of the same points."""
        found = torch.isfinite(self.exact)
        return self.exact[found], {
            self.label(k): r[: len(found)][found] for k, r in self.radius.items()
        }

    def curves(self, n: int = 100) -> tuple[np.ndarray, np.ndarray, dict]:
        """Thresholds up to the largest exact distance found, the exact robust-accuracy curve
        of the searched points and ``{label: certified-accuracy curve}`` (Sec. 4.1)."""
        found = torch.isfinite(self.exact)
        thresholds = np.linspace(0, float(self.exact[found].max()), n)
        searched = slice(0, len(self.exact))
        correct = self.model.predict(self.x_test[searched]) == self.y_test[searched]
        certified = {
            self.label(k): certified_accuracy(r[searched], correct, thresholds)
            for k, r in self.radius.items()
        }
        return thresholds, certified_accuracy(self.exact, correct, thresholds), certified


def certificate_study(
    dataset: str = "moons",
    *,
    n_train: int = 1000,
    n_test: int = 500,
    noise: float = 0.1,
    seed: int = 0,
    ce_epochs: int = 60,
    magnet_epochs: int = 100,
    alpha: float = 1.0,
    n_exact: int = 200,
    n_angles: int = 720,
    n_radii: int = 200,
    k_multi: int = 3,
    search_radius: float = 2.0,
) -> CertificateStudy:
    """Chapter 1: Theorem 1 against the exact distance on a 2-D set.

    Trains ClusTR (one cluster per class), computes every test point's radius with both
    Lipschitz estimates (:func:`lipschitz_two_ways` on the training region grown by
    ``search_radius``), searches the exact distance of the first ``n_exact`` test points
    (up to ``search_radius``), then trains a variant with ``k_multi`` clusters per class and
    compares the paper's reduction (App. A.1) and the sound one with its exact distances
    (grid-Jacobian ``L``). ``measurements``: ``accuracy``, ``train_seconds``, ``lipschitz``,
    ``median_radius``, ``sound`` and ``tightness`` per estimate, ``sound_min`` (C1),
    ``tight_product`` (C2), ``no_boundary``, and for the variant ``clusters_per_class``,
    ``multi_accuracy``, ``multi_lipschitz``, ``paper_larger``, ``paper_overstates`` (C3),
    ``sound_overstates``.
    """
    (x_train, y_train), (x_test, y_test) = train_test_2d(dataset, n_train, n_test, noise, seed)
    kwargs = dict(
        warm_start=True, seed=seed, ce_epochs=ce_epochs, magnet_epochs=magnet_epochs, alpha=alpha
    )
    model = train_2d(x_train, y_train, **kwargs)
    lipschitz = lipschitz_two_ways(model, x_train, margin=search_radius)
    radius = {name: radii_2d(model, x_test, L) for name, L in lipschitz.items()}
    searched = x_test[:n_exact]
    exact = exact_distances_2d(model, searched, search_radius, n_angles, n_radii)
    checks = {name: soundness(exact, r[:n_exact]) for name, r in radius.items()}
    sound = {name: s for name, (s, _) in checks.items()}
    tightness = {name: t for name, (_, t) in checks.items()}

    multi = train_2d(x_train, y_train, clusters_per_class=k_multi, **kwargs)
    multi_l = lipschitz_two_ways(multi, x_train, margin=search_radius)["grid_jacobian"]
    paper_r = radii_2d(multi, searched, multi_l, reduction="paper")
    sound_r = radii_2d(multi, searched, multi_l, reduction="sound")
    exact_multi = exact_distances_2d(multi, searched, search_radius, n_angles, n_radii)
    measurements = {
        "accuracy": 100 * model.accuracy(x_test, y_test),
        "train_seconds": model.seconds,
        "seeds": 1,
        "lipschitz": lipschitz,
        "median_radius": {name: float(r.median()) for name, r in radius.items()},
        "sound": sound,
        "tightness": tightness,
        "sound_min": min(sound.values()),
        "tight_product": tightness["product_bound"],
        "searched": len(searched),
        "no_boundary": int((~torch.isfinite(exact)).sum()),
        "search_radius": search_radius,
        "clusters_per_class": k_multi,
        "multi_accuracy": 100 * multi.accuracy(x_test, y_test),
        "multi_lipschitz": multi_l,
        "paper_larger": 100 * float((paper_r > sound_r * (1 + 1e-6)).float().mean()),
        "paper_overstates": share_overstated(exact_multi, paper_r),
        "sound_overstates": share_overstated(exact_multi, sound_r),
    }
    return CertificateStudy(model, x_test, y_test, lipschitz, radius, exact, measurements)


def estimates_table(measurements: dict) -> pd.DataFrame:
    """Chapter 1's table of the two Lipschitz estimates: ``L``, median certified radius,
    % of searched points where Theorem 1 is sound, median certified / exact distance."""
    return pd.DataFrame(
        {
            "L": measurements["lipschitz"],
            "median certified radius": measurements["median_radius"],
            "sound (% of searched points)": measurements["sound"],
            "median certified / exact": measurements["tightness"],
        }
    ).rename(index=ESTIMATE_NAMES)


def reduction_table(measurements: dict) -> pd.DataFrame:
    """Chapter 1's table of the multi-cluster reductions (App. A.1): % of searched points
    where each radius exceeds the sound one and where the exact distance is below it."""
    return pd.DataFrame(
        {
            "radius > sound radius (%)": [measurements["paper_larger"], 0.0],
            "exact distance below the radius (%)": [
                measurements["paper_overstates"],
                measurements["sound_overstates"],
            ],
        },
        index=["paper (nearest other-class centroid)", "sound (every other-class centroid)"],
    )


def reduction_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Chapter 1's constructed feature space (identity map, ``L = 1``) where the nearest
    centroid of another class (green) does not have the nearest bisector (red): the point,
    the centroids, their classes and ``{"sound": 0.5, "paper": 0.608}``, the two radii."""
    point = torch.tensor([[1.0, 0.0]])
    centroids = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 1.9]])
    classes = torch.tensor([0, 1, 2])
    radii = {
        reduction: float(certified_radius(point, centroids, classes, 1.0, reduction)[0])
        for reduction in ("sound", "paper")
    }
    return point[0], centroids, classes, radii


METHOD_KEYS = {METHODS_2D[True]: "ClusTR", METHODS_2D[False]: "Magnet"}  # short measurement keys
CURVES = ("certified", "exact")


@dataclass
class WarmStartStudy:
    """Chapter 2's runs (one row per set, method and seed, with the area under each curve),
    the radii of the curves and ``{set: {method: {"certified"|"exact": [seeds, radii]}}}``."""

    runs: pd.DataFrame
    thresholds: np.ndarray
    curves: dict


def warm_start_sets(
    datasets=("moons", "circles"),
    *,
    n_train: int = 1000,
    n_test: int = 500,
    noise: float = 0.1,
    seeds: int = 5,
    exact_radius: float = 1.0,
    thresholds=None,
    n_exact: int = 200,
    **study_kwargs,
) -> WarmStartStudy:
    """Chapter 2: :func:`warm_start_study` on each set (data seed 0), radii 0…1 in 101 steps.
    Each run's ``certified_area`` / ``exact_area`` is the mean of its curve over the radii
    (an accuracy in 0–1, like ``test_accuracy``)."""
    thresholds = np.linspace(0, 1.0, 101) if thresholds is None else np.asarray(thresholds)
    rows, curves = [], {}
    for name in datasets:
        train, test = train_test_2d(name, n_train, n_test, noise, seed=0)
        runs, curves[name] = warm_start_study(
            train,
            test,
            seeds=seeds,
            thresholds=thresholds,
            n_exact=n_exact,
            exact_radius=exact_radius,
            **study_kwargs,
        )
        for run in runs:  # runs come seed by seed in the order of the curves' rows
            rows.append(
                {
                    "dataset": name,
                    **run,
                    **{
                        f"{kind}_area": float(curves[name][run["method"]][kind][run["seed"]].mean())
                        for kind in CURVES
                    },
                }
            )
    return WarmStartStudy(pd.DataFrame(rows), thresholds, curves)


def warm_start_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Chapter 2's accuracy and cost table: per set and method, mean (and sd) over seeds of
    the test accuracy (%), training seconds, product-bound ``L``, median radius and median
    exact distance."""
    runs = runs.assign(accuracy=100 * runs["test_accuracy"])
    return (
        runs.groupby(["dataset", "method"], sort=False)
        .agg(
            accuracy=("accuracy", "mean"),
            accuracy_sd=("accuracy", "std"),
            seconds=("train_seconds", "mean"),
            lipschitz_bound=("lipschitz_bound", "mean"),
            median_radius=("median_certified_radius", "mean"),
            median_exact=("median_exact_distance", "mean"),
        )
        .round(3)
    )


def area_gains(runs: pd.DataFrame) -> pd.DataFrame:
    """Chapter 2's comparison of the curves (Fig. 3(b), (d)): per set and curve, ClusTR's
    area minus Magnet's on the same seed, its mean (accuracy points) and the number of seeds
    on which ClusTR's area is higher."""
    rows = []
    for name, group in runs.groupby("dataset", sort=False):
        for kind in CURVES:
            area = group.pivot(index="seed", columns="method", values=f"{kind}_area")
            gain = area[METHODS_2D[True]] - area[METHODS_2D[False]]
            rows.append(
                {
                    "dataset": name,
                    "curve": kind,
                    "mean_area_gain": 100 * gain.mean(),
                    "seeds_clustr_higher": int((gain > 0).sum()),
                    "seeds": len(gain),
                }
            )
    return pd.DataFrame(rows).set_index(["dataset", "curve"])


def warm_start_findings(runs: pd.DataFrame) -> dict:
    """Chapter 2's measurements from its runs: ``min_accuracy`` (lowest mean test accuracy
    over set and method, %, C4), ``certified_agrees`` / ``exact_agrees`` (ClusTR's area higher
    on every seed of every set, C5 / C6), ``seeds``, and per set the :func:`area_gains` of each
    curve and the mean ``accuracy`` (%), ``seconds`` and ``lipschitz_bound`` per method."""
    gains = area_gains(runs)
    means = runs.groupby(["dataset", "method"], sort=False)[
        ["test_accuracy", "train_seconds", "lipschitz_bound"]
    ].mean()
    every = gains["seeds_clustr_higher"] == gains["seeds"]
    found = {
        "seeds": int(runs["seed"].nunique()),
        "min_accuracy": 100 * float(means["test_accuracy"].min()),
        "certified_agrees": bool(every.xs("certified", level="curve").all()),
        "exact_agrees": bool(every.xs("exact", level="curve").all()),
    }
    for row in gains.reset_index().to_dict(orient="records"):
        found.setdefault(row.pop("dataset"), {})[row.pop("curve")] = row
    for name in dict.fromkeys(runs["dataset"]):
        per = means.loc[name].rename(index=METHOD_KEYS)
        found[name] |= {
            "accuracy": (100 * per["test_accuracy"]).to_dict(),
            "seconds": per["train_seconds"].to_dict(),
            "lipschitz_bound": per["lipschitz_bound"].to_dict(),
        }
    return found
