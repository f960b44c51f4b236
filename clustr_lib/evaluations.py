"""Measurements of a trained model for the evaluation chapters (7–11): PGD at any ε, D and
objective, AutoAttack, input-gradient norms, the loss along an attack path, Theorem 1 at
image scale and k-means on nominal features.

Each function takes the model, the dataset and plain JSON parameters and returns plain JSON
metrics, so that :meth:`clustr_lib.sources.Source.evaluate` can record its result by the hash
of its parameters. Attacked points are the first ``eval_size`` test images. These are the only
PGD and AutoAttack entry points above :mod:`clustr_lib.attacks`: a run's own protocol PGD
(:func:`clustr_lib.runs.evaluate`) is :func:`pgd_accuracy` too.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .attacks import attack_objective, autoattack, evaluating, pgd, predict
from .certify import certified_radius, lipschitz_upper_bound, nearest_cluster_predict
from .classify import ClusterClassifier, ClusterModel
from .magnet import ClusterIndex
from .models import WithHead
from .train import embed_all


def attacked_points(data, eval_size: int | None):
    """The first ``eval_size`` test images and labels (all when ``None``)."""
    x, y = data.test_images(), data.y_test
    n = len(y) if eval_size is None else min(int(eval_size), len(y))
    return x[:n], y[:n]


def with_num_nearest(model, num_nearest: int | None):
    """The same network with Eq. (4) restricted to the ``num_nearest`` (D) nearest clusters
    (App. E.4); a plain network, or ``None``, returns ``model`` unchanged."""
    if num_nearest is None or not isinstance(model, ClusterModel):
        return model
    clf = model.classifier
    classifier = ClusterClassifier(
        clf.centroids,
        clf.centroid_classes,
        float(clf.variance),
        num_nearest=int(num_nearest),
        num_classes=clf.num_classes,
    )
    return ClusterModel(model.embedder, classifier).eval()


def pgd_accuracy(
    model,
    data,
    *,
    eps: float,
    step_size: float,
    steps,
    restarts: int,
    objective: str,
    eval_size=None,
    alpha=None,
    num_nearest=None,
    restarts_per_pass=None,
    seed: int = 0,
    rule: str = "any_restart",
) -> dict:
    """PGD ℓ∞ robust accuracy at each of ``steps`` (read off one run of ``max(steps)``
    iterations) under ``rule`` (:data:`clustr_lib.attacks.PGD_RULES`), e.g. Table 4's
    PGD-20/100 at another ε or Fig. 4's PGD-20 at another D."""
    x, y = attacked_points(data, eval_size)
    result = pgd(
        with_num_nearest(model, num_nearest),
        x,
        y,
        eps=eps,
        step_size=step_size,
        steps=max(steps),
        restarts=restarts,
        objective=objective,
        alpha=alpha,
        restarts_per_pass=restarts_per_pass,
        report_steps=steps,
        seed=seed,
        rule=rule,
    )
    return {
        "clean": result.clean_accuracy,
        "robust": {str(t): float(r.float().mean()) for t, r in result.extra["robust_at"].items()},
    }


def autoattack_accuracy(model, data, *, eps: float, attacks, eval_size=None, seed: int = 0) -> dict:
    """Robust accuracy after each AutoAttack attack in turn (``robust_after``), on
    Eq. (4)'s log-probabilities for a ClusterModel."""
    x, y = attacked_points(data, eval_size)
    num_classes = int(data.num_classes)
    attacks = [a for a in attacks if num_classes >= 4 or a not in ("apgd-t", "fab-t")]
    result = autoattack(model, x, y, eps=eps, attacks=tuple(attacks), seed=seed, batch_size=500)
    return {"clean": result.clean_accuracy, "robust_after": result.extra["robust_after"]}


def gradient_norms(model, data, *, objectives, eval_size=None, alpha=None) -> dict:
    """Per point, the ℓ2 norm of ``∇_x`` of each attack objective at the clean input, as
    float32 computes it: a zero norm means PGD's first step has no direction (the sign
    of a zero gradient is zero), the mark of gradient masking."""
    x, y = attacked_points(data, eval_size)
    norms = {}
    with evaluating(model):
        correct = predict(model, x) == y
        for objective in objectives:
            xg = x.clone().requires_grad_(True)
            with torch.enable_grad():
                loss = attack_objective(model, xg, y, objective, alpha)
                grad = torch.autograd.grad(loss.sum(), xg)[0]
            norms[objective] = grad.flatten(1).double().norm(dim=1)
    return {"norms": norms, "clean_correct": correct}


def attack_path(
    model,
    data,
    *,
    eps: float,
    step_size: float,
    steps: int,
    objective: str,
    eval_size=None,
    alpha=None,
    seed: int = 0,
) -> dict:
    """One PGD run (one random start) with every iterate recorded: the mean objective over
    the points correct at the start, and the accuracy at each iteration."""
    x, y = attacked_points(data, eval_size)
    result = pgd(
        model,
        x,
        y,
        eps=eps,
        step_size=step_size,
        steps=steps,
        restarts=1,
        objective=objective,
        alpha=alpha,
        seed=seed,
        trace=True,
    )
    loss = result.loss_trace[:, 0][:, result.clean_correct]  # [steps + 1, correct points]
    finite = torch.where(torch.isfinite(loss), loss, torch.nan)
    return {
        "mean_loss": torch.nanmean(finite.double(), dim=1),
        "accuracy": result.correct_trace[:, 0].double().mean(1),
        "nonfinite_share": float((~torch.isfinite(loss)).double().mean()) if loss.numel() else 0.0,
    }


