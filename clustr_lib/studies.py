"""The chapters' measurements over :class:`~clustr_lib.sources.Source` objects, as tidy
DataFrames (one row per source, seed and setting), and the findings each chapter draws from
them: Tables 1–3 (ch. 3–6), Table 4 (ε ablation, ch. 7), Fig. 4 (D ablation, ch. 8), the
adaptive attack (Sec. 4.2, ch. 9), the attack audit and Theorem 1 at image scale (ch. 10), and
k-means on nominal features (App. B.1, ch. 11).

Every frame function takes one source or a list of them. Accuracies are percentages. Every
PGD uses the run's own protocol (step, restarts, attacked points) unless a row says otherwise;
a value the run already recorded is read from its record (:meth:`Source.pgd`). The findings
functions return plain JSON, per source, that a chapter records and
:mod:`clustr_lib.verdicts` judges; their thresholds are the constants below.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .evaluations import tiny_share
from .protocol import (
    CLUSTER_METHODS,
    METHODS,
    applicable_objectives,
    attack_objective,
    magnet_alpha,
    shard_params,
)
from .sources import EVALUATION_CHAPTERS

MASKING_MARGIN = 2.0  # accuracy points by which one attack must beat another to count
COLLAPSE_MARGIN = 10.0  # points k-means + Eq. 4 must lose against the head to "collapse"


def _frame(sources, one) -> pd.DataFrame:
    """``one(source)`` (a list of rows) over one source or several, as one frame."""
    sources = sources if isinstance(sources, (list, tuple)) else [sources]
    return pd.DataFrame([row for source in sources for row in one(source)])


def pgd_rows(source, method: str, objective: str, **changes) -> list[dict]:
    """PGD robust accuracy per seed (recorded value when the run has it, else measured)."""
    rows = []
    for e in source.pgd(method, objective, **changes):
        row = {
            "source": source.label,
            "method": METHODS[method],
            "seed": e["seed"],
            "objective": objective,
            "rule": changes.get("rule", source.settings["pgd_rules"][0]),
            "clean": 100 * e["metrics"]["clean"],
        }
        row.update({f"pgd{t}": 100 * v for t, v in e["metrics"]["robust"].items()})
        rows.append(row)
    return rows


def runs_frame(sources, force: bool = False) -> pd.DataFrame:
    """Tables 1–3 (chapters 3–6): one row per run of every method, with clean accuracy (whole
    test set and attacked points), PGD accuracy per objective (``pgd<steps>_<objective>``
    under the protocol's first rule, the paper's; ``…_<rule>`` under the others) and training
    minutes (``force``: retrain even the recorded runs)."""

    def one(source):
        rows = []
        for r in source.runs(force=force):
            row = {
                "source": source.label,
                "method": METHODS[r.method],
                "seed": r.seed,
                "clean_accuracy": 100 * r.clean_accuracy,
                "clean_attacked": 100 * r.pgd.get("ce", {}).get("clean", np.nan),
                "train_minutes": r.training["seconds"] / 60,
                "device": r.provenance["device"],
            }
            first, *others = source.settings["pgd_rules"]
            for objective in source.settings["pgd_objectives"]:
                own = attack_objective(r.method, objective)
                for rule in [] if own is None else [first, *others]:
                    suffix = "" if rule == first else f"_{rule}"
                    for t in source.settings["pgd_steps"]:
                        row[f"pgd{t}_{objective}{suffix}"] = 100 * r.pgd_accuracy(own, t, rule)
            rows.append(row)
        return rows

    return _frame(sources, one)


def eps_ablation(sources, eps_values, objectives, method: str = "clustr_qtrades") -> pd.DataFrame:
    """Table 4: PGD-20/100 at each ε (in units of 1/255), per source, objective and seed."""
    return _frame(
        sources,
        lambda source: [
            {**row, "eps_255": float(eps)}
            for eps in eps_values
            for objective in objectives
            for row in pgd_rows(source, method, objective, eps=float(eps) / 255)
        ],
    )


def threat_calibration(sources, eps_values, method: str = "nominal", objective: str = "ce"):
    """How strong each ε is on a source (issue 9): PGD-20/100 on ``method`` (nominal
    training: no defence) at each ε of ``eps_values`` (units of 1/255), per seed, on the
    sources that have ``method`` runs (a study variant may not)."""
    sources = sources if isinstance(sources, (list, tuple)) else [sources]
    having = [s for s in sources if method in s.methods]
    return eps_ablation(having, eps_values, [objective], method=method)


def calibrated_eps(frame: pd.DataFrame, below: float = 5.0, steps: int = 100) -> float | None:
    """The smallest ε (1/255) of a :func:`threat_calibration` frame at which the mean over seeds
    of PGD-``steps`` accuracy is below ``below`` % (``None``: at no ε tried)."""
    means = frame.groupby("eps_255")[f"pgd{steps}"].mean().sort_index()
    under = means[means < below]
    return float(under.index[0]) if len(under) else None


def d_ablation(sources, d_values, objectives, method: str = "clustr_qtrades", steps: int = 20):
    """Fig. 4: clean accuracy (whole test set) for every D, and PGD-``steps`` accuracy at
    each D of ``d_values`` (clipped to the number of clusters), per source, objective and
    seed. Returns ``(clean, robust)`` frames."""

    def total(source):
        return source.settings["clusters_per_class"] * source.data.num_classes

    def clean(source):
        every_d = {"d_values": list(range(1, total(source) + 1))}
        return [
            {"source": source.label, "seed": e["seed"], "D": int(d), "clean": 100 * acc}
            for e in source.evaluate(method, "clean_by_d", every_d)
            for d, acc in e["metrics"]["accuracy"].items()
        ]

    def robust(source):
        return [
            {**row, "D": d}
            for d in sorted({min(int(d), total(source)) for d in d_values})
            for objective in objectives
            for row in pgd_rows(source, method, objective, num_nearest=d, steps=[steps])
        ]

    return _frame(sources, clean), _frame(sources, robust)


def adaptive_attack(sources, methods=("clustr_qtrades", "clustr")) -> pd.DataFrame:
    """Sec. 4.2: PGD on the paper's objective vs PGD maximising the Magnet loss (and
    −log p_y for reference), per source, method and seed."""
    return _frame(
        sources,
        lambda source: [
            row
            for method in methods
            if method in source.methods
            for objective in ("paper", "magnet", "ce")
            for row in pgd_rows(source, method, objective)
        ],
    )


ATTACK_LABELS = {
    "paper": "PGD, paper's objective",
    "ce": "PGD, −log p_y",
    "margin": "PGD, margin",
    "magnet": "PGD, Magnet loss (adaptive)",
    "autoattack": "AutoAttack (standard)",
    "square": "Square alone (black-box)",
}
RULE_LABELS = {
    "official": "official rule",
    "any_restart": "any restart",
    "any_iterate": "any iterate",
}


def attack_label(objective: str, rule: str | None = None) -> str:
    """How tables name a PGD attack: :data:`ATTACK_LABELS`, plus the rule when it is not the
    protocol's first (``"PGD, paper's objective (any iterate)"``)."""
    return ATTACK_LABELS[objective] + (f" ({RULE_LABELS[rule]})" if rule else "")


