"""The paper's training and evaluation protocol (App. D, Sec. 4.2), as one dict with a comment
per value, the methods it trains, the CPU study's overrides, and every rule that more than one
module needs (which α, the cap on M, which PGD objective a method is attacked with).

"The paper's protocol" is the paper's text, and where the text is silent or ambiguous what the
official code does (book/deviations.md lists every such choice); :data:`OUR_VARIANT` holds the
library's cleaner alternatives, each a value of the same key. Profiles and studies change
entries of :data:`PROTOCOL` through :func:`settings`; a run's configuration is those settings
plus its dataset, method, seed and data identity (:mod:`clustr_lib.runs`).
"""

from __future__ import annotations

from .attacks import OBJECTIVES, PGD_RULES, QTRADES_FORMS
from .checks import check_choice
from .magnet import EPOCH_LENGTHS, SEED_PROBABILITIES
from .train import PRECISIONS, QTRADES_LOSSES, VARIANCE_SOURCES, resolve_precision

PROTOCOL = {
    "width": 64,  # ResNet-18 base width: 512-d embedding
    "batch_size": 256,  # cross-entropy batch size (warm start and baselines)
    "ce_epochs": 90,  # warm-start epochs (Adam)
    "ce_lr": 1e-2,  # warm-start learning rate
    "ce_milestones": [30, 60],  # lr x0.1 at these epochs
    "magnet_epochs": {"cifar10": 30, "svhn": 60, "cifar100": 60, "digits32": 30, "fashion32": 30},
    "magnet_lr": 1e-4,  # Magnet fine-tuning learning rate (Adam)
    "clusters_per_class": 2,  # K
    "clusters_per_batch": 12,  # M (capped by :func:`clusters_per_batch`)
    "samples_per_cluster": 20,  # D of the sampler (batch 240)
    "alpha": {"cifar10": 12.5, "svhn": 13.0, "cifar100": 8.5, "digits32": 12.5, "fashion32": 12.5},
    "alpha_qtrades": {
        "cifar10": 12.5,
        "svhn": 10.0,
        "cifar100": 8.5,
        "digits32": 12.5,
        "fashion32": 12.5,
    },
    "qtrades_lambda": {
        "cifar10": 8.0,
        "svhn": 9.7,
        "cifar100": 2.0,
        "digits32": 8.0,
        "fashion32": 8.0,
    },
    # (digits32 and fashion32, which the paper does not train on, take CIFAR-10's values)
    "qtrades_eps": 8 / 255,  # QTRADES noise and projection radius
    "qtrades_step": 10 / 255,  # QTRADES step (the public code's value)
    "qtrades_form": "official",  # Eq. 5 as the official code trains it: p(x) over the L
    # nearest (not detached) against log_softmax of the raw scores at x_adv, clipped start;
    # "logprob": CE on Eq. 4's log-probabilities (ours)
    "qtrades_loss": "ce",  # the "logprob" form's term: "ce" CE(p(x_adv), p(x)) or "kl"
    "qtrades_head_loss": "official_kl",  # QTRADES on a CE head (the baseline): the official
    # first upload's bounded F.kl_div(softmax(x_adv), softmax(x)); "ce"/"kl" as above
    "qtrades_adversary_grad": True,  # official: the adversary's own parameter gradient at its
    # start is added to the update (weight 1)
    "train_num_nearest": 10,  # L: clusters of Eq. 4 during training (official); None: all
    "magnet_milestones": [30, 60],  # official: fine-tuning lr x0.1 at these epochs
    "flip": {
        "cifar10": True,
        "cifar100": True,
        "svhn": False,
        "digits32": False,
        "fashion32": True,
    },
    # official: random horizontal flips of the training batches (the text names crops only);
    # fashion32 is augmented as CIFAR is
    "seed_probability": "official",  # seed cluster ∝ mean recorded loss of its members,
    # kept per cluster id (official); "recorded", "all_members" (ours)
    "epoch_length": "floor",  # floor(N / (M·D)) batches per epoch (official); "ceil"
    "drop_short_batches": True,  # official: a batch short of M·D samples is not trained on
    "kmeans_random_state": 1,  # official: the same k-means seed at every refresh
    "kmeans_n_init": {"cifar10": 1, "svhn": 10, "cifar100": 10, "digits32": 10, "fashion32": 10},
    "kmeans_max_iter": {"cifar10": 20, "svhn": 40, "cifar100": 40, "digits32": 40, "fashion32": 40},
    # (setups.py: CIFAR-10 1 and 20, every other dataset 10 and 40)
    "refresh_augment": True,  # official: k-means on the augmented training set
    "variance_from": "second_pass",  # official: σ² from a second (augmented) pass
    "magnet_log_eps": None,  # Eq. 3 exactly, in log space; official: 1e-8 inside the log
    # (caps the per-sample loss near 18.4)
    "free_replays": 8,  # Free AT minibatch replays m (epochs divided by m)
    "trades_beta": 6.0,  # TRADES β
    "trades_steps": 10,  # TRADES inner PGD steps
    "trades_step": 2 / 255,  # TRADES inner step size
    "num_nearest": 20,  # D of Eq. (4) in the tables
    "eps": 8 / 255,  # PGD radius (ℓ∞)
    "pgd_step": 2 / 255,  # PGD step size
    "pgd_restarts": 10,  # random restarts
    "pgd_steps": [20, 100],  # PGD-20 and PGD-100 (read off one 100-step run)
    "pgd_restarts_per_pass": None,  # restarts side by side (None: all; 1: one at a time,
    # each attacking only the points still robust)
    "pgd_objectives": ["paper", "ce"],  # the paper's objective and -log p_y
    "pgd_rules": ["official", "any_iterate"],  # when PGD counts a point broken: the official
    # code's rule first (the paper's protocol), then the standard "any iterate" reading
    "eval_size": None,  # test points attacked (None: the whole test set)
    "shard_size": 500,  # attacked points per shard of a PGD or AutoAttack evaluation, each
    # with its own seed (clustr_lib.evaluations.shards); a record names it only when it is not
    # 500, so that records made before shards existed (all of fewer points) keep their keys
    "precision": "auto",  # training forward passes only (attacks run in float32): "auto" is
    # bf16 autocast on a CUDA GPU (fp16 + a gradient scaler without bf16), fp32 on the CPU;
    # or "fp32", "bf16", "fp16". The official code trains in fp32 (book/deviations.md). A run's
    # config names its precision only when it is not fp32, so fp32 runs keep their keys
}

