"""The paper's training and evaluation protocol (App. D, Sec. 4.2), as one dict with a comment
per value, the methods it trains, the CPU study's overrides, and every rule that more than one
module needs (which α, the cap on M, which PGD objective a method is attacked with).

Profiles and studies change entries of :data:`PROTOCOL` through :func:`settings`; a run's
configuration is those settings plus its dataset, method and seed (:mod:`clustr_lib.runs`).
"""

from __future__ import annotations

from .checks import check_choice

PROTOCOL = {
    "width": 64,  # ResNet-18 base width: 512-d embedding
    "batch_size": 256,  # cross-entropy batch size (warm start and baselines)
    "ce_epochs": 90,  # warm-start epochs (Adam)
    "ce_lr": 1e-2,  # warm-start learning rate
    "ce_milestones": [30, 60],  # lr x0.1 at these epochs
    "magnet_epochs": {"cifar10": 30, "svhn": 60, "cifar100": 60, "digits32": 30},
    "magnet_lr": 1e-4,  # Magnet fine-tuning learning rate (Adam)
    "clusters_per_class": 2,  # K
    "clusters_per_batch": 12,  # M (capped by :func:`clusters_per_batch`)
    "samples_per_cluster": 20,  # D of the sampler (batch 240)
    "alpha": {"cifar10": 12.5, "svhn": 13.0, "cifar100": 8.5, "digits32": 12.5},
    "alpha_qtrades": {"cifar10": 12.5, "svhn": 10.0, "cifar100": 8.5, "digits32": 12.5},
    "qtrades_lambda": {"cifar10": 8.0, "svhn": 9.7, "cifar100": 2.0, "digits32": 8.0},
    "qtrades_eps": 8 / 255,  # QTRADES noise and projection radius
    "qtrades_step": 10 / 255,  # QTRADES step (the public code's value)
    "qtrades_loss": "ce",  # Eq. 5's CE(p(x_adv), p(x)); "kl": TRADES' KL(p(x) || p(x_adv)),
    # the same minus the entropy of p(x)
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
    "eval_size": None,  # test points attacked (None: the whole test set)
}

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

# Chapter 6's digits32 study: 7 methods x 3 seeds at CPU scale, recorded in results/digits32.
DIGITS32_STUDY = {
    "seeds": 3,
    "overrides": {
        "width": 4,  # ResNet-18 base width (32-d embedding instead of 512)
        "batch_size": 128,  # cross-entropy batch (1,347 training images)
        "ce_epochs": 15,  # warm start and baselines (Free AT: 2 epochs of 8 replays)
        "ce_milestones": [8, 12],
        "magnet_epochs": 10,  # Magnet fine-tuning; Magnet from random init gets 15 + 10
        "eval_size": 80,  # test points attacked (clean accuracy uses all 450)
        "pgd_restarts_per_pass": 1,  # restarts one at a time, each on the points still robust
    },
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
    return {k: (v[dataset] if isinstance(v, dict) else v) for k, v in merged.items()}


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


def pgd_params(settings: dict, method: str, objective: str, **changes) -> dict:
    """PGD ℓ∞ parameters of the protocol (ε, step, steps, restarts, attacked points) for
    ``objective`` on a ``method`` network, with ``changes`` (e.g. another ``eps`` or
    ``num_nearest``); the Magnet-loss attack carries the run's α."""
    params = {
        "eps": settings["eps"],
        "step_size": settings["pgd_step"],
        "steps": list(settings["pgd_steps"]),
        "restarts": settings["pgd_restarts"],
        "restarts_per_pass": settings["pgd_restarts_per_pass"],
        "eval_size": settings["eval_size"],
        **changes,
        "objective": objective,
    }
    if objective == "magnet":
        params["alpha"] = magnet_alpha(settings, method)
    return params


def at_protocol(settings: dict, method: str, params: dict) -> bool:
    """Whether a PGD request is one every run records itself (:func:`clustr_lib.runs.run`):
    the protocol's parameters for one of its objectives, and any of its steps."""
    asked = {
        k: v
        for k, v in params.items()
        if k != "steps" and not (k == "num_nearest" and v == settings["num_nearest"])
    }
    reference = pgd_params(settings, method, params["objective"])
    steps = set(reference.pop("steps"))
    return (
        params["objective"] in settings["pgd_objectives"]
        and asked == reference
        and set(params["steps"]) <= steps
    )