def attack_comparison(
    sources, methods, autoattack_methods, eps: float | None = None, rules=None
) -> pd.DataFrame:
    """The audit: robust accuracy of the same models under every attack, per source and seed
    (PGD-100 for the PGD rows, under each of ``rules`` — default the protocol's, the paper's
    first; AutoAttack's four attacks in sequence; Square alone), at ``eps`` (default the
    protocol's ε; PGD keeps the protocol's step)."""
    changes = {} if eps is None else {"eps": float(eps)}

    def one(source):
        last = str(max(source.settings["pgd_steps"]))
        first, *others = rules or source.settings["pgd_rules"]
        rows = []
        for method in (m for m in methods if m in source.methods):
            for objective in ("paper", "ce", "margin", "magnet"):
                if attack_objective(method, objective) != objective:
                    continue  # for a CE network the paper's objective is −log p_y
                for rule in (first, *others):
                    label = attack_label(objective, None if rule == first else rule)
                    rows += [
                        {**r, "attack": label, "robust": r[f"pgd{last}"]}
                        for r in pgd_rows(source, method, objective, rule=rule, **changes)
                    ]
            if method in autoattack_methods:
                rows += autoattack_rows(source, method, eps)
        return rows

    return _frame(sources, one)


def autoattack_rows(source, method: str, eps: float | None = None) -> list[dict]:
    """AutoAttack (standard: its four attacks in sequence) and Square alone at ``eps``
    (default the protocol's ε) on the attacked points, per seed."""
    eps = source.settings["eps"] if eps is None else float(eps)
    size = source.settings["eval_size"]
    rows = []
    for label, attacks in (
        ("autoattack", ["apgd-ce", "apgd-t", "fab-t", "square"]),
        ("square", ["square"]),
    ):
        for e in source.evaluate(
            method,
            "autoattack",
            {
                "eps": eps,
                "attacks": attacks,
                "eval_size": size,
                **shard_params(source.settings),
            },
        ):
            after = e["metrics"]["robust_after"]
            rows.append(
                {
                    "source": source.label,
                    "method": METHODS[method],
                    "seed": e["seed"],
                    "attack": ATTACK_LABELS[label],
                    "clean": 100 * after["clean"],
                    "robust": 100 * after[attacks[-1]],
                    **{f"after_{a}": 100 * after[a] for a in attacks},
                }
            )
    return rows


def attack_mean(
    comparison: pd.DataFrame, attack: str, method: str = "ClusTR + QTRADES", column: str = "robust"
) -> float:
    """Mean over seeds of ``column`` for one attack (a key of :data:`ATTACK_LABELS`) and method
    of an :func:`attack_comparison` frame (NaN when absent)."""
    return mean_of(comparison, column, method=method, attack=ATTACK_LABELS[attack])


