"""Issue 16's report: how long a plan takes with each executor, and what more devices give.

1. ``--smoke``: the smoke profile's plan (``python -m clustr_lib plan``) executed from an empty
   scratch cache, once with ``--executor local`` (one task after another, all cores to each) and
   once with ``--executor ray`` (a local Ray instance, one task per core, one torch thread
   each), and ``local`` with one thread per task for the like-for-like reading.
2. ``--projection``: the full profile's plan, made on fake datasets of the paper's sizes written
   here in torchvision's on-disk formats (so that every run's key and every evaluation, shards
   included, are known), its device seconds estimated from this device's recorded benchmark
   (``benchmarks/*.json``, :func:`clustr_lib.bench.recorded_figures`), then scheduled on 1, 4
   and 8 devices (:func:`clustr_lib.plan.schedule`).

    python benchmarks/executors.py --smoke --projection --out benchmarks/executors/cpu-2core.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.io
import torchvision.datasets as tvd

from clustr_lib import bench, executors, plan
from clustr_lib.records import device_name, provenance, resolve_device

SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "svhn": (73_257, 26_032)}


def smoke(folder: Path, executor: str, threads: int | None) -> dict:
    """Wall seconds of the smoke plan's tasks from an empty cache in ``folder``."""
    found = plan.make_plan("smoke", output_dir=folder)
    todo = [t for t in found.tasks if not t.recorded]
    start = time.perf_counter()
    executors.execute(found, executor, threads=threads, progress=False)
    return {
        "executor": executor,
        "threads_per_task": threads,
        "tasks": len(todo),
        "runs": sum(t.kind == "run" for t in todo),
        "wall_seconds": time.perf_counter() - start,
    }


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_paper_data(root: Path, rng) -> None:
    """CIFAR-10, CIFAR-100 and SVHN of the paper's sizes (random pixels and labels) under
    ``root``, with torchvision's md5 tables pointed at these files."""
    c10 = root / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    per_batch = SIZES["cifar10"][0] // 5
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [
        ("test_batch", SIZES["cifar10"][1])
    ]:
        rows = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        rows["labels"] = rng.integers(0, 10, n).tolist()
        (c10 / name).write_bytes(pickle.dumps(rows))
    (c10 / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    tvd.CIFAR10.train_list = [
        [f"data_batch_{i}", _md5(c10 / f"data_batch_{i}")] for i in range(1, 6)
    ]
    tvd.CIFAR10.test_list = [["test_batch", _md5(c10 / "test_batch")]]
    tvd.CIFAR10.meta = {**tvd.CIFAR10.meta, "md5": _md5(c10 / "batches.meta")}

    c100 = root / "cifar-100-python"
    c100.mkdir()
    for name, n in (("train", SIZES["cifar100"][0]), ("test", SIZES["cifar100"][1])):
        rows = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        rows["fine_labels"] = rng.integers(0, 100, n).tolist()
        (c100 / name).write_bytes(pickle.dumps(rows))
    (c100 / "meta").write_bytes(pickle.dumps({"fine_label_names": [str(i) for i in range(100)]}))
    tvd.CIFAR100.train_list = [["train", _md5(c100 / "train")]]
    tvd.CIFAR100.test_list = [["test", _md5(c100 / "test")]]
    tvd.CIFAR100.meta = {**tvd.CIFAR100.meta, "md5": _md5(c100 / "meta")}

    for split, n in (("train", SIZES["svhn"][0]), ("test", SIZES["svhn"][1])):
        name = f"{split}_32x32.mat"
        pixels = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        scipy.io.savemat(root / name, {"X": pixels, "y": rng.integers(1, 11, (n, 1))})
        url = tvd.SVHN.split_list[split][0]
        tvd.SVHN.split_list = {**tvd.SVHN.split_list, split: [url, name, _md5(root / name)]}


def projection(folder: Path, device: str, workers=(1, 4, 8)) -> dict:
    """The full plan on fake data of the paper's sizes, its estimates from ``device``'s
    recorded benchmark (``auto``, ``cpu``, ``cuda``), scheduled on ``workers`` devices."""
    data = folder / "data"
    fake_paper_data(data, np.random.default_rng(0))
    os.environ["CLUSTR_DATA"] = str(data)
    found = plan.make_plan("full", output_dir=folder / "chapters", device=device)
    todo = [t for t in found.tasks if not t.recorded]
    unknown = [t for t in todo if t.seconds is None]
    return {
        "device": device_name(resolve_device(device)),
        "tasks": len(todo),
        "runs": sum(t.kind == "run" for t in todo),
        "evaluations": sum(t.kind == "evaluation" for t in todo),
        "shards": sum(t.kind == "shard" for t in todo),
        "without_estimate": sorted({plan.describe(t.evaluation, None) for t in unknown}),
        "schedules": [plan.schedule(found.tasks, w) for w in workers],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="time the smoke plan both ways")
    parser.add_argument("--projection", action="store_true", help="schedule the full plan")
    parser.add_argument("--device", default="auto", help="whose recorded rates to project with")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    device = device_name(resolve_device(args.device))
    out = {}
    with tempfile.TemporaryDirectory(prefix="clustr-exec-") as tmp:
        if args.smoke:
            out["smoke"] = [
                smoke(Path(tmp) / name, executor, threads)
                for name, executor, threads in (
                    ("local", "local", None),
                    ("local1", "local", 1),
                    ("ray", "ray", 1),
                )
            ]
        if args.projection:
            if bench.recorded_figures(device) is None:
                parser.error(f"no benchmark recorded for {device}: run python -m clustr_lib.bench")
            out["projection"] = projection(Path(tmp) / "full", args.device)
    record = {"figures": out, "provenance": provenance(device=resolve_device(args.device))}
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
