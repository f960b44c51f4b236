"""A run: a configuration → a trained network and its :class:`~clustr_lib.records.RunRecord`,
cached by the configuration's hash (Sec. 4.2, Tables 1–5).

The record holds clean accuracy and the protocol's PGD (measured through
:func:`clustr_lib.evaluations.pgd_accuracy`, the one PGD entry point); the weights lie next
to it in ``models/``. Training resumes from a checkpoint after an interruption.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import clock, protocol
from .attacks import predict
from .checks import progress_enabled
from .classify import ClusterClassifier, ClusterModel
from .evaluations import pgd_accuracy
from .files import (
    atomic_write,
    check_writable,
    lock,
    move_aside,
    remove_temporaries,
    sha256_file,
)
from .models import WithHead, resnet18_embedder
from .records import (
    RunRecord,
    config_hash,
    data_identity,
    load_run,
    provenance,
    record_path,
    save_json,
    to_plain,
)
from .train import Checkpoint, seed_everything, train_cross_entropy, train_magnet


def run_config(dataset: str, method: str, seed: int, settings: dict, data=None) -> dict:
    """Everything that determines a run's result, as plain JSON (hashed for the cache): the
    method, seed and protocol settings, and the identity of the ``data`` it is trained and
    evaluated on (:func:`clustr_lib.records.data_identity`), so that a run on a subset or on
    other files is never returned for another. The ``precision`` setting enters as the
    precision the run trains in on the data's device, and only when that is not fp32
    (:func:`clustr_lib.protocol.training_precision`); the shard size of its protocol PGD only
    when it is not the protocol's (:func:`clustr_lib.protocol.shard_params`)."""
    protocol.check_method(method)
    settings = protocol.check_settings(dict(settings))
    device = data.y_train.device if data is not None else "cpu"
    precision = protocol.training_precision(settings.pop("precision"), device)
    shards = protocol.shard_params(settings)
    settings.pop("shard_size")
    config = {
        "dataset": dataset,
        "method": method,
        "seed": int(seed),
        **{k: to_plain(v) for k, v in sorted(settings.items())},
        **shards,  # only when not the protocol's shard size, as the precision
    }
    if precision != "fp32":  # fp32 runs keep the keys they were recorded under
        config["precision"] = precision
    if data is not None:
        identity = data_identity(data)
        if identity["dataset"] != dataset:
            raise ValueError(f"a {dataset} run cannot be trained on {identity['dataset']} data")
        config["data"] = identity
    return config


def model_path(config: dict, models_dir) -> Path:
    """Where the trained weights of ``config`` are saved."""
    return record_path(models_dir, config, suffix=".pt")


def build_model(config: dict, data):
    """The untrained network of a run (ResNet-18 embedder, plus a head for CE methods)."""
    mean, std = data.channel_stats()
    embedder = resnet18_embedder(config["width"], mean, std)
    if config["method"] in protocol.CLUSTER_METHODS:
        return embedder
    return WithHead(embedder, 8 * config["width"], data.num_classes)


def scaled_milestones(milestones, epochs: int, nominal_epochs: int) -> list[int]:
    """The warm start's lr milestones scaled to a run of ``epochs`` epochs (Free AT), never 0."""
    return sorted({max(1, round(m * epochs / nominal_epochs)) for m in milestones})


def cross_entropy_recipe(config: dict) -> tuple[str, dict, int]:
    """``(step, step_args, epochs)`` of a cross-entropy method
    (:func:`clustr_lib.train.train_cross_entropy`)."""
    method = config["method"]
    if method == "qtrades":
        return (
            "qtrades",
            {
                "lam": config["qtrades_lambda"],
                "eps": config["qtrades_eps"],
                "step_size": config["qtrades_step"],
                "kind": config["qtrades_head_loss"],
                "form": config["qtrades_form"],
            },
            config["ce_epochs"],
        )
    if method == "trades":
        return (
            "trades",
            {
                "beta": config["trades_beta"],
                "eps": config["eps"],
                "step_size": config["trades_step"],
                "iters": config["trades_steps"],
            },
            config["ce_epochs"],
        )
    if method == "free_at":
        replays = config["free_replays"]
        epochs = max(1, round(config["ce_epochs"] / replays))  # as many updates as nominal
        return "free_at", {"replays": replays, "eps": config["eps"]}, epochs
    return "nominal", {}, config["ce_epochs"]


def magnet_recipe(config: dict, epochs: int) -> dict:
    """The official-code choices of Magnet fine-tuning (:func:`clustr_lib.train.train_magnet`
    keywords; book/deviations.md), with the lr milestones scaled to a run of ``epochs``
    epochs (Magnet from random init runs warm start + fine-tuning epochs)."""
    milestones = config["magnet_milestones"]
    if milestones and epochs != config["magnet_epochs"]:
        milestones = scaled_milestones(milestones, epochs, config["magnet_epochs"])
    recipe = {k: config[k] for k in protocol.MAGNET_RECIPE_KEYS}
    return {"milestones": list(milestones), **recipe}


