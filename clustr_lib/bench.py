"""Throughput of the library's hot paths at the paper's sizes, on random CIFAR-shaped data, and
the paper protocol's time for every chapter projected from it.

    python -m clustr_lib.bench [--device auto] [--repeats 5] [--pgd-points 100]
        [--precision fp32] [--channels-last auto] [--kmeans-backend auto]
        [--whole-epochs] [--epoch-size 50000] [--width 64] [--eval-points N]
        [--out benchmarks/NAME.json]

Timing does not depend on pixel values, so random uint8 images stand in for CIFAR-10
(50,000 × 3 × 32 × 32, 10 classes). Reported, for the device it runs on (``figures``):

* images/s of one training step of each method at its batch: cross-entropy (batch 256 and
  240), QTRADES on the head, TRADES (10 inner steps) and one Free AT replay (256), Magnet and
  ClusTR + QTRADES (240 = 12 clusters × 20, the protocol's recipe: Eq. 4 over the L = 10
  nearest clusters, the official QTRADES form and the adversary's start gradient), and the
  ratios ``magnet_over_ce_step`` and ``clustr_qtrades_over_ce_step`` to the cross-entropy
  step of the same batch (targets ≤ 1.15 and ≤ 2.7). Steps run in ``--precision`` and
  layout (:class:`~clustr_lib.train.TrainingPrecision`), as training does;
* PGD image-iterations/s with 10 restarts side by side: ``pgd_image_iterations_per_s``
  under the ``any_restart`` rule, ``pgd_every_iterate_image_iterations_per_s`` under the
  protocol's rules (``official``, ``any_iterate``: a prediction at every iterate). Attacks
  run in float32 (TF32 convolutions, PyTorch's default), never in ``--precision``, in the
  channels-last layout the evaluations use (``pgd_usual_layout_image_iterations_per_s``: the
  first in the layout as trained);
* a cluster refresh on 50,000 × 512 features: the embedding pass (no autograd, the largest
  batch tried that fits; timed on one batch and extrapolated) and k-means at CIFAR-10's
  protocol settings (K = 2, ``n_init`` 1, ``max_iter`` 20, random state 1) with the device's
  default backend (``kmeans_seconds``) and with each backend;
* with ``--whole-epochs``: one epoch of every method through the library's trainers
  (:func:`~clustr_lib.train.train_cross_entropy`, :func:`~clustr_lib.train.train_magnet`
  with the protocol's CIFAR-10 recipe, cluster refresh included) on ``--epoch-size``
  random images held on the device (crops and flips as CIFAR-10), in ``epoch_seconds``;
  ``kmeans_share_of_epoch`` is then the k-means time of that Magnet epoch's refresh over the
  epoch, else the estimate ``kmeans / (50,000 / Magnet rate + embedding + kmeans)``;
* the projections of :func:`paper_projection` (``projection``), also flattened into
  ``clustr_cifar10_minutes``, ``clustr_qtrades_cifar10_minutes`` and
  ``book_paper_scale_hours``.

``--width`` (default the paper's 64) shrinks the ResNet-18 for a quick check on a CPU; the
projections are then of that network, not the paper's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import protocol
from .attacks import pgd
from .classify import ClusterClassifier
from .data import ImageData
from .evaluations import channels_last
from .magnet import KMEANS_BACKENDS, ClusterIndex
from .models import WithHead, resnet18_embedder
from .records import device_name, provenance, resolve_device, save_json
from .train import (
    PRECISIONS,
    TrainingPrecision,
    _free_at_step,
    _qtrades_step,
    _trades_step,
    embed_all,
    magnet_step,
    nominal_step,
    train_cross_entropy,
    train_magnet,
)

CIFAR10 = protocol.settings("cifar10")
REFRESH_SIZE = 50_000  # training images of CIFAR-10: the refresh is timed at this size


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _network(width: int) -> WithHead:
    embedder = resnet18_embedder(width)
    return WithHead(embedder, 8 * width, 10)


def bench_training(device, repeats: int, *, width: int = 64, amp_options=None) -> dict:
    """One step of each method at the paper's batch sizes (images per second)."""
    amp_options = amp_options or {}
    torch.manual_seed(0)
    model = _network(width).to(device).train()
    amp = TrainingPrecision(device=device, **amp_options)
    net = amp.network(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    out = {}

    def rate(step, batch, x, y, per_call=1, **kwargs):
        def call():
            with amp.flags():
                step(net, optimizer, x, y, None, amp=amp, state={}, **kwargs)

        return per_call * batch / _time(call, device, repeats)

    for batch in (256, 240):
        x = torch.rand(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        out[f"ce_step_batch{batch}_images_per_s"] = rate(nominal_step, batch, x, y)
    x = torch.rand(256, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (256,), device=device)
    s = CIFAR10
    out["qtrades_head_step_images_per_s"] = rate(
        _qtrades_step,
        256,
        x,
        y,
        lam=s["qtrades_lambda"],
        eps=s["qtrades_eps"],
        step_size=s["qtrades_step"],
        kind=s["qtrades_head_loss"],
        form=s["qtrades_form"],
    )
    out["trades_step_images_per_s"] = rate(
        _trades_step,
        256,
        x,
        y,
        beta=s["trades_beta"],
        eps=s["eps"],
        step_size=s["trades_step"],
        iters=s["trades_steps"],
    )
    replays = s["free_replays"]  # one call: ``replays`` updates on the batch
    out["free_at_replay_images_per_s"] = rate(
        _free_at_step, 256, x, y, per_call=replays, replays=replays, eps=s["eps"]
    )
    # a neighbourhood batch: 12 clusters x 20 samples, 2 clusters per class
    cluster_ids = torch.arange(12, device=device).repeat_interleave(20)
    y = cluster_ids // 2
    x = torch.rand(240, 3, 32, 32, device=device)
    centroids = torch.randn(20, 8 * width, device=device)
    classifier = ClusterClassifier(
        centroids,
        torch.arange(10).repeat_interleave(2),
        1.0,
        num_nearest=s["train_num_nearest"],
    )
    embedder = amp.network(model.embedder)
    optimizer = torch.optim.Adam(model.embedder.parameters(), lr=1e-4)
    for name, lam in (("magnet", 0.0), ("clustr_qtrades", s["qtrades_lambda"])):

        def call(lam=lam):
            with amp.flags():
                magnet_step(
                    embedder,
                    optimizer,
                    classifier,
                    x,
                    y,
                    cluster_ids,
                    alpha=s["alpha"],
                    qtrades_lambda=lam,
                    qtrades_eps=s["qtrades_eps"],
                    qtrades_step=s["qtrades_step"],
                    generator=None,
                    qtrades_form=s["qtrades_form"],
                    adversary_grad=s["qtrades_adversary_grad"],
                    log_eps=s["magnet_log_eps"],
                    amp=amp,
                )

        out[f"{name}_step_images_per_s"] = 240 / _time(call, device, repeats)
    ce240 = out["ce_step_batch240_images_per_s"]
    out["magnet_over_ce_step"] = ce240 / out["magnet_step_images_per_s"]
    out["clustr_qtrades_over_ce_step"] = ce240 / out["clustr_qtrades_step_images_per_s"]
    out["precision"] = amp.name
    out["channels_last"] = amp.channels_last
    return out


def bench_pgd(device, repeats: int, points: int, width: int = 64) -> dict:
    """PGD image-iterations per second with 10 restarts side by side (one pass), under the
    ``any_restart`` rule and under a rule that predicts every iterate (the protocol's), in the
    channels-last layout the evaluations attack in (:func:`clustr_lib.evaluations.channels_last`);
    ``pgd_usual_layout_…``: the first again with the weights as trained."""
    torch.manual_seed(0)
    net = _network(width).to(device).eval()
    x = torch.rand(points, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (points,), device=device)
    steps, out = 5, {"pgd_points": points, "pgd_restarts_side_by_side": 10}
    for key, rule, layout in (
        ("pgd_image_iterations_per_s", "any_restart", channels_last),
        ("pgd_every_iterate_image_iterations_per_s", "any_iterate", channels_last),
        ("pgd_usual_layout_image_iterations_per_s", "any_restart", contextlib.nullcontext),
    ):

        def attack(rule=rule, layout=layout):  # every point at every iterate (``trace``
            with layout(net):  # under any_iterate: broken points would leave the batch)
                pgd(net, x, y, eps=8 / 255, step_size=2 / 255, steps=steps, restarts=10,
                    prune=False, rule=rule, trace=rule == "any_iterate")  # fmt: skip

        seconds = _time(attack, device, max(1, repeats // 2), warmup=1)
        out[key] = points * 10 * steps / seconds
    return out


def _largest_embedding_batch(embedder, device) -> int:
    """Largest power-of-two batch up to 8192 whose no-grad forward fits in memory."""
    best = 64
    for batch in (128, 256, 512, 1024, 2048, 4096, 8192):
        if device.type != "cuda" and batch > 1024:
            break  # on a CPU, bigger batches only cost memory
        try:
            embed_all(embedder, torch.rand(batch, 3, 32, 32, device=device), batch_size=batch)
            best = batch
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
    return best


def _cifar10_index(backend: str) -> ClusterIndex:
    return ClusterIndex(
        CIFAR10["clusters_per_class"],
        random_state=CIFAR10["kmeans_random_state"],
        n_init=CIFAR10["kmeans_n_init"],
        max_iter=CIFAR10["kmeans_max_iter"],
        fixed_random_state=True,
        kmeans_backend=backend,
    )


def bench_refresh(
    device,
    repeats: int,
    magnet_images_per_s: float,
    *,
    width: int = 64,
    amp_options=None,
    kmeans_backend: str = "auto",
) -> dict:
    """Cluster refresh on 50,000 training images: embedding pass + per-class k-means++."""
    torch.manual_seed(0)
    n, num_classes = REFRESH_SIZE, 10
    amp = TrainingPrecision(device=device, **(amp_options or {}))
    embedder = amp.network(resnet18_embedder(width).to(device).eval())
    with amp.flags():
        batch = _largest_embedding_batch(embedder, device)
        x = torch.rand(batch, 3, 32, 32, device=device)
        per_batch = _time(
            lambda: embed_all(embedder, x, batch_size=batch), device, repeats, warmup=1
        )
    embed_seconds = per_batch * n / batch
    labels = torch.arange(n) % num_classes
    features = torch.randn(n, 8 * width) + 3 * torch.randn(num_classes, 8 * width)[labels]
    features, labels = features.to(device), labels.to(device)
    seconds = {}
    for backend in ("sklearn", "torch"):
        index = _cifar10_index(backend).fit(features, labels)
        seconds[backend] = _time(lambda index=index: index.refresh(features), device, 3, 0)
    default = _cifar10_index(kmeans_backend).backend_for(features)
    kmeans_seconds = seconds[default]
    passes = 2 if CIFAR10["variance_from"] == "second_pass" else 1
    epoch_seconds = n / magnet_images_per_s + passes * embed_seconds + kmeans_seconds
    return {
        "embedding_batch": batch,
        "embedding_pass_seconds": embed_seconds,
        "embedding_images_per_s": n / embed_seconds,
        "embedding_pass_extrapolated_from_one_batch": True,
        "kmeans_backend": default,
        "kmeans_settings": "K=2, n_init=1, max_iter=20, random_state=1 (CIFAR-10's protocol)",
        "kmeans_seconds": kmeans_seconds,
        "kmeans_sklearn_seconds": seconds["sklearn"],
        "kmeans_torch_seconds": seconds["torch"],
        "refresh_passes": passes,
        "magnet_epoch_seconds_estimate": epoch_seconds,
        "kmeans_share_of_epoch_estimate": kmeans_seconds / epoch_seconds,
    }


@contextlib.contextmanager
def _kmeans_timer(device, record: list):
    """Append the seconds of every k-means :class:`ClusterIndex` runs inside the block."""
    originals = {name: getattr(ClusterIndex, name) for name in ("_kmeans_sklearn", "_kmeans_torch")}

    def timed(original):
        def run(self, *args, **kwargs):
            _sync(device)
            start = time.perf_counter()
            result = original(self, *args, **kwargs)
            _sync(device)
            record.append(time.perf_counter() - start)
            return result

        return run

    try:
        for name, original in originals.items():
            setattr(ClusterIndex, name, timed(original))
        yield record
    finally:
        for name, original in originals.items():
            setattr(ClusterIndex, name, original)


def bench_epochs(
    device, size: int, *, width: int = 64, amp_options=None, kmeans_backend: str = "auto"
) -> dict:
    """Seconds of one epoch of every method through the trainers on ``size`` random images
    (the protocol's CIFAR-10 settings; Magnet: its recipe, refresh included)."""
    s = CIFAR10
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.arange(size) % 10  # every class has clusters_per_class members
    data = ImageData("cifar10", x, y, x[:10], y[:10], device=device, flip=s["flip"])
    amp_options = amp_options or {}
    common = {"progress": False, **amp_options}
    seconds = {}
    ce_steps = {
        "nominal": ("nominal", {}),
        "qtrades": (
            "qtrades",
            {
                "lam": s["qtrades_lambda"],
                "eps": s["qtrades_eps"],
                "step_size": s["qtrades_step"],
                "kind": s["qtrades_head_loss"],
                "form": s["qtrades_form"],
            },
        ),
        "trades": (
            "trades",
            {
                "beta": s["trades_beta"],
                "eps": s["eps"],
                "step_size": s["trades_step"],
                "iters": s["trades_steps"],
            },
        ),
        "free_at": ("free_at", {"replays": s["free_replays"], "eps": s["eps"]}),
    }
    for method, (step, step_args) in ce_steps.items():
        torch.manual_seed(0)
        history = train_cross_entropy(
            _network(width).to(device),
            data,
            epochs=1,
            lr=s["ce_lr"],
            batch_size=s["batch_size"],
            step=step,
            step_args=step_args,
            flip=s["flip"],
            **common,
        )
        seconds[method] = history.seconds
    recipe = {key: s[key] for key in protocol.MAGNET_RECIPE_KEYS}
    kmeans_in_epoch = {}
    for method, lam in (("magnet", 0.0), ("clustr_qtrades", s["qtrades_lambda"])):
        torch.manual_seed(0)
        with _kmeans_timer(device, []) as record:
            _, history = train_magnet(
                resnet18_embedder(width).to(device),
                data,
                epochs=1,
                lr=s["magnet_lr"],
                alpha=protocol.magnet_alpha(s, method),
                clusters_per_class=s["clusters_per_class"],
                clusters_per_batch=s["clusters_per_batch"],
                samples_per_cluster=s["samples_per_cluster"],
                qtrades_lambda=lam,
                qtrades_eps=s["qtrades_eps"],
                qtrades_step=s["qtrades_step"],
                kmeans_backend=kmeans_backend,
                **recipe,
                **common,
            )
        seconds[method] = history.seconds
        kmeans_in_epoch[method] = record[-1]  # the end-of-epoch refresh (the first: the fit)
    return {
        "epoch_images": size,
        "epoch_seconds": seconds,
        "epoch_kmeans_seconds": kmeans_in_epoch,
        "kmeans_share_of_whole_epoch": kmeans_in_epoch["magnet"] / seconds["magnet"],
    }


# ---------------------------------------------------------------------------------------
# Projection of the paper protocol's time.

PAPER_DATASETS = {  # training and test sizes of the paper's datasets
    "cifar10": {"train": 50_000, "test": 10_000, "classes": 10},
    "svhn": {"train": 73_257, "test": 26_032, "classes": 10},
    "cifar100": {"train": 50_000, "test": 10_000, "classes": 100},
}
CE_METHODS = ("nominal", "free_at", "trades", "qtrades")
AUTOATTACK_ROBUST_SHARE = 0.5  # points still robust after APGD-CE (assumed, for the cost)
AUTOATTACK_CLEAN_SHARE = 0.85  # points Square alone attacks (clean accuracy, assumed)


def _seconds_per_image(figures: dict, dataset: str) -> dict:
    """Training seconds per training image and epoch of each method on ``dataset``."""
    s = protocol.settings(dataset)
    per = {
        "nominal": 1 / figures["ce_step_batch256_images_per_s"],
        "qtrades": 1 / figures["qtrades_head_step_images_per_s"],
        "trades": 1 / figures["trades_step_images_per_s"],
        "free_at": s["free_replays"] / figures["free_at_replay_images_per_s"],
    }
    passes = 2 if s["variance_from"] == "second_pass" else 1
    # k-means cost ∝ restarts × iterations: scaled from CIFAR-10's settings (an upper bound)
    kmeans_scale = (s["kmeans_n_init"] * s["kmeans_max_iter"]) / (
        CIFAR10["kmeans_n_init"] * CIFAR10["kmeans_max_iter"]
    )
    kmeans = figures["kmeans_seconds"] / REFRESH_SIZE
    refresh = passes / figures["embedding_images_per_s"] + kmeans * kmeans_scale
    for method, key in (("magnet", "magnet"), ("clustr_qtrades", "clustr_qtrades")):
        per[method] = 1 / figures[f"{key}_step_images_per_s"] + refresh
    measured = figures.get("epoch_seconds")
    if measured:  # whole epochs through the trainers, at CIFAR-10's k-means settings
        size = figures["epoch_images"]
        for method, seconds in measured.items():
            per[method] = seconds / size
            if method in ("magnet", "clustr_qtrades"):
                per[method] += kmeans * (kmeans_scale - 1)
    per["refresh"] = refresh
    return per


def training_seconds(figures: dict, dataset: str) -> dict:
    """Seconds to train each of the 7 methods on ``dataset`` at the paper's protocol (ClusTR
    variants without their warm start, which is the nominal run)."""
    s, n = protocol.settings(dataset), PAPER_DATASETS[dataset]["train"]
    per = _seconds_per_image(figures, dataset)
    ce, magnet = s["ce_epochs"], s["magnet_epochs"]
    free_epochs = max(1, round(ce / s["free_replays"]))
    initial = n * per["refresh"]  # the first clustering, before the first epoch
    return {
        "nominal": ce * n * per["nominal"],
        "qtrades": ce * n * per["qtrades"],
        "trades": ce * n * per["trades"],
        "free_at": free_epochs * n * per["free_at"],
        "magnet": (ce + magnet) * n * per["magnet"] + initial,
        "clustr": magnet * n * per["magnet"] + initial,
        "clustr_qtrades": magnet * n * per["clustr_qtrades"] + initial,
    }


def _objectives(method: str, settings: dict) -> list:
    found = (protocol.attack_objective(method, o) for o in settings["pgd_objectives"])
    return list(dict.fromkeys(o for o in found if o is not None))


def autoattack_seconds(figures: dict, points: int, attacks=("square",)) -> float:
    """Seconds of AutoAttack's ``attacks`` in turn on ``points`` points, costed as in
    :func:`paper_projection`: APGD-CE 100 iterations per point, APGD-T and FAB-T 9 × 100 on
    the share still robust after it (:data:`AUTOATTACK_ROBUST_SHARE`), at the PGD rate; Square
    5,000 forward queries on that share, or alone on the clean-correct share
    (:data:`AUTOATTACK_CLEAN_SHARE`), at the embedding pass's rate."""
    iterations = {"apgd-ce": 100, "apgd-t": 900 * AUTOATTACK_ROBUST_SHARE}
    iterations["fab-t"] = iterations["apgd-t"]
    attacks = list(attacks)
    gradient = sum(iterations.get(a, 0) for a in attacks)
    share = AUTOATTACK_ROBUST_SHARE if len(attacks) > 1 else AUTOATTACK_CLEAN_SHARE
    queries = 5000 * share if "square" in attacks else 0
    return points * (
        gradient / figures["pgd_every_iterate_image_iterations_per_s"]
        + queries / figures["embedding_images_per_s"]
    )


def _evaluation_seconds(figures: dict, dataset: str, eval_points) -> dict:
    """Seconds of each chapter's evaluations of ``dataset``'s runs (:func:`paper_projection`)."""
    s, sizes = protocol.settings(dataset), PAPER_DATASETS[dataset]
    n = sizes["test"] if eval_points is None else min(int(eval_points), sizes["test"])
    pgd_rate = figures["pgd_every_iterate_image_iterations_per_s"]
    forward_rate = figures["embedding_images_per_s"]
    restarts, steps, rules = s["pgd_restarts"], max(s["pgd_steps"]), len(s["pgd_rules"])

    def pgd_runs(count, steps=steps):  # ``count`` PGD runs of ``steps`` × restarts on n points
        return count * n * restarts * steps / pgd_rate

    clusters = s["clusters_per_class"] * sizes["classes"]
    d_values = {min(d, clusters) for d in (1, 2, 4, 8, 12, 20, 40, 60, 100, 200)}
    cluster_methods = ("clustr_qtrades", "clustr")
    out = {
        "benchmark": pgd_runs(
            sum(len(_objectives(m, s)) * rules for m in protocol.METHODS)
        ),  # chapters 3-5: the protocol's PGD of every run
        "eps_ablation": pgd_runs(3 * 2),  # 3 new ε (8/255 is recorded) x 2 objectives
        "d_ablation": pgd_runs(len(d_values) * 2, steps=20),  # PGD-20 at each D, 2 objectives
    }
    if dataset in ("cifar10", "svhn"):  # chapter 9: the Magnet-loss attack on 2 models
        out["adaptive_attack"] = pgd_runs(len(cluster_methods))
    # chapter 10: margin (both rules) on the cluster models and TRADES, the Magnet-loss attack
    # under the second rule (and the first where chapter 9 did not run), one PGD-100 path per
    # objective (4, one restart), input gradients (4), AutoAttack and Square alone on 2 models
    magnet_runs = len(cluster_methods) * (rules - (1 if "adaptive_attack" in out else 0))
    audit_pgd = pgd_runs(3 * rules + magnet_runs)
    paths = 4 * n * steps / pgd_rate + 4 * n / pgd_rate
    standard = ("apgd-ce", "apgd-t", "fab-t", "square")
    autoattack = 2 * (autoattack_seconds(figures, n, standard) + autoattack_seconds(figures, n))
    out["audit"] = audit_pgd + paths + autoattack
    if dataset == "cifar10":  # chapter 11: k-means on the nominal features
        out["kmeans_nominal"] = (sizes["train"] + sizes["test"]) / forward_rate + figures[
            "kmeans_seconds"
        ]
    return out


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def recorded_figures(device: str, folder: Path = BENCHMARKS) -> dict | None:
    """The figures of the newest benchmark recorded in ``folder`` on the device named
    ``device`` (:func:`~clustr_lib.records.device_name`), or ``None``."""
    found = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            recorded = json.loads(path.read_text())
            if recorded["provenance"]["device"] == device:
                found.append((recorded["provenance"].get("created", ""), recorded["figures"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(found, key=lambda item: item[0])[1] if found else None


def paper_projection(figures: dict, eval_points: int | None = None) -> dict:
    """Hours of each chapter at the paper's protocol, projected from the measured rates.

    Training (chapters 3–5, one run per method and dataset, as the book trains them):
    seconds per training image and epoch of each method are ``1 / rate`` of its step
    (cross-entropy family at batch 256: nominal, QTRADES on the head, TRADES; Free AT:
    ``m = 8`` replays of one update each), and for Magnet and ClusTR + QTRADES
    ``1 / rate`` plus the refresh (``passes / embedding rate`` + k-means per image; 2 passes
    under the protocol's ``variance_from="second_pass"``). With ``--whole-epochs`` the whole
    epochs measured through the trainers replace these (their seconds per image). k-means is
    timed at CIFAR-10's settings (``n_init`` 1, ``max_iter`` 20) and scaled by
    ``n_init × max_iter`` to SVHN's and CIFAR-100's (10, 40): an upper bound, k-means may
    stop earlier. Runs: nominal, QTRADES, TRADES 90 epochs; Free AT ``round(90/8)`` epochs of
    8 replays; Magnet ``90 + E`` epochs; ClusTR and ClusTR + QTRADES ``E`` epochs after the
    nominal warm start (``E`` = 30 on CIFAR-10, 60 on SVHN and CIFAR-100); each cluster run
    adds its initial clustering. Training sizes 50,000 / 73,257 / 50,000.

    Evaluation, all PGD at the rate that predicts every iterate (the protocol's rules), as
    ``points × restarts (10) × steps`` image-iterations, on the whole test set (10,000 /
    26,032 / 10,000 points) or ``eval_points`` of it:

    * chapters 3–5: every run's protocol PGD-100 (PGD-20 read off it), per objective
      (``paper`` and ``ce`` on the cluster models; ``ce`` only on the cross-entropy ones) and
      rule (``official``, ``any_iterate``): 20 runs per dataset;
    * 7 (three datasets): ClusTR + QTRADES at 3 new ε × 2 objectives (8/255 is recorded);
    * 8: PGD-20 at every D up to the number of clusters × 2 objectives;
    * 9 (CIFAR-10, SVHN): the Magnet-loss attack on ClusTR + QTRADES and ClusTR;
    * 10: PGD-100 margin (two rules) on those and TRADES, the Magnet-loss attack under the
      rules chapter 9 did not run, one traced PGD-100 path and one input gradient per
      objective (4), and AutoAttack standard plus Square alone on 2 models, costed as
      APGD-CE 100 iterations, APGD-T and FAB-T 9 × 100 each on the share still robust
      (assumed :data:`AUTOATTACK_ROBUST_SHARE`), Square 5,000 forward queries on that share
      and, alone, on the clean-correct share (:data:`AUTOATTACK_CLEAN_SHARE`);
      forwards at the embedding pass's rate;
    * 11 (CIFAR-10): one embedding pass of the training and test sets and a k-means.

    Not counted: chapters 1, 2 and 6 (the 2-D study and the recorded digits32 study run at
    CPU scale in minutes), the digits32 study's evaluations in chapters 7–11 (recorded), clean
    accuracies, certificates and other single passes (seconds). Returns minutes of ClusTR and
    ClusTR + QTRADES on CIFAR-10 (nominal warm start included), hours per chapter and for
    the book.
    """
    chapters = {}
    training = {d: training_seconds(figures, d) for d in PAPER_DATASETS}
    evaluation = {d: _evaluation_seconds(figures, d, eval_points) for d in PAPER_DATASETS}
    for number, dataset in (("03", "cifar10"), ("04", "svhn"), ("05", "cifar100")):
        seconds = sum(training[dataset].values()) + evaluation[dataset]["benchmark"]
        chapters[f"{number}_{dataset}"] = seconds / 3600
    for chapter, key in (
        ("07_eps_ablation", "eps_ablation"),
        ("08_d_ablation", "d_ablation"),
        ("09_adaptive_attack", "adaptive_attack"),
        ("10_audit", "audit"),
        ("11_kmeans_nominal", "kmeans_nominal"),
    ):
        chapters[chapter] = sum(e.get(key, 0.0) for e in evaluation.values()) / 3600
    cifar10 = training["cifar10"]
    return {
        "eval_points": eval_points,
        "clustr_cifar10_minutes": (cifar10["nominal"] + cifar10["clustr"]) / 60,
        "clustr_qtrades_cifar10_minutes": (cifar10["nominal"] + cifar10["clustr_qtrades"]) / 60,
        "training_hours": {d: sum(t.values()) / 3600 for d, t in training.items()},
        "training_minutes_per_run": {
            d: {m: v / 60 for m, v in t.items()} for d, t in training.items()
        },
        "chapter_hours": chapters,
        "book_paper_scale_hours": sum(chapters.values()),
    }


def _on_off_auto(value: str):
    return {"auto": None, "on": True, "off": False}[value]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m clustr_lib.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--pgd-points", type=int, default=100, help="images per PGD batch")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="training steps")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--kmeans-backend", default="auto", choices=KMEANS_BACKENDS)
    parser.add_argument("--whole-epochs", action="store_true", help="also time whole epochs")
    parser.add_argument("--epoch-size", type=int, default=50_000, help="images per epoch")
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 base width")
    parser.add_argument(
        "--eval-points", type=int, default=1000, help="second projection: points attacked"
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.repeats < 1 or args.width < 1:
        parser.error("--repeats and --width must be >= 1")
    if args.epoch_size < 2 * CIFAR10["batch_size"]:
        parser.error(f"--epoch-size must be >= {2 * CIFAR10['batch_size']}")
    amp_options = {"precision": args.precision, "channels_last": _on_off_auto(args.channels_last)}
    print(
        f"benchmarking on {device_name(device)} ({platform.python_implementation()} "
        f"{platform.python_version()}, torch {torch.__version__})",
        flush=True,
    )
    figures = {"width": args.width}

    def stage(name, fn):
        start = time.perf_counter()
        figures.update(fn())
        print(f"  {name}: done in {time.perf_counter() - start:.0f} s", flush=True)

    stage(
        "training steps",
        lambda: bench_training(device, args.repeats, width=args.width, amp_options=amp_options),
    )
    stage("pgd", lambda: bench_pgd(device, args.repeats, args.pgd_points, args.width))
    stage(
        "refresh",
        lambda: bench_refresh(
            device,
            max(1, args.repeats // 2),
            figures["magnet_step_images_per_s"],
            width=args.width,
            amp_options=amp_options,
            kmeans_backend=args.kmeans_backend,
        ),
    )
    if args.whole_epochs:
        stage(
            "whole epochs",
            lambda: bench_epochs(
                device,
                args.epoch_size,
                width=args.width,
                amp_options=amp_options,
                kmeans_backend=args.kmeans_backend,
            ),
        )
    figures["kmeans_share_of_epoch"] = figures.get(
        "kmeans_share_of_whole_epoch", figures["kmeans_share_of_epoch_estimate"]
    )
    projection = paper_projection(figures)
    reduced = paper_projection(figures, eval_points=args.eval_points)
    for key in ("clustr_cifar10_minutes", "clustr_qtrades_cifar10_minutes"):
        figures[key] = projection[key]
    figures["book_paper_scale_hours"] = projection["book_paper_scale_hours"]
    figures[f"book_hours_eval_points_{args.eval_points}"] = reduced["book_paper_scale_hours"]
    report = {
        "figures": figures,
        "projection": {"paper_protocol": projection, "eval_points": reduced},
        "targets": {
            "ce_step_batch256_images_per_s >= 35000": figures["ce_step_batch256_images_per_s"]
            >= 35_000,
            "magnet_over_ce_step <= 1.15": figures["magnet_over_ce_step"] <= 1.15,
            "clustr_qtrades_over_ce_step <= 2.7": figures["clustr_qtrades_over_ce_step"] <= 2.7,
            "kmeans_share_of_epoch <= 0.05": figures["kmeans_share_of_epoch"] <= 0.05,
            "clustr_cifar10_minutes <= 5": figures["clustr_cifar10_minutes"] <= 5,
            "clustr_qtrades_cifar10_minutes <= 8": figures["clustr_qtrades_cifar10_minutes"] <= 8,
            "book_paper_scale_hours <= 4": figures["book_paper_scale_hours"] <= 4,
        },
        "command": "python -m clustr_lib.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "provenance": provenance(device=device),
    }
    print(json.dumps(report["figures"], indent=2))
    print(json.dumps(report["targets"], indent=2))
    if args.out is not None:
        save_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
