"""Results as data: every number the book shows is written to a small JSON with its
provenance (git commit, device, library versions, wall time, profile)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch


def device_name(device: torch.device | str | None = None) -> str:
    """Human-readable name of the device that ran a computation."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_commit() -> str:
    """Commit of the working tree that produced a result (``unknown`` outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(device=None, **extra) -> dict:
    """Where a result came from: commit, device, versions, time, plus ``extra`` fields."""
    import sklearn

    from . import __version__
    return {
        "git_commit": git_commit(),
        "device": device_name(device),
        "versions": {"clustr_lib": __version__, "torch": torch.__version__,
                     "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                     "python": platform.python_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def _plain(value):
    """JSON-ready copy of numpy/torch scalars and arrays."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if torch.is_tensor(value):
        return _plain(value.detach().cpu().numpy())
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_json(path, data: dict) -> Path:
    """Write ``data`` as JSON atomically: a killed run never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_plain(data), handle, indent=2, allow_nan=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_json(path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def glue_all(values: dict) -> None:
    """Glue each ``key: value`` into the executing notebook for the book's pages.

    Values are converted to plain Python numbers and strings first: the book formats a
    glued ``np.float64(…)`` repr as text it cannot parse.
    """
    from myst_nb import glue

    for key, value in values.items():
        glue(key, _plain(value), display=False)


# ---------------------------------------------------------------------------------------
# Image runs: a config -> a result JSON, cached by the config's hash (Sec. 4.2, Tables 1-5).

METHODS = {
    "nominal": "Nominal Training", "free_at": "Free AT", "trades": "TRADES",
    "magnet": "Magnet Loss", "clustr": "ClusTR", "qtrades": "QTRADES",
    "clustr_qtrades": "ClusTR + QTRADES",
}
CLUSTER_METHODS = ("magnet", "clustr", "clustr_qtrades")
RESULT_KEYS = ("config", "metrics", "training", "provenance")


def run_config(dataset: str, method: str, seed: int, settings: dict) -> dict:
    """Everything that determines a run's result, as plain JSON (hashed for the cache)."""
    from ._checks import check_choice

    check_choice(method, "method", METHODS)
    return {"dataset": dataset, "method": method, "seed": int(seed),
            **{k: _plain(v) for k, v in sorted(settings.items())}}