def train_run(config: dict, data, *, results_dir, models_dir, progress=None):
    """Train the network of ``config`` (resuming from its checkpoint), save its weights.

    ClusTR variants start from the nominal run of the same dataset, seed and settings,
    which is trained (and cached) first if needed: its time counts in theirs. A nominal run
    recorded without its weights here (records brought back from another machine without
    them) is trained again, with a warning. Returns ``(model, training)``: the evaluation model
    and ``{"seconds", "stages", ...}``.
    """
    method, device = config["method"], data.y_train.device
    precision = config.get("precision", "fp32")
    ckpt = Checkpoint(Path(models_dir) / f".{record_path('.', config).stem}.ckpt")
    seed_everything(config["seed"])
    model = build_model(config, data).to(device)
    stages = {}
    if method in protocol.WARM_STARTED:
        warm_config = {**config, "method": "nominal"}
        weights = model_path(warm_config, models_dir)
        again = load_run(warm_config, results_dir) is not None and not weights.exists()
        if again:
            warnings.warn(
                f"{weights.name} is missing: the nominal run is trained again", stacklevel=2
            )
        warm = run(
            warm_config,
            data,
            results_dir=results_dir,
            models_dir=models_dir,
            force=again,
            progress=progress,
        )  # cached after the first ClusTR variant
        state = torch.load(weights, map_location=device, weights_only=True)
        model.load_state_dict(
            {
                k[len("embedder.") :]: v
                for k, v in state["model"].items()
                if k.startswith("embedder.")
            }
        )
        stages["warm_start"] = warm.training["seconds"]
    if method in protocol.CLUSTER_METHODS:
        qtrades = method == "clustr_qtrades"
        epochs = config["magnet_epochs"] + (config["ce_epochs"] if method == "magnet" else 0)
        index, history = train_magnet(
            model,
            data,
            epochs=epochs,
            lr=config["magnet_lr"],
            alpha=protocol.magnet_alpha(config, method),
            clusters_per_class=config["clusters_per_class"],
            clusters_per_batch=protocol.clusters_per_batch(config, data.num_classes),
            samples_per_cluster=config["samples_per_cluster"],
            seed=config["seed"],
            qtrades_lambda=config["qtrades_lambda"] if qtrades else 0.0,
            qtrades_eps=config["qtrades_eps"],
            qtrades_step=config["qtrades_step"],
            qtrades_loss=config["qtrades_loss"],
            checkpoint=ckpt.path,
            progress=progress,
            precision=precision,
            **magnet_recipe(config, epochs),
        )
        stages["magnet"] = history.seconds
        classifier = ClusterClassifier(
            index.centroids_,
            index.centroid_classes_,
            index.variance_,
            num_nearest=min(config["num_nearest"], index.num_clusters),
            num_classes=index.num_classes_,
        )
        final = ClusterModel(model, classifier)
    else:
        step, step_args, epochs = cross_entropy_recipe(config)
        history = train_cross_entropy(
            model,
            data,
            epochs=epochs,
            lr=config["ce_lr"],
            batch_size=config["batch_size"],
            milestones=scaled_milestones(config["ce_milestones"], epochs, config["ce_epochs"]),
            seed=config["seed"],
            step=step,
            step_args=step_args,
            checkpoint=ckpt.path,
            progress=progress,
            flip=config["flip"],
            precision=precision,
        )
        stages[step] = history.seconds
        final = model
    training = {
        "seconds": sum(stages.values()),
        "stages": stages,
        "final_train_accuracy": history.accuracy[-1] if history.accuracy else None,
        "precision": precision,
    }
    if method in protocol.CLUSTER_METHODS:  # M as trained (the protocol's, capped)
        training["clusters_per_batch"] = protocol.clusters_per_batch(config, data.num_classes)
        training["kmeans_backend"] = index.backend_for(data.y_train.new_zeros(1, 1).float())
    # the weights carry what the record needs besides the evaluation: a run killed while
    # being evaluated is evaluated again from them, never retrained
    payload = {
        "model": final.state_dict(),
        "training": json.dumps(training),
        "config_hash": config_hash(config),
    }
    atomic_write(model_path(config, models_dir), lambda tmp: torch.save(payload, tmp))
    ckpt.clear()
    final.eval()
    return final, training


def protocol_objectives(config: dict) -> list[str]:
    """The PGD objectives a run records: the protocol's, as they apply to its method
    (:func:`clustr_lib.protocol.attack_objective`), each once."""
    return protocol.applicable_objectives(config["method"], config["pgd_objectives"])