# The official-code choices of Magnet fine-tuning, passed as they are to train.train_magnet
# (runs.magnet_recipe, the benchmark's whole epochs)
MAGNET_RECIPE_KEYS = (
    "qtrades_form",
    "qtrades_adversary_grad",
    "train_num_nearest",
    "flip",
    "seed_probability",
    "epoch_length",
    "drop_short_batches",
    "kmeans_random_state",
    "kmeans_n_init",
    "kmeans_max_iter",
    "refresh_augment",
    "variance_from",
    "magnet_log_eps",
)

METHODS = {
    "nominal": "Nominal Training",
    "free_at": "Free AT",
    "trades": "TRADES",
    "magnet": "Magnet Loss",
    "clustr": "ClusTR",
    "qtrades": "QTRADES",
    "clustr_qtrades": "ClusTR + QTRADES",
}
CLUSTER_METHODS = ("magnet", "clustr", "clustr_qtrades")  # classified by Eq. (4)
WARM_STARTED = ("clustr", "clustr_qtrades")  # fine-tuned from the nominal run

# The library's own variant of every choice the official code makes where the text is
# silent (book/deviations.md): the recipe the digits32 study was first recorded with.
OUR_VARIANT = {
    "qtrades_form": "logprob",
    "qtrades_head_loss": "ce",
    "qtrades_adversary_grad": False,
    "train_num_nearest": None,  # the logprob term needs every cluster (it is infinite otherwise)
    "magnet_milestones": [],
    "flip": False,
    "seed_probability": "all_members",
    "epoch_length": "ceil",
    "drop_short_batches": False,
    "kmeans_random_state": None,  # the run's seed plus the refresh count
    "kmeans_n_init": 1,
    "kmeans_max_iter": 300,
    "refresh_augment": False,
    "variance_from": "assignments",
    "pgd_rules": ["any_restart"],
}

