"""Measurements of a trained model for the evaluation chapters (7–11): PGD at any ε, D and
objective, AutoAttack, input-gradient norms, the loss along an attack path, Theorem 1 at
image scale and k-means on nominal features.

Each function takes the model, the dataset and plain JSON parameters and returns plain JSON
metrics, so that :meth:`clustr_lib.sources.Source.evaluate` can record its result by the hash
of its parameters. Attacked points are the first ``eval_size`` test images. These are the only
PGD and AutoAttack entry points above :mod:`clustr_lib.attacks`: a run's own protocol PGD
(:func:`clustr_lib.runs.evaluate`) is :func:`pgd_accuracy` too.

PGD and AutoAttack are defined shard by shard (:data:`SHARD_SIZE` points each, each with its
own seed) and merged (:func:`merge_shards`), so that the shards of a large evaluation can run
as separate tasks (:mod:`clustr_lib.executors`) and still give the record one process gives.
An evaluation of at most one shard's points is exactly the unsharded attack.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from .attacks import attack_objective, autoattack, evaluating, pgd, predict
from .certify import certified_radius, lipschitz_upper_bound, nearest_cluster_predict
from .classify import ClusterClassifier, ClusterModel
from .magnet import ClusterIndex
from .models import WithHead
from .protocol import PROTOCOL
from .train import embed_all


def attacked_count(data, eval_size: int | None) -> int:
    """How many test points :func:`attacked_points` attacks (without converting the images)."""
    n = len(data.y_test)
    return n if eval_size is None else min(int(eval_size), n)


def attacked_points(data, eval_size: int | None):
    """The first ``eval_size`` test images and labels (all when ``None``)."""
    n = attacked_count(data, eval_size)
    return data.test_images(0, n), data.y_test[:n]


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


SHARD_SIZE = PROTOCOL["shard_size"]  # attacked points per shard of a PGD or AutoAttack evaluation
SHARD_SEED_STEP = 1_000_003  # shard s attacks with seed + s · this (shard 0: the seed itself)


def shards(points: int, shard_size: int = SHARD_SIZE) -> list[tuple[int, int]]:
    """The ``[start, stop)`` ranges of the shards of ``points`` attacked points: consecutive
    blocks of ``shard_size`` (the last one shorter)."""
    if int(shard_size) < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    size = int(shard_size)
    return [(start, min(start + size, points)) for start in range(0, max(points, 1), size)]


def shard_count(name: str, data, params: dict) -> int:
    """How many shards evaluation ``name`` with ``params`` has on ``data`` (1 for one that
    is not split: every evaluation but PGD and AutoAttack)."""
    if name not in SHARDED:
        return 1
    points = attacked_count(data, params.get("eval_size"))
    return len(shards(points, params.get("shard_size", SHARD_SIZE)))


def shard_range(data, params: dict, shard: int) -> tuple[int, int]:
    """The ``[start, stop)`` of the attacked points that shard ``shard`` of an evaluation
    with ``params`` attacks."""
    points = attacked_count(data, params.get("eval_size"))
    ranges = shards(points, params.get("shard_size", SHARD_SIZE))
    if not 0 <= int(shard) < len(ranges):
        raise ValueError(f"shard {shard} of an evaluation with {len(ranges)} shards")
    return ranges[int(shard)]


@contextlib.contextmanager
def channels_last(model):
    """``model`` with its weights in channels-last layout inside the block, contiguous after:
    PGD computes the same to float rounding, about 1.5 × faster on a 2-core CPU for the
    width-8 ResNet-18 (benchmarks/README.md). Only PGD runs in it (AutoAttack's FAB-T fails on
    channels-last weights on a CPU)."""
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def _shard_inputs(data, eval_size, shard: int, shard_size: int, seed: int):
    start, stop = shard_range(data, {"eval_size": eval_size, "shard_size": shard_size}, shard)
    x, y = data.test_images(start, stop), data.y_test[start:stop]
    return x, y, int(seed) + SHARD_SEED_STEP * int(shard)


def pgd_shard(
    model,
    data,
    *,
    shard: int,
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
    shard_size: int = SHARD_SIZE,
) -> dict:
    """PGD ℓ∞ on shard ``shard`` of the attacked points, per point: ``{"clean": [correct],
    "robust": {steps: [robust]}}`` under ``rule`` (:data:`clustr_lib.attacks.PGD_RULES`),
    read off one run of ``max(steps)`` iterations (in :func:`channels_last` layout)."""
    x, y, seed = _shard_inputs(data, eval_size, shard, shard_size, seed)
    with channels_last(with_num_nearest(model, num_nearest)) as attacked:
        result = pgd(
            attacked,
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
        "clean": result.clean_correct,
        "robust": {str(t): r for t, r in result.extra["robust_at"].items()},
    }


def autoattack_shard(
    model,
    data,
    *,
    shard: int,
    eps: float,
    attacks,
    eval_size=None,
    seed: int = 0,
    shard_size: int = SHARD_SIZE,
) -> dict:
    """AutoAttack's attacks in turn on shard ``shard`` of the attacked points, per point:
    ``{"clean": [correct], "robust_after": {attack: [robust]}}``, on Eq. (4)'s
    log-probabilities for a ClusterModel."""
    x, y, seed = _shard_inputs(data, eval_size, shard, shard_size, seed)
    num_classes = int(data.num_classes)
    attacks = [a for a in attacks if num_classes >= 4 or a not in ("apgd-t", "fab-t")]
    result = autoattack(model, x, y, eps=eps, attacks=tuple(attacks), seed=seed, batch_size=500)
    return {"clean": result.clean_correct, "robust_after": result.extra["robust_masks"]}


SHARDED = {"pgd": pgd_shard, "autoattack": autoattack_shard}


def merge_shards(parts: list[dict]) -> dict:
    """The metrics of a sharded evaluation from its shards' per-point results (in shard
    order): each per-point list concatenated, then its mean in float32, so that the record
    is the same however the shards were spread over processes or machines. One part that is a
    tensor is averaged on its own device, exactly as an unsharded attack averaged it."""
    first = parts[0]
    if isinstance(first, dict):
        keys = set(first)
        if any(set(p) != keys for p in parts):
            raise ValueError(f"shards with different results: {[sorted(p) for p in parts]}")
        return {k: merge_shards([p[k] for p in parts]) for k in first}
    if len(parts) == 1 and torch.is_tensor(first):
        return float(first.float().mean())
    values = [torch.as_tensor(p).flatten().cpu() for p in parts]
    if any(v.dtype != torch.bool for v in values):
        raise ValueError("a shard's per-point results must be booleans")
    return float(torch.cat(values).float().mean())


def by_shards(name: str, model, data, params: dict) -> dict:
    """Evaluation ``name`` (a key of :data:`SHARDED`) with ``params``, one shard after the
    other in this process, merged (:func:`merge_shards`)."""
    count = shard_count(name, data, params)
    return merge_shards([SHARDED[name](model, data, shard=s, **params) for s in range(count)])


def pgd_accuracy(model, data, **params) -> dict:
    """PGD ℓ∞ robust accuracy at each of ``params["steps"]`` (e.g. Table 4's PGD-20/100 at
    another ε or Fig. 4's PGD-20 at another D): ``{"clean", "robust": {steps: accuracy}}``.
    The attacked points are split into shards of ``shard_size`` (:data:`SHARD_SIZE`), each
    attacked with its own seed (:func:`pgd_shard`): the same numbers whether the shards run
    here one after another or as tasks on several machines."""
    return by_shards("pgd", model, data, params)


def autoattack_accuracy(model, data, **params) -> dict:
    """Robust accuracy after each AutoAttack attack in turn (``robust_after``), in shards as
    :func:`pgd_accuracy` (:func:`autoattack_shard`)."""
    return by_shards("autoattack", model, data, params)


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


def score_underflow(model, data, *, eval_size=None) -> dict:
    """How often Eq. (4)'s class scores ``s_c = Σ_j exp(−‖f − μ_{c,j}‖²/(2σ²))`` (over the D
    nearest clusters, :meth:`~clustr_lib.classify.ClusterClassifier.scores`) are *all* 0 in
    float32 at a clean test point: there the paper's PGD objective, the cross-entropy of the
    raw scores, is ``log C`` whatever the input, and its gradient is exactly zero. Shares over
    the whole test set (``all_zero``) and over the attacked points (``all_zero_attacked``)."""
    if not isinstance(model, ClusterModel):
        raise TypeError("score underflow needs a cluster model (Eq. 4)")
    n = attacked_count(data, eval_size)
    with evaluating(model), torch.no_grad():
        feats = embed_all(model.embedder, data.test_images())
        zero = (model.classifier.scores(feats.float()) == 0).all(1)
    return {
        "all_zero": float(zero.double().mean()),
        "all_zero_attacked": float(zero[:n].double().mean()),
        "points": len(zero),
    }


EVALUATIONS = {
    "pgd": pgd_accuracy,
    "autoattack": autoattack_accuracy,
    "gradient_norms": gradient_norms,
    "attack_path": attack_path,
    "clean_by_d": clean_accuracy_by_d,
    "certificate": image_certificate,
    "kmeans_nominal": kmeans_on_nominal,
    "score_underflow": score_underflow,
}


def tiny_share(norms, threshold: float = float(np.finfo(np.float32).eps)) -> dict:
    """Shares of gradient norms that are exactly zero and below ``threshold`` (float32's
    resolution, ``2⁻²³ ≈ 1.2e-7``, by default)."""
    norms = np.asarray(norms, dtype=np.float64)
    return {"zero": float((norms == 0).mean()), "tiny": float((norms < threshold).mean())}