def evaluate(model, data, config: dict) -> tuple[dict, dict]:
    """Clean accuracy on the test set and the protocol's PGD per objective and rule
    (:func:`clustr_lib.evaluations.pgd_accuracy`, attack seed = the run's seed).
    Returns ``(metrics, seconds per objective)``."""
    x, y = data.test_images(), data.y_test
    n = len(y) if config["eval_size"] is None else min(int(config["eval_size"]), len(y))
    metrics = {
        "clean_accuracy": float((predict(model, x) == y).float().mean()),
        "test_size": len(y),
        "eval_size": n,
        "pgd": {},
    }
    seconds = {}
    for objective in protocol_objectives(config):
        start = clock.seconds()
        entry = {"robust": {}}
        for rule in config["pgd_rules"]:
            params = protocol.pgd_params(config, config["method"], objective, rule=rule)
            measured = pgd_accuracy(model, data, seed=config["seed"], **params)
            entry["clean"], entry["robust"][rule] = measured["clean"], measured["robust"]
        metrics["pgd"][objective] = entry
        seconds[objective] = clock.seconds() - start
    return metrics, seconds


def run(config: dict, data, *, results_dir, models_dir, force=False, progress=None) -> RunRecord:
    """The record of ``config``: read from ``results_dir`` if there (and not ``force``), else
    trained, evaluated and recorded with its provenance. (``force`` recomputes this run only:
    a ClusTR run still starts from its recorded warm start.)

    Safe to call from several processes at once: each run is trained under its own lock
    (``models/.<run>.lock``), so a second caller waits and then reads the first one's record.
    The folders are checked writable before any training; weights saved by a process killed
    while evaluating are evaluated, not retrained (unless ``force``).
    """
    if not force:
        cached = load_run(config, results_dir)
        if cached is not None:
            return cached
    check_writable(results_dir, models_dir)
    stem = record_path(".", config).stem
    with lock(Path(models_dir) / f".{stem}.lock"):
        if not force:  # another process may have finished it while we waited
            cached = load_run(config, results_dir)
            if cached is not None:
                return cached
        for directory in (results_dir, models_dir):
            remove_temporaries(directory, stem)
        start = clock.seconds()
        trained = None if force else load_trained(config, data, models_dir)
        if trained is None:
            trained = train_run(
                config, data, results_dir=results_dir, models_dir=models_dir, progress=progress
            )
        model, training = trained
        metrics, attack_seconds = evaluate(model, data, config)
        record = RunRecord(
            config=config,
            training=training,
            attack_seconds=attack_seconds,
            provenance=provenance(device=data.y_train.device, wall_seconds=clock.seconds() - start),
            weights_sha256=sha256_file(model_path(config, models_dir)),
            **metrics,
        )
        save_json(record_path(results_dir, config), record.to_json())
    return record


def load_trained(config: dict, data, models_dir):
    """``(model, training)`` from the weights a run saved before it was evaluated, or ``None``
    when there are none; weights that do not load, or belong to another config, are moved
    aside with a warning (the run is then trained again)."""
    path = model_path(config, models_dir)
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("config_hash") != config_hash(config) or "training" not in saved:
            raise ValueError("they were saved for another config or without their training")
        return load_model(config, data, models_dir), json.loads(saved["training"])
    except Exception as err:  # noqa: BLE001 - any unusable weights are set aside
        aside = move_aside(path)
        warnings.warn(
            f"weights {path} are unusable ({err}); moved to {aside.name}, retraining", stacklevel=2
        )
        return None


def load_model(config: dict, data, models_dir, sha256: str | None = None):
    """The trained evaluation model of a recorded run. With ``sha256`` (the record's
    ``weights_sha256``) the weights file is verified first: changed bytes raise
    :class:`DamagedWeights` naming the file, never load into a different model."""
    device = data.y_train.device
    path = model_path(config, models_dir)
    if sha256 is not None and sha256_file(path) != sha256:
        raise DamagedWeights(
            f"{path} does not match the SHA-256 its run recorded: the weights changed since "
            "they were trained. Restore the file, or retrain the run (force=True)"
        )
    state = torch.load(path, map_location=device, weights_only=True)["model"]
    net = build_model(config, data).to(device)
    if config["method"] in protocol.CLUSTER_METHODS:
        classifier = ClusterClassifier(
            state["classifier.centroids"],
            state["classifier.centroid_classes"],
            1.0,
            num_nearest=min(config["num_nearest"], len(state["classifier.centroids"])),
        )
        net = ClusterModel(net, classifier)
    net.load_state_dict(state)
    return net.eval()


class DamagedWeights(ValueError):
    """A recorded run's weights file no longer matches its recorded SHA-256."""


def run_all(
    configs: list[dict], data, *, results_dir, models_dir, force=False, progress=None
) -> list[RunRecord]:
    """Every config through :func:`run` (recorded results reused), with one progress bar."""
    progress = progress_enabled() if progress is None else progress
    missing = force or any(load_run(c, results_dir) is None for c in configs)
    records = []
    bar = tqdm(configs, desc="runs", disable=not (progress and missing))
    for config in bar:
        bar.set_postfix(dataset=config["dataset"], method=config["method"], seed=config["seed"])
        records.append(
            run(
                config,
                data,
                results_dir=results_dir,
                models_dir=models_dir,
                force=force,
                progress=progress,
            )
        )
    return records