# The CPU scale of chapter 6's digits32 study (7 methods x 3 seeds on two CPU cores).
DIGITS32_SCALE = {
    "width": 4,  # ResNet-18 base width (32-d embedding instead of 512)
    "batch_size": 128,  # cross-entropy batch (1,347 training images)
    "ce_epochs": 15,  # warm start and baselines (Free AT: 2 epochs of 8 replays)
    "ce_milestones": [8, 12],
    "magnet_epochs": 10,  # Magnet fine-tuning; Magnet from random init gets 15 + 10
    "magnet_milestones": [5, 8],  # the official [30, 60] of 90 epochs, scaled to 10 (issue 9)
    "eval_size": 80,  # test points attacked (clean accuracy uses all 450)
    "pgd_restarts_per_pass": 1,  # restarts one at a time, each on the points still robust
}

# The digits32 study the book reads (chapters 6–11), recorded in results/digits32 on
# 2026-11-22 with our variant of the recipe and PGD's "any restart" rule.
DIGITS32_STUDY = {
    "seeds": 3,
    "results": "digits32",
    "overrides": {**DIGITS32_SCALE, **OUR_VARIANT},
}
# Its re-recording at the paper's protocol (issue 9), in results/digits32-official, with
# ClusTR + QTRADES also in our "logprob" form side by side (``variants``).
DIGITS32_OFFICIAL = {
    "seeds": 3,
    "results": "digits32-official",
    "evaluated_by_chapters": True,  # chapters 7–11 evaluate it (`record` makes those too)
    "overrides": dict(DIGITS32_SCALE),
    "variants": {
        "logprob": {
            "methods": ["clustr_qtrades"],
            "overrides": {"qtrades_form": "logprob", "train_num_nearest": None},
        }
    },
}


# The CPU scale of the fashion32 study (issue 14): Fashion-MNIST padded to 32×32×3, 10,000 of
# its 60,000 training images, the paper's protocol otherwise; recorded run by run across sessions.
FASHION32_SCALE = {
    "width": 8,  # ResNet-18 base width (64-d embedding): a warm-start epoch ≈ 9 s on 2 cores
    "batch_size": 128,  # cross-entropy batch
    "ce_epochs": 15,  # warm start and TRADES
    "ce_milestones": [8, 12],
    "magnet_epochs": 10,  # Magnet fine-tuning of ClusTR and ClusTR + QTRADES
    "magnet_milestones": [5, 8],  # the official [30, 60] of 90 epochs, scaled to 10
    "eval_size": 500,  # test points attacked (clean accuracy uses all 10,000): one shard
    "pgd_restarts_per_pass": 1,  # restarts one at a time, each on the points still robust
}
FASHION32_STUDY = {
    "dataset": "fashion32",
    "train_size": 10_000,  # a fixed random subset (load_images' seed 0) of the training set
    "seeds": 3,
    "results": "fashion32",
    "methods": ["nominal", "trades", "clustr", "clustr_qtrades"],
    "overrides": dict(FASHION32_SCALE),
    "variants": {
        "logprob": {
            "methods": ["clustr_qtrades"],
            "overrides": {"qtrades_form": "logprob", "train_num_nearest": None},
        }
    },
    # What `record fashion32` measures of every run, and its chapter shows
    # (clustr_lib.studies.dataset_audit): each attack at both radii, step 2/255 throughout
    "audit": {
        "eps": [8 / 255, 0.1],  # the paper's ε, and the radius usual on Fashion-MNIST
        "rules": ["official", "any_restart", "any_iterate"],  # every PGD rule (issue 9)
        "gradient_objectives": ["paper", "ce", "magnet"],  # input-gradient norms at x
    },
}