def clean_accuracy_by_d(model, data, *, d_values) -> dict:
    """Clean test accuracy of Eq. (4) restricted to each D (one embedding pass)."""

    with evaluating(model):
        with torch.no_grad():
            feats = embed_all(model.embedder, data.test_images())
        out = {}
        for d in d_values:
            clf = with_num_nearest(model, d).classifier
            with torch.no_grad():
                out[str(d)] = float((clf.log_proba(feats).argmax(1) == data.y_test).double().mean())
    return {"accuracy": out}


def image_certificate(model, data, *, eps_linf: float, eval_size=None) -> dict:
    """Theorem 1 on an image model: radii from an honest upper bound ``L`` on the
    embedder's ℓ2 Lipschitz constant (:func:`clustr_lib.certify.lipschitz_upper_bound`).

    The ℓ2 ball that contains the ℓ∞ ball of radius ``eps_linf`` has radius
    ``eps_linf · √d`` (``d`` input dimensions); a point is certified against the paper's
    threat model only if its radius exceeds that. Also reports the median radius and
    the ℓ∞ radius it would certify (``r / √d``).
    """
    x, y = attacked_points(data, eval_size)
    with evaluating(model):
        lipschitz = lipschitz_upper_bound(model.embedder, input_size=x.shape[-1])
        with torch.no_grad():
            feats = embed_all(model.embedder, x)
    clf = model.classifier
    correct = nearest_cluster_predict(feats, clf.centroids, clf.centroid_classes).cpu() == y.cpu()
    dims = x[0].numel()
    needed = eps_linf * math.sqrt(dims)
    out = {
        "lipschitz_upper_bound": lipschitz,
        "input_dims": dims,
        "l2_radius_needed": needed,
        "nearest_cluster_accuracy": float(correct.double().mean()),
    }
    for reduction in ("sound", "paper"):
        radii = certified_radius(
            feats, clf.centroids, clf.centroid_classes, lipschitz, reduction=reduction
        ).cpu()
        certified = correct & (radii > needed)
        out[reduction] = {
            "median_radius": float(radii[correct].median()) if correct.any() else 0.0,
            "max_radius": float(radii.max()),
            "certified_share": float(certified.double().mean()),
        }
    out["median_linf_certified"] = out["sound"]["median_radius"] / math.sqrt(dims)
    return out


def kmeans_on_nominal(
    model, data, *, clusters_per_class: int, num_nearest: int, seed: int = 0
) -> dict:
    """App. B.1 (E.1 in arXiv v2): per-class k-means on the penultimate features of a
    *nominally* trained network, then Eq. (4), against the network's own linear head."""
    if not isinstance(model, WithHead):
        raise TypeError("k-means on nominal features needs a cross-entropy network (WithHead)")
    with evaluating(model), torch.no_grad():
        train_feats = embed_all(model.embedder, data.train_images())
        test_feats = embed_all(model.embedder, data.test_images())
        head = float((model.head(test_feats).argmax(1) == data.y_test).double().mean())
    index = ClusterIndex(clusters_per_class, random_state=seed).fit(
        train_feats, data.y_train, data.num_classes
    )
    out = {"head_accuracy": head, "variance": float(index.variance_)}
    for label, d in (("eq4_d", min(num_nearest, index.num_clusters)), ("eq4_all", None)):
        clf = ClusterClassifier(
            index.centroids_,
            index.centroid_classes_,
            index.variance_,
            num_nearest=d,
            num_classes=data.num_classes,
        )
        with torch.no_grad():
            log_p = clf.log_proba(test_feats)
        out[label] = float((log_p.argmax(1) == data.y_test).double().mean())
        # Eq. (4) with this σ² can saturate: how often is the top probability exactly 1?
        out[f"{label}_saturated_share"] = float((log_p.max(1).values == 0).double().mean())
    nearest = nearest_cluster_predict(test_feats, index.centroids_, index.centroid_classes_)
    out["nearest_cluster"] = float((nearest.cpu() == data.y_test.cpu()).double().mean())
    return out


EVALUATIONS = {
    "pgd": pgd_accuracy,
    "autoattack": autoattack_accuracy,
    "gradient_norms": gradient_norms,
    "attack_path": attack_path,
    "clean_by_d": clean_accuracy_by_d,
    "certificate": image_certificate,
    "kmeans_nominal": kmeans_on_nominal,
}


def tiny_share(norms, threshold: float = float(np.finfo(np.float32).eps)) -> dict:
    """Shares of gradient norms that are exactly zero and below ``threshold`` (float32's
    resolution, ``2⁻²³ ≈ 1.2e-7``, by default)."""
    norms = np.asarray(norms, dtype=np.float64)
    return {"zero": float((norms == 0).mean()), "tiny": float((norms < threshold).mean())}
