"""Throughput of the library's hot paths at the paper's sizes, on random CIFAR-shaped data.

    python -m clustr_lib.bench [--device auto] [--repeats 5] [--out benchmarks/NAME.json]

Timing does not depend on pixel values, so random uint8 images stand in for CIFAR-10
(50,000 × 3 × 32 × 32, 10 classes). Reported, for the device it runs on:

* images/s of a cross-entropy step (batch 256 and 240), a Magnet step and a
  ClusTR + QTRADES step (batch 240 = 12 clusters × 20), and the ratios to the
  cross-entropy step of the same batch (targets: ≤ 1.15 and ≤ 2.7);
* PGD image-iterations/s with 10 restarts side by side;
* a cluster refresh on 50,000 × 512 features: the embedding pass (no autograd, the
  largest batch tried that fits) and the k-means part, and the k-means share of a Magnet
  epoch (target ≤ 5%).

The embedding pass over 50,000 images is timed on one batch and extrapolated, and the
epoch time is estimated from the measured step rate; the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .attacks import pgd
from .classify import ClusterClassifier
from .magnet import ClusterIndex
from .models import WithHead, resnet18_embedder
from .records import device_name, provenance, resolve_device, save_json
from .train import embed_all, magnet_step, nominal_step


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


def bench_training(device, repeats: int) -> dict:
    """Cross-entropy, Magnet and ClusTR + QTRADES steps at the paper's batch sizes."""
    torch.manual_seed(0)
    net = WithHead(resnet18_embedder(64), 512, 10).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    out = {}
    for batch in (256, 240):
        x = torch.rand(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        seconds = _time(lambda x=x, y=y: nominal_step(net, optimizer, x, y, None), device, repeats)
        out[f"ce_step_batch{batch}_images_per_s"] = batch / seconds
    # a neighbourhood batch: 12 clusters x 20 samples, 2 clusters per class
    cluster_ids = torch.arange(12).repeat_interleave(20)
    y = (cluster_ids // 2).to(device)
    x = torch.rand(240, 3, 32, 32, device=device)
    centroids = torch.randn(20, 512, device=device)
    classifier = ClusterClassifier(centroids, torch.arange(10).repeat_interleave(2), 1.0)
    embedder = net.embedder
    optimizer = torch.optim.Adam(embedder.parameters(), lr=1e-4)
    for name, lam in (("magnet", 0.0), ("clustr_qtrades", 8.0)):
        seconds = _time(
            lambda lam=lam: magnet_step(
                embedder, optimizer, classifier, x, y, cluster_ids, alpha=12.5, qtrades_lambda=lam
            ),
            device,
            repeats,
        )
        out[f"{name}_step_images_per_s"] = 240 / seconds
    ce240 = out["ce_step_batch240_images_per_s"]
    out["magnet_over_ce_step"] = ce240 / out["magnet_step_images_per_s"]
    out["clustr_qtrades_over_ce_step"] = ce240 / out["clustr_qtrades_step_images_per_s"]
    return out


def bench_pgd(device, repeats: int, points: int) -> dict:
    """PGD image-iterations per second with 10 restarts side by side (one pass)."""
    torch.manual_seed(0)
    net = WithHead(resnet18_embedder(64), 512, 10).to(device).eval()
    x = torch.rand(points, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (points,), device=device)
    steps = 5
    seconds = _time(
        lambda: pgd(
            net, x, y, eps=8 / 255, step_size=2 / 255, steps=steps, restarts=10, prune=False
        ),
        device,
        max(1, repeats // 2),
        warmup=1,
    )
    return {
        "pgd_points": points,
        "pgd_restarts_side_by_side": 10,
        "pgd_image_iterations_per_s": points * 10 * steps / seconds,
    }


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


def bench_refresh(device, repeats: int, magnet_images_per_s: float) -> dict:
    """Cluster refresh on 50,000 training images: embedding pass + per-class k-means++."""
    torch.manual_seed(0)
    n, num_classes = 50_000, 10
    embedder = resnet18_embedder(64).to(device).eval()
    batch = _largest_embedding_batch(embedder, device)
    x = torch.rand(batch, 3, 32, 32, device=device)
    per_batch = _time(lambda: embed_all(embedder, x, batch_size=batch), device, repeats, warmup=1)
    embed_seconds = per_batch * n / batch
    labels = torch.arange(n) % num_classes
    features = torch.randn(n, 512) + 3 * torch.randn(num_classes, 512)[labels]
    index = ClusterIndex(2, random_state=0).fit(features, labels)
    kmeans_seconds = _time(lambda: index.refresh(features), torch.device("cpu"), 3, warmup=0)
    epoch_seconds = n / magnet_images_per_s + embed_seconds + kmeans_seconds
    return {
        "embedding_batch": batch,
        "embedding_pass_seconds": embed_seconds,
        "embedding_pass_extrapolated_from_one_batch": True,
        "kmeans_seconds": kmeans_seconds,
        "magnet_epoch_seconds_estimate": epoch_seconds,
        "kmeans_share_of_epoch": kmeans_seconds / epoch_seconds,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m clustr_lib.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--pgd-points", type=int, default=100, help="images per PGD batch")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    print(
        f"benchmarking on {device_name(device)} ({platform.python_implementation()} "
        f"{platform.python_version()}, torch {torch.__version__})",
        flush=True,
    )
    figures = {}
    for name, fn in (
        ("training", lambda: bench_training(device, args.repeats)),
        ("pgd", lambda: bench_pgd(device, args.repeats, args.pgd_points)),
    ):
        start = time.perf_counter()
        figures.update(fn())
        print(f"  {name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    figures.update(
        bench_refresh(device, max(1, args.repeats // 2), figures["magnet_step_images_per_s"])
    )
    report = {
        "figures": figures,
        "targets": {
            "magnet_over_ce_step <= 1.15": figures["magnet_over_ce_step"] <= 1.15,
            "clustr_qtrades_over_ce_step <= 2.7": figures["clustr_qtrades_over_ce_step"] <= 2.7,
            "kmeans_share_of_epoch <= 0.05": figures["kmeans_share_of_epoch"] <= 0.05,
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