# The same study at the paper's full protocol (issue 14, on a GPU: width 64, 90 + 30 epochs,
# all 60,000 training and 10,000 test images attacked): `record fashion32-paper --device cuda`.
FASHION32_PAPER = {
    **{k: FASHION32_STUDY[k] for k in ("dataset", "seeds", "methods", "variants", "audit")},
    "results": "fashion32-paper",
    "overrides": {},
}
# Its first slice, sized for a short GPU slot (issue 14; prepared, not yet recorded): the
# paper's protocol for nominal training and ClusTR + QTRADES, seed 0 first, every attack on the
# first 500 test points (one shard, as at CPU scale) instead of all 10,000; clean accuracy on all
# 10,000. `scripts/fashion32_paper_gpu.py` records it.
FASHION32_PAPER_500 = {
    **FASHION32_PAPER,
    "methods": ["nominal", "clustr_qtrades"],
    "results": "fashion32-paper-500",
    "variants": {},
    "overrides": {"eval_size": 500},
}


def settings(dataset: str, overrides: dict | None = None) -> dict:
    """The protocol for ``dataset`` (per-dataset entries resolved), with ``overrides``."""
    unknown = set(overrides or {}) - set(PROTOCOL)
    if unknown:
        raise ValueError(
            f"unknown protocol setting(s): {', '.join(sorted(unknown))}; "
            f"known: {', '.join(PROTOCOL)}"
        )
    merged = {**PROTOCOL, **(overrides or {})}
    return check_settings(
        {k: (v[dataset] if isinstance(v, dict) else v) for k, v in merged.items()}
    )


def training_precision(setting: str, device) -> str:
    """The precision a run with the ``precision`` setting trains in on ``device``
    (:data:`PROTOCOL`): ``"auto"`` is bf16 on CUDA and fp32 elsewhere; bf16 becomes fp16 on a
    GPU without it (:func:`clustr_lib.train.resolve_precision`)."""
    check_choice(setting, "precision", ("auto", *PRECISIONS))
    if setting == "auto":
        setting = "bf16" if str(device).startswith("cuda") else "fp32"
    return resolve_precision(setting, device)


def check_settings(settings: dict) -> dict:
    """Raise a clear ``ValueError`` for a protocol value no run could use, before any work."""
    choices = {
        "qtrades_form": QTRADES_FORMS,
        "qtrades_loss": ("ce", "kl"),
        "qtrades_head_loss": QTRADES_LOSSES,
        "seed_probability": SEED_PROBABILITIES,
        "epoch_length": EPOCH_LENGTHS,
        "variance_from": VARIANCE_SOURCES,
        "precision": ("auto", *PRECISIONS),
    }
    for key, allowed in choices.items():
        check_choice(settings[key], key, allowed)
    for key in ("pgd_objectives", "pgd_rules"):
        allowed = OBJECTIVES if key == "pgd_objectives" else PGD_RULES
        if not settings[key] or any(v not in allowed for v in settings[key]):
            raise ValueError(f"{key} must be a non-empty list of {allowed}, got {settings[key]}")
    for key in ("ce_milestones", "magnet_milestones"):
        values = list(settings[key])
        if any(int(v) < 1 for v in values) or values != sorted(set(values)):
            raise ValueError(f"{key} must be strictly increasing epochs >= 1, got {values}")
    steps = list(settings["pgd_steps"])
    if not steps or any(int(t) < 0 for t in steps):
        raise ValueError(f"pgd_steps must be a non-empty list of steps >= 0, got {steps}")
    if not 0 <= float(settings["eps"]) <= 1 or float(settings["pgd_step"]) <= 0:
        raise ValueError("eps must lie in [0, 1] and pgd_step be > 0")
    if int(settings["shard_size"]) < 1:
        raise ValueError(f"shard_size must be an integer >= 1, got {settings['shard_size']}")
    for key in ("num_nearest", "train_num_nearest", "eval_size", "pgd_restarts_per_pass"):
        if settings[key] is not None and int(settings[key]) < 1:
            raise ValueError(f"{key} must be None or an integer >= 1, got {settings[key]}")
    for key in (
        "width",
        "batch_size",
        "clusters_per_class",
        "samples_per_cluster",
        "pgd_restarts",
        "free_replays",
    ):
        if int(settings[key]) < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {settings[key]}")
    for key in ("ce_epochs", "magnet_epochs", "trades_steps"):
        if int(settings[key]) < 0:
            raise ValueError(f"{key} must be >= 0, got {settings[key]}")
    if settings["clusters_per_batch"] < 2:
        raise ValueError("clusters_per_batch must be >= 2 (a seed cluster and an impostor)")
    return settings