def gradient_norms(sources, method: str, objectives) -> pd.DataFrame:
    """Per point and objective, ``‖∇_x loss‖₂`` at the clean input (long format)."""

    def one(source):
        params = {
            "objectives": list(objectives),
            "eval_size": source.settings["eval_size"],
            "alpha": magnet_alpha(source.settings, method),
        }
        return [
            {
                "source": source.label,
                "method": METHODS[method],
                "seed": e["seed"],
                "objective": objective,
                "norm": n,
                "clean_correct": c,
            }
            for e in source.evaluate(method, "gradient_norms", params)
            for objective, norms in e["metrics"]["norms"].items()
            for n, c in zip(norms, e["metrics"]["clean_correct"])
        ]

    return _frame(sources, one)


def gradient_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Shares (%) of points whose gradient norm is exactly zero or below float32's resolution,
    and the median norm, per source, method and objective."""

    def summarise(group):
        shares = tiny_share(group["norm"])
        return pd.Series(
            {
                "points": len(group),
                "zero (%)": round(100 * shares["zero"], 2),
                "< 1.2e-7 (%)": round(100 * shares["tiny"], 2),
                "median norm": f"{group['norm'].median():.2e}",
            },
            dtype=object,
        )

    return frame.groupby(["source", "method", "objective"], sort=False)[["norm"]].apply(summarise)


def attack_paths(sources, method: str, objectives, steps: int | None = None) -> pd.DataFrame:
    """One PGD run per objective with every iterate recorded: mean loss and accuracy (%) per
    iteration, per source and seed (long format)."""

    def one(source):
        settings = source.settings
        rows = []
        for objective in objectives:
            params = {
                "eps": settings["eps"],
                "step_size": settings["pgd_step"],
                "steps": int(steps or max(settings["pgd_steps"])),
                "objective": objective,
                "eval_size": settings["eval_size"],
            }
            if objective == "magnet":
                params["alpha"] = magnet_alpha(settings, method)
            for e in source.evaluate(method, "attack_path", params):
                m = e["metrics"]
                rows += [
                    {
                        "source": source.label,
                        "method": METHODS[method],
                        "seed": e["seed"],
                        "objective": objective,
                        "iteration": t,
                        "mean_loss": loss,
                        "accuracy": 100 * acc,
                    }
                    for t, (loss, acc) in enumerate(zip(m["mean_loss"], m["accuracy"]))
                ]
        return rows

    return _frame(sources, one)


def eps_text(eps: float) -> str:
    """An ℓ∞ radius as the book writes it: in units of 1/255 when a whole number of them
    (``"8/255"``), else as a decimal (``"0.1"``, not ``"25.5/255"``)."""
    units = round(float(eps) * 255, 2)
    return f"{units:g}/255" if units == int(units) else f"{float(eps):.4g}"


def certificate(sources, methods=("clustr_qtrades", "clustr"), eps: float | None = None):
    """Theorem 1 on the image models at ``eps`` (default the protocol's ε), per source, method
    and seed (see :func:`clustr_lib.evaluations.image_certificate`)."""

    def one(source):
        radius = source.settings["eps"] if eps is None else float(eps)
        params = {"eps_linf": radius, "eval_size": source.settings["eval_size"]}
        at = eps_text(radius)
        return [
            {
                "source": source.label,
                "method": METHODS[method],
                "seed": e["seed"],
                "L (upper bound)": m["lipschitz_upper_bound"],
                "median radius (sound)": m["sound"]["median_radius"],
                "median radius (paper)": m["paper"]["median_radius"],
                "ℓ2 radius needed": m["l2_radius_needed"],
                "median ℓ∞ radius certified": m["median_linf_certified"],
                f"certified at {at} (%)": 100 * m["sound"]["certified_share"],
                f"certified at {at}, paper's reduction (%)": 100 * m["paper"]["certified_share"],
                "nearest-cluster accuracy (%)": 100 * m["nearest_cluster_accuracy"],
            }
            for method in methods
            if method in source.methods
            for e in source.evaluate(method, "certificate", params)
            for m in [e["metrics"]]
        ]

    return _frame(sources, one)


def score_underflow(sources, methods=CLUSTER_METHODS) -> pd.DataFrame:
    """How often every Eq. (4) class score is 0 in float32 at a clean test point (where the
    paper's objective has a zero gradient), per source, method and seed (see
    :func:`clustr_lib.evaluations.score_underflow`)."""

    def one(source):
        params = {"eval_size": source.settings["eval_size"]}
        return [
            {
                "source": source.label,
                "method": METHODS[method],
                "seed": e["seed"],
                "all scores 0, test set (%)": 100 * e["metrics"]["all_zero"],
                "all scores 0, attacked points (%)": 100 * e["metrics"]["all_zero_attacked"],
            }
            for method in methods
            if method in source.methods
            for e in source.evaluate(method, "score_underflow", params)
        ]

    return _frame(sources, one)


def dataset_audit(sources, audit: dict) -> dict:
    """Every measurement of a recorded study's audit (``audit``: e.g.
    :data:`clustr_lib.protocol.FASHION32_STUDY`'s, issue 14), over all of its methods, as
    frames: ``runs`` (Table 1's columns, :func:`runs_frame`); ``attacks``
    (:func:`attack_comparison` under ``audit["rules"]`` at each ε of ``audit["eps"]``, with
    column ``eps_255``); ``gradients`` (input-gradient norms under each of
    ``audit["gradient_objectives"]`` that applies to the method); ``underflow``
    (:func:`score_underflow`); ``certificate`` (Theorem 1 at each ε, ``eps_255``)."""
    sources = sources if isinstance(sources, (list, tuple)) else [sources]
    methods = list(METHODS)
    at = [(float(e), round(float(e) * 255, 2)) for e in audit["eps"]]
    attacks = [
        attack_comparison(sources, methods, methods, eps=e, rules=audit["rules"]).assign(
            eps_255=e255
        )
        for e, e255 in at
    ]
    gradients = [
        gradient_norms(source, method, applicable_objectives(method, audit["gradient_objectives"]))
        for source in sources
        for method in source.methods
    ]
    certificates = [
        certificate(sources, CLUSTER_METHODS, eps=e)
        .rename(columns=lambda c, e=e: c.replace(f" at {eps_text(e)}", ""))
        .assign(eps_255=e255)
        for e, e255 in at
    ]
    return {
        "runs": runs_frame(sources),
        "attacks": pd.concat(attacks, ignore_index=True),
        "gradients": pd.concat(gradients, ignore_index=True),
        "underflow": score_underflow(sources),
        "certificate": pd.concat(certificates, ignore_index=True),
    }


def kmeans_on_nominal(sources) -> pd.DataFrame:
    """App. B.1: the nominal network's head vs k-means + Eq. (4) on its features, per source
    and seed."""

    def one(source):
        settings = source.settings
        params = {
            "clusters_per_class": settings["clusters_per_class"],
            "num_nearest": settings["num_nearest"],
        }
        return [
            {
                "source": source.label,
                "seed": e["seed"],
                "linear head": 100 * m["head_accuracy"],
                "k-means + Eq. 4 (D in the tables)": 100 * m["eq4_d"],
                "k-means + Eq. 4 (all clusters)": 100 * m["eq4_all"],
                "nearest cluster": 100 * m["nearest_cluster"],
                "σ²": m["variance"],
            }
            for e in source.evaluate("nominal", "kmeans_nominal", params)
            for m in [e["metrics"]]
        ]

    return _frame(sources, one)


def mean_table(frame: pd.DataFrame, index, columns, values) -> pd.DataFrame:
    """Mean over seeds, pivoted (rounded to 2 decimals)."""
    return frame.pivot_table(
        index=index, columns=columns, values=values, aggfunc="mean", sort=False
    ).round(2)


def seeds_of(frame: pd.DataFrame) -> int:
    """Number of seeds in a frame (0 when empty)."""
    return int(frame["seed"].nunique()) if len(frame) else 0


def mean_of(frame: pd.DataFrame, column: str, **where) -> float:
    """Mean of ``column`` over the rows matching ``where`` (NaN when none)."""
    mask = np.ones(len(frame), dtype=bool)
    for key, value in where.items():
        mask &= (frame[key] == value).to_numpy()
    return float(frame.loc[mask, column].mean()) if mask.any() else float("nan")


def complete_seeds(frame: pd.DataFrame, by=("source", "method"), column: str = "attack"):
    """The rows of ``frame`` whose seed has every value of ``column`` that its group ``by`` has
    at any seed: so that a mean over seeds compares every attack over the same seeds (a
    recording in progress has some attacks at more seeds than others). Columns of ``by`` that
    ``frame`` lacks are ignored; an empty frame is returned as it is."""
    keys = [k for k in by if k in frame]
    if not len(frame):
        return frame
    if column not in frame or "seed" not in frame:
        raise KeyError(f"complete_seeds needs columns 'seed' and {column!r}")
    groups = [frame[k] for k in keys] or [pd.Series(0, index=frame.index)]
    wanted = frame.groupby(groups, dropna=False)[column].transform("nunique")
    held = frame.groupby([*groups, frame["seed"]], dropna=False)[column].transform("nunique")
    return frame[held == wanted]


def masking_flags(
    comparison: pd.DataFrame,
    gradients: pd.DataFrame | None = None,
    tolerance: float = MASKING_MARGIN,
) -> pd.DataFrame:
    """Where PGD with the paper's objective over-states robustness, and the one sign of gradient
    masking, per source and method (mean over the seeds at which every attack is recorded,
    :func:`complete_seeds`; a check holds when one accuracy is below another by more than
    ``tolerance`` points):

    * the paper's objective is weak: another white-box PGD objective does better;
    * AutoAttack, or black-box Square alone, does better than the paper's PGD;
    * masking: AutoAttack does better than PGD on −log p_y, a sound objective (:func:`masked`,
      no answer where that PGD leaves too little to break);
    * the paper's objective has an exactly zero input gradient at some clean points.
    """
    labels = ATTACK_LABELS
    comparison = comparison if "source" in comparison else comparison.assign(source="")
    comparison = complete_seeds(comparison)
    rows = []
    for (source, method), group in comparison.groupby(["source", "method"], sort=False):
        mean = group.groupby("attack")["robust"].mean()
        reference = mean.get(labels["paper"], mean.get(labels["ce"]))
        white = min(
            mean[labels[o]] for o in ("paper", "ce", "margin", "magnet") if labels[o] in mean
        )
        row = {
            "source": source,
            "method": method,
            "seeds": seeds_of(group),
            "PGD, paper's objective": reference,
            "strongest PGD": white,
            "paper's objective is weak": white < reference - tolerance,
        }
        for key, name in (("autoattack", "AutoAttack"), ("square", "Square alone")):
            if labels[key] in mean:
                row[name] = mean[labels[key]]
                row[f"{name} beats the paper's PGD"] = mean[labels[key]] < reference - tolerance
        if labels["autoattack"] in mean and labels["ce"] in mean:  # None: too little to break
            row["masking: AutoAttack beats PGD on −log p_y"] = masked(
                mean[labels["ce"]], mean[labels["autoattack"]], tolerance
            )
        if gradients is not None and len(gradients):
            own = gradients[(gradients["method"] == method) & (gradients["objective"] == "paper")]
            if "source" in gradients and source:
                own = own[own["source"] == source]
            if len(own):
                row["zero gradients, paper's objective (%)"] = 100 * float(
                    (own["norm"] == 0).mean()
                )
        rows.append(row)
    return pd.DataFrame(rows).set_index(["source", "method"]).round(2)


STUDY_CHAPTERS = (
    "07_eps_ablation",
    "08_d_ablation",
    "09_adaptive_attack",
    "10_audit",
    "11_kmeans_nominal",
)


def chapter_measurements(chapter: str, sources, params: dict) -> dict:
    """The frames ``chapter`` computes from its ``sources`` with its notebook's ``params``: the
    calls its cells make, in one place for :func:`study_evaluations` and the plan of a build
    (:mod:`clustr_lib.plan`). Chapters 1–2 (the 2-D study) use no image runs: ``{}``."""
    p = params
    if chapter in ("03_cifar10", "04_svhn", "05_cifar100", "06_digits32_study"):
        return {"runs": runs_frame(sources)}
    if chapter == "07_eps_ablation":
        return {
            "eps": eps_ablation(sources, p["eps_values"], p["objectives"]),
            "calibration": threat_calibration(sources, p["calibration_eps"]),
        }
    if chapter == "08_d_ablation":
        clean, robust = d_ablation(sources, p["d_values"], p["objectives"])
        return {"d_clean": clean, "d_robust": robust}
    if chapter == "09_adaptive_attack":
        return {"adaptive": adaptive_attack(sources, p["methods"])}
    if chapter == "10_audit":
        return {
            "attacks": attack_comparison(sources, p["methods"], p["autoattack_methods"]),
            "gradients": gradient_norms(sources, "clustr_qtrades", p["gradient_objectives"]),
            "paths": attack_paths(sources, "clustr_qtrades", p["gradient_objectives"]),
            "certificate": certificate(sources, ["clustr_qtrades", "clustr"]),
        }
    if chapter == "11_kmeans_nominal":
        return {"kmeans": kmeans_on_nominal(sources)}
    return {}


def study_evaluations(source, params: dict) -> dict:
    """Every measurement chapters 7–11 make of a recorded study, with the chapters' own
    parameters (``params``: chapter → its notebook's defaults,
    :func:`clustr_lib.book.default_parameters`), as the chapters' frames
    (:func:`chapter_measurements`). Run on a study it records each evaluation once
    (``python -m clustr_lib record``); with ``record_only`` it checks that all are recorded.
    A study's variant (``variant``) is measured where a chapter reads it
    (:data:`clustr_lib.sources.EVALUATION_CHAPTERS`); a source without nominal or
    ClusTR + QTRADES runs skips the chapters that need them."""
    frames = {}
    for chapter in STUDY_CHAPTERS:
        if source.variant is not None and not EVALUATION_CHAPTERS[chapter][1]:
            continue
        needs = "nominal" if chapter == "11_kmeans_nominal" else "clustr_qtrades"
        if needs in source.methods:
            frames.update(chapter_measurements(chapter, source, params[chapter]))
    return frames


def record_seed(upto: list, definition: dict, chapter_params: dict) -> None:
    """What a recorded study (:data:`clustr_lib.sources.STUDIES`) makes of its sources ``upto``
    (the seeds so far): every run, then the evaluations made of them — the study's ``audit``
    (:func:`dataset_audit`: every source at once, radius by radius, so that a recording made
    one task after another has the paper's ε for every method before the next radius) or
    chapters 7–11's (:func:`study_evaluations`, with ``chapter_params``). On planning sources
    it lists them (:func:`clustr_lib.plan.study_plan`); :func:`clustr_lib.recording.record_study`
    records them seed after seed."""
    for source in upto:
        source.runs()
    if "audit" in definition:
        dataset_audit(upto, definition["audit"])
    if definition.get("evaluated_by_chapters", False):
        for source in upto:
            study_evaluations(source, chapter_params)


# ---------------------------------------------------------------------------------------
# Findings: what each chapter records per source (plain JSON, judged by clustr_lib.verdicts).


def by_source(sources, fn, *frames) -> dict:
    """``{source.key: fn(*frames restricted to the source)}`` for every source."""
    return {
        s.key: fn(*(f[f["source"] == s.label] if len(f) else f for f in frames)) for s in sources
    }


def benchmark_findings(runs: pd.DataFrame) -> dict:
    """Chapters 3–6: seeds and, per method, the mean over its seeds of every accuracy column
    and their number (``seeds``: a recording under way has some methods at more seeds)."""
    groups = runs.groupby("method", sort=False)
    means = groups.mean(numeric_only=True).drop(columns="seed")
    means["seeds"] = groups["seed"].nunique()
    return {"seeds": seeds_of(runs), "per_method": means.to_dict(orient="index")}


def eps_findings(frame: pd.DataFrame, calibration: pd.DataFrame | None = None) -> dict:
    """Chapter 7: mean PGD-100 per objective and ε, and whether it falls with every step of ε
    under the paper's objective; with a :func:`threat_calibration` frame, nominal training's
    mean PGD-100 per ε and the smallest ε at which it is below 5 % (:func:`calibrated_eps`)."""
    by_eps = {o: g.groupby("eps_255")["pgd100"].mean() for o, g in frame.groupby("objective")}
    paper_curve = by_eps["paper"]
    falls = bool((paper_curve.diff().dropna() <= 0).all())
    return {
        "seeds": seeds_of(frame),
        "pgd100": {o: {f"{e:g}": v for e, v in c.items()} for o, c in by_eps.items()},
        "eps_min": paper_curve.iloc[0],
        "eps_max": paper_curve.iloc[-1],
        "eps_max_ce": by_eps["ce"].iloc[-1] if "ce" in by_eps else float("nan"),
        "falls": falls,
        "shape": "falls with every step of ε" if falls else "does not fall monotonically with ε",
        **(
            {}
            if calibration is None or not len(calibration)
            else {
                "nominal_pgd100": {
                    f"{e:g}": v for e, v in calibration.groupby("eps_255")["pgd100"].mean().items()
                },
                **_at_calibrated(by_eps, calibrated_eps(calibration)),
            }
        ),
    }


def _at_calibrated(by_eps: dict, eps: float | None) -> dict:
    """The calibrated ε (:func:`calibrated_eps`), as a number and as text, and the mean
    PGD-100 of each objective there (NaN where that ε was not attacked)."""
    out = {
        "calibrated_eps": eps,
        "calibrated_eps_text": "none of the ε tried" if eps is None else eps_text(eps / 255),
    }
    for objective, curve in by_eps.items():
        out[f"at_calibrated_{objective}"] = (
            float(curve[eps]) if eps is not None and eps in curve.index else float("nan")
        )
    return out


def d_findings(clean: pd.DataFrame, robust: pd.DataFrame) -> dict:
    """Chapter 8: the best PGD-20 over D (paper's objective) and where, the spreads over D,
    and whether PGD on −log p_y is masked at D = 1 (beaten at the largest D by more than
    :data:`MASKING_MARGIN`)."""
    by_d = {o: g.groupby("D")["pgd20"].mean() for o, g in robust.groupby("objective")}
    paper_curve, ce = by_d["paper"], by_d.get("ce")
    masked = ce is not None and ce.iloc[0] > ce.iloc[-1] + MASKING_MARGIN
    clean_by_d = clean.groupby("D")["clean"].mean()
    return {
        "seeds": seeds_of(robust),
        "best": paper_curve.max(),
        "best_d": int(paper_curve.idxmax()),
        "d1": paper_curve.iloc[0],
        "d1_ce": ce.iloc[0] if ce is not None else float("nan"),
        "dmax_ce": ce.iloc[-1] if ce is not None else float("nan"),
        "robust_range": paper_curve.max() - paper_curve.min(),
        "clean_range": clean_by_d.max() - clean_by_d.min(),
        "masked_at_d1": bool(masked),
        "shape": (
            "PGD on −log p_y is masked at D = 1: the other classes' log-probabilities are −∞ there"
            if masked
            else "PGD on −log p_y is not weakened at D = 1"
        ),
    }


def adaptive_findings(frame: pd.DataFrame, method: str = "ClusTR + QTRADES") -> dict:
    """Chapter 9: mean PGD-100 of ``method`` per objective, and how the Magnet-loss attack
    compares with PGD on −log p_y (within :data:`MASKING_MARGIN` points: they agree)."""
    mean = {
        o: mean_of(frame, "pgd100", method=method, objective=o) for o in ("paper", "magnet", "ce")
    }
    gap = mean["magnet"] - mean["ce"]
    shape = (
        "the Magnet-loss attack is weaker than PGD on −log p_y"
        if gap > MASKING_MARGIN
        else "the Magnet-loss attack is stronger than PGD on −log p_y"
        if gap < -MASKING_MARGIN
        else f"the Magnet-loss attack and PGD on −log p_y agree within {MASKING_MARGIN:g} points"
    )
    return {"seeds": seeds_of(frame), **mean, "shape": shape}


AUDIT_ATTACKS = ("paper", "ce", "margin", "magnet", "autoattack", "square")
# Chapter 12's attack columns in order: PGD under each objective (the paper's first), unmarked
# (the protocol's first rule) or under a rule named, then AutoAttack and Square alone
AUDIT_LABELS = [
    *(attack_label(o, r) for o in AUDIT_ATTACKS[:4] for r in (None, *RULE_LABELS)),
    ATTACK_LABELS["autoattack"],
    ATTACK_LABELS["square"],
]


def audit_findings(
    comparison: pd.DataFrame,
    gradients: pd.DataFrame,
    certificates: pd.DataFrame,
    method: str = "ClusTR + QTRADES",
) -> dict:
    """Chapter 10: ``method`` under every attack (mean over seeds), TRADES under AutoAttack, the
    shares of zero / sub-resolution input gradients, Theorem 1's certificate, and whether the
    paper's PGD over-states robustness (beaten by more than :data:`MASKING_MARGIN` points)."""

    def pick(attack, who=method):
        return attack_mean(comparison, attack, who)

    def zero(objective):
        norms = gradients.loc[gradients["objective"] == objective, "norm"]
        return 100 * float((norms == 0).mean()) if len(norms) else float("nan")

    strongest = min(pick(a) for a in AUDIT_ATTACKS)
    certified = float(certificates["certified at 8/255 (%)"].max())
    ce_norms = gradients.loc[gradients["objective"] == "ce", "norm"]
    gap = pick("paper") - strongest
    return {
        **masking_answer(pick("paper"), pick("ce"), pick("autoattack")),
        "seeds": seeds_of(comparison),
        **{a: pick(a) for a in AUDIT_ATTACKS},
        "trades_autoattack": pick("autoattack", "TRADES"),
        "clean": attack_mean(comparison, "paper", method, "clean"),
        "zero_paper": zero("paper"),
        "zero_ce": zero("ce"),
        "zero_magnet": zero("magnet"),
        "tiny_ce": 100 * tiny_share(ce_norms)["tiny"] if len(ce_norms) else float("nan"),
        "lipschitz": float(certificates["L (upper bound)"].median()),
        "radius": float(certificates["median radius (sound)"].median()),
        "needed": float(certificates["ℓ2 radius needed"].iloc[0]),
        "certified": certified,
        "weakest": comparison.groupby("attack")["robust"].mean().idxmax(),
        "gap": gap,
        "overstates": bool(gap > MASKING_MARGIN),
        "cert_shape": (
            "no attacked point is certified at 8/255"
            if certified == 0
            else f"{certified:.1f}% of the attacked points are certified at 8/255"
        ),
        "shape": (
            "the paper's PGD over-states robustness"
            if gap > MASKING_MARGIN
            else "the paper's PGD agrees with the strongest attack "
            f"within {MASKING_MARGIN:g} points"
        ),
    }


def by_radius(frame: pd.DataFrame, eps_values) -> dict:
    """``{ε in units of 1/255: the rows of a :func:`dataset_audit` frame at that ε}`` for each
    of ``eps_values``, restricted to the seeds at which every attack of a model is recorded at
    that ε (:func:`complete_seeds`; an empty frame where none is recorded yet)."""
    keys = [round(float(e) * 255, 2) for e in eps_values]
    if "eps_255" not in frame:
        return {k: frame.iloc[:0] for k in keys}
    return {k: complete_seeds(frame[frame["eps_255"] == k]) for k in keys}


def eps_key(eps_255: float) -> str:
    """A radius's name in a chapter's findings: ``"eps8"`` for 8/255, ``"eps25_5"`` for 0.1."""
    return f"eps{float(eps_255):g}".replace(".", "_")


def dataset_findings(
    runs: pd.DataFrame,
    attacks: pd.DataFrame,
    gradients: pd.DataFrame,
    underflow: pd.DataFrame,
    certificates: pd.DataFrame,
    method: str = "ClusTR + QTRADES",
) -> dict:
    """Chapter 12, per source (the frames of :func:`dataset_audit`, as far as recorded): the
    seeds recorded, Table 1's means per method (:func:`benchmark_findings`), and at each ε
    (``eps8``, ``eps25_5``) ``method`` under every attack with :func:`masking_answer` (means
    over the seeds at which every attack is recorded, :func:`by_radius`; their number
    ``seeds``), TRADES under AutoAttack (over its own seeds, ``trades_seeds``) and Theorem 1's
    certified share; over every recorded seed, the shares of points whose Eq. (4) scores all
    underflow and whose paper-objective or Magnet-loss gradient is exactly 0, and the median
    Lipschitz bound and certified radius of Theorem 1. Absent values are NaN."""
    out = benchmark_findings(runs) if len(runs) else {"seeds": 0, "per_method": {}}
    nan = float("nan")
    radii = sorted(set(attacks["eps_255"])) if len(attacks) else []
    for eps, at in by_radius(attacks, [e / 255 for e in radii]).items():
        mine = at[at["method"] == method]
        cert = certificates[
            (certificates["eps_255"] == eps) & (certificates["method"] == method)
        ] if len(certificates) else certificates  # fmt: skip
        out[eps_key(eps)] = {
            "seeds": seeds_of(mine),
            **{a: attack_mean(at, a, method) for a in AUDIT_ATTACKS},
            **masking_answer(*(attack_mean(at, a, method) for a in ("paper", "ce", "autoattack"))),
            "trades_autoattack": attack_mean(at, "autoattack", "TRADES"),
            "trades_seeds": seeds_of(at[at["method"] == "TRADES"]),
            "certified": float(cert["certified (%)"].mean()) if len(cert) else nan,
        }
    own = underflow[underflow["method"] == method] if len(underflow) else underflow
    out["underflow"] = float(own["all scores 0, attacked points (%)"].mean()) if len(own) else nan
    paper = (
        gradients[(gradients["method"] == method) & (gradients["objective"] == "paper")]
        if len(gradients)
        else gradients
    )
    out["zero_paper"] = 100 * float((paper["norm"] == 0).mean()) if len(paper) else nan
    magnet = (
        gradients[(gradients["method"] == method) & (gradients["objective"] == "magnet")]
        if len(gradients)
        else gradients
    )
    out["zero_magnet"] = 100 * float((magnet["norm"] == 0).mean()) if len(magnet) else nan
    mine = certificates[certificates["method"] == method] if len(certificates) else certificates
    for key, column in (("lipschitz", "L (upper bound)"), ("radius", "median radius (sound)")):
        out[key] = float(mine[column].median()) if len(mine) else nan
    return out


def masked(ce: float, autoattack: float, tolerance: float = MASKING_MARGIN) -> bool | None:
    """The book's one sign of gradient masking: AutoAttack leaves more than ``tolerance``
    points fewer robust than PGD on −log p_y (mean robust accuracies, %). ``None`` — no answer —
    when either is missing, or when PGD on −log p_y leaves ``tolerance`` or less to break."""
    if ce != ce or autoattack != autoattack or ce <= tolerance:
        return None
    return bool(autoattack < ce - tolerance)


def masking_answer(paper: float, ce: float, autoattack: float) -> dict:
    """Chapter 10's plain answer for one model (mean robust accuracies, %): how many points
    AutoAttack breaks beyond PGD on −log p_y (``beyond_ce``: gradient masking that a sound
    objective does not get past) and beyond the paper's PGD (``beyond_paper``), and a sentence
    (``masking``) judging the first against :data:`MASKING_MARGIN` — a question PGD on
    −log p_y leaves open only if it leaves more than that margin robust (the paper's PGD
    against the strongest attack is the audit's ``shape``)."""
    beyond_ce, beyond_paper = ce - autoattack, paper - autoattack
    verdict = masked(ce, autoattack)
    if beyond_ce != beyond_ce:  # NaN: no AutoAttack recorded for this source
        text = "AutoAttack is not recorded for this source"
    elif verdict is None:
        text = (
            f"PGD on −log p_y already leaves only {ce:.1f}% robust, so AutoAttack has too little "
            "left to break for a sign of masking either way"
        )
    elif verdict:
        text = (
            f"AutoAttack breaks {beyond_ce:.1f} points more than PGD on −log p_y, more than the "
            f"{MASKING_MARGIN:g}-point margin: a sign of gradient masking, so that even PGD on "
            "−log p_y over-states the robustness that is left"
        )
    else:
        text = (
            f"AutoAttack breaks no more than PGD on −log p_y (within {MASKING_MARGIN:g} points), "
            "so the gradients of a sound objective are not masked"
        )
    return {"beyond_ce": beyond_ce, "beyond_paper": beyond_paper, "masking": text}


def kmeans_findings(frame: pd.DataFrame) -> dict:
    """Chapter 11: the head's and k-means + Eq. 4's mean accuracy, and whether clustering the
    features collapses accuracy (a loss of more than :data:`COLLAPSE_MARGIN` points)."""
    head = frame["linear head"].mean()
    kmeans = frame["k-means + Eq. 4 (D in the tables)"].mean()
    collapses = bool(kmeans < head - COLLAPSE_MARGIN)
    return {
        "seeds": seeds_of(frame),
        "head": head,
        "kmeans": kmeans,
        "collapses": collapses,
        "shape": (
            "clustering the features collapses accuracy"
            if collapses
            else f"clustering the features keeps the head's accuracy within "
            f"{COLLAPSE_MARGIN:g} points"
        ),
    }