def config_hash(config: dict) -> str:
    """Short SHA-1 of the canonical JSON of ``config``."""
    import hashlib

    text = json.dumps(_plain(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def result_path(config: dict, results_dir) -> Path:
    return Path(results_dir) / f"{config['dataset']}-{config['method']}-s{config['seed']}-{config_hash(config)}.json"


def load_result(config: dict, results_dir) -> dict | None:
    """The recorded result of ``config``, or ``None``; a corrupt or partial file is reported
    with a warning and treated as missing (it will be recomputed)."""
    import warnings

    path = result_path(config, results_dir)
    if not path.exists():
        return None
    try:
        result = load_json(path)
        if not all(k in result for k in RESULT_KEYS) or result["config"] != _plain(config):
            raise ValueError("missing fields or a different config")
        return result
    except (ValueError, OSError) as err:
        warnings.warn(f"ignoring unreadable result {path.name} ({err}); recomputing", stacklevel=2)
        return None


def _model_path(config, models_dir) -> Path:
    return Path(models_dir) / f"{config['dataset']}-{config['method']}-s{config['seed']}-{config_hash(config)}.pt"


def _warm_start_config(config: dict) -> dict:
    return {**config, "method": "nominal"}


def build_model(config: dict, data):
    """The untrained network of a run (ResNet-18 embedder, plus a head for CE methods)."""
    from .models import WithHead, resnet18_embedder

    mean, std = data.channel_stats()
    embedder = resnet18_embedder(config["width"], mean, std)
    if config["method"] in CLUSTER_METHODS:
        return embedder
    return WithHead(embedder, 8 * config["width"], data.num_classes)


def train_run(config: dict, data, *, results_dir, models_dir, progress=None):
    """Train the network of ``config`` (resuming from its checkpoint), save its weights.

    ClusTR variants start from the nominal run of the same dataset, seed and settings,
    which is trained (and cached) first if needed: its time counts in theirs. Returns
    ``(model, training)``: the evaluation model and ``{"seconds", "stages"}``.
    """
    from .classify import ClusterClassifier, ClusterModel
    from .train import seed_everything, train_cross_entropy, train_magnet

    method, device = config["method"], data.y_train.device
    ckpt = Path(models_dir) / f".{config_hash(config)}.ckpt"
    seed_everything(config["seed"])
    model = build_model(config, data).to(device)
    stages = {}
    if method in ("clustr", "clustr_qtrades"):
        warm = _warm_start_config(config)
        run(warm, data, results_dir=results_dir, models_dir=models_dir,
            progress=progress)  # cached after the first ClusTR variant
        state = torch.load(_model_path(warm, models_dir), map_location=device, weights_only=True)
        model.load_state_dict({k[len("embedder."):]: v for k, v in state["model"].items()
                               if k.startswith("embedder.")})
        stages["warm_start"] = load_result(warm, results_dir)["training"]["seconds"]
    if method in CLUSTER_METHODS:
        qtrades = method == "clustr_qtrades"
        epochs = config["magnet_epochs"] + (config["ce_epochs"] if method == "magnet" else 0)
        index, history = train_magnet(
            model, data, epochs=epochs, lr=config["magnet_lr"],
            alpha=config["alpha_qtrades" if qtrades else "alpha"],
            clusters_per_class=config["clusters_per_class"],
            clusters_per_batch=min(config["clusters_per_batch"],
                                   1 + (data.num_classes - 1) * config["clusters_per_class"]),
            samples_per_cluster=config["samples_per_cluster"], seed=config["seed"],
            qtrades_lambda=config["qtrades_lambda"] if qtrades else 0.0,
            qtrades_eps=config["qtrades_eps"], qtrades_step=config["qtrades_step"],
            qtrades_loss=config["qtrades_loss"], checkpoint=ckpt, progress=progress)
        stages["magnet"] = history.seconds
        classifier = ClusterClassifier(index.centroids_, index.centroid_classes_, index.variance_,
                                       num_nearest=min(config["num_nearest"], index.num_clusters),
                                       num_classes=index.num_classes_)
        final = ClusterModel(model, classifier)
    else:
        step, step_args, epochs = _ce_step(config)
        history = train_cross_entropy(
            model, data, epochs=epochs, lr=config["ce_lr"], batch_size=config["batch_size"],
            milestones=_scaled_milestones(config["ce_milestones"], epochs, config["ce_epochs"]),
            seed=config["seed"], step=step, step_args=step_args, checkpoint=ckpt, progress=progress)
        stages[step] = history.seconds
        final = model
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    tmp = _model_path(config, models_dir).with_suffix(".tmp")
    torch.save({"model": final.state_dict()}, tmp)
    os.replace(tmp, _model_path(config, models_dir))
    ckpt.unlink(missing_ok=True)
    final.eval()
    return final, {"seconds": sum(stages.values()), "stages": stages,
                   "final_train_accuracy": history.accuracy[-1] if history.accuracy else None}


def _scaled_milestones(milestones, epochs: int, nominal_epochs: int) -> list[int]:
    """The warm start's lr milestones scaled to a run of ``epochs`` epochs (Free AT), never 0."""
    return sorted({max(1, round(m * epochs / nominal_epochs)) for m in milestones})


def _ce_step(config):
    """Per-batch update and epochs of the cross-entropy methods."""
    method = config["method"]
    if method == "qtrades":
        return "qtrades", {"lam": config["qtrades_lambda"], "eps": config["qtrades_eps"],
                           "step_size": config["qtrades_step"], "kind": config["qtrades_loss"]}, config["ce_epochs"]
    if method == "trades":
        return "trades", {"beta": config["trades_beta"], "eps": config["eps"],
                          "step_size": config["trades_step"], "iters": config["trades_steps"]}, config["ce_epochs"]
    if method == "free_at":
        replays = config["free_replays"]
        epochs = max(1, round(config["ce_epochs"] / replays))  # as many updates as nominal
        return "free_at", {"replays": replays, "eps": config["eps"]}, epochs
    return "nominal", {}, config["ce_epochs"]


def evaluate(model, data, config: dict) -> tuple[dict, dict]:
    """Clean accuracy on the test set; PGD robust accuracy (``pgd_restarts`` restarts, ε,
    step; ``pgd_steps`` read off one run) per objective on the first ``eval_size`` test
    points. Returns ``(metrics, seconds per objective)``."""
    from .attacks import pgd, predict

    x, y = data.test_images(), data.y_test
    metrics = {"clean_accuracy": float((predict(model, x) == y).float().mean()),
               "test_size": len(y)}
    n = len(y) if config["eval_size"] is None else min(int(config["eval_size"]), len(y))
    metrics["eval_size"] = n
    steps = max(config["pgd_steps"])
    seconds = {}
    for objective in config["pgd_objectives"]:
        if objective in ("paper", "magnet") and config["method"] not in CLUSTER_METHODS:
            continue  # plain networks: the paper's PGD is cross-entropy on the logits
        start = time.perf_counter()
        result = pgd(model, x[:n], y[:n], eps=config["eps"], step_size=config["pgd_step"],
                     steps=steps, restarts=config["pgd_restarts"], objective=objective,
                     restarts_per_pass=config["pgd_restarts_per_pass"],
                     report_steps=config["pgd_steps"], seed=config["seed"])
        for t, robust in result.extra["robust_at"].items():
            metrics[f"pgd{t}_{objective}"] = float(robust.float().mean())
        metrics[f"clean_accuracy_eval_{objective}"] = result.clean_accuracy
        seconds[objective] = time.perf_counter() - start
    if config["method"] not in CLUSTER_METHODS:  # the paper's objective is CE for them
        for t in config["pgd_steps"]:
            metrics[f"pgd{t}_paper"] = metrics[f"pgd{t}_ce"]
    return metrics, seconds


def run(config: dict, data, *, results_dir, models_dir, force=False, progress=None) -> dict:
    """The result of ``config``: recorded under ``results_dir`` if there (and not ``force``),
    else trained, evaluated and recorded, with its provenance. (``force`` recomputes this
    run only: a ClusTR run still starts from its recorded warm start.)"""
    if not force:
        cached = load_result(config, results_dir)
        if cached is not None:
            return cached
    start = time.perf_counter()
    model, training = train_run(config, data, results_dir=results_dir, models_dir=models_dir,
                                progress=progress)
    metrics, attack_seconds = evaluate(model, data, config)
    result = {"config": config, "metrics": metrics, "training": training,
              "attack_seconds": attack_seconds,
              "provenance": provenance(device=data.y_train.device,
                                       wall_seconds=time.perf_counter() - start)}
    save_json(result_path(config, results_dir), result)
    return result


def load_model(config: dict, data, models_dir):
    """The trained evaluation model of a recorded run (raises if its weights are missing)."""
    from .classify import ClusterClassifier, ClusterModel

    path = _model_path(config, models_dir)
    state = torch.load(path, map_location=data.y_train.device, weights_only=True)["model"]
    net = build_model(config, data).to(data.y_train.device)
    if config["method"] in CLUSTER_METHODS:
        classifier = ClusterClassifier(state["classifier.centroids"],
                                       state["classifier.centroid_classes"], 1.0,
                                       num_nearest=min(config["num_nearest"],
                                                       len(state["classifier.centroids"])))
        net = ClusterModel(net, classifier)
    net.load_state_dict(state)
    return net.eval()


def run_methods(dataset: str, methods, seeds: int, settings: dict, data, *, results_dir,
                models_dir, force=False, progress=None) -> list[dict]:
    """Every ``method`` × seed ``0 … seeds−1`` through :func:`run` (recorded results reused)."""
    from tqdm.auto import tqdm

    from ._checks import progress_enabled

    progress = progress_enabled() if progress is None else progress
    configs = [run_config(dataset, m, s, settings) for s in range(int(seeds)) for m in methods]
    results = []
    bar = tqdm(configs, desc=f"{dataset} runs", disable=not progress)
    for config in bar:
        bar.set_postfix(method=config["method"], seed=config["seed"])
        results.append(run(config, data, results_dir=results_dir, models_dir=models_dir,
                           force=force, progress=progress))
    return results


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