def check_method(method: str) -> str:
    """Raise unless ``method`` is one of :data:`METHODS`."""
    return check_choice(method, "method", METHODS)


def magnet_alpha(settings: dict, method: str) -> float:
    """α of the Magnet loss (Eq. 3) ``method`` trains with (App. D: QTRADES has its own);
    the adaptive attack uses the same margin."""
    return settings["alpha_qtrades" if method == "clustr_qtrades" else "alpha"]


def clusters_per_batch(settings: dict, num_classes: int) -> int:
    """M, capped at the seed cluster plus every cluster of the other classes (a dataset with
    few classes has fewer impostors than the paper's 11)."""
    return min(
        settings["clusters_per_batch"], 1 + (num_classes - 1) * settings["clusters_per_class"]
    )


def attack_objective(method: str, objective: str) -> str | None:
    """The PGD objective ``objective`` means for a network trained by ``method``.

    For a cross-entropy network the paper's objective *is* −log p_y (``"ce"``), and the
    Magnet-loss attack does not apply (``None``); a cluster network is attacked as asked.
    """
    if method in CLUSTER_METHODS:
        return objective
    return {"paper": "ce", "magnet": None}.get(objective, objective)


def applicable_objectives(method: str, objectives) -> list[str]:
    """What each of ``objectives`` means for a ``method`` network
    (:func:`attack_objective`), each once, in order; those that do not apply are left out."""
    meant = (attack_objective(method, o) for o in objectives)
    return list(dict.fromkeys(o for o in meant if o is not None))


def pgd_params(settings: dict, method: str, objective: str, **changes) -> dict:
    """PGD ℓ∞ parameters of the protocol (ε, step, steps, restarts, attacked points, and the
    rule: the protocol's first, the paper's) for ``objective`` on a ``method`` network, with
    ``changes`` (e.g. another ``eps``, ``num_nearest`` or ``rule``); the Magnet-loss attack
    carries the run's α."""
    params = {
        "rule": settings["pgd_rules"][0],
        "eps": settings["eps"],
        "step_size": settings["pgd_step"],
        "steps": list(settings["pgd_steps"]),
        "restarts": settings["pgd_restarts"],
        "restarts_per_pass": settings["pgd_restarts_per_pass"],
        "eval_size": settings["eval_size"],
        **shard_params(settings),
        **changes,
        "objective": objective,
    }
    if params.get("shard_size") == PROTOCOL["shard_size"]:  # the default is implied
        del params["shard_size"]
    if objective == "magnet":
        params["alpha"] = magnet_alpha(settings, method)
    return params


def shard_params(settings: dict) -> dict:
    """``{"shard_size": n}`` for settings whose shard size is not the protocol's (500), else
    ``{}``: the default is implied in evaluations' parameters and runs' configs."""
    size = settings.get("shard_size", PROTOCOL["shard_size"])
    return {} if size == PROTOCOL["shard_size"] else {"shard_size": int(size)}


def at_protocol(settings: dict, method: str, params: dict) -> bool:
    """Whether a PGD request is one every run records itself (:func:`clustr_lib.runs.run`):
    the protocol's parameters for one of its objectives and rules, and any of its steps."""
    asked = {
        k: v
        for k, v in params.items()
        if k != "steps" and not (k == "num_nearest" and v == settings["num_nearest"])
    }
    reference = pgd_params(settings, method, params["objective"], rule=params.get("rule"))
    steps = set(reference.pop("steps"))
    return (
        params["objective"] in settings["pgd_objectives"]
        and params.get("rule") in settings["pgd_rules"]
        and asked == reference
        and set(params["steps"]) <= steps
    )
